//! The pure half of the key lifecycle: from the stored keys, the policy and
//! `now`, which steps are due, and the rules every transition and operator
//! action must respect. No I/O, no clock: every input is an argument, so each
//! rule is unit-tested with exact times. [`super::lifecycle`] applies the plan.
//!
//! The rules, per algorithm:
//! - a schedule fire time is when the next key starts signing; its pending key
//!   is created `lead` before that (or at once, activating `lead` later, if the
//!   fire time was missed during downtime, so a missed rotation happens once);
//! - a pending key activates only once `activate_at` has passed, and the key it
//!   replaces turns retiring, published for `retention` more;
//! - a retiring key is retired once `retire_at` has passed;
//! - with no active key at all (first start) a key is created active at once:
//!   there is nothing yet for a verifier to have cached;
//! - no key is created while the JWKS holds `max_published_keys` keys;
//! - a replica keeps signing with a replaced key ([`fallback_sign_until`]) only
//!   while its tokens expire before that key is unpublished;
//! - a replica whose clock is off the database's by more than the allowed skew
//!   neither transitions nor signs ([`clock_skew_ok`]);
//! - a retiring key is retired early only as an emergency ([`check_retire`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Alg, KeyState};
use crate::clock::UnixTime;
use crate::config::KeysConfig;
use crate::store::KeyRow;

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
    /// A due key creation for `alg` is held back: the JWKS already holds
    /// `published` keys, the configured maximum. Reported as a failed
    /// transition (an operator alerts on it); the active key keeps signing.
    Held { alg: Alg, published: usize },
}

fn at(t: UnixTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The schedule's next fire time strictly after `after`, in Unix seconds.
pub fn next_fire(schedule: &cron::Schedule, after: UnixTime) -> Option<UnixTime> {
    schedule.after(&at(after)).next().map(|d| d.timestamp())
}

pub(crate) fn rows_for(rows: &[KeyRow], alg: Alg, state: KeyState) -> Vec<&KeyRow> {
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
    // Every non-retired row is published; creations beyond the maximum wait.
    let mut published = rows
        .iter()
        .filter(|r| r.state != KeyState::Retired.as_str())
        .count();
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
                    let lead = policy.lead.get();
                    if now >= fire.saturating_sub(lead) {
                        // Retirements due in this same pass free their slots.
                        let retiring_now = rows
                            .iter()
                            .filter(|r| r.state == KeyState::Retiring.as_str())
                            .filter(|r| r.retire_at.is_some_and(|t| t <= now))
                            .count();
                        if published.saturating_sub(retiring_now) >= cfg.max_published_keys {
                            steps.push(Step::Held { alg, published });
                        } else {
                            published += 1;
                            steps.push(Step::Prepublish {
                                alg,
                                activate_at: fire.max(now.saturating_add(lead)),
                            });
                        }
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
            let lead = policy.lead.get();
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

/// Until when a replica may keep signing with `retire_at`'s key after a newer
/// key became active that it cannot load (its KMS is unreachable).
///
/// A token signed at `t` lives until `t + longest ttl`; the key disappears
/// from every JWKS at `retire_at`, and this replica's clock may run up to the
/// allowed skew behind the one that retires it. So the last safe signing time
/// is `retire_at − longest ttl − max skew`; past it the replica refuses to sign.
pub fn fallback_sign_until(retire_at: Option<UnixTime>, cfg: &KeysConfig) -> UnixTime {
    match retire_at {
        Some(t) => t
            .saturating_sub(cfg.longest_signed_ttl.get())
            .saturating_sub(cfg.max_clock_skew.get()),
        // Still active in the database (no retirement scheduled): no deadline.
        None => UnixTime::MAX,
    }
}

/// Whether this replica's clock (`local`) is close enough to the database's
/// (`database`, the one clock all replicas share). Both are whole seconds, so
/// the measured difference can exceed the true one by up to a second.
pub fn clock_skew_ok(local: UnixTime, database: UnixTime, cfg: &KeysConfig) -> bool {
    cfg.skip_clock_check || local.abs_diff(database) <= cfg.max_clock_skew.as_u64()
}

/// Why an operator's `retire` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireRefusal {
    AlreadyRetired,
    /// The active key signs: only an emergency retires it.
    ActiveNeedsEmergency,
    /// Tokens signed by this retiring key may be valid until `retire_at`.
    RetiringNeedsEmergency {
        retire_at: UnixTime,
    },
}

/// Check an operator's retirement of a key in `state` at `now`.
pub fn check_retire(
    now: UnixTime,
    state: KeyState,
    retire_at: Option<UnixTime>,
    emergency: bool,
) -> Result<(), RetireRefusal> {
    match state {
        KeyState::Retired => Err(RetireRefusal::AlreadyRetired),
        KeyState::Active if !emergency => Err(RetireRefusal::ActiveNeedsEmergency),
        KeyState::Retiring if !emergency => match retire_at {
            Some(t) if t > now => Err(RetireRefusal::RetiringNeedsEmergency { retire_at: t }),
            _ => Ok(()),
        },
        _ => Ok(()),
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
                Step::Held { alg: a, .. } => *a == alg,
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

    #[test]
    fn no_key_is_created_past_the_published_maximum() {
        let mut c = cfg();
        c.max_published_keys = 4;
        let mut rows = vec![row("RS256-a", Alg::Rs256, KeyState::Active, T0 + 30)];
        for i in 0..3 {
            let mut r = row(&format!("ES256-{i}"), Alg::Es256, KeyState::Retiring, T0);
            r.retire_at = Some(T0 + DAY + 7200);
            rows.push(r);
        }
        let now = T0 + DAY - 3600;
        // Four published keys: the due pre-publication waits, and says so.
        assert_eq!(
            only(plan(now, &rows, &c), Alg::Rs256),
            vec![Step::Held {
                alg: Alg::Rs256,
                published: 4
            }]
        );
        // A retirement due in the same pass frees a slot.
        rows[1].retire_at = Some(now);
        let steps = plan(now, &rows, &c);
        assert!(steps.contains(&Step::Prepublish {
            alg: Alg::Rs256,
            activate_at: T0 + DAY
        }));
        assert!(steps.contains(&Step::Retire {
            kid: "ES256-0".into()
        }));
    }

    #[test]
    fn fallback_signing_ends_before_the_key_is_unpublished() {
        let mut c = cfg();
        c.longest_signed_ttl = crate::config::Secs::new(600).unwrap();
        c.max_clock_skew = crate::config::Secs::new(2).unwrap();
        // Tokens signed up to retire_at − 600 − 2 expire before it is unpublished.
        assert_eq!(fallback_sign_until(Some(T0 + 7200), &c), T0 + 7200 - 602);
        assert_eq!(fallback_sign_until(None, &c), UnixTime::MAX);
    }

    #[test]
    fn clock_skew_beyond_the_allowance_is_refused() {
        let mut c = cfg();
        c.max_clock_skew = crate::config::Secs::new(2).unwrap();
        c.skip_clock_check = false;
        assert!(clock_skew_ok(T0 + 2, T0, &c));
        assert!(clock_skew_ok(T0 - 2, T0, &c));
        assert!(!clock_skew_ok(T0 + 3, T0, &c));
        assert!(!clock_skew_ok(T0 - 3, T0, &c));
        c.skip_clock_check = true;
        assert!(clock_skew_ok(T0 + 3600, T0, &c));
    }

    #[test]
    fn retiring_a_retiring_key_early_needs_an_emergency() {
        let t = T0 + 100;
        assert_eq!(
            check_retire(T0, KeyState::Retiring, Some(t), false),
            Err(RetireRefusal::RetiringNeedsEmergency { retire_at: t })
        );
        assert_eq!(check_retire(T0, KeyState::Retiring, Some(t), true), Ok(()));
        // At or after retire_at its tokens have expired: no emergency needed.
        assert_eq!(check_retire(t, KeyState::Retiring, Some(t), false), Ok(()));
        assert_eq!(
            check_retire(T0, KeyState::Active, None, false),
            Err(RetireRefusal::ActiveNeedsEmergency)
        );
        assert_eq!(check_retire(T0, KeyState::Active, None, true), Ok(()));
        assert_eq!(check_retire(T0, KeyState::Pending, None, false), Ok(()));
        assert_eq!(
            check_retire(T0, KeyState::Retired, None, true),
            Err(RetireRefusal::AlreadyRetired)
        );
    }
}
