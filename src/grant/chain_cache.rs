//! The state of each refresh token this process has just issued, so that the
//! next refresh of a session does not read it back.
//!
//! A refresh reads its token with the session, user and roles
//! ([`Store::refresh_state`](crate::store::Store::refresh_state)) before it
//! signs, then the rotation writer consumes the token conditionally. Once a
//! rotation has committed, this process knows its successor's state exactly:
//! the same session, user and roles, the successor unused, issued now and
//! expiring at the rotation's `successor_expires_at`. Kept here, it spares the
//! session's next refresh that read: on PostgreSQL one round trip and about a
//! third of the database's work per refresh.
//!
//! A stale entry cannot let a refresh through that the database would refuse:
//!
//! - What can change under an entry is checked again by the rotation itself,
//!   in the database: the token unused and unexpired, its session live. A
//!   token another replica consumed, or a session ended anywhere (logout,
//!   revocation, reuse detection, an admin, a disabled user, a password
//!   change, logout-all), makes the rotation not apply; the grant then reads
//!   the database and decides as without the cache (the same successor within
//!   the retry window, reuse, or invalid). The tokens it signed are dropped.
//! - What the rotation does not check — the user's disabled flag and e-mail,
//!   the roles — changes only together with ending the user's sessions
//!   (disabling a user) or not at all after the user is created (roles,
//!   e-mail). An entry also counts only while the store's revocation
//!   generation is the one read before the state it came from, as the
//!   access-check cache does (`session/live.rs`), so any revocation seen by
//!   this process empties it in effect.
//! - An entry is taken, not read: the first presentation of a token removes
//!   it, so any later presentation of that token (a retry, a concurrent
//!   duplicate, a thief) reads the database.
//!
//! It is on when the revocation generation follows other processes
//! (`tokens.revocation_poll_millis` > 0), like the access-check cache. It
//! holds at most [`CAPACITY`] entries; a full shard first drops entries of an
//! older generation or past their idle expiry, then everything. The user's
//! password hash is not kept.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::clock::UnixTime;
use crate::store::{RefreshState, TokenState};

/// Most entries held (one per session refreshed lately; about 400 bytes each).
pub const CAPACITY: usize = 50_000;
const SHARDS: usize = 16;

struct Entry {
    generation: u64,
    state: RefreshState,
}

type Shard = Mutex<HashMap<Box<[u8]>, Entry>>;

pub(crate) struct ChainCache {
    enabled: bool,
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl ChainCache {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, digest: &[u8]) -> &Shard {
        let i = (self.hasher.hash_one(digest) as usize) % SHARDS;
        &self.shards[i]
    }

    /// Remove and return the state kept for the token with `digest`, if it
    /// was kept at `generation` and the token has not expired by `now`.
    pub fn take(&self, digest: &[u8], generation: u64, now: UnixTime) -> Option<RefreshState> {
        if !self.enabled {
            return None;
        }
        let entry = self
            .shard(digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest)?;
        (entry.generation == generation && entry.state.token.expires_at > now)
            .then_some(entry.state)
    }

    /// Keep the state of the successor with `digest` that a committed rotation
    /// of `presented` stored, `generation` being the one read before
    /// `presented` was looked up.
    pub fn put_successor(
        &self,
        digest: Vec<u8>,
        generation: u64,
        presented: RefreshState,
        issued_at: UnixTime,
        expires_at: UnixTime,
    ) {
        if !self.enabled {
            return;
        }
        let state = successor_state(presented, issued_at, expires_at);
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= CAPACITY / SHARDS {
            shard.retain(|_, e| e.generation == generation && e.state.token.expires_at > issued_at);
            if shard.len() >= CAPACITY / SHARDS {
                shard.clear();
            }
        }
        shard.insert(digest.into_boxed_slice(), Entry { generation, state });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// What the database holds for the successor right after the rotation of
/// `presented` committed (the row the rotation inserted, its session touched).
fn successor_state(
    presented: RefreshState,
    issued_at: UnixTime,
    expires_at: UnixTime,
) -> RefreshState {
    let RefreshState {
        mut family,
        user,
        roles,
        token: _,
    } = presented;
    family.last_used_at = issued_at;
    RefreshState {
        token: TokenState {
            issued_at,
            expires_at,
            used_at: None,
        },
        family,
        // A refresh never checks a password: the hash is not kept around.
        user: user.map(|mut u| {
            u.password_hash = String::new();
            u
        }),
        roles,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::store::{FamilyRow, UserRow};

    fn state(used_at: Option<UnixTime>) -> RefreshState {
        RefreshState {
            token: TokenState {
                issued_at: 10,
                expires_at: 200,
                used_at,
            },
            family: FamilyRow {
                id: "fam".into(),
                user_id: "u1".into(),
                client_id: "app".into(),
                scope: "openid api:read".into(),
                auth_time: 5,
                created_at: 5,
                last_used_at: 10,
                expires_at: 1_000,
                revoked_at: None,
                device_label: Some("laptop".into()),
                client_ip: None,
            },
            user: Some(UserRow {
                id: "u1".into(),
                username: "ada".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                email: Some("ada@example.test".into()),
                disabled: false,
                created_at: 1,
                failed_logins: 0,
                locked_until: None,
            }),
            roles: vec!["admin".into()],
        }
    }

    #[test]
    fn a_successor_is_kept_as_the_database_now_holds_it_and_taken_once() {
        let c = ChainCache::new(true);
        c.put_successor(b"next".to_vec(), 3, state(None), 50, 350);
        let got = c.take(b"next", 3, 51).unwrap();
        assert_eq!(got.token.issued_at, 50);
        assert_eq!(got.token.expires_at, 350);
        assert_eq!(got.token.used_at, None);
        assert_eq!(got.family.id, "fam");
        assert_eq!(got.family.scope, "openid api:read");
        assert_eq!(got.family.last_used_at, 50);
        assert_eq!(got.family.expires_at, 1_000);
        assert_eq!(got.roles, vec!["admin".to_string()]);
        let user = got.user.unwrap();
        assert_eq!(user.email.as_deref(), Some("ada@example.test"));
        assert!(user.password_hash.is_empty(), "the hash is not kept");
        assert!(
            c.take(b"next", 3, 51).is_none(),
            "a second presentation reads the database"
        );
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_entry_of_another_generation_or_past_its_expiry_is_not_used() {
        let c = ChainCache::new(true);
        c.put_successor(b"a".to_vec(), 3, state(Some(40)), 50, 350);
        assert!(c.take(b"a", 4, 51).is_none(), "a revocation since");
        assert_eq!(c.len(), 0, "and it is gone");
        c.put_successor(b"b".to_vec(), 3, state(None), 50, 350);
        assert!(c.take(b"b", 3, 350).is_none(), "expired at 350");
        assert!(c.take(b"unknown", 3, 51).is_none());
    }

    #[test]
    fn off_keeps_nothing() {
        let c = ChainCache::new(false);
        c.put_successor(b"a".to_vec(), 1, state(None), 50, 350);
        assert_eq!(c.len(), 0);
        assert!(c.take(b"a", 1, 51).is_none());
    }

    #[test]
    fn it_stays_bounded_and_keeps_the_newest() {
        let c = ChainCache::new(true);
        // Each shard overflows once and starts again (about half full at the end).
        let n = CAPACITY + CAPACITY / 2;
        for i in 0..n {
            c.put_successor(format!("t-{i}").into_bytes(), 1, state(None), 50, 350);
        }
        assert!(c.len() <= CAPACITY, "{} entries", c.len());
        assert!(
            c.len() >= CAPACITY / 4,
            "not emptied needlessly: {}",
            c.len()
        );
        let last = format!("t-{}", n - 1);
        assert!(c.take(last.as_bytes(), 1, 51).is_some());
    }
}
