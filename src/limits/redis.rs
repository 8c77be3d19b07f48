//! GCRA counts shared through Redis: one Lua script per check, so the test
//! and the update of every key of a request are one atomic step however many
//! replicas ask at once. Time is Redis' own `TIME`, so replicas with skewed
//! clocks still agree. Keys are `prefix + key` and expire when their arrival
//! time has passed. (All keys of one check must live on one node: a plain
//! server or a primary, not a cluster spread across slots.)
//!
//! Every call is bounded by a short timeout. A failure or timeout marks Redis
//! down (logged once), drops the connection and starts one background task
//! that reconnects every half second and logs the recovery; until then
//! [`RedisGcra::check`] answers `None` and the caller falls back to the
//! in-process counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use super::LimitKey;
use crate::config::Secret;

/// KEYS: the limit keys; ARGV: per key, its interval and tolerance in µs
/// (tolerance = (burst − 1) × interval). Returns 0 when allowed (every key
/// charged), else the wait in µs before the most restrictive key allows.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local tats = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local w = tat - now - tonumber(ARGV[2 * i])
  if w > wait then wait = w end
end
if wait > 0 then return math.ceil(wait) end
for i = 1, #KEYS do
  local new = tats[i] + tonumber(ARGV[2 * i - 1])
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
return 0
";

/// How often the background task tries to reconnect while Redis is down.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub struct RedisGcra {
    client: Option<redis::Client>,
    conn: ArcSwapOption<MultiplexedConnection>,
    healthy: AtomicBool,
    reconnecting: AtomicBool,
    timeout: Duration,
    prefix: String,
    script: redis::Script,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RedisGcra {
    /// Open a client for `url` and try one bounded connection; on failure
    /// start in fallback with the reconnect task running.
    pub async fn connect(url: &Secret, prefix: String, timeout: Duration) -> Arc<Self> {
        let client = std::str::from_utf8(url.expose())
            .ok()
            .and_then(|u| redis::Client::open(u).ok());
        if client.is_none() {
            tracing::error!("rate_limit.redis_url cannot be parsed; enforcing per-process limits");
        }
        let this = Arc::new(Self {
            client,
            conn: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            reconnecting: AtomicBool::new(false),
            timeout,
            prefix,
            script: redis::Script::new(GCRA_LUA),
        });
        if this.try_connect().await {
            tracing::info!("rate limits shared through Redis");
        } else {
            tracing::warn!(
                alert = "rate_limit_redis_down",
                "rate-limit Redis unreachable at start-up; enforcing per-process limits until it answers"
            );
            this.start_reconnect();
        }
        this
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    async fn try_connect(&self) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        // Connecting is allowed longer than one check: it happens off the
        // request path.
        let bound = self.timeout.max(Duration::from_secs(1));
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(bound, client.get_multiplexed_async_connection()).await
        else {
            return false;
        };
        let ping =
            tokio::time::timeout(bound, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        if !matches!(ping, Ok(Ok(_))) {
            return false;
        }
        self.conn.store(Some(Arc::new(conn)));
        self.healthy.store(true, Ordering::Release);
        true
    }

    fn start_reconnect(self: &Arc<Self>) {
        if self.client.is_none() || self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONNECT_EVERY).await;
                // The server that owned this limiter is gone: stop.
                let Some(this) = weak.upgrade() else { return };
                if this.try_connect().await {
                    this.reconnecting.store(false, Ordering::Release);
                    tracing::warn!(
                        alert = "rate_limit_redis_recovered",
                        "rate-limit Redis reachable again; limits are shared across replicas"
                    );
                    return;
                }
            }
        });
    }

    fn mark_down(self: &Arc<Self>, why: &str) {
        self.conn.store(None);
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                alert = "rate_limit_redis_down",
                error = why,
                "rate-limit Redis unreachable; enforcing per-process limits until it returns"
            );
        }
        self.start_reconnect();
    }

    /// `Some(decision)` from Redis (`None` inside = allowed), or `None` when
    /// Redis is down or did not answer in time (the caller falls back).
    pub async fn check(self: &Arc<Self>, keys: &[LimitKey]) -> Option<Option<Duration>> {
        let conn = self.conn.load_full()?;
        let mut conn = (*conn).clone();
        let mut invocation = self.script.prepare_invoke();
        for k in keys {
            let interval = micros(k.rate.interval);
            invocation
                .key(format!("{}{}", self.prefix, k.key))
                .arg(interval)
                .arg(interval.saturating_mul(k.rate.burst.saturating_sub(1)));
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(0)) => Some(None),
            Ok(Ok(wait)) => Some(Some(Duration::from_micros(
                u64::try_from(wait).unwrap_or(1),
            ))),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                None
            }
            Err(_) => {
                self.mark_down("timed out");
                None
            }
        }
    }
}
