//! Prometheus metrics: one [`Metrics`] registry per server (held in the app
//! state, never global, so tests run several servers in one process).
//!
//! Counters and histograms move where things happen (`metrics.token_issued(..)`,
//! the HTTP layer in `http::metrics`); gauges that mirror state elsewhere (key
//! ring, database pool, scheduler) are set from that state when `/metrics` is
//! scraped, by [`Metrics::observe`]. Nothing here knows HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock::UnixTime;
use crate::keyring::{Alg, KeyState, Ring};
use crate::store::KeyRow;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route pattern (`/admin/keys/{kid}/retire`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub grant: String,
    pub alg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlgLabel {
    pub alg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Where a refresh found its token's state: `kept` (this process issued
    /// the token and kept its state) or `database`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabel {
    /// Which limit refused the request (e.g. `ip`, `client`, `user`).
    pub limiter: String,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

struct Inner {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: HistogramFamily,
    tokens_issued: Family<TokenLabels, Counter>,
    refresh_reuse: Counter,
    /// The two series of `refresh_state_lookups`, held so that a refresh
    /// counts without building labels.
    refresh_state_kept: Counter,
    refresh_state_read: Counter,
    rate_limited: Family<LimiterLabel, Counter>,
    lockouts: Counter,
    argon2_queue_depth: Gauge,
    argon2_buffers: Gauge,
    /// Seconds the hashing threads rested to yield the CPU, and the total
    /// (in microseconds) already added to it: a scrape adds the difference.
    argon2_yield: Counter<f64, AtomicU64>,
    argon2_yield_reported: AtomicU64,
    db_in_use: Gauge,
    db_idle: Gauge,
    active_key_age: Family<AlgLabel, Gauge>,
    next_transition: Gauge,
    last_transition_ok: Gauge,
    transition_failures: Gauge,
    ring_version: Gauge,
    reload_age: Gauge,
}

/// The metrics of one server; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Snapshot of state outside this module, read when `/metrics` is scraped.
pub struct Observed<'a> {
    pub now: UnixTime,
    pub ring: &'a Ring,
    /// Key rows and the next transition time the lifecycle plans (if any).
    pub next_transition_at: Option<UnixTime>,
    pub pool_size: u32,
    pub pool_idle: usize,
    pub consecutive_failures: u64,
    pub transition_failures: u64,
    /// When the ring was last checked successfully (0: never).
    pub last_reload_ok_at: UnixTime,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by matched route, method and status",
            http_requests.clone(),
        );
        let http_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by matched route, method and status",
            http_latency.clone(),
        );
        let tokens_issued = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens_issued",
            "Access tokens issued, by grant type and signing algorithm",
            tokens_issued.clone(),
        );
        // Every grant × algorithm from zero, so dashboards see the series before the first token.
        for grant in crate::oauth::GrantType::ALL {
            for alg in Alg::ALL {
                let _ = tokens_issued.get_or_create(&TokenLabels {
                    grant: grant.as_str().to_string(),
                    alg: alg.as_str().to_string(),
                });
            }
        }
        let refresh_reuse = Counter::default();
        registry.register(
            "refresh_reuse_detected",
            "Consumed refresh tokens presented again (the family is revoked)",
            refresh_reuse.clone(),
        );
        let refresh_state = Family::<SourceLabel, Counter>::default();
        registry.register(
            "refresh_state_lookups",
            "Refresh grants by where the presented token's state came from: kept by this process when it issued the token, or read from the database",
            refresh_state.clone(),
        );
        let source = |s: &str| {
            refresh_state
                .get_or_create(&SourceLabel {
                    source: s.to_string(),
                })
                .clone()
        };
        let (refresh_state_kept, refresh_state_read) = (source("kept"), source("database"));
        let rate_limited = Family::<LimiterLabel, Counter>::default();
        registry.register(
            "rate_limit_rejections",
            "Requests refused by a rate limit, by limiter",
            rate_limited.clone(),
        );
        let lockouts = Counter::default();
        registry.register(
            "account_lockouts",
            "Accounts locked after repeated failed logins",
            lockouts.clone(),
        );
        let argon2_queue_depth = Gauge::default();
        registry.register(
            "argon2_queue_depth",
            "Password hash computations waiting for a slot",
            argon2_queue_depth.clone(),
        );
        let argon2_buffers = Gauge::default();
        registry.register(
            "argon2_buffers",
            "Password hash block buffers allocated (19 MiB each, at most one per hashing thread)",
            argon2_buffers.clone(),
        );
        let argon2_yield = Counter::<f64, AtomicU64>::default();
        registry.register(
            "argon2_yield_seconds",
            "Seconds the password hashing threads rested to give a contended CPU to other work",
            argon2_yield.clone(),
        );
        let db_in_use = Gauge::default();
        registry.register(
            "db_pool_connections_in_use",
            "Database connections checked out of the pool",
            db_in_use.clone(),
        );
        let db_idle = Gauge::default();
        registry.register(
            "db_pool_connections_idle",
            "Open database connections idle in the pool",
            db_idle.clone(),
        );
        let active_key_age = Family::<AlgLabel, Gauge>::default();
        registry.register(
            "keyring_active_key_age_seconds",
            "Seconds since the active key of each algorithm started signing",
            active_key_age.clone(),
        );
        let next_transition = Gauge::default();
        registry.register(
            "keyring_next_transition_seconds",
            "Seconds until the next planned key transition (-1: none planned)",
            next_transition.clone(),
        );
        let last_transition_ok = Gauge::default();
        registry.register(
            "keyring_last_transition_success",
            "1 if the scheduler's last lifecycle pass succeeded, 0 if it failed",
            last_transition_ok.clone(),
        );
        let transition_failures = Gauge::default();
        registry.register(
            "keyring_transition_failures",
            "Scheduled key transitions that failed since start",
            transition_failures.clone(),
        );
        let ring_version = Gauge::default();
        registry.register(
            "keyring_version",
            "Version of the key ring this server signs with",
            ring_version.clone(),
        );
        let reload_age = Gauge::default();
        registry.register(
            "keyring_seconds_since_reload",
            "Seconds since this server last checked the key ring successfully (-1: never)",
            reload_age.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            http_requests,
            http_latency,
            tokens_issued,
            refresh_reuse,
            refresh_state_kept,
            refresh_state_read,
            rate_limited,
            lockouts,
            argon2_queue_depth,
            argon2_buffers,
            argon2_yield,
            argon2_yield_reported: AtomicU64::new(0),
            db_in_use,
            db_idle,
            active_key_age,
            next_transition,
            last_transition_ok,
            transition_failures,
            ring_version,
            reload_age,
        }))
    }

    /// One answered HTTP request.
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = HttpLabels {
            route: route.to_string(),
            method: method.to_string(),
            status,
        };
        self.0.http_requests.get_or_create(&labels).inc();
        self.0.http_latency.get_or_create(&labels).observe(seconds);
    }

    /// One access token issued by `grant` (wire name) signed with `alg`.
    pub fn token_issued(&self, grant: &str, alg: Alg) {
        self.0
            .tokens_issued
            .get_or_create(&TokenLabels {
                grant: grant.to_string(),
                alg: alg.as_str().to_string(),
            })
            .inc();
    }

    pub fn refresh_reuse_detected(&self) {
        self.0.refresh_reuse.inc();
    }

    /// A refresh grant looked up its token's state: kept by this process
    /// (`kept == true`) or read from the database.
    pub fn refresh_state_lookup(&self, kept: bool) {
        if kept {
            self.0.refresh_state_kept.inc();
        } else {
            self.0.refresh_state_read.inc();
        }
    }

    /// A request refused by the rate limiter named `limiter`.
    pub fn rate_limited(&self, limiter: &str) {
        self.0
            .rate_limited
            .get_or_create(&LimiterLabel {
                limiter: limiter.to_string(),
            })
            .inc();
    }

    pub fn lockout(&self) {
        self.0.lockouts.inc();
    }

    /// Password hashes waiting for a computation slot right now.
    pub fn set_argon2_queue_depth(&self, depth: usize) {
        self.0
            .argon2_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn set_argon2_buffers(&self, n: usize) {
        self.0
            .argon2_buffers
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The hashing threads' total rest so far (microseconds, never
    /// decreasing); the counter advances by what was not reported yet, so
    /// concurrent scrapes each add a disjoint part.
    pub fn set_argon2_yield_micros(&self, total: u64) {
        let m = &self.0;
        let before = m.argon2_yield_reported.fetch_max(total, Ordering::Relaxed);
        if total > before {
            #[allow(clippy::cast_precision_loss, reason = "seconds as f64")]
            m.argon2_yield.inc_by((total - before) as f64 / 1e6);
        }
    }

    /// Set the gauges that mirror state kept elsewhere; called per scrape.
    pub fn observe(&self, o: &Observed<'_>) {
        let m = &self.0;
        for key in o.ring.keys() {
            if key.state == KeyState::Active {
                let since = key.row.activated_at.unwrap_or(key.row.created_at);
                m.active_key_age
                    .get_or_create(&AlgLabel {
                        alg: key.alg.as_str().to_string(),
                    })
                    .set(o.now.saturating_sub(since).max(0));
            }
        }
        m.next_transition.set(
            o.next_transition_at
                .map_or(-1, |t| t.saturating_sub(o.now).max(0)),
        );
        m.last_transition_ok
            .set(i64::from(o.consecutive_failures == 0));
        m.transition_failures
            .set(i64::try_from(o.transition_failures).unwrap_or(i64::MAX));
        m.ring_version.set(o.ring.version);
        m.reload_age.set(if o.last_reload_ok_at == 0 {
            -1
        } else {
            o.now.saturating_sub(o.last_reload_ok_at).max(0)
        });
        let idle = u32::try_from(o.pool_idle).unwrap_or(u32::MAX);
        m.db_idle.set(i64::from(idle));
        m.db_in_use.set(i64::from(o.pool_size.saturating_sub(idle)));
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)?;
        Ok(out)
    }
}

/// The earliest planned transition in `rows` after `now` (activation,
/// pre-publication or unpublication), as `lifecycle::upcoming` reports them.
pub fn next_transition(
    now: UnixTime,
    rows: &[KeyRow],
    cfg: &crate::config::KeysConfig,
) -> Option<UnixTime> {
    crate::keyring::lifecycle::upcoming(now, rows, cfg)
        .into_iter()
        .flat_map(|u| {
            [u.next_activation_at, u.next_prepublish_at]
                .into_iter()
                .flatten()
                .chain(u.retirements.into_iter().map(|(_, at)| at))
        })
        .filter(|t| *t >= now)
        .min()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::Metrics;

    fn yield_line(m: &Metrics) -> String {
        m.encode()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("latchkey_argon2_yield_seconds_total "))
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_argon2_rest_counter_advances_by_what_was_not_reported_and_never_back() {
        let m = Metrics::new();
        m.set_argon2_yield_micros(1_500_000);
        assert_eq!(yield_line(&m), "latchkey_argon2_yield_seconds_total 1.5");
        // The same total again (a second scrape) adds nothing.
        m.set_argon2_yield_micros(1_500_000);
        assert_eq!(yield_line(&m), "latchkey_argon2_yield_seconds_total 1.5");
        // A total read before another scrape reported a larger one adds nothing.
        m.set_argon2_yield_micros(1_000_000);
        assert_eq!(yield_line(&m), "latchkey_argon2_yield_seconds_total 1.5");
        m.set_argon2_yield_micros(2_000_000);
        assert_eq!(yield_line(&m), "latchkey_argon2_yield_seconds_total 2.0");
    }
}
