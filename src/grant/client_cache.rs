//! A short-lived in-memory copy of client registrations, so that a token
//! request does not read the client's row every time (it was most of the
//! non-cryptographic cost of `client_credentials`).
//!
//! Freshness: an entry is used for at most `clients_cache_millis` (default
//! 1 s; 0 turns the cache off). A client registered or changed by the CLI or
//! another replica is therefore honoured within that time; unknown client ids
//! are never cached, so a new client works at once. The cache is bounded: when
//! full it is emptied rather than grown.
//!
//! Entries are shared, not copied: a hit hands out the row and its parsed
//! scopes behind `Arc`s, so a token request allocates nothing for its client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::oauth::Scope;
use crate::store::{ClientRow, Store, StoreError};

/// Most entries kept before the cache is emptied.
const MAX_ENTRIES: usize = 10_000;

pub struct ClientCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Registration)>>,
}

/// A client's row and the scopes it may be granted, parsed once per read of
/// the row.
#[derive(Clone)]
pub struct Registration {
    pub row: Arc<ClientRow>,
    /// Every scope the client may request.
    pub allowed_scopes: Arc<Scope>,
    /// Those it may be granted acting for itself (client_credentials): the
    /// allowed scopes without any user scope.
    pub own_scopes: Arc<Scope>,
}

impl Registration {
    fn new(row: ClientRow) -> Self {
        let allowed = Scope::from_stored(&row.scopes);
        let own = allowed.filtered(|t| !super::USER_SCOPES.contains(&t));
        Self {
            row: Arc::new(row),
            allowed_scopes: Arc::new(allowed),
            own_scopes: Arc::new(own),
        }
    }
}

impl ClientCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(
        &self,
        store: &Store,
        client_id: &str,
    ) -> Result<Option<Registration>, StoreError> {
        if !self.ttl.is_zero()
            && let Ok(map) = self.entries.lock()
            && let Some((at, reg)) = map.get(client_id)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(reg.clone()));
        }
        let Some(reg) = store.find_client(client_id).await?.map(Registration::new) else {
            return Ok(None);
        };
        if !self.ttl.is_zero()
            && let Ok(mut map) = self.entries.lock()
        {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(client_id.to_string(), (Instant::now(), reg.clone()));
        }
        Ok(Some(reg))
    }
}
