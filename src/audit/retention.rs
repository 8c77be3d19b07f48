//! Retention: delete events older than `[audit] retention_days`, in bounded
//! batches. Each batch is one short statement (its own transaction), so
//! SQLite's single write lock is never held for longer than one batch, and a
//! refresh or login waiting for it waits milliseconds, not for the whole purge.

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{SharedClock, UnixTime};
use crate::config::AuditConfig;
use crate::store::{Store, StoreError};

const DAY_SECS: i64 = 86_400;
/// Pause between batches, so other writers get the lock in between.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// Delete every event with `at < cutoff`, `batch` rows at a time; returns how
/// many were deleted.
pub async fn purge_before(store: &Store, cutoff: UnixTime, batch: u64) -> Result<u64, StoreError> {
    let batch = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let n = store.delete_events_before(cutoff, batch).await?;
        total += n;
        if n < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

/// The cutoff for `now` under `cfg`, or `None` when events are kept forever.
pub fn cutoff(cfg: &AuditConfig, now: UnixTime) -> Option<UnixTime> {
    cfg.retention_days
        .map(|d| now.saturating_sub(i64::try_from(d).unwrap_or(i64::MAX / DAY_SECS) * DAY_SECS))
}

/// The cleanup loop inside `latchkey serve`: once at start, then every
/// `cleanup_interval_secs`, until `shutdown` turns true. Every replica may run
/// it; deleting rows another replica already deleted is harmless.
pub async fn run(
    store: Store,
    clock: SharedClock,
    cfg: AuditConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(cfg.cleanup_interval_secs);
    loop {
        if let Some(cutoff) = cutoff(&cfg, clock.now()) {
            match purge_before(&store, cutoff, cfg.cleanup_batch).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, cutoff, "audit events past retention deleted"),
                Err(e) => tracing::warn!(error = %e, "audit retention cleanup failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
