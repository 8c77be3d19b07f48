//! GCRA counts kept in this process.
//!
//! One map from key to theoretical arrival time (microseconds on a monotonic
//! clock). An entry whose time has passed is the same as no entry, so the map
//! is pruned of those every few thousand checks: its size is bounded by the
//! keys active within one burst window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::LimitKey;

/// Checks between two prunings of expired entries.
const PRUNE_EVERY: u64 = 4096;

pub struct MemoryGcra {
    start: Instant,
    state: Mutex<State>,
}

struct State {
    tats: HashMap<String, u64>,
    checks: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Default for MemoryGcra {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryGcra {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            state: Mutex::new(State {
                tats: HashMap::new(),
                checks: 0,
            }),
        }
    }

    /// `None` when every key allows (and then each is charged one request),
    /// else the longest wait among the keys that refuse.
    pub fn check(&self, keys: &[LimitKey]) -> Option<Duration> {
        self.check_at(keys, micros(self.start.elapsed()))
    }

    fn check_at(&self, keys: &[LimitKey], now: u64) -> Option<Duration> {
        // A poisoned lock only means another check panicked mid-update; the
        // map is still a valid set of arrival times.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.checks += 1;
        if state.checks.is_multiple_of(PRUNE_EVERY) {
            state.tats.retain(|_, tat| *tat > now);
        }
        let mut wait = 0u64;
        let mut tats = Vec::with_capacity(keys.len());
        for k in keys {
            let interval = micros(k.rate.interval);
            let tolerance = interval.saturating_mul(k.rate.burst.saturating_sub(1));
            let tat = state.tats.get(&k.key).copied().unwrap_or(now).max(now);
            wait = wait.max((tat - now).saturating_sub(tolerance));
            tats.push(tat.saturating_add(interval));
        }
        if wait > 0 {
            return Some(Duration::from_micros(wait));
        }
        for (k, tat) in keys.iter().zip(tats) {
            state.tats.insert(k.key.clone(), tat);
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn key(k: &str, interval_ms: u64, burst: u64) -> LimitKey {
        LimitKey {
            key: k.into(),
            rate: Rate {
                interval: Duration::from_millis(interval_ms),
                burst,
            },
        }
    }

    #[test]
    fn burst_then_one_per_interval() {
        let g = MemoryGcra::new();
        let k = [key("a", 1000, 3)];
        let t0 = 10_000_000;
        for _ in 0..3 {
            assert_eq!(g.check_at(&k, t0), None);
        }
        // The fourth at once waits one interval.
        assert_eq!(g.check_at(&k, t0), Some(Duration::from_secs(1)));
        assert_eq!(
            g.check_at(&k, t0 + 400_000),
            Some(Duration::from_millis(600))
        );
        assert_eq!(g.check_at(&k, t0 + 1_000_000), None);
        assert!(g.check_at(&k, t0 + 1_000_000).is_some());
        // Other keys are independent.
        assert_eq!(g.check_at(&[key("b", 1000, 1)], t0), None);
    }

    #[test]
    fn a_refusal_charges_no_key() {
        let g = MemoryGcra::new();
        let t0 = 5_000_000;
        assert_eq!(g.check_at(&[key("user", 60_000, 1)], t0), None);
        // The username refuses; the address must not be charged for it.
        let both = [key("ip", 1000, 1), key("user", 60_000, 1)];
        assert!(g.check_at(&both, t0).is_some());
        assert_eq!(g.check_at(&[key("ip", 1000, 1)], t0), None);
    }
}
