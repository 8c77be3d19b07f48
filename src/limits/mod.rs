//! Rate limits: how many requests one client address, one OAuth client and
//! one username may make per endpoint, decided before any expensive work.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept
//! as one "theoretical arrival time" per key): a key may make `burst` requests
//! at once and then one per `interval`. [`Limits::check`] tests every key of a
//! request together and consumes from none of them unless all allow it, so a
//! request refused for its username does not also spend its address's budget.
//!
//! Two backends with the same semantics: in-process ([`memory`], the default;
//! each replica counts for itself) and Redis ([`redis`], one atomic Lua script
//! per check, so replicas enforce one combined limit). When Redis does not
//! answer within its timeout, the check falls back to the in-process counts —
//! limits stay enforced per replica, never fail open — and the outage is
//! logged once, reported by [`Limits::redis_healthy`], and repaired by a
//! background reconnect.
//!
//! This module decides; it knows no HTTP. It measures intervals with the
//! monotonic clock (`Instant`) or Redis' own `TIME`, never the wall clock: a
//! rate is a duration, not a time of day.

pub mod lockout;
pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EndpointLimits, Rate, RateLimitBackend, RateLimitConfig};
use crate::oauth::{Error, RequestContext};

/// The endpoints with their own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revoke,
    Introspect,
    /// `/account/*`: self-service account endpoints.
    Account,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Revoke => "revoke",
            Self::Introspect => "introspect",
            Self::Account => "account",
        }
    }
}

/// One limit to test: a key (already namespaced) and its rate.
#[derive(Debug, Clone)]
pub struct LimitKey {
    pub key: String,
    pub rate: Rate,
}

/// The rate limiter of one server. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    cfg: Arc<RateLimitConfig>,
    memory: Arc<memory::MemoryGcra>,
    redis: Option<Arc<redis::RedisGcra>>,
    observer: Arc<std::sync::OnceLock<Observer>>,
    /// When a refusal was last written to the audit log, per endpoint and address.
    audited: Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>>,
}

/// The metrics and audit log refusals and lockouts are reported to.
pub(crate) struct Observer {
    pub metrics: crate::metrics::Metrics,
    pub audit: crate::audit::Audit,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("enabled", &self.cfg.enabled)
            .field("redis", &self.redis_healthy())
            .finish()
    }
}

/// The address a limit is keyed by: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64, so per-address keys would be free to multiply).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Whole seconds to wait, at least one.
fn retry_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl Limits {
    /// Build the limiter; with the Redis backend, connect (bounded) or start
    /// in fallback and keep trying in the background.
    pub async fn new(cfg: RateLimitConfig) -> Self {
        let redis = match &cfg.backend {
            RateLimitBackend::Memory => None,
            RateLimitBackend::Redis {
                url,
                prefix,
                timeout,
            } => Some(redis::RedisGcra::connect(url, prefix.clone(), *timeout).await),
        };
        Self {
            cfg: Arc::new(cfg),
            memory: Arc::new(memory::MemoryGcra::new()),
            redis,
            observer: Arc::default(),
            audited: Arc::default(),
        }
    }

    fn endpoint(&self, endpoint: Endpoint) -> &EndpointLimits {
        match endpoint {
            Endpoint::Token => &self.cfg.token,
            Endpoint::Revoke => &self.cfg.revoke,
            Endpoint::Introspect => &self.cfg.introspect,
            Endpoint::Account => &self.cfg.account,
        }
    }

    /// Check the limits of `endpoint` for the caller's address (from `ctx`),
    /// the client and the username, whichever are given; `rate_limited` with
    /// a retry time when any is exceeded.
    pub async fn check(
        &self,
        endpoint: Endpoint,
        ctx: &RequestContext,
        client_id: Option<&str>,
        username: Option<&str>,
    ) -> Result<(), Error> {
        if !self.cfg.enabled {
            return Ok(());
        }
        let limits = self.endpoint(endpoint);
        let name = endpoint.as_str();
        let mut keys = Vec::with_capacity(3);
        if let (Some(rate), Some(ip)) = (limits.per_ip, ctx.ip) {
            keys.push(LimitKey {
                key: format!("{name}:ip:{}", ip_key(ip)),
                rate,
            });
        }
        if let (Some(rate), Some(c)) = (limits.per_client, client_id) {
            keys.push(LimitKey {
                key: format!("{name}:client:{c}"),
                rate,
            });
        }
        if let (Some(rate), Some(u)) = (limits.per_username, username) {
            // By default per username *and* address: a budget per username
            // alone would let one address keep a user from logging in by
            // spending it. Guessing spread over many addresses is lockout's job.
            let key = match (self.cfg.per_username_by_address, ctx.ip) {
                (true, Some(ip)) => format!("{name}:user:{u}:{}", ip_key(ip)),
                _ => format!("{name}:user:{u}"),
            };
            keys.push(LimitKey { key, rate });
        }
        match self.check_keys(&keys).await {
            None => Ok(()),
            Some(wait) => {
                tracing::info!(endpoint = name, retry_after_ms = %wait.as_millis(), "rate limited");
                self.observe_refusal(name, ctx, client_id).await;
                Err(Error::rate_limited(retry_secs(wait)))
            }
        }
    }

    /// Count a refusal, and record it as an audit event at most once a
    /// minute per endpoint and address: a flood must not turn into a flood of
    /// database writes.
    async fn observe_refusal(&self, endpoint: &str, ctx: &RequestContext, client_id: Option<&str>) {
        let Some(o) = self.observer.get() else { return };
        o.metrics.rate_limited(endpoint);
        let key = format!(
            "{endpoint}:{}",
            ctx.ip
                .map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
        );
        let now = tokio::time::Instant::now();
        let fresh = match self.audited.lock() {
            Ok(mut seen) => {
                if seen.len() > 10_000 {
                    seen.clear();
                }
                match seen.get(&key) {
                    Some(at) if now.duration_since(*at) < Duration::from_secs(60) => false,
                    _ => {
                        seen.insert(key, now);
                        true
                    }
                }
            }
            Err(_) => false,
        };
        if fresh {
            let event = o
                .audit
                .event(crate::audit::EventType::RateLimited)
                .client(client_id.unwrap_or(""))
                .context(ctx)
                .message(format!("rate limited at {endpoint}"))
                .detail(serde_json::json!({ "endpoint": endpoint }));
            o.audit.record(event).await;
        }
    }

    /// Where refusals and lockouts are counted and recorded (set once at
    /// assembly; a limiter without one only limits).
    pub fn observe_with(&self, metrics: crate::metrics::Metrics, audit: crate::audit::Audit) {
        let _ = self.observer.set(Observer { metrics, audit });
    }

    pub(crate) fn observer(&self) -> Option<&Observer> {
        self.observer.get()
    }

    /// Test and, when all allow, consume one request from every key: `None`
    /// when allowed, or how long until the most restrictive key allows.
    /// Not subject to `enabled` (lockout uses it for its own accounting).
    pub async fn check_keys(&self, keys: &[LimitKey]) -> Option<Duration> {
        if keys.is_empty() {
            return None;
        }
        if let Some(redis) = &self.redis
            && let Some(decision) = redis.check(keys).await
        {
            return decision;
        }
        self.memory.check(keys)
    }

    /// `None` with the in-process backend; otherwise whether Redis answered
    /// the last check (false: this replica enforces its own counts).
    pub fn redis_healthy(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.healthy())
    }

    /// The configured backend's name, for health output.
    pub fn backend(&self) -> &'static str {
        match self.cfg.backend {
            RateLimitBackend::Memory => "memory",
            RateLimitBackend::Redis { .. } => "redis",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
    }
}
