//! Readiness: may this server take traffic? A list of named checks, each
//! decided here and only rendered by `http/health.rs`.
//!
//! The checks: the database answers (one probe per second at most, whoever
//! asks, so anonymous callers cannot turn `/readyz` into database load), every
//! algorithm has a loaded signing key, and the key scheduler loop is still
//! passing. Other parts add their checks in [`Probe::assess`] with
//! [`Readiness::check`]; a check must be cheap or cached like the database one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::keyring::scheduler::SchedulerStats;
use crate::keyring::{Alg, KeyRing};
use crate::store::Store;

/// How long one database probe result is reused.
const DATABASE_CACHE: Duration = Duration::from_secs(1);
/// A database that does not answer within this is down for readiness.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// One named check and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// Why it failed (or a short fact when it passed); never a secret.
    pub detail: String,
}

/// The outcome of every check.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub checks: Vec<Check>,
}

impl Readiness {
    pub fn check(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            ok,
            detail: detail.into(),
        });
    }

    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn failing(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }
}

/// What readiness looks at, with the database probe's cache.
pub struct Probe {
    store: Store,
    ring: Arc<KeyRing>,
    scheduler: Arc<SchedulerStats>,
    /// The loop sleeps `reload_interval` between passes; a pass may also wait
    /// on a slow KMS. Past this without a pass the loop counts as stuck.
    scheduler_stale_after: Duration,
    database: Mutex<Option<(Instant, Result<(), String>)>>,
    /// The rate limiter, for its shared (Redis) backend's reachability.
    limits: Option<crate::limits::Limits>,
}

impl Probe {
    pub fn new(
        store: Store,
        ring: Arc<KeyRing>,
        scheduler: Arc<SchedulerStats>,
        reload_interval: Duration,
    ) -> Self {
        Self {
            store,
            ring,
            scheduler,
            scheduler_stale_after: (reload_interval * 5).max(Duration::from_secs(30)),
            database: Mutex::new(None),
            limits: None,
        }
    }

    /// Also report whether the shared rate-limit backend answers.
    pub fn with_limits(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    pub async fn assess(&self) -> Readiness {
        let mut r = Readiness::default();
        match self.database().await {
            Ok(()) => r.check("database", true, "reachable"),
            Err(e) => r.check("database", false, e),
        }
        let ring = self.ring.current();
        let missing: Vec<&str> = Alg::ALL
            .iter()
            .filter(|a| ring.active(**a).is_none_or(|k| k.signer.is_none()))
            .map(|a| a.as_str())
            .collect();
        if missing.is_empty() {
            r.check(
                "signing_keys",
                true,
                format!("ring version {}", ring.version),
            );
        } else {
            r.check(
                "signing_keys",
                false,
                format!("no loaded active key for {}", missing.join(", ")),
            );
        }
        // The key ring's own verdict: confirmed against the database recently
        // enough, clock within the allowed skew, allowed to sign.
        let health = self.ring.health();
        if health.ready {
            r.check(
                "key_ring",
                true,
                format!("confirmed {}s ago", health.seconds_since_reload),
            );
        } else {
            r.check(
                "key_ring",
                false,
                format!(
                    "not ready: {}s since the last confirmed reload (max {}), clock skew {:?}s, refusals {:?}",
                    health.seconds_since_reload,
                    health.max_ring_age_secs,
                    health.clock_skew_secs,
                    health.refusals
                ),
            );
        }
        // With the Redis backend configured, a replica that cannot reach it
        // enforces only its own share of every limit: serving, but not ready.
        if let Some(healthy) = self.limits.as_ref().and_then(|l| l.redis_healthy()) {
            r.check(
                "rate_limit_redis",
                healthy,
                if healthy {
                    "reachable"
                } else {
                    "unreachable: limits are enforced per replica"
                },
            );
        }
        match self.scheduler.since_heartbeat() {
            Some(age) if age <= self.scheduler_stale_after => r.check(
                "scheduler",
                true,
                format!("last pass {}s ago", age.as_secs()),
            ),
            Some(age) => r.check(
                "scheduler",
                false,
                format!("no pass for {}s", age.as_secs()),
            ),
            None => r.check("scheduler", false, "has not run yet"),
        }
        r
    }

    /// The cached database probe. The lock is held across the probe, so
    /// concurrent callers wait for one query instead of each sending theirs.
    async fn database(&self) -> Result<(), String> {
        let mut cached = self.database.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < DATABASE_CACHE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(DATABASE_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            // The driver's message stays in the log: `/readyz` is anonymous.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the database probe failed");
                Err("unreachable".to_string())
            }
            Err(_) => Err(format!("no answer within {}s", DATABASE_TIMEOUT.as_secs())),
        };
        *cached = Some((Instant::now(), result.clone()));
        result
    }
}
