//! Key lifecycle: what should happen to the ring, when, and the transactions
//! that make it happen.
//!
//! [`plan`] is pure: from the stored keys, the policy and `now` it derives the
//! due steps. Applying them ([`Lifecycle::tick`]) is a check-and-swap: key
//! material is made by the KMS first (outside any lock, since it may be slow or
//! fail), then a ring transaction locks the ring, plans again from what is
//! stored *now* (another replica may have acted meanwhile) and applies only what
//! is still due. One transaction per transition, so a crash leaves either the old
//! ring or the new one.
//!
//! The rules, per algorithm:
//! - a schedule fire time is when the next key starts signing; its pending key
//!   is created `lead` before that (or at once, activating `lead` later, if the
//!   fire time was missed during downtime, so a missed rotation happens once);
//! - a pending key activates only once `activate_at` has passed, and the key it
//!   replaces turns retiring, published for `retention` more;
//! - a retiring key is retired once `retire_at` has passed;
//! - with no active key at all (first start) a key is created active at once:
//!   there is nothing yet for a verifier to have cached.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::kms::{Kms, NewMaterial};
use super::{Alg, KeyState, RingError};
use crate::audit::{Event, key_event};
use crate::clock::{SharedClock, UnixTime};
use crate::config::KeysConfig;
use crate::store::{KeyRow, NewKeyRow, RingTx, Store};

/// One due change to the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No key signs for `alg`: create one active immediately.
    Bootstrap { alg: Alg },
    /// Create a pending key for `alg` that may activate at `activate_at`.
    Prepublish { alg: Alg, activate_at: UnixTime },
    /// Pending `kid` starts signing; `previous` (if any) turns retiring.
    Activate {
        alg: Alg,
        kid: String,
        previous: Option<String>,
    },
    /// Retiring `kid` is unpublished.
    Retire { kid: String },
}

impl Step {
    fn creates(&self) -> Option<Alg> {
        match self {
            Self::Bootstrap { alg } | Self::Prepublish { alg, .. } => Some(*alg),
            _ => None,
        }
    }
}

fn at(t: UnixTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The schedule's next fire time strictly after `after`, in Unix seconds.
pub fn next_fire(schedule: &cron::Schedule, after: UnixTime) -> Option<UnixTime> {
    schedule.after(&at(after)).next().map(|d| d.timestamp())
}

fn rows_for(rows: &[KeyRow], alg: Alg, state: KeyState) -> Vec<&KeyRow> {
    let mut v: Vec<&KeyRow> = rows
        .iter()
        .filter(|r| r.alg == alg.as_str() && r.state == state.as_str())
        .collect();
    v.sort_by_key(|r| (r.activate_at, r.created_at));
    v
}

/// Derive the steps due at `now`. Pure; the same input gives the same plan.
pub fn plan(now: UnixTime, rows: &[KeyRow], cfg: &KeysConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for alg in Alg::ALL {
        let policy = cfg.policy(alg);
        let active = rows_for(rows, alg, KeyState::Active).into_iter().next();
        let pending = rows_for(rows, alg, KeyState::Pending);
        let next_pending = pending.first();
        match (active, next_pending) {
            (None, None) => steps.push(Step::Bootstrap { alg }),
            // Nothing signs: a pending key is better than none, even early.
            (None, Some(p)) => steps.push(Step::Activate {
                alg,
                kid: p.kid.clone(),
                previous: None,
            }),
            (Some(a), Some(p)) => {
                if p.activate_at <= now {
                    steps.push(Step::Activate {
                        alg,
                        kid: p.kid.clone(),
                        previous: Some(a.kid.clone()),
                    });
                }
            }
            (Some(a), None) => {
                let since = a.activated_at.unwrap_or(a.created_at);
                if let Some(fire) = next_fire(&policy.schedule, since) {
                    let lead = i64::try_from(policy.lead_secs).unwrap_or(i64::MAX);
                    if now >= fire.saturating_sub(lead) {
                        steps.push(Step::Prepublish {
                            alg,
                            activate_at: fire.max(now.saturating_add(lead)),
                        });
                    }
                }
            }
        }
        for r in rows_for(rows, alg, KeyState::Retiring) {
            if r.retire_at.is_some_and(|t| t <= now) {
                steps.push(Step::Retire { kid: r.kid.clone() });
            }
        }
    }
    steps
}

/// The next transitions per algorithm, for `keys schedule`.
#[derive(Debug, Clone, Serialize)]
pub struct Upcoming {
    pub alg: &'static str,
    pub schedule: String,
    pub active_kid: Option<String>,
    /// When the next key starts signing (pending key's time, or the next fire).
    pub next_activation_at: Option<UnixTime>,
    /// When its pending key is (or was) published.
    pub next_prepublish_at: Option<UnixTime>,
    pub pending_kid: Option<String>,
    /// Retiring keys and when each will be unpublished.
    pub retirements: Vec<(String, UnixTime)>,
}

pub fn upcoming(now: UnixTime, rows: &[KeyRow], cfg: &KeysConfig) -> Vec<Upcoming> {
    Alg::ALL
        .into_iter()
        .map(|alg| {
            let policy = cfg.policy(alg);
            let active = rows_for(rows, alg, KeyState::Active).into_iter().next();
            let pending = rows_for(rows, alg, KeyState::Pending).into_iter().next();
            let lead = i64::try_from(policy.lead_secs).unwrap_or(i64::MAX);
            let (next_activation_at, next_prepublish_at) = match (pending, active) {
                (Some(p), _) => (Some(p.activate_at), Some(p.created_at)),
                (None, Some(a)) => {
                    let fire = next_fire(&policy.schedule, a.activated_at.unwrap_or(a.created_at));
                    match fire {
                        Some(f) if f.saturating_sub(lead) < now => {
                            (Some(now.saturating_add(lead)), Some(now))
                        }
                        Some(f) => (Some(f), Some(f.saturating_sub(lead))),
                        None => (None, None),
                    }
                }
                (None, None) => (Some(now), Some(now)),
            };
            Upcoming {
                alg: alg.as_str(),
                schedule: policy.schedule_expr.clone(),
                active_kid: active.map(|a| a.kid.clone()),
                next_activation_at,
                next_prepublish_at,
                pending_kid: pending.map(|p| p.kid.clone()),
                retirements: rows_for(rows, alg, KeyState::Retiring)
                    .into_iter()
                    .filter_map(|r| r.retire_at.map(|t| (r.kid.clone(), t)))
                    .collect(),
            }
        })
        .collect()
}

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
    /// Algorithms whose new key could not be made, with the KMS error.
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

impl Lifecycle {
    pub fn new(store: Store, kms: Kms, clock: SharedClock, cfg: KeysConfig) -> Self {
        Self {
            store,
            kms,
            clock,
            cfg,
        }
    }

    fn retention(&self, alg: Alg) -> i64 {
        i64::try_from(self.cfg.policy(alg).retention_secs).unwrap_or(i64::MAX)
    }

    fn lead(&self, alg: Alg) -> i64 {
        i64::try_from(self.cfg.policy(alg).lead_secs).unwrap_or(i64::MAX)
    }

    async fn make_key(&self, alg: Alg) -> Result<NewMaterial, LifecycleError> {
        Ok(self
            .kms
            .create_key(alg, self.cfg.policy(alg).rsa_bits)
            .await?)
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
    async fn discard(&self, m: NewMaterial, alg: Alg, now: UnixTime) {
        let row = KeyRow {
            kid: m.public.kid.clone(),
            alg: alg.as_str().into(),
            state: "retired".into(),
            public_der: m.public_der,
            wrapped_private: None,
            kms_provider: self.kms.provider().into(),
            kms_key_ref: m.kms_key_ref,
            created_at: now,
            activate_at: now,
            activated_at: None,
            retiring_at: None,
            retire_at: None,
            retired_at: Some(now),
            retired_reason: None,
        };
        if let Err(e) = self.kms.destroy(&row).await {
            tracing::warn!(kid = %row.kid, error = %e, "could not release unused KMS key");
        }
    }

    /// Apply every due step. Steps that need a new key are skipped (and
    /// reported) when the KMS cannot make one; the others still apply.
    ///
    /// `loaded` names the keys whose private half this process already holds in
    /// memory (its ring's signers); any other key must load through the KMS
    /// before it may activate.
    pub async fn tick(&self, actor: &str, loaded: &[String]) -> Result<TickReport, LifecycleError> {
        let now = self.clock.now();
        let rows = self.store.list_keys(false).await?;
        let steps = plan(now, &rows, &self.cfg);
        let mut report = TickReport::default();
        if steps.is_empty() {
            return Ok(report);
        }
        // Material first, outside the lock: a KMS failure here leaves the ring
        // untouched for that algorithm and its current active key signing.
        let mut material: HashMap<Alg, NewMaterial> = HashMap::new();
        for alg in steps.iter().filter_map(Step::creates) {
            match self.make_key(alg).await {
                Ok(m) => {
                    material.insert(alg, m);
                }
                Err(e) => report.failures.push((alg.as_str(), e.to_string())),
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
                && let Err(e) = self.kms.signer_for(row, *alg).await
            {
                report
                    .failures
                    .push((alg.as_str(), format!("cannot activate {kid}: {e}")));
                not_ready.push(kid.clone());
            }
        }
        let mut tx = self.store.begin_ring().await?;
        let rows = tx.list_keys(false).await?;
        let steps = plan(now, &rows, &self.cfg);
        let changes = &mut report.changes;
        let mut retired = Vec::new();
        for step in steps {
            match step {
                Step::Bootstrap { alg } => {
                    if let Some(m) = material.remove(&alg) {
                        tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                            .await?;
                        changes.push(
                            self.change(
                                &mut tx,
                                actor,
                                "key.bootstrap",
                                &m.public.kid,
                                alg,
                                now,
                                "first active key",
                            )
                            .await?,
                        );
                    }
                }
                Step::Prepublish { alg, activate_at } => {
                    if let Some(m) = material.remove(&alg) {
                        tx.insert_key(&self.new_row(&m, alg, KeyState::Pending, now, activate_at))
                            .await?;
                        let detail = format!("scheduled rotation; signs from {activate_at}");
                        changes.push(
                            self.change(
                                &mut tx,
                                actor,
                                "key.prepublish",
                                &m.public.kid,
                                alg,
                                now,
                                &detail,
                            )
                            .await?,
                        );
                    }
                }
                Step::Activate { kid, .. } if not_ready.contains(&kid) => {}
                Step::Activate { alg, kid, previous } => {
                    if let Some(prev) = &previous {
                        let retire_at = now.saturating_add(self.retention(alg));
                        tx.start_retiring(prev, now, retire_at).await?;
                        let detail = format!("replaced by {kid}; published until {retire_at}");
                        changes.push(
                            self.change(&mut tx, actor, "key.retiring", prev, alg, now, &detail)
                                .await?,
                        );
                    }
                    tx.activate(&kid, now).await?;
                    changes.push(
                        self.change(&mut tx, actor, "key.activate", &kid, alg, now, "signing")
                            .await?,
                    );
                }
                Step::Retire { kid } => {
                    if let Some(row) = rows.iter().find(|r| r.kid == kid) {
                        let alg = Alg::parse(&row.alg).unwrap_or(Alg::Rs256);
                        tx.retire(&kid, now, "retention elapsed").await?;
                        changes.push(
                            self.change(
                                &mut tx,
                                actor,
                                "key.retire",
                                &kid,
                                alg,
                                now,
                                "retention elapsed",
                            )
                            .await?,
                        );
                        retired.push(row.clone());
                    }
                }
            }
        }
        tx.commit().await?;
        for row in retired {
            if let Err(e) = self.kms.destroy(&row).await {
                tracing::warn!(kid = %row.kid, error = %e, "could not destroy retired key in the KMS");
            }
        }
        // Another replica got there first: our material is not needed.
        for (alg, m) in material {
            self.discard(m, alg, now).await;
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments, reason = "one event, one call")]
    async fn change(
        &self,
        tx: &mut RingTx,
        actor: &str,
        action: &'static str,
        kid: &str,
        alg: Alg,
        now: UnixTime,
        detail: &str,
    ) -> Result<Change, LifecycleError> {
        let event = Event::new(key_event(action), now)
            .actor(actor)
            .subject(kid)
            .message(format!("{} {detail}", alg.as_str()))
            .detail(serde_json::json!({ "alg": alg.as_str(), "note": detail }));
        tx.append_event(&event).await?;
        Ok(Change {
            action,
            kid: kid.to_string(),
            alg: alg.as_str(),
            at: now,
            detail: detail.to_string(),
        })
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
        let now = self.clock.now();
        if !immediate {
            let rows = self.store.list_keys(false).await?;
            if let Some(p) = rows_for(&rows, alg, KeyState::Pending).first() {
                return Ok(RotateOutcome {
                    kid: p.kid.clone(),
                    alg: alg.as_str(),
                    state: "pending",
                    activate_at: p.activate_at,
                    replaced: None,
                    already_pending: true,
                });
            }
        }
        let m = self.make_key(alg).await?;
        let mut tx = self.store.begin_ring().await?;
        let rows = tx.list_keys(false).await?;
        let active = rows_for(&rows, alg, KeyState::Active)
            .first()
            .map(|r| r.kid.clone());
        if !immediate && let Some(p) = rows_for(&rows, alg, KeyState::Pending).first() {
            let out = RotateOutcome {
                kid: p.kid.clone(),
                alg: alg.as_str(),
                state: "pending",
                activate_at: p.activate_at,
                replaced: None,
                already_pending: true,
            };
            drop(tx);
            self.discard(m, alg, now).await;
            return Ok(out);
        }
        let kid = m.public.kid.clone();
        let outcome = if immediate {
            if let Some(prev) = &active {
                let retire_at = now.saturating_add(self.retention(alg));
                tx.start_retiring(prev, now, retire_at).await?;
                let detail = format!("immediate rotation to {kid}; published until {retire_at}");
                self.change(&mut tx, actor, "key.retiring", prev, alg, now, &detail)
                    .await?;
            }
            tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                .await?;
            self.change(
                &mut tx,
                actor,
                "key.rotate_now",
                &kid,
                alg,
                now,
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
            let activate_at = now.saturating_add(self.lead(alg));
            tx.insert_key(&self.new_row(&m, alg, KeyState::Pending, now, activate_at))
                .await?;
            let detail = format!("manual rotation; signs from {activate_at}");
            self.change(&mut tx, actor, "key.rotate", &kid, alg, now, &detail)
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

    /// Retire a key now. The active key needs `emergency` (compromise): it stops
    /// signing and is unpublished at once, and a fresh key takes over.
    pub async fn retire(
        &self,
        kid: &str,
        emergency: bool,
        actor: &str,
    ) -> Result<RetireOutcome, LifecycleError> {
        let now = self.clock.now();
        let rows = self.store.list_keys(true).await?;
        let row = rows
            .iter()
            .find(|r| r.kid == kid)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_string()))?;
        let alg = Alg::parse(&row.alg)
            .ok_or_else(|| RingError::Corrupt(kid.to_string(), "unknown alg".into()))?;
        let state = KeyState::parse(&row.state)
            .ok_or_else(|| RingError::Corrupt(kid.to_string(), "unknown state".into()))?;
        if state == KeyState::Retired {
            return Err(LifecycleError::AlreadyRetired(kid.to_string()));
        }
        if state == KeyState::Active && !emergency {
            return Err(LifecycleError::ActiveNeedsEmergency(kid.to_string()));
        }
        // The replacement is made before the lock, like every key.
        let replacement = if state == KeyState::Active {
            Some(self.make_key(alg).await?)
        } else {
            None
        };
        let mut tx = self.store.begin_ring().await?;
        let current = tx
            .list_keys(true)
            .await?
            .into_iter()
            .find(|r| r.kid == kid)
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_string()))?;
        if current.state != row.state {
            // Changed under us (another replica or operator); let the caller retry.
            drop(tx);
            if let Some(m) = replacement {
                self.discard(m, alg, now).await;
            }
            return Err(LifecycleError::Conflict(kid.to_string()));
        }
        let reason = if emergency {
            "emergency retirement"
        } else {
            "retired by operator"
        };
        tx.retire(kid, now, reason).await?;
        self.change(
            &mut tx,
            actor,
            if emergency {
                "key.retire_emergency"
            } else {
                "key.retire"
            },
            kid,
            alg,
            now,
            reason,
        )
        .await?;
        let mut replacement_kid = None;
        if let Some(m) = replacement {
            tx.insert_key(&self.new_row(&m, alg, KeyState::Active, now, now))
                .await?;
            self.change(
                &mut tx,
                actor,
                "key.rotate_now",
                &m.public.kid,
                alg,
                now,
                &format!("replaces {kid}"),
            )
            .await?;
            replacement_kid = Some(m.public.kid.clone());
        }
        tx.commit().await?;
        if let Err(e) = self.kms.destroy(row).await {
            tracing::warn!(kid, error = %e, "could not destroy retired key in the KMS");
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Daily rotation at midnight UTC, one hour of pre-publication, two of retention.
    fn cfg() -> KeysConfig {
        let toml = "issuer = \"http://a\"\n[keys.rs256]\nschedule = \"0 0 0 * * *\"\nlead_secs = 3600\nretention_secs = 7200\n[keys.es256]\nschedule = \"0 0 0 * * *\"\nlead_secs = 3600\nretention_secs = 7200\n";
        Config::from_toml_str(toml, Vec::new()).unwrap().keys
    }

    const DAY: i64 = 86_400;
    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600;

    fn row(kid: &str, alg: Alg, state: KeyState, activate_at: i64) -> KeyRow {
        KeyRow {
            kid: kid.into(),
            alg: alg.as_str().into(),
            state: state.as_str().into(),
            public_der: Vec::new(),
            wrapped_private: None,
            kms_provider: "local".into(),
            kms_key_ref: None,
            created_at: activate_at - 3600,
            activate_at,
            activated_at: (state != KeyState::Pending).then_some(activate_at),
            retiring_at: None,
            retire_at: None,
            retired_at: None,
            retired_reason: None,
        }
    }

    fn only(steps: Vec<Step>, alg: Alg) -> Vec<Step> {
        steps
            .into_iter()
            .filter(|s| match s {
                Step::Bootstrap { alg: a }
                | Step::Prepublish { alg: a, .. }
                | Step::Activate { alg: a, .. } => *a == alg,
                Step::Retire { kid } => kid.starts_with(alg.as_str()),
            })
            .collect()
    }

    #[test]
    fn empty_ring_bootstraps_both_algorithms() {
        assert_eq!(
            plan(T0, &[], &cfg()),
            vec![
                Step::Bootstrap { alg: Alg::Rs256 },
                Step::Bootstrap { alg: Alg::Es256 }
            ]
        );
    }

    #[test]
    fn pending_key_is_created_one_lead_before_the_fire_time() {
        let rows = [row("RS256-a", Alg::Rs256, KeyState::Active, T0 + 30)];
        // Before fire − lead: nothing.
        assert!(only(plan(T0 + DAY - 3601, &rows, &cfg()), Alg::Rs256).is_empty());
        // At fire − lead: publish, to sign exactly at the fire time.
        assert_eq!(
            only(plan(T0 + DAY - 3600, &rows, &cfg()), Alg::Rs256),
            vec![Step::Prepublish {
                alg: Alg::Rs256,
                activate_at: T0 + DAY
            }]
        );
    }

    #[test]
    fn missed_rotations_after_downtime_happen_once_and_still_prepublish() {
        let rows = [row("RS256-a", Alg::Rs256, KeyState::Active, T0 + 30)];
        // Three fire times passed while nothing ran: one pending key, activating
        // a full lead from now (never earlier than verifiers can know it).
        let now = T0 + 3 * DAY + 12 * 3600;
        assert_eq!(
            only(plan(now, &rows, &cfg()), Alg::Rs256),
            vec![Step::Prepublish {
                alg: Alg::Rs256,
                activate_at: now + 3600
            }]
        );
        // With that pending key stored, nothing more is planned until it is due.
        let rows = [
            rows[0].clone(),
            row("RS256-b", Alg::Rs256, KeyState::Pending, now + 3600),
        ];
        assert!(only(plan(now + 10, &rows, &cfg()), Alg::Rs256).is_empty());
        assert_eq!(
            only(plan(now + 3600, &rows, &cfg()), Alg::Rs256),
            vec![Step::Activate {
                alg: Alg::Rs256,
                kid: "RS256-b".into(),
                previous: Some("RS256-a".into())
            }]
        );
    }

    #[test]
    fn after_activation_the_next_fire_is_the_following_one() {
        let now = T0 + 3 * DAY + 13 * 3600;
        let rows = [row("RS256-b", Alg::Rs256, KeyState::Active, now)];
        // Next fire: the coming midnight; nothing until an hour before it.
        assert!(only(plan(T0 + 4 * DAY - 3601, &rows, &cfg()), Alg::Rs256).is_empty());
        assert_eq!(
            only(plan(T0 + 4 * DAY - 3600, &rows, &cfg()), Alg::Rs256),
            vec![Step::Prepublish {
                alg: Alg::Rs256,
                activate_at: T0 + 4 * DAY
            }]
        );
    }

    #[test]
    fn retiring_keys_retire_only_after_retention() {
        let mut r = row("RS256-old", Alg::Rs256, KeyState::Retiring, T0);
        r.retire_at = Some(T0 + 7200);
        let rows = [r, row("RS256-new", Alg::Rs256, KeyState::Active, T0 + 10)];
        assert!(only(plan(T0 + 7199, &rows, &cfg()), Alg::Rs256).is_empty());
        assert_eq!(
            only(plan(T0 + 7200, &rows, &cfg()), Alg::Rs256),
            vec![Step::Retire {
                kid: "RS256-old".into()
            }]
        );
    }

    #[test]
    fn with_no_active_key_a_pending_key_activates_at_once() {
        let rows = [row("ES256-p", Alg::Es256, KeyState::Pending, T0 + 3600)];
        assert_eq!(
            only(plan(T0, &rows, &cfg()), Alg::Es256),
            vec![Step::Activate {
                alg: Alg::Es256,
                kid: "ES256-p".into(),
                previous: None
            }]
        );
    }

    #[test]
    fn upcoming_reports_next_times() {
        let rows = [row("RS256-a", Alg::Rs256, KeyState::Active, T0 + 30)];
        let up = upcoming(T0 + 100, &rows, &cfg());
        let rs = up.iter().find(|u| u.alg == "RS256").unwrap();
        assert_eq!(rs.next_activation_at, Some(T0 + DAY));
        assert_eq!(rs.next_prepublish_at, Some(T0 + DAY - 3600));
        assert_eq!(rs.active_kid.as_deref(), Some("RS256-a"));
    }
}
