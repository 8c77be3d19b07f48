//! The background loops inside `latchkey serve`: one reloads the ring when its
//! version moves (and compares clocks with the database), on its own timer; the
//! other applies due lifecycle steps (expired token rows are purged by
//! `session::cleanup`).
//!
//! Every replica runs this loop. Replicas never coordinate directly: each
//! transition is a locked check-and-swap in the database (see [`super::lifecycle`]),
//! so exactly one replica performs it and the others find nothing due. A replica
//! picks up any change (its own, another replica's, or the CLI's) within one
//! `keys.reload_interval_secs`, however long a transition takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::KeyRing;
use super::lifecycle::Lifecycle;
use crate::audit::{Event, EventType};
use crate::clock::UnixTime;

/// Counters an operator alerts on; exported by the health endpoint.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Scheduled transitions that failed (KMS or database errors), ever.
    pub transition_failures: AtomicU64,
    /// Consecutive failed passes right now; 0 when healthy.
    pub consecutive_failures: AtomicU64,
    /// Ring reloads that failed.
    pub reload_failures: AtomicU64,
    /// When the ring was last checked against the database successfully
    /// (0: never), for the reload-age metric.
    pub last_reload_ok_at: AtomicI64,
    /// When the transition loop last finished a pass (monotonic time, not the
    /// wall clock): readiness reports a loop that stopped passing.
    pub heartbeat: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl SchedulerStats {
    fn beat(&self) {
        if let Ok(mut h) = self.heartbeat.lock() {
            *h = Some(tokio::time::Instant::now());
        }
    }

    /// Time since the last finished pass; `None` before the first one.
    pub fn since_heartbeat(&self) -> Option<std::time::Duration> {
        self.heartbeat
            .lock()
            .ok()
            .and_then(|h| h.map(|t| t.elapsed()))
    }
}

/// Longest wait between retries of a failing transition.
const MAX_BACKOFF_SECS: i64 = 300;

/// Run until `shutdown` turns true: two independent loops, so that a slow or
/// failing transition (KMS calls of seconds, retried) never delays a reload,
/// and the staleness that the lead and retention formulas assume (one reload
/// interval) holds whatever the KMS does.
pub async fn run(
    lifecycle: Lifecycle,
    ring: Arc<KeyRing>,
    stats: Arc<SchedulerStats>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::join!(
        reload_loop(&lifecycle, &ring, &stats, shutdown.clone()),
        transition_loop(&lifecycle, &ring, &stats, shutdown),
    );
}

/// Sleep `interval` unless shutdown comes first; true when shutting down.
async fn pause(interval: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(interval) => {}
        _ = shutdown.changed() => {}
    }
    *shutdown.borrow()
}

/// Every `reload_interval_secs`: pick up ring changes and compare clocks.
async fn reload_loop(
    lifecycle: &Lifecycle,
    ring: &KeyRing,
    stats: &SchedulerStats,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(lifecycle.config().reload_interval.as_u64());
    loop {
        match ring.reload_if_changed().await {
            Ok(_) => stats
                .last_reload_ok_at
                .store(lifecycle.clock().now(), Ordering::Relaxed),
            Err(e) => {
                stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "key ring reload failed; still serving the previous ring");
            }
        }
        if let Err(e) = ring.check_clock().await {
            tracing::warn!(error = %e, "cannot read the database clock");
        }
        if pause(interval, &mut shutdown).await {
            return;
        }
    }
}

/// Apply due lifecycle steps, with backoff on failure.
async fn transition_loop(
    lifecycle: &Lifecycle,
    ring: &KeyRing,
    stats: &SchedulerStats,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(lifecycle.config().reload_interval.as_u64());
    let mut retry_at: UnixTime = 0;
    loop {
        let now = lifecycle.clock().now();
        if now >= retry_at {
            let loaded: Vec<String> = ring
                .current()
                .keys()
                .iter()
                .filter(|k| k.signer.is_some())
                .map(|k| k.kid().to_string())
                .collect();
            match lifecycle.tick("scheduler", &loaded).await {
                Ok(report) if report.failures.is_empty() => {
                    stats.consecutive_failures.store(0, Ordering::Relaxed);
                    if !report.changes.is_empty()
                        && let Err(e) = ring.reload_if_changed().await
                    {
                        tracing::warn!(error = %e, "reload after a transition failed");
                    }
                }
                Ok(report) => {
                    let detail: Vec<String> = report
                        .failures
                        .iter()
                        .map(|(a, e)| format!("{a}: {e}"))
                        .collect();
                    retry_at =
                        failed(lifecycle, stats, now, &detail.join("; "), &report.failures).await;
                }
                Err(e) => retry_at = failed(lifecycle, stats, now, &e.to_string(), &[]).await,
            }
        }
        stats.beat();
        if pause(interval, &mut shutdown).await {
            return;
        }
    }
}

/// Record a failed pass and return when to try again (exponential backoff).
async fn failed(
    lifecycle: &Lifecycle,
    stats: &SchedulerStats,
    now: UnixTime,
    detail: &str,
    kms_failures: &[(&'static str, String)],
) -> UnixTime {
    stats.transition_failures.fetch_add(1, Ordering::Relaxed);
    let n = stats.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let backoff = 1i64
        .checked_shl(u32::try_from(n.min(16)).unwrap_or(16))
        .unwrap_or(MAX_BACKOFF_SECS)
        .min(MAX_BACKOFF_SECS);
    // An operator alerts on this line (and on the health endpoint's counter).
    tracing::error!(
        alert = "key_transition_failed",
        consecutive_failures = n,
        retry_in_secs = backoff,
        error = detail,
        "scheduled key transition failed; the current active keys keep signing"
    );
    // A pass's per-algorithm failures are KMS calls (new material, loading a
    // pending key); each is recorded as such beside the failed transition.
    let mut events = vec![
        Event::new(EventType::KeyTransitionFailed, now)
            .actor("scheduler")
            .message(detail)
            .detail(serde_json::json!({ "error": detail, "consecutive_failures": n })),
    ];
    events.extend(kms_failures.iter().map(|(alg, error)| {
        Event::new(EventType::KmsFailure, now)
            .actor("scheduler")
            .message(format!("{alg}: {error}"))
            .detail(serde_json::json!({ "alg": alg, "error": error }))
    }));
    for event in events {
        event.emit();
        if let Err(e) = lifecycle.store().append_event(&event).await {
            tracing::error!(error = %e, "cannot record the failed transition");
        }
    }
    now + backoff
}
