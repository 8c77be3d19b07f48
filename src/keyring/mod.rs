//! The signing key ring: which keys exist, which one signs per algorithm, and
//! what is published in the JWKS.
//!
//! The database holds the truth ([`crate::store::KeyRow`]); each process holds an
//! immutable [`Ring`] snapshot behind an `ArcSwap`, rebuilt when the ring's
//! version changes, so signing and JWKS requests never touch the database and
//! never wait on a lock. Lifecycle decisions (what should change, and when) live
//! in [`plan`] (pure) and [`lifecycle`] (the transactions); the background loops
//! that apply them and reload live in [`scheduler`]; key material and the KMS
//! seam in [`key`] and [`kms`]. This module never reads the wall clock (it asks
//! the injected [`Clock`](crate::clock::Clock)) and knows nothing of HTTP.

pub mod key;
pub mod kms;
pub mod lifecycle;
pub mod plan;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::clock::{SharedClock, UnixTime};
use crate::config::KeysConfig;
pub use crate::oauth::Alg;
use crate::store::{KeyRow, Store, StoreError};
use key::PublicKey;
use kms::{KeySigner, Kms, KmsError, StoredKey};

/// The KMS's view of a stored key row.
pub(crate) fn stored_key(row: &KeyRow, alg: Alg) -> StoredKey<'_> {
    StoredKey {
        kid: &row.kid,
        alg,
        provider: &row.kms_provider,
        key_ref: row.kms_key_ref.as_deref(),
        wrapped_private: row.wrapped_private.as_deref(),
        public_der: &row.public_der,
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
    /// This replica must not sign now (see [`Refusal`]); it reports unready.
    #[error("signing refused: {0}")]
    Refused(Refusal),
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("cannot serialise the token: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Why a replica refuses to sign although it holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The replaced key it falls back on would be unpublished before tokens
    /// signed now expire (the new active key could not be loaded in time).
    FallbackExpired,
    /// Its clock differs from the database's by more than the allowed skew.
    ClockSkew,
    /// Its ring has not been confirmed against the database for too long.
    StaleRing,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FallbackExpired => {
                "the new active key is not loaded and the previous key's tokens would outlive its publication"
            }
            Self::ClockSkew => "this replica's clock is off the database's by more than the allowed skew",
            Self::StaleRing => "the key ring could not be reloaded for too long",
        })
    }
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
    /// Per algorithm, the last second at which the signing key may sign: the
    /// fallback deadline when a replaced key stands in, otherwise unbounded.
    sign_until: [UnixTime; 2],
    /// The serialised JWKS, built once per snapshot.
    pub jwks_json: bytes::Bytes,
    /// Strong validator of `jwks_json`.
    pub jwks_etag: String,
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: Vec<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Ring {
    fn build(
        version: i64,
        keys: Vec<Arc<RingKey>>,
        sign_until: [UnixTime; 2],
    ) -> Result<Self, RingError> {
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
        let jwks_json = bytes::Bytes::from(serde_json::to_vec(&JwkSet {
            keys: keys.iter().map(|k| &k.public.jwk).collect(),
        })?);
        let digest = crate::secret::sha256(&jwks_json);
        let jwks_etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16]));
        Ok(Self {
            version,
            keys,
            by_kid,
            active,
            sign_until,
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

    /// The fallback deadline for `alg` (`UnixTime::MAX` when the active key
    /// itself signs).
    pub fn sign_until(&self, alg: Alg) -> UnixTime {
        self.sign_until[alg.index()]
    }
}

/// What a reload could not use: rows skipped because they cannot be parsed.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedRow {
    pub kid: String,
    pub reason: String,
}

/// The ring's health as readiness and `/healthz` report it.
#[derive(Debug, Clone, Serialize)]
pub struct RingHealth {
    /// False when this replica must not receive traffic (see `refusals`).
    pub ready: bool,
    /// Seconds since the snapshot was last confirmed against the database.
    pub seconds_since_reload: i64,
    /// Past this, the replica reports unready (`lead − jwks_max_age`).
    pub max_ring_age_secs: i64,
    /// This clock minus the database's at the last check, in seconds.
    pub clock_skew_secs: Option<i64>,
    pub max_clock_skew_secs: i64,
    /// Why signing is refused now, per algorithm.
    pub refusals: Vec<(&'static str, Refusal)>,
    /// Algorithms signing with a replaced key, and until when.
    pub fallbacks: Vec<(&'static str, UnixTime)>,
    pub skipped_rows: Vec<SkippedRow>,
}

/// Observations the reload loop makes, read by signing and health.
struct Watch {
    /// Monotonic reference for `confirmed_ms`. The ring's age is elapsed
    /// time, not a wall-clock reading: a clock that jumps (a manual clock in
    /// tests, a host clock stepped by NTP) must not make a fresh ring stale.
    started: std::time::Instant,
    /// Milliseconds after `started` at which the snapshot was last confirmed
    /// current against the database.
    confirmed_ms: AtomicU64,
    /// Local minus database clock at the last check; `i64::MIN`: unknown.
    skew: AtomicI64,
    skipped: Mutex<Vec<SkippedRow>>,
}

/// The process's handle on the key ring.
pub struct KeyRing {
    current: ArcSwap<Ring>,
    store: Store,
    kms: Kms,
    clock: SharedClock,
    cfg: KeysConfig,
    watch: Watch,
    /// Serialises reloads so two callers never unwrap the same key twice.
    reload_lock: tokio::sync::Mutex<()>,
    incomplete_loads: AtomicU64,
}

impl KeyRing {
    /// Load the ring as the database has it now.
    pub async fn load(
        store: Store,
        kms: Kms,
        clock: SharedClock,
        cfg: KeysConfig,
    ) -> Result<Self, RingError> {
        let ring = Self {
            current: ArcSwap::from_pointee(Ring::build(-1, Vec::new(), [UnixTime::MAX; 2])?),
            store,
            kms,
            clock,
            cfg,
            watch: Watch {
                started: std::time::Instant::now(),
                confirmed_ms: AtomicU64::new(0),
                skew: AtomicI64::new(i64::MIN),
                skipped: Mutex::new(Vec::new()),
            },
            reload_lock: tokio::sync::Mutex::new(()),
            incomplete_loads: AtomicU64::new(0),
        };
        ring.reload().await?;
        ring.check_clock().await?;
        Ok(ring)
    }

    /// Compare this process's clock with the database's and remember the
    /// difference; signing stops while it exceeds the allowed skew.
    pub async fn check_clock(&self) -> Result<i64, RingError> {
        let database = self.store.database_now().await?;
        let skew = self.clock.now().saturating_sub(database);
        self.watch.skew.store(skew, Ordering::Relaxed);
        if !plan::clock_skew_ok(self.clock.now(), database, &self.cfg) {
            tracing::error!(
                alert = "clock_skew",
                skew_secs = skew,
                max_skew_secs = self.cfg.max_clock_skew.get(),
                "this replica's clock differs from the database's; it stops signing and reports unready"
            );
        }
        Ok(skew)
    }

    fn confirmed(&self) {
        let ms = u64::try_from(self.watch.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.watch.confirmed_ms.store(ms, Ordering::Relaxed);
    }

    /// Whole seconds since the snapshot was last confirmed current.
    fn ring_age(&self) -> i64 {
        let now = u64::try_from(self.watch.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let age = now.saturating_sub(self.watch.confirmed_ms.load(Ordering::Relaxed)) / 1000;
        i64::try_from(age).unwrap_or(i64::MAX)
    }

    /// Why signing with `alg` is refused at `now`, if it is.
    fn refusal(&self, ring: &Ring, alg: Alg, now: UnixTime) -> Option<Refusal> {
        let skew = self.watch.skew.load(Ordering::Relaxed);
        if !self.cfg.skip_clock_check
            && (skew == i64::MIN || skew.unsigned_abs() > self.cfg.max_clock_skew.as_u64())
        {
            return Some(Refusal::ClockSkew);
        }
        if self.ring_age() > self.cfg.max_sign_staleness().get() {
            return Some(Refusal::StaleRing);
        }
        if now > ring.sign_until(alg) {
            return Some(Refusal::FallbackExpired);
        }
        None
    }

    /// The clock skew this replica may have against the database; token
    /// minting backdates `nbf` by it so that no verifier, whichever replica's
    /// clock it trusts, sees a token that is not yet valid.
    pub fn max_clock_skew(&self) -> i64 {
        self.cfg.max_clock_skew.get()
    }

    /// Readiness and health of this replica's ring at the clock's `now`.
    pub fn health(&self) -> RingHealth {
        let now = self.clock.now();
        let ring = self.current();
        let since = self.ring_age();
        let max_age = self.cfg.max_ring_age().get();
        let refusals: Vec<_> = Alg::ALL
            .iter()
            .filter_map(|a| self.refusal(&ring, *a, now).map(|r| (a.as_str(), r)))
            .collect();
        let fallbacks = Alg::ALL
            .iter()
            .filter(|a| ring.sign_until(**a) != UnixTime::MAX)
            .map(|a| (a.as_str(), ring.sign_until(*a)))
            .collect();
        let signing = Alg::ALL
            .iter()
            .all(|a| ring.active(*a).is_some_and(|k| k.signer.is_some()));
        let skew = self.watch.skew.load(Ordering::Relaxed);
        RingHealth {
            ready: signing && refusals.is_empty() && since <= max_age,
            seconds_since_reload: since,
            max_ring_age_secs: max_age,
            clock_skew_secs: (skew != i64::MIN).then_some(skew),
            max_clock_skew_secs: self.cfg.max_clock_skew.get(),
            refusals,
            fallbacks,
            skipped_rows: self
                .watch
                .skipped
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        }
    }

    pub fn current(&self) -> Arc<Ring> {
        self.current.load_full()
    }

    /// Reload if the database's ring version moved; returns whether it did.
    pub async fn reload_if_changed(&self) -> Result<bool, RingError> {
        let version = self.store.ring_version().await?;
        if version == self.current.load().version {
            self.confirmed();
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Rebuild the snapshot from the database, reusing already-loaded keys.
    ///
    /// A key whose private half cannot be loaded (KMS unreachable) is published
    /// without a signer and the snapshot keeps the old version number, so the
    /// next poll retries; the previous active key keeps signing meanwhile, but
    /// only until its fallback deadline ([`plan::fallback_sign_until`]). A row
    /// that cannot be parsed is skipped and reported, not fatal: one bad row
    /// must not freeze every other key's changes.
    pub async fn reload(&self) -> Result<(), RingError> {
        let _guard = self.reload_lock.lock().await;
        let version = self.store.ring_version().await?;
        let rows = self.store.list_keys(false).await?;
        let old = self.current.load_full();
        let mut keys = Vec::with_capacity(rows.len());
        let mut skipped = Vec::new();
        let mut complete = true;
        for row in rows {
            let previous = old.key(&row.kid);
            let parsed = Alg::parse(&row.alg)
                .ok_or_else(|| "unknown alg".to_string())
                .and_then(|alg| {
                    let state =
                        KeyState::parse(&row.state).ok_or_else(|| "unknown state".to_string())?;
                    let public = match previous {
                        Some(p) => p.public.clone(),
                        None => Arc::new(
                            PublicKey::from_spki_der(alg, &row.public_der)
                                .map_err(|e| e.to_string())?,
                        ),
                    };
                    if public.kid != row.kid {
                        return Err("kid is not the key's thumbprint".to_string());
                    }
                    Ok((alg, state, public))
                });
            let (alg, state, public) = match parsed {
                Ok(p) => p,
                Err(reason) => {
                    tracing::error!(alert = "key_row_skipped", kid = %row.kid, reason, "skipping a key row that cannot be used");
                    skipped.push(SkippedRow {
                        kid: row.kid.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let wants_signer = matches!(state, KeyState::Pending | KeyState::Active);
            let signer = match (wants_signer, previous.and_then(|p| p.signer.clone())) {
                (false, _) => None,
                (true, Some(s)) => Some(s),
                (true, None) => match self.kms.signer_for(stored_key(&row, alg)).await {
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
        // signing at once: the key that signed until now is still published
        // (it just turned retiring), so it keeps signing until the new one
        // loads, but never past the deadline after which its tokens would
        // outlive its publication.
        let mut sign_until = [UnixTime::MAX; 2];
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
                let until = plan::fallback_sign_until(slot.row.retire_at, &self.cfg);
                sign_until[alg.index()] = until;
                tracing::error!(
                    alert = "signing_with_previous_key",
                    alg = alg.as_str(),
                    kid = fallback.kid(),
                    sign_until = until,
                    "the active key cannot sign here yet; the previous key keeps signing until its deadline"
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
        if !complete || !skipped.is_empty() {
            self.incomplete_loads.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut s) = self.watch.skipped.lock() {
            *s = skipped;
        }
        let snapshot_version = if complete { version } else { old.version };
        self.current
            .store(Arc::new(Ring::build(snapshot_version, keys, sign_until)?));
        // The published set now matches the database (signers may lag).
        self.confirmed();
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
        if let Some(r) = self.refusal(&ring, alg, self.clock.now()) {
            return Err(RingError::Refused(r));
        }
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
