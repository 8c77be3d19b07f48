//! The JWKS cache: when to fetch, and what to serve meanwhile.
//!
//! This module owns the cached key set and every decision about freshness.
//! The current state is one immutable [`Snapshot`] behind an `ArcSwap`, so the
//! hot path is a pointer load and a hash-map read with no lock. All writes
//! happen under one async mutex, which is what makes fetches single-flight: a
//! caller that waited for the mutex first checks whether the snapshot changed
//! while it waited (the `attempt` counter) and, if so, shares that result
//! instead of fetching again. Time comes only from the injected clock. This
//! module must not parse tokens or know about claims; it hands out key sets.
//!
//! Freshness policy:
//! - a fetched set is fresh for `max-age` (minus `Age`), clamped to the
//!   configured floor and ceiling, or the default when the issuer says nothing;
//! - at 80 % of that lifetime the first request to notice spawns a background
//!   revalidation (conditional on the `ETag`), so a busy service never waits;
//! - once fresh time has run out (an idle service), the next request waits for
//!   the revalidation, because serving possibly retired keys without asking is
//!   what the cache lifetime forbids;
//! - if a fetch fails, the old keys stay in use for up to `stale_if_error`
//!   past their fresh time, with retries at most once per cool-down and in the
//!   background; after that, verification fails with `KeysUnavailable`;
//! - a `kid` not in the set triggers one refetch, at most once per cool-down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};

use crate::clock::Clock;
use crate::error::{FetchError, VerifyError};
use crate::fetch::{JwksResponse, JwksSource};
use crate::jwk::KeySet;

const NEVER: u64 = u64::MAX;

/// Cache timing, in seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachePolicy {
    pub(crate) min_ttl: u64,
    pub(crate) max_ttl: u64,
    pub(crate) default_ttl: u64,
    pub(crate) cooldown: u64,
    pub(crate) stale_if_error: u64,
}

impl CachePolicy {
    fn ttl(&self, max_age: Option<u64>) -> u64 {
        max_age
            .unwrap_or(self.default_ttl)
            .clamp(self.min_ttl, self.max_ttl)
    }
}

/// One immutable state of the cache.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) keys: Arc<KeySet>,
    etag: Option<Arc<str>>,
    /// The `max-age` of the last 200, reused when a 304 carries none (RFC
    /// 9111 section 4.3.4: a 304 updates only the headers it sends).
    max_age: Option<u64>,
    /// When a background revalidation should start (80 % of the lifetime).
    refresh_at: u64,
    /// When the set stops being fresh.
    fresh_until: u64,
    /// After a failed fetch: no new attempt before this time.
    retry_at: u64,
    /// The error of the last attempt, if it failed.
    last_error: Option<Arc<FetchError>>,
    /// Counts fetch attempts; a changed value means someone else fetched.
    pub(crate) attempt: u64,
}

impl Snapshot {
    fn fixed(keys: KeySet) -> Snapshot {
        Snapshot {
            keys: Arc::new(keys),
            etag: None,
            max_age: None,
            refresh_at: NEVER,
            fresh_until: NEVER,
            retry_at: 0,
            last_error: None,
            attempt: 0,
        }
    }

    pub(crate) fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    not_modified: AtomicU64,
    failures: AtomicU64,
    unknown_kid_refetches: AtomicU64,
}

/// Numbers about the cache, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// JWKS requests sent (including the first one and revalidations).
    pub jwks_requests: u64,
    /// Revalidations answered with 304 Not Modified.
    pub jwks_not_modified: u64,
    /// JWKS requests that failed (transport, status, or an unusable document).
    pub jwks_failures: u64,
    /// Refetches triggered by a token with an unknown `kid`.
    pub unknown_kid_refetches: u64,
    /// Keys in the current set.
    pub keys: usize,
    /// When the current set stops being fresh (Unix seconds); `None` for a
    /// static set.
    pub fresh_until: Option<u64>,
}

/// Why a fetch is made; only for counting and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Ahead,
    Expired,
    UnknownKid,
    Forced,
}

pub(crate) struct KeyCache {
    current: ArcSwap<Snapshot>,
    source: Option<JwksSource>,
    /// Held while a fetch is in flight; see the module doc.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Whether a background revalidation task is running.
    refreshing: AtomicBool,
    /// When the last unknown-kid refetch completed (`NEVER` if none).
    last_unknown_kid_refetch: AtomicU64,
    policy: CachePolicy,
    clock: Arc<dyn Clock>,
    counters: Counters,
}

impl KeyCache {
    /// A cache over a fixed key set: never fetches, never expires.
    pub(crate) fn fixed(keys: KeySet, policy: CachePolicy, clock: Arc<dyn Clock>) -> KeyCache {
        KeyCache {
            current: ArcSwap::from_pointee(Snapshot::fixed(keys)),
            source: None,
            fetch_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            last_unknown_kid_refetch: AtomicU64::new(NEVER),
            policy,
            clock,
            counters: Counters::default(),
        }
    }

    /// A cache over the issuer's JWKS, loaded once before returning.
    pub(crate) async fn remote(
        source: JwksSource,
        policy: CachePolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyCache, FetchError> {
        let counters = Counters::default();
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let (keys, etag, max_age) = match source.fetch(None).await {
            Ok(JwksResponse::Fresh {
                keys,
                etag,
                max_age,
            }) => (keys, etag, max_age),
            // `fetch` only reports 304 when it sent an ETag, and there is none yet.
            Ok(JwksResponse::NotModified { .. }) => {
                return Err(FetchError::Status {
                    url: source.jwks_uri().to_owned(),
                    status: 304,
                });
            }
            Err(e) => return Err(e),
        };
        let now = clock.now();
        let ttl = policy.ttl(max_age);
        let snapshot = Snapshot {
            keys: Arc::new(keys),
            etag: etag.map(Arc::from),
            max_age,
            refresh_at: refresh_point(now, ttl),
            fresh_until: now.saturating_add(ttl),
            retry_at: 0,
            last_error: None,
            attempt: 0,
        };
        Ok(KeyCache {
            current: ArcSwap::from_pointee(snapshot),
            source: Some(source),
            fetch_lock: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            last_unknown_kid_refetch: AtomicU64::new(NEVER),
            policy,
            clock,
            counters,
        })
    }

    /// The current snapshot, without taking a reference count.
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let snap = self.current.load();
        CacheStats {
            jwks_requests: self.counters.requests.load(Ordering::Relaxed),
            jwks_not_modified: self.counters.not_modified.load(Ordering::Relaxed),
            jwks_failures: self.counters.failures.load(Ordering::Relaxed),
            unknown_kid_refetches: self.counters.unknown_kid_refetches.load(Ordering::Relaxed),
            keys: snap.keys.len(),
            fresh_until: (snap.fresh_until != NEVER).then_some(snap.fresh_until),
        }
    }

    /// Called on the hot path with a fresh snapshot: past 80 % of its
    /// lifetime, start one background revalidation and return at once.
    pub(crate) fn refresh_ahead(self: &Arc<Self>, snap: &Snapshot, now: u64) {
        if now < snap.refresh_at || now < snap.retry_at || self.source.is_none() {
            return;
        }
        self.spawn_refresh(snap.attempt, Reason::Ahead);
    }

    fn spawn_refresh(self: &Arc<Self>, seen_attempt: u64, reason: Reason) {
        // Without a tokio runtime (an unusual executor) there is no background:
        // the request that finds the set expired revalidates instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        runtime.spawn(async move {
            // Reset the flag even if the task is cancelled mid-fetch (runtime
            // shut-down), so a later request can start a new one.
            struct Reset<'a>(&'a AtomicBool);
            impl Drop for Reset<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _reset = Reset(&this.refreshing);
            this.refresh(seen_attempt, reason).await;
        });
    }

    /// A snapshot that may be used now, for a caller that found the current
    /// one no longer fresh. May wait for a revalidation.
    pub(crate) async fn usable(self: &Arc<Self>, now: u64) -> Result<Arc<Snapshot>, VerifyError> {
        let cur = self.current.load_full();
        if cur.is_fresh(now) || self.source.is_none() {
            return Ok(cur);
        }
        let within_stale =
            |snap: &Snapshot| now < snap.fresh_until.saturating_add(self.policy.stale_if_error);
        // Already failing: do not make this request wait for another attempt
        // against an issuer that just failed; serve the old keys while
        // allowed and retry in the background.
        if let Some(err) = &cur.last_error {
            if now >= cur.retry_at {
                self.spawn_refresh(cur.attempt, Reason::Expired);
            }
            return if within_stale(&cur) {
                Ok(cur)
            } else {
                Err(VerifyError::KeysUnavailable(Arc::clone(err)))
            };
        }
        let snap = self.refresh(cur.attempt, Reason::Expired).await;
        match &snap.last_error {
            None => Ok(snap),
            Some(_) if within_stale(&snap) => Ok(snap),
            Some(err) => Err(VerifyError::KeysUnavailable(Arc::clone(err))),
        }
    }

    /// For a caller whose `kid` was not in the snapshot numbered
    /// `seen_attempt`: a newer snapshot to look in, or `None` when there is
    /// nothing newer and the cool-down forbids a refetch.
    pub(crate) async fn after_unknown_kid(
        &self,
        seen_attempt: u64,
        now: u64,
    ) -> Option<Arc<Snapshot>> {
        self.source.as_ref()?;
        let cur = self.current.load_full();
        if cur.attempt != seen_attempt {
            return Some(cur);
        }
        let last = self.last_unknown_kid_refetch.load(Ordering::Acquire);
        if last != NEVER && now < last.saturating_add(self.policy.cooldown) {
            return None;
        }
        Some(self.refresh(seen_attempt, Reason::UnknownKid).await)
    }

    /// Revalidates now, whatever the freshness; for operators and tests.
    pub(crate) async fn force_refresh(&self) -> Result<(), Arc<FetchError>> {
        let seen = self.current.load().attempt;
        match &self.refresh(seen, Reason::Forced).await.last_error {
            None => Ok(()),
            Some(err) => Err(Arc::clone(err)),
        }
    }

    /// The single-flight fetch. Returns the snapshot after the attempt, which
    /// is someone else's if the state moved on while this caller waited.
    async fn refresh(&self, seen_attempt: u64, reason: Reason) -> Arc<Snapshot> {
        let _flight = self.fetch_lock.lock().await;
        let cur = self.current.load_full();
        let Some(source) = &self.source else {
            return cur;
        };
        if cur.attempt != seen_attempt {
            return cur;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if reason == Reason::UnknownKid {
            self.counters
                .unknown_kid_refetches
                .fetch_add(1, Ordering::Relaxed);
        }
        let result = source.fetch(cur.etag.as_deref()).await;
        // Times are taken after the response, so a slow fetch does not eat
        // into the lifetime it grants.
        let now = self.clock.now();
        let next = match result {
            Ok(JwksResponse::Fresh {
                keys,
                etag,
                max_age,
            }) => {
                let ttl = self.policy.ttl(max_age);
                tracing::debug!(?reason, keys = keys.len(), ttl, "JWKS loaded");
                Snapshot {
                    keys: Arc::new(keys),
                    etag: etag.map(Arc::from),
                    max_age,
                    refresh_at: refresh_point(now, ttl),
                    fresh_until: now.saturating_add(ttl),
                    retry_at: 0,
                    last_error: None,
                    attempt: cur.attempt + 1,
                }
            }
            Ok(JwksResponse::NotModified { max_age }) => {
                self.counters.not_modified.fetch_add(1, Ordering::Relaxed);
                let max_age = max_age.or(cur.max_age);
                let ttl = self.policy.ttl(max_age);
                tracing::debug!(?reason, ttl, "JWKS not modified");
                Snapshot {
                    keys: Arc::clone(&cur.keys),
                    etag: cur.etag.clone(),
                    max_age,
                    refresh_at: refresh_point(now, ttl),
                    fresh_until: now.saturating_add(ttl),
                    retry_at: 0,
                    last_error: None,
                    attempt: cur.attempt + 1,
                }
            }
            Err(err) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?reason, error = %err, "JWKS fetch failed; keeping the cached keys");
                Snapshot {
                    keys: Arc::clone(&cur.keys),
                    etag: cur.etag.clone(),
                    max_age: cur.max_age,
                    refresh_at: cur.refresh_at,
                    fresh_until: cur.fresh_until,
                    retry_at: now.saturating_add(self.policy.cooldown),
                    last_error: Some(Arc::new(err)),
                    attempt: cur.attempt + 1,
                }
            }
        };
        if reason == Reason::UnknownKid {
            // Set after the fetch, not before: requests that arrive while it
            // is in flight must wait for it and share its result, not be told
            // "unknown kid" by a cool-down that started a moment ago.
            self.last_unknown_kid_refetch.store(now, Ordering::Release);
        }
        let next = Arc::new(next);
        self.current.store(Arc::clone(&next));
        next
    }
}

/// Background revalidation starts at 80 % of the lifetime: early enough that
/// a slow or retried fetch still lands before expiry, late enough that the
/// issuer sees few extra requests.
fn refresh_point(now: u64, ttl: u64) -> u64 {
    now.saturating_add(ttl - ttl / 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_and_defaulted() {
        let policy = CachePolicy {
            min_ttl: 60,
            max_ttl: 3600,
            default_ttl: 300,
            cooldown: 30,
            stale_if_error: 600,
        };
        assert_eq!(policy.ttl(Some(5)), 60);
        assert_eq!(policy.ttl(Some(86_400)), 3600);
        assert_eq!(policy.ttl(Some(900)), 900);
        assert_eq!(policy.ttl(None), 300);
    }

    #[test]
    fn refresh_point_is_eighty_percent() {
        assert_eq!(refresh_point(1000, 100), 1080);
        assert_eq!(refresh_point(1000, 1), 1001);
    }
}
