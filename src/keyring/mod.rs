//! The signing key ring: which keys exist, which one signs per algorithm, and
//! what is published in the JWKS.
//!
//! The database holds the truth ([`crate::store::KeyRow`]); each process holds an
//! immutable [`Ring`] snapshot behind an `ArcSwap`, rebuilt when the ring's
//! version changes, so signing and JWKS requests never touch the database and
//! never wait on a lock. Lifecycle decisions (what should change, and when) live
//! in [`lifecycle`]; the background loop that applies them and reloads lives in
//! [`scheduler`]; key material and the KMS seam in [`key`] and [`kms`].

pub mod key;
pub mod kms;
pub mod lifecycle;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::store::{KeyRow, Store, StoreError};
use key::PublicKey;
use kms::{KeySigner, Kms, KmsError};

/// The signing algorithms latchkey issues tokens with (RFC 7518).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub const ALL: [Alg; 2] = [Alg::Rs256, Alg::Es256];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    /// Exact JWA names only: an allow-list, not a guess.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Rs256 => 0,
            Self::Es256 => 1,
        }
    }
}

/// Lifecycle states, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing.
    Pending,
    /// Signing; exactly one per algorithm.
    Active,
    /// Published, no longer signing; kept until every token it signed expired.
    Retiring,
    /// Unpublished; private material destroyed.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Retiring, Self::Retired]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("stored key {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("no active {0} signing key is loaded")]
    NoActiveKey(&'static str),
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("cannot serialise the token: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One published key in memory.
pub struct RingKey {
    pub row: KeyRow,
    pub alg: Alg,
    pub state: KeyState,
    pub public: Arc<PublicKey>,
    /// Present for pending and active keys whose private half could be loaded.
    pub signer: Option<Arc<KeySigner>>,
}

impl RingKey {
    pub fn kid(&self) -> &str {
        &self.public.kid
    }
}

/// An immutable view of the ring, swapped whole on every change.
pub struct Ring {
    pub version: i64,
    keys: Vec<Arc<RingKey>>,
    by_kid: HashMap<String, Arc<RingKey>>,
    active: [Option<Arc<RingKey>>; 2],
    /// The serialised JWKS, built once per snapshot.
    pub jwks_json: axum::body::Bytes,
    /// Strong validator of `jwks_json`.
    pub jwks_etag: String,
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: Vec<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Ring {
    fn build(version: i64, keys: Vec<Arc<RingKey>>) -> Result<Self, RingError> {
        let mut active: [Option<Arc<RingKey>>; 2] = [None, None];
        let mut by_kid = HashMap::with_capacity(keys.len());
        for k in &keys {
            // The signing key per algorithm: the active key when it can sign;
            // otherwise a key that still holds a signer (the previous active key,
            // kept by `KeyRing::reload` while the new one cannot be loaded).
            let slot = &mut active[k.alg.index()];
            let better = match slot {
                None => k.signer.is_some() || k.state == KeyState::Active,
                Some(cur) => {
                    k.signer.is_some() && (cur.signer.is_none() || k.state == KeyState::Active)
                }
            };
            if better && k.state != KeyState::Pending {
                *slot = Some(k.clone());
            }
            by_kid.insert(k.kid().to_string(), k.clone());
        }
        let jwks_json = axum::body::Bytes::from(serde_json::to_vec(&JwkSet {
            keys: keys.iter().map(|k| &k.public.jwk).collect(),
        })?);
        let digest = crate::secret::sha256(&jwks_json);
        let jwks_etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16]));
        Ok(Self {
            version,
            keys,
            by_kid,
            active,
            jwks_json,
            jwks_etag,
        })
    }

    /// Every published key (pending, active, retiring), oldest first.
    pub fn keys(&self) -> &[Arc<RingKey>] {
        &self.keys
    }

    /// A published key by kid.
    pub fn key(&self, kid: &str) -> Option<&Arc<RingKey>> {
        self.by_kid.get(kid)
    }

    pub fn active(&self, alg: Alg) -> Option<&Arc<RingKey>> {
        self.active[alg.index()].as_ref()
    }
}

/// The process's handle on the key ring.
pub struct KeyRing {
    current: ArcSwap<Ring>,
    store: Store,
    kms: Kms,
    /// Serialises reloads so two callers never unwrap the same key twice.
    reload_lock: tokio::sync::Mutex<()>,
    incomplete_loads: AtomicU64,
}

impl KeyRing {
    /// Load the ring as the database has it now.
    pub async fn load(store: Store, kms: Kms) -> Result<Self, RingError> {
        let ring = Self {
            current: ArcSwap::from_pointee(Ring::build(-1, Vec::new())?),
            store,
            kms,
            reload_lock: tokio::sync::Mutex::new(()),
            incomplete_loads: AtomicU64::new(0),
        };
        ring.reload().await?;
        Ok(ring)
    }

    pub fn current(&self) -> Arc<Ring> {
        self.current.load_full()
    }

    /// Reload if the database's ring version moved; returns whether it did.
    pub async fn reload_if_changed(&self) -> Result<bool, RingError> {
        let version = self.store.ring_version().await?;
        if version == self.current.load().version {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Rebuild the snapshot from the database, reusing already-loaded keys.
    ///
    /// A key whose private half cannot be loaded (KMS unreachable) is published
    /// without a signer and the snapshot keeps the old version number, so the
    /// next poll retries; the previous active key keeps signing meanwhile.
    pub async fn reload(&self) -> Result<(), RingError> {
        let _guard = self.reload_lock.lock().await;
        let version = self.store.ring_version().await?;
        let rows = self.store.list_keys(false).await?;
        let old = self.current.load_full();
        let mut keys = Vec::with_capacity(rows.len());
        let mut complete = true;
        for row in rows {
            let alg = Alg::parse(&row.alg)
                .ok_or_else(|| RingError::Corrupt(row.kid.clone(), "unknown alg".into()))?;
            let state = KeyState::parse(&row.state)
                .ok_or_else(|| RingError::Corrupt(row.kid.clone(), "unknown state".into()))?;
            let previous = old.key(&row.kid);
            let public = match previous {
                Some(p) => p.public.clone(),
                None => Arc::new(
                    PublicKey::from_spki_der(alg, &row.public_der)
                        .map_err(|e| RingError::Corrupt(row.kid.clone(), e.to_string()))?,
                ),
            };
            if public.kid != row.kid {
                return Err(RingError::Corrupt(
                    row.kid.clone(),
                    "kid is not the key's thumbprint".into(),
                ));
            }
            let wants_signer = matches!(state, KeyState::Pending | KeyState::Active);
            let signer = match (wants_signer, previous.and_then(|p| p.signer.clone())) {
                (false, _) => None,
                (true, Some(s)) => Some(s),
                (true, None) => match self.kms.signer_for(&row, alg).await {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        complete = false;
                        tracing::error!(kid = %row.kid, alg = alg.as_str(), error = %e, "cannot load signing key");
                        None
                    }
                },
            };
            keys.push(Arc::new(RingKey {
                row,
                alg,
                state,
                public,
                signer,
            }));
        }
        // An active key whose private half could not be loaded must not stop
        // signing: the key that signed until now is still published (it just
        // turned retiring), so it keeps signing until the new one loads.
        for alg in Alg::ALL {
            let can_sign = keys
                .iter()
                .any(|k| k.alg == alg && k.state == KeyState::Active && k.signer.is_some());
            if can_sign {
                continue;
            }
            let Some(fallback) = old.active(alg).filter(|k| k.signer.is_some()) else {
                continue;
            };
            if let Some(slot) = keys.iter_mut().find(|k| k.kid() == fallback.kid()) {
                tracing::error!(
                    alg = alg.as_str(),
                    kid = fallback.kid(),
                    "the active key cannot sign here yet; the previous key keeps signing"
                );
                *slot = Arc::new(RingKey {
                    row: slot.row.clone(),
                    alg,
                    state: slot.state,
                    public: slot.public.clone(),
                    signer: fallback.signer.clone(),
                });
            }
        }
        if !complete {
            self.incomplete_loads.fetch_add(1, Ordering::Relaxed);
        }
        let snapshot_version = if complete { version } else { old.version };
        self.current
            .store(Arc::new(Ring::build(snapshot_version, keys)?));
        Ok(())
    }

    /// Reloads that could not load every key's private half (KMS trouble).
    pub fn incomplete_loads(&self) -> u64 {
        self.incomplete_loads.load(Ordering::Relaxed)
    }

    /// Sign a JWT with the active key for `alg`: returns the compact JWS.
    ///
    /// The header is exactly `{"alg","kid","typ"}`; nothing from the caller
    /// reaches it except `typ`, so no header injection is possible.
    pub async fn sign_jwt<C: Serialize>(
        &self,
        alg: Alg,
        typ: &str,
        claims: &C,
    ) -> Result<String, RingError> {
        let ring = self.current();
        let key = ring
            .active(alg)
            .ok_or(RingError::NoActiveKey(alg.as_str()))?;
        let signer = key
            .signer
            .as_ref()
            .ok_or(RingError::NoActiveKey(alg.as_str()))?;
        let header = serde_json::json!({ "alg": alg.as_str(), "kid": key.kid(), "typ": typ });
        let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut out);
        let signature = signer.sign(out.as_bytes()).await?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }
}
