//! A per-process cache of positive access-token checks, invalidated by
//! revocation.
//!
//! Verifying an access token's signature and `exp` is pure computation; what
//! latchkey's own endpoints add (the `jti` denylist, the session, the user's
//! disabled flag and logout-all instant, and for userinfo the profile) needs
//! the database. This cache remembers, per `jti`, that those checks passed
//! and (for userinfo) the answer, tagged with the store's revocation
//! generation ([`crate::store::Store::revocation_generation`]) read *before*
//! the database was asked. An entry counts only while the generation is
//! unchanged, so:
//!
//! - a revocation made by this process (logout, revoke, an admin ending a
//!   session, disabling a user, a password change, reuse detection) bumps the
//!   generation after its commit and before its response: every later check
//!   reads the database again, at once;
//! - a revocation made by another process (another replica, the CLI) bumps
//!   `revocation_state.version` in its transaction; this process reads that
//!   version every `tokens.revocation_poll_millis` and bumps its generation
//!   when it moved, so the delay is bounded by that interval (default 100 ms);
//!   `0` turns the cache off and every check reads the database.
//!
//! Only positive results are cached: a revocation never needs undoing, and a
//! refused token costs a database read each time it is presented. Signature
//! and `exp` are checked on every request, cached or not. The cache holds at
//! most [`CAPACITY`] entries; a full shard first drops stale and expired
//! entries, then everything.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::UserInfo;
use crate::clock::UnixTime;

/// Most entries held (about 250 bytes each with a userinfo answer).
pub const CAPACITY: usize = 50_000;
const SHARDS: usize = 16;

#[derive(Clone)]
struct Entry {
    generation: u64,
    exp: UnixTime,
    info: Option<Arc<UserInfo>>,
}

/// What a lookup found: the token passed its checks at this generation, and
/// the userinfo answer if one was cached with it.
pub(crate) enum Hit {
    Live,
    Info(Arc<UserInfo>),
}

type Shard = Mutex<HashMap<Box<str>, Entry>>;

pub(crate) struct LiveCache {
    enabled: bool,
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl LiveCache {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, jti: &str) -> &Shard {
        let i = (self.hasher.hash_one(jti) as usize) % SHARDS;
        &self.shards[i]
    }

    /// A check of `jti` that passed at `generation` and has not expired.
    pub fn get(&self, jti: &str, generation: u64, now: UnixTime) -> Option<Hit> {
        if !self.enabled {
            return None;
        }
        let shard = self.shard(jti).lock().unwrap_or_else(|p| p.into_inner());
        let e = shard.get(jti)?;
        if e.generation != generation || e.exp <= now {
            return None;
        }
        Some(match &e.info {
            Some(info) => Hit::Info(info.clone()),
            None => Hit::Live,
        })
    }

    /// Remember that `jti` passed every check at `generation` (read before
    /// the database was asked). An entry carrying a userinfo answer is not
    /// replaced by one without.
    pub fn put(
        &self,
        jti: &str,
        generation: u64,
        exp: UnixTime,
        now: UnixTime,
        info: Option<Arc<UserInfo>>,
    ) {
        if !self.enabled {
            return;
        }
        let mut shard = self.shard(jti).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = shard.get(jti)
            && e.generation == generation
            && e.info.is_some()
            && info.is_none()
        {
            return;
        }
        if shard.len() >= CAPACITY / SHARDS && !shard.contains_key(jti) {
            shard.retain(|_, e| e.generation == generation && e.exp > now);
            if shard.len() >= CAPACITY / SHARDS {
                shard.clear();
            }
        }
        shard.insert(
            jti.into(),
            Entry {
                generation,
                exp,
                info,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sub: &str) -> Arc<UserInfo> {
        Arc::new(UserInfo {
            sub: sub.into(),
            preferred_username: None,
            email: None,
            roles: vec![],
        })
    }

    #[test]
    fn an_entry_counts_only_at_its_generation_and_before_exp() {
        let c = LiveCache::new(true);
        c.put("j1", 7, 100, 10, Some(info("u1")));
        assert!(matches!(c.get("j1", 7, 10), Some(Hit::Info(i)) if i.sub == "u1"));
        assert!(c.get("j1", 8, 10).is_none(), "a revocation since");
        assert!(c.get("j1", 7, 100).is_none(), "expired");
        assert!(c.get("j2", 7, 10).is_none());
    }

    #[test]
    fn a_liveness_entry_does_not_replace_a_userinfo_answer() {
        let c = LiveCache::new(true);
        c.put("j", 1, 100, 10, Some(info("u")));
        c.put("j", 1, 100, 10, None);
        assert!(matches!(c.get("j", 1, 10), Some(Hit::Info(_))));
        c.put("j", 2, 100, 10, None);
        assert!(matches!(c.get("j", 2, 10), Some(Hit::Live)));
    }

    #[test]
    fn disabled_remembers_nothing() {
        let c = LiveCache::new(false);
        c.put("j", 1, 100, 10, None);
        assert!(c.get("j", 1, 10).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c = LiveCache::new(true);
        for i in 0..(CAPACITY * 2) {
            c.put(&format!("jti-{i}"), 1, 100, 10, None);
        }
        assert!(c.len() <= CAPACITY, "{} entries", c.len());
        // Stale entries go first when a shard fills.
        let c = LiveCache::new(true);
        for i in 0..CAPACITY {
            c.put(&format!("old-{i}"), 1, 100, 10, None);
        }
        for i in 0..CAPACITY / 2 {
            c.put(&format!("new-{i}"), 2, 100, 10, None);
        }
        assert!(c.get("new-0", 2, 10).is_some());
        assert!(c.len() <= CAPACITY);
    }
}
