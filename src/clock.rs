//! The one reader of the wall clock.
//!
//! Everything in latchkey that needs "now" (token `iat`/`exp`, refresh expiry, key
//! lifecycle deadlines, the rotation schedule) asks a [`Clock`]. Production uses
//! [`SystemClock`]; tests inject a [`ManualClock`] so that expiry and rotation are
//! exact rather than sleepy. Nothing outside this file calls `SystemTime::now`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, the unit of every timestamp latchkey stores or signs.
pub type UnixTime = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

/// Shared handle to the clock used by one latchkey instance.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        // A clock before 1970 is a broken host; treating it as the epoch keeps
        // every comparison well-defined instead of panicking.
        #[allow(
            clippy::disallowed_methods,
            reason = "the one reader of the wall clock"
        )]
        let now = SystemTime::now();
        now.duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The wall clock shifted by a fixed offset: a replica with a wrong clock,
/// for fault drills (`clock.insecure_offset_secs`, refused in `prod`).
#[derive(Debug, Clone, Copy)]
pub struct InsecureOffsetClock(pub i64);

impl Clock for InsecureOffsetClock {
    fn now(&self) -> UnixTime {
        SystemClock.now().saturating_add(self.0)
    }
}

/// The clock a process runs on, as configured.
pub fn from_config(cfg: &crate::config::ClockConfig) -> SharedClock {
    if cfg.insecure_offset_secs == 0 {
        Arc::new(SystemClock)
    } else {
        Arc::new(InsecureOffsetClock(cfg.insecure_offset_secs))
    }
}

/// A clock that only moves when told to; for tests and drills.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: UnixTime) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn set(&self, t: UnixTime) {
        self.0.store(t, Ordering::SeqCst);
    }

    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}
