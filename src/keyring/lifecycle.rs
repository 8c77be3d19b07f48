//! The applying half of the key lifecycle: the transactions that carry out
//! [`super::plan`]'s steps and the operator's actions, with one event recorder.
//!
//! Applying the plan ([`Lifecycle::tick`]) is a check-and-swap: key material is
//! made by the KMS first (outside any lock, since it may be slow or fail), then
//! a ring transaction locks the ring, reads `now` (and compares it with the
//! database's clock), plans again from what is stored *now* (another replica
//! may have acted meanwhile) and applies only what is still due. One
//! transaction per pass, so a crash leaves either the old ring or the new one.
//! This module decides nothing the plan does not: every rule lives in `plan.rs`.

use std::collections::HashMap;

use serde::Serialize;

use super::kms::{Kms, NewMaterial};
use super::plan::{self, RetireRefusal, Step, rows_for};
use super::{Alg, KeyState, RingError, stored_key};
use crate::audit::{Event, key_event};
use crate::clock::{SharedClock, UnixTime};
use crate::config::KeysConfig;
use crate::store::{KeyRow, NewKeyRow, RingTx, Store};

pub use super::plan::{Upcoming, next_fire, upcoming};

/// What an operation changed, for output and events.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub action: &'static str,
    pub kid: String,
    pub alg: &'static str,
    pub at: UnixTime,
    pub detail: String,
}

/// What one scheduler pass did and what it could not do.
#[derive(Debug, Default)]
pub struct TickReport {
    pub changes: Vec<Change>,
    /// Algorithms whose new key could not be made or activated, with why.
    pub failures: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("no key with kid {0}")]
    UnknownKid(String),
    #[error("key {0} is already retired")]
    AlreadyRetired(String),
    #[error(
        "key {0} is the active signing key; rotate first, or retire it with --emergency if it is compromised"
    )]
    ActiveNeedsEmergency(String),
    #[error(
        "key {kid} is retiring and tokens it signed may be valid until {retire_at}; it is unpublished then by itself, or now with --emergency if it is compromised"
    )]
    RetiringNeedsEmergency { kid: String, retire_at: UnixTime },
    #[error(
        "the JWKS already holds {published} keys (keys.max_published_keys = {max}); retire a key first"
    )]
    TooManyKeys { published: usize, max: usize },
    #[error(
        "this process's clock ({local}) differs from the database's ({database}) by more than keys.max_clock_skew_secs; no ring change is made from here"
    )]
    ClockSkew { local: UnixTime, database: UnixTime },
    #[error("key {0} changed state during the operation; retry")]
    Conflict(String),
}

impl From<crate::store::StoreError> for LifecycleError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Ring(RingError::Store(e))
    }
}

impl From<super::kms::KmsError> for LifecycleError {
    fn from(e: super::kms::KmsError) -> Self {
        Self::Ring(RingError::Kms(e))
    }
}

/// The one place ring changes are recorded: an event row inside the ring
/// transaction (so the trail and the ring commit together), a log line, and
/// the [`Change`] returned to the caller. The action names (`key.activate`,
/// `key.retire`, ...) are the event log's vocabulary.
struct Recorder<'a> {
    actor: &'a str,
    now: UnixTime,
    changes: Vec<Change>,
}

impl<'a> Recorder<'a> {
    fn new(actor: &'a str, now: UnixTime) -> Self {
        Self {
            actor,
            now,
            changes: Vec::new(),
        }
    }

    async fn record(
        &mut self,
        tx: &mut RingTx,
        action: &'static str,
        kid: &str,
        alg: Alg,
        detail: &str,
    ) -> Result<(), LifecycleError> {
        // A typed audit event (`key_event` maps the action name onto its
        // type), written in the ring transaction.
        let event = Event::new(key_event(action), self.now)
            .actor(self.actor)
            .subject(kid)
            .message(format!("{} {detail}", alg.as_str()))
            .detail(serde_json::json!({ "alg": alg.as_str(), "note": detail }));
        tx.append_event(&event).await?;
        tracing::info!(
            action,
            kid,
            alg = alg.as_str(),
            actor = self.actor,
            detail,
            "key ring change"
        );
        self.changes.push(Change {
            action,
            kid: kid.to_string(),
            alg: alg.as_str(),
            at: self.now,
            detail: detail.to_string(),
        });
        Ok(())
    }
}

/// Applies lifecycle steps and operator actions to the stored ring.
#[derive(Clone)]
pub struct Lifecycle {
    store: Store,
    kms: Kms,
    clock: SharedClock,
    cfg: KeysConfig,
}

/// Result of `keys rotate`.
#[derive(Debug, Clone, Serialize)]
pub struct RotateOutcome {
    pub kid: String,
    pub alg: &'static str,
    pub state: &'static str,
    /// When the new key signs (now for `--now`).
    pub activate_at: UnixTime,
    /// The key it replaces, for `--now`.
    pub replaced: Option<String>,
    /// True when a pending key already existed and no new one was made.
    pub already_pending: bool,
}

/// Result of `keys retire`.
#[derive(Debug, Clone, Serialize)]
pub struct RetireOutcome {
    pub kid: String,
    pub alg: &'static str,
    pub previous_state: &'static str,
    pub emergency: bool,
    /// The key made to replace a retired active key.
    pub replacement: Option<String>,
    /// Set when tokens signed by the key may still be unexpired.
    pub warning: Option<String>,
}

fn parse_row(row: &KeyRow) -> Result<(Alg, KeyState), RingError> {
    let alg = Alg::parse(&row.alg)
        .ok_or_else(|| RingError::Corrupt(row.kid.clone(), "unknown alg".into()))?;
    let state = KeyState::parse(&row.state)
        .ok_or_else(|| RingError::Corrupt(row.kid.clone(), "unknown state".into()))?;
    Ok((alg, state))
}

impl Lifecycle {
    pub fn new(store: Store, kms: Kms, clock: SharedClock, cfg: KeysConfig) -> Self {
        Self {
            store,
            kms,
            clock,
            cfg,
        }
    }

    async fn make_key(&self, alg: Alg) -> Result<NewMaterial, LifecycleError> {
        Ok(self
            .kms
            .create_key(alg, self.cfg.policy(alg).rsa_bits)
            .await?)
    }

    /// Lock the ring and read `now` inside the lock, refusing to go on when
    /// this process's clock is off the database's by more than the allowed
    /// skew: every replica then transitions on (nearly) one clock.
    async fn begin(&self) -> Result<(RingTx, UnixTime), LifecycleError> {
        let mut tx = self.store.begin_ring().await?;
        let now = self.clock.now();
        let database = tx.database_now().await?;
        if !plan::clock_skew_ok(now, database, &self.cfg) {
            return Err(LifecycleError::ClockSkew {
                local: now,
                database,
            });
        }
        Ok((tx, now))
    }

    fn new_row(
        &self,
        m: &NewMaterial,
        alg: Alg,
        state: KeyState,
        now: UnixTime,
        activate_at: UnixTime,
    ) -> NewKeyRow {
        NewKeyRow {
            kid: m.public.kid.clone(),
            alg: alg.as_str().to_string(),
            state: state.as_str().to_string(),
            public_der: m.public_der.clone(),
            wrapped_private: m.wrapped_private.clone(),
            kms_provider: self.kms.provider().to_string(),
            kms_key_ref: m.kms_key_ref.clone(),
            created_at: now,
            activate_at,
        }
    }

    /// Give back KMS resources of material that was made but not stored.
    async fn discard(&self, m: NewMaterial) {
        if let Err(e) = self
            .kms
            .destroy(self.kms.provider(), m.kms_key_ref.as_deref())
            .await
        {
            tracing::warn!(kid = %m.public.kid, error = %e, "could not release unused KMS key");
        }
    }

    async fn destroy_retired(&self, row: &KeyRow) {
        if let Err(e) = self
            .kms
            .destroy(&row.kms_provider, row.kms_key_ref.as_deref())
            .await
        {
            tracing::warn!(kid = %row.kid, error = %e, "could not destroy retired key in the KMS");
        }
    }

    /// Apply every due step. Steps that need a new key are skipped (and
    /// reported) when the KMS cannot make one; the others still apply.
    ///
    /// `loaded` names the keys whose private half this process already holds in
    /// memory (its ring's signers); any other key must load through the KMS
    /// before it may activate.
    pub async fn tick(&self, actor: &str, loaded: &[String]) -> Result<TickReport, LifecycleError> {
        let rows = self.store.list_keys(false).await?;
        let steps = plan::plan(self.clock.now(), &rows, &self.cfg);
        let mut report = TickReport::default();
        if steps.is_empty() {
            return Ok(report);
        }
        // Material first, outside the lock: a KMS failure here leaves the ring
        // untouched for that algorithm and its current active key signing.
        let mut material: HashMap<Alg, NewMaterial> = HashMap::new();
        for step in &steps {
            match step {
                Step::Bootstrap { alg } | Step::Prepublish { alg, .. } => {
                    match self.make_key(*alg).await {
                        Ok(m) => {
                            material.insert(*alg, m);
                        }
                        Err(e) => report.failures.push((alg.as_str(), e.to_string())),
                    }
                }
                Step::Held { alg, published } => report.failures.push((
                    alg.as_str(),
                    format!(
                        "rotation held: the JWKS holds {published} keys, keys.max_published_keys = {}",
                        self.cfg.max_published_keys
                    ),
                )),
                _ => {}
            }
        }
        // A pending key activates only if its private half can be loaded right
        // now; otherwise it stays pending (still published) and the current
        // key keeps signing, instead of the ring switching to a key nobody can use.
        let mut not_ready = Vec::new();
        for step in &steps {
            if let Step::Activate { alg, kid, .. } = step
                && !loaded.contains(kid)
                && let Some(row) = rows.iter().find(|r| &r.kid == kid)
                && let Err(e) = self.kms.signer_for(stored_key(row, *alg)).await
            {
                report
                    .failures
                    .push((alg.as_str(), format!("cannot activate {kid}: {e}")));
                not_ready.push(kid.clone());
            }
        }
        let (mut tx, now) = match self.begin().await {
            Ok(t) => t,
            Err(e) => {
                for m in material.into_values() {
                    self.discard(m).await;
                }
                return Err(e);
            }
        };
        let rows = tx.list_keys(false).await?;
        let steps = plan::plan(now, &rows, &self.cfg);
        let mut rec = Recorder::new(actor, now);
        let mut retired = Vec::new();
        for step in steps {
            match step {
                Step::Bootstrap { alg } => {
                    if let Some(m) = material.remove(&alg) {
                        tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                            .await?;
                        rec.record(
                            &mut tx,
                            "key.bootstrap",
                            &m.public.kid,
                            alg,
                            "first active key",
                        )
                        .await?;
                    }
                }
                Step::Prepublish { alg, activate_at } => {
                    if let Some(m) = material.remove(&alg) {
                        tx.insert_key(&self.new_row(&m, alg, KeyState::Pending, now, activate_at))
                            .await?;
                        let detail = format!("scheduled rotation; signs from {activate_at}");
                        rec.record(&mut tx, "key.prepublish", &m.public.kid, alg, &detail)
                            .await?;
                    }
                }
                Step::Activate { kid, .. } if not_ready.contains(&kid) => {}
                Step::Activate { alg, kid, previous } => {
                    if let Some(prev) = &previous {
                        let retire_at = now.saturating_add(self.cfg.policy(alg).retention.get());
                        tx.start_retiring(prev, now, retire_at).await?;
                        let detail = format!("replaced by {kid}; published until {retire_at}");
                        rec.record(&mut tx, "key.retiring", prev, alg, &detail)
                            .await?;
                    }
                    tx.activate(&kid, now).await?;
                    rec.record(&mut tx, "key.activate", &kid, alg, "signing")
                        .await?;
                }
                Step::Retire { kid } => {
                    if let Some(row) = rows.iter().find(|r| r.kid == kid)
                        && let Ok((alg, _)) = parse_row(row)
                    {
                        tx.retire(&kid, now, "retention elapsed").await?;
                        rec.record(&mut tx, "key.retire", &kid, alg, "retention elapsed")
                            .await?;
                        retired.push(row.clone());
                    }
                }
                // Reported above, from the plan made before the lock.
                Step::Held { .. } => {}
            }
        }
        tx.commit().await?;
        report.changes = rec.changes;
        for row in retired {
            self.destroy_retired(&row).await;
        }
        // Another replica got there first: our material is not needed.
        for m in material.into_values() {
            self.discard(m).await;
        }
        Ok(report)
    }

    /// Manual rotation. Without `immediate`, a pending key is published now and
    /// signs once the pre-publication lead has passed (verifiers are never
    /// surprised). With `immediate`, the new key signs at once and the old one
    /// turns retiring: verifiers with a cached JWKS will meet an unknown kid
    /// until they refetch.
    pub async fn rotate(
        &self,
        alg: Alg,
        immediate: bool,
        actor: &str,
    ) -> Result<RotateOutcome, LifecycleError> {
        let pending_outcome = |p: &KeyRow| RotateOutcome {
            kid: p.kid.clone(),
            alg: alg.as_str(),
            state: "pending",
            activate_at: p.activate_at,
            replaced: None,
            already_pending: true,
        };
        let rows = self.store.list_keys(false).await?;
        if !immediate && let Some(p) = rows_for(&rows, alg, KeyState::Pending).first() {
            return Ok(pending_outcome(p));
        }
        if rows.len() >= self.cfg.max_published_keys {
            return Err(LifecycleError::TooManyKeys {
                published: rows.len(),
                max: self.cfg.max_published_keys,
            });
        }
        let m = self.make_key(alg).await?;
        let (mut tx, now) = match self.begin().await {
            Ok(t) => t,
            Err(e) => {
                self.discard(m).await;
                return Err(e);
            }
        };
        let rows = tx.list_keys(false).await?;
        let active = rows_for(&rows, alg, KeyState::Active)
            .first()
            .map(|r| r.kid.clone());
        let pending = rows_for(&rows, alg, KeyState::Pending)
            .first()
            .map(|p| pending_outcome(p));
        if !immediate && let Some(out) = pending {
            drop(tx);
            self.discard(m).await;
            return Ok(out);
        }
        if rows.len() >= self.cfg.max_published_keys {
            drop(tx);
            self.discard(m).await;
            return Err(LifecycleError::TooManyKeys {
                published: rows.len(),
                max: self.cfg.max_published_keys,
            });
        }
        let mut rec = Recorder::new(actor, now);
        let kid = m.public.kid.clone();
        let outcome = if immediate {
            if let Some(prev) = &active {
                let retire_at = now.saturating_add(self.cfg.policy(alg).retention.get());
                tx.start_retiring(prev, now, retire_at).await?;
                let detail = format!("immediate rotation to {kid}; published until {retire_at}");
                rec.record(&mut tx, "key.retiring", prev, alg, &detail)
                    .await?;
            }
            tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                .await?;
            rec.record(
                &mut tx,
                "key.rotate_now",
                &kid,
                alg,
                "signing immediately, not pre-published",
            )
            .await?;
            RotateOutcome {
                kid,
                alg: alg.as_str(),
                state: "active",
                activate_at: now,
                replaced: active,
                already_pending: false,
            }
        } else {
            let activate_at = now.saturating_add(self.cfg.policy(alg).lead.get());
            tx.insert_key(&self.new_row(&m, alg, KeyState::Pending, now, activate_at))
                .await?;
            let detail = format!("manual rotation; signs from {activate_at}");
            rec.record(&mut tx, "key.rotate", &kid, alg, &detail)
                .await?;
            RotateOutcome {
                kid,
                alg: alg.as_str(),
                state: "pending",
                activate_at,
                replaced: None,
                already_pending: false,
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Retire a key now. The active key, and a retiring key whose tokens may
    /// still be valid, need `emergency` (compromise): the key stops signing and
    /// is unpublished at once, and a fresh key takes over an active key's place.
    pub async fn retire(
        &self,
        kid: &str,
        emergency: bool,
        actor: &str,
    ) -> Result<RetireOutcome, LifecycleError> {
        let refusal = |r: RetireRefusal| match r {
            RetireRefusal::AlreadyRetired => LifecycleError::AlreadyRetired(kid.to_string()),
            RetireRefusal::ActiveNeedsEmergency => {
                LifecycleError::ActiveNeedsEmergency(kid.to_string())
            }
            RetireRefusal::RetiringNeedsEmergency { retire_at } => {
                LifecycleError::RetiringNeedsEmergency {
                    kid: kid.to_string(),
                    retire_at,
                }
            }
        };
        let rows = self.store.list_keys(true).await?;
        let row = rows
            .iter()
            .find(|r| r.kid == kid)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_string()))?;
        let (alg, state) = parse_row(row)?;
        plan::check_retire(self.clock.now(), state, row.retire_at, emergency).map_err(refusal)?;
        // The replacement is made before the lock, like every key.
        let replacement = if state == KeyState::Active {
            Some(self.make_key(alg).await?)
        } else {
            None
        };
        let give_back = async |replacement: Option<NewMaterial>| {
            if let Some(m) = replacement {
                self.discard(m).await;
            }
        };
        let (mut tx, now) = match self.begin().await {
            Ok(t) => t,
            Err(e) => {
                give_back(replacement).await;
                return Err(e);
            }
        };
        let current = tx.list_keys(true).await?.into_iter().find(|r| r.kid == kid);
        let Some(current) = current.filter(|c| c.state == row.state) else {
            // Changed under us (another replica or operator); let the caller retry.
            drop(tx);
            give_back(replacement).await;
            return Err(LifecycleError::Conflict(kid.to_string()));
        };
        // Re-checked with the time read inside the lock.
        if let Err(r) = plan::check_retire(now, state, current.retire_at, emergency) {
            drop(tx);
            give_back(replacement).await;
            return Err(refusal(r));
        }
        let reason = if emergency {
            "emergency retirement"
        } else {
            "retired by operator"
        };
        let mut rec = Recorder::new(actor, now);
        tx.retire(kid, now, reason).await?;
        let action = if emergency {
            "key.retire_emergency"
        } else {
            "key.retire"
        };
        rec.record(&mut tx, action, kid, alg, reason).await?;
        let mut replacement_kid = None;
        if let Some(m) = replacement {
            tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                .await?;
            rec.record(
                &mut tx,
                "key.rotate_now",
                &m.public.kid,
                alg,
                &format!("replaces {kid}"),
            )
            .await?;
            replacement_kid = Some(m.public.kid.clone());
        }
        tx.commit().await?;
        self.destroy_retired(row).await;
        let warning = match (state, row.retire_at) {
            (KeyState::Active, _) => Some(
                "the key stopped signing and was unpublished: tokens it signed now fail verification, and verifiers that cached the JWKS keep trusting it until their cache expires".to_string(),
            ),
            (KeyState::Retiring, Some(t)) if t > now => Some(format!(
                "tokens signed by this key may still be unexpired (retention ran until {t}); they now fail verification"
            )),
            _ => None,
        };
        if let Some(w) = &warning {
            tracing::warn!(kid, "{w}");
        }
        Ok(RetireOutcome {
            kid: kid.to_string(),
            alg: alg.as_str(),
            previous_state: state.as_str(),
            emergency,
            replacement: replacement_kid,
            warning,
        })
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn config(&self) -> &KeysConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// A key as `keys list` and the admin API show it (wire names).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: UnixTime,
    pub activate_at: UnixTime,
    pub activated_at: Option<UnixTime>,
    pub retiring_at: Option<UnixTime>,
    pub retire_at: Option<UnixTime>,
    pub retired_at: Option<UnixTime>,
    pub retired_reason: Option<String>,
    pub kms_provider: String,
    pub published: bool,
}

impl From<&KeyRow> for KeyInfo {
    fn from(r: &KeyRow) -> Self {
        Self {
            kid: r.kid.clone(),
            alg: r.alg.clone(),
            state: r.state.clone(),
            created_at: r.created_at,
            activate_at: r.activate_at,
            activated_at: r.activated_at,
            retiring_at: r.retiring_at,
            retire_at: r.retire_at,
            retired_at: r.retired_at,
            retired_reason: r.retired_reason.clone(),
            kms_provider: r.kms_provider.clone(),
            published: r.state != KeyState::Retired.as_str(),
        }
    }
}
