//! Account lockout: failed password logins are counted per account, and after
//! `threshold` counted failures the account is refused for a delay that
//! doubles with every further counted failure (from `base_delay_secs`, capped
//! at `max_delay_secs`). A success resets the count; an operator unlocks with
//! `latchkey users unlock` or `POST /admin/users/{username}/unlock`.
//!
//! Lockout is itself a denial-of-service lever, so one address cannot pull it
//! alone: each source address may contribute at most `per_source_failures`
//! counted failures to one account per `per_source_window_secs` (a GCRA key
//! in the shared limiter, so replicas agree when Redis is used). With the
//! defaults (5 to lock, 3 per address per 15 min) locking someone out takes
//! failures from at least two addresses, and each of those is also bound by
//! the per-address and per-username rate limits. Failures while the account is
//! locked are not counted, so an attacker cannot keep extending the lock; what
//! they still can do, from several addresses, is hold an account locked for
//! the capped delay, which is the price of stopping distributed guessing.
//!
//! The answer to a refused login is the same `invalid_grant` whether the
//! account is unknown, locked, or the password is wrong, after the same
//! argon2 work: this module only decides, the grant does the talking.

use std::sync::Arc;

use crate::clock::UnixTime;
use crate::config::LockoutConfig;
use crate::limits::{LimitKey, Limits};
use crate::oauth::RequestContext;
use crate::store::{Store, StoreError, UserRow};

#[derive(Clone)]
pub struct Lockout {
    cfg: Arc<LockoutConfig>,
    limits: Limits,
    store: Store,
}

impl Lockout {
    pub fn new(cfg: LockoutConfig, limits: Limits, store: Store) -> Self {
        Self {
            cfg: Arc::new(cfg),
            limits,
            store,
        }
    }

    /// Is this account refusing logins right now?
    pub fn is_locked(&self, user: &UserRow, now: UnixTime) -> bool {
        self.cfg.threshold > 0 && user.locked_until.is_some_and(|t| t > now)
    }

    /// The lock delay after `count` counted failures, if any.
    pub fn delay_after(&self, count: i64) -> Option<u64> {
        let threshold = i64::from(self.cfg.threshold);
        if self.cfg.threshold == 0 || count < threshold {
            return None;
        }
        let doublings = u32::try_from((count - threshold).min(40)).unwrap_or(40);
        Some(
            self.cfg
                .base_delay_secs
                .saturating_mul(1u64 << doublings)
                .min(self.cfg.max_delay_secs),
        )
    }

    /// A wrong password for a known, unlocked account: count it (if this
    /// source has not used up its share) and lock when due.
    pub async fn record_failure(
        &self,
        user: &UserRow,
        ctx: &RequestContext,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        if self.cfg.threshold == 0 {
            return Ok(());
        }
        let source = ctx
            .ip
            .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        let share = LimitKey {
            key: format!("lockout:{}:{source}", user.id),
            rate: self.cfg.per_source,
        };
        if self.limits.check_keys(&[share]).await.is_some() {
            tracing::info!(user_id = %user.id, "failed login not counted: this address has used its share");
            return Ok(());
        }
        let count = self.store.count_login_failure(&user.id, now).await?;
        if let Some(delay) = self.delay_after(count) {
            let until = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            self.store.lock_user(&user.id, until).await?;
            tracing::warn!(user_id = %user.id, failures = count, delay_secs = delay, "account locked");
            if let Some(o) = self.limits.observer() {
                o.metrics.lockout();
                let event = o
                    .audit
                    .event(crate::audit::EventType::Lockout)
                    .user(&user.id)
                    .subject(&user.username)
                    .context(ctx)
                    .message(format!("locked for {delay} s after {count} failures"))
                    .detail(serde_json::json!({ "failures": count, "delay_secs": delay, "until": until }));
                o.audit.record(event).await;
            }
        }
        Ok(())
    }

    /// A successful login clears the count.
    pub async fn record_success(&self, user: &UserRow) -> Result<(), StoreError> {
        if user.failed_logins > 0 || user.locked_until.is_some() {
            self.store.reset_login_failures(&user.id).await?;
        }
        Ok(())
    }
}
