//! Scheduled deletion of what can no longer matter: refresh tokens past their
//! idle expiry, sessions past their absolute expiry, and denylisted access
//! tokens past their `exp`. Each pass deletes in bounded batches, one short
//! transaction per batch, so the SQLite write lock is never held for long and
//! refreshes interleave with a large cleanup.

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::store::{PurgeCounts, Store, StoreError};

/// Delete everything expired at `clock.now()`, `batch` rows per kind per
/// transaction, until a batch comes back short. Returns what was deleted.
pub async fn run_once(
    store: &Store,
    clock: &SharedClock,
    batch: u64,
) -> Result<PurgeCounts, StoreError> {
    let batch_i = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut total = PurgeCounts::default();
    loop {
        let n = store.purge_expired_batch(clock.now(), batch_i).await?;
        total.refresh_tokens += n.refresh_tokens;
        total.sessions += n.sessions;
        total.denied_jtis += n.denied_jtis;
        if n.refresh_tokens < batch && n.sessions < batch && n.denied_jtis < batch {
            return Ok(total);
        }
        // Let waiting writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// The cleanup loop of a server: a pass every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    clock: SharedClock,
    interval: Duration,
    batch: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match run_once(&store, &clock, batch).await {
            Ok(n) if n.total() > 0 => tracing::info!(
                refresh_tokens = n.refresh_tokens,
                sessions = n.sessions,
                denied_jtis = n.denied_jtis,
                "expired tokens deleted"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deleting expired tokens failed"),
        }
    }
}
