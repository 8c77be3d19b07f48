//! The time seam.
//!
//! This module owns the only read of the wall clock in the crate. Claim checks
//! (`exp`, `nbf`, `iat`) and JWKS cache freshness both ask a [`Clock`], so tests
//! can set time exactly instead of sleeping. Nothing else in the crate may call
//! `SystemTime::now`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole seconds since the Unix epoch, the
/// resolution of JWT NumericDate claims.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn now(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        // A clock before 1970 is a broken host; treating it as the epoch makes
        // every token look expired rather than valid, which is the safe side.
        #[allow(
            clippy::disallowed_methods,
            reason = "the verifier's one reader of the wall clock"
        )]
        let now = SystemTime::now();
        now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// A clock that only moves when told to; for tests of expiry, leeway and
/// cache freshness. Share it with `Arc` and keep a handle to move time.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock frozen at `now` (Unix seconds).
    pub fn new(now: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now))
    }

    /// Sets the time.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves time forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}
