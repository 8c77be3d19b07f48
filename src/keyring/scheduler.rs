//! The background loop inside `latchkey serve`: apply due lifecycle steps,
//! reload the ring when its version moves, purge expired token rows.
//!
//! Every replica runs this loop. Replicas never coordinate directly: each
//! transition is a locked check-and-swap in the database (see [`super::lifecycle`]),
//! so exactly one replica performs it and the others find nothing due. A replica
//! picks up any change (its own, another replica's, or the CLI's) within one
//! `keys.reload_interval_secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::KeyRing;
use super::lifecycle::Lifecycle;
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
    /// When the loop last finished a pass (monotonic time, not the wall
    /// clock): readiness reports a loop that stopped passing.
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

/// Run until `shutdown` turns true.
pub async fn run(
    lifecycle: Lifecycle,
    ring: Arc<KeyRing>,
    stats: Arc<SchedulerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(lifecycle.config().reload_interval_secs);
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
                }
                Ok(report) => {
                    let detail: Vec<String> = report
                        .failures
                        .iter()
                        .map(|(a, e)| format!("{a}: {e}"))
                        .collect();
                    retry_at = failed(&lifecycle, &stats, now, &detail.join("; ")).await;
                }
                Err(e) => retry_at = failed(&lifecycle, &stats, now, &e.to_string()).await,
            }
        }
        if let Err(e) = ring.reload_if_changed().await {
            stats.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "key ring reload failed; still serving the previous ring");
        }
        stats.beat();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
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
    if let Err(e) = lifecycle
        .store()
        .record_event(now, "scheduler", "key.transition_failed", None, detail)
        .await
    {
        tracing::error!(error = %e, "cannot record the failed transition");
    }
    now + backoff
}
