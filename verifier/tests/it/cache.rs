//! The JWKS cache against a real HTTP issuer: discovery, max-age with its
//! clamps, ETag revalidation, rotation, single-flight, cool-down and
//! stale-if-error. Freshness runs on the injected clock, so no test sleeps
//! to let time pass.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use latchkey_verifier::{
    BuildError, FetchError, ManualClock, Verifier, VerifierBuilder, VerifyError,
};
use serde_json::json;

use crate::support::*;

fn builder(issuer: &Issuer, clock: &Arc<ManualClock>) -> VerifierBuilder {
    Verifier::builder(&issuer.url)
        .audience(&issuer.url)
        .clock(Arc::clone(clock))
        .cache_ttl_bounds(Duration::from_secs(10), Duration::from_secs(3600))
        .refetch_cooldown(Duration::from_secs(30))
        .stale_if_error(Duration::from_secs(300))
}

fn token(issuer: &Issuer, key: &TestKey, now: u64) -> String {
    key.token(&claims_for(&issuer.url, &issuer.url, now))
}

#[tokio::test]
async fn build_reads_discovery_and_the_jwks_once() {
    let issuer = Issuer::start(jwks(&[rsa_key(), ec_key()])).await;
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    assert_eq!(v.key_ids(), vec!["ec-1".to_owned(), "rsa-1".to_owned()]);
    assert_eq!(issuer.ctl.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(issuer.hits(), 1);
    assert_eq!(
        v.verify(&token(&issuer, rsa_key(), T0)).await.unwrap().sub,
        "alice"
    );
    assert_eq!(
        v.verify(&token(&issuer, ec_key(), T0)).await.unwrap().sub,
        "alice"
    );
    assert_eq!(issuer.hits(), 1);
    assert_eq!(v.stats().jwks_requests, 1);
}

#[tokio::test]
async fn discovery_issuer_must_match_exactly() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    *issuer.ctl.discovery_issuer.lock().unwrap() = Some(format!("{}/", issuer.url));
    let err = builder(&issuer, &clock()).build().await.unwrap_err();
    assert!(
        matches!(&err, BuildError::Fetch(FetchError::IssuerMismatch { found, .. }) if *found == format!("{}/", issuer.url)),
        "{err:?}"
    );
    assert_eq!(issuer.hits(), 0);
}

#[tokio::test]
async fn oversized_jwks_body_is_refused() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.oversize.store(true, Ordering::SeqCst);
    let err = builder(&issuer, &clock()).build().await.unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Fetch(FetchError::BodyTooLarge { max: 262_144, .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn max_age_is_honoured_no_refetch_while_fresh_then_revalidated() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("public, max-age=600");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    assert_eq!(v.stats().fresh_until, Some(T0 + 600));

    // Up to 80 % of the lifetime: no request at all.
    for t in [T0, T0 + 100, T0 + 479] {
        clock.set(t);
        v.verify(&token(&issuer, rsa_key(), t)).await.unwrap();
    }
    assert_eq!(issuer.hits(), 1);

    // After the lifetime: the request waits for the revalidation.
    clock.set(T0 + 600);
    v.verify(&token(&issuer, rsa_key(), T0 + 600))
        .await
        .unwrap();
    assert_eq!(issuer.hits(), 2);
    assert_eq!(v.stats().fresh_until, Some(T0 + 1200));
}

#[tokio::test]
async fn refresh_starts_in_the_background_at_eighty_percent() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=100");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();

    clock.set(T0 + 79);
    v.verify(&token(&issuer, rsa_key(), T0 + 79)).await.unwrap();
    assert_eq!(issuer.hits(), 1);

    // The issuer now answers slowly; the request must not wait for it.
    issuer.ctl.delay_ms.store(300, Ordering::SeqCst);
    clock.set(T0 + 80);
    let started = std::time::Instant::now();
    v.verify(&token(&issuer, rsa_key(), T0 + 80)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    eventually("background revalidation", || {
        v.stats().fresh_until == Some(T0 + 180)
    })
    .await;
    assert_eq!(issuer.hits(), 2);
}

#[tokio::test]
async fn max_age_is_clamped_to_floor_and_ceiling_and_defaulted() {
    let clock = clock();
    for (cache_control, fresh_for) in [
        (Some("max-age=1"), 10),
        (Some("max-age=999999"), 3600),
        (Some("no-store"), 10),
        (Some("max-age=50"), 50),
        (None, 300),
    ] {
        let issuer = Issuer::start(jwks(&[rsa_key()])).await;
        if let Some(cc) = cache_control {
            issuer.ctl.set_cache_control(cc);
        }
        let v = builder(&issuer, &clock).build().await.unwrap();
        assert_eq!(
            v.stats().fresh_until,
            Some(T0 + fresh_for),
            "{cache_control:?}"
        );
    }

    // The floor is what stops a max-age=1 issuer from being asked every second.
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=1");
    let v = builder(&issuer, &clock).build().await.unwrap();
    clock.set(T0 + 7);
    v.verify(&token(&issuer, rsa_key(), T0 + 7)).await.unwrap();
    assert_eq!(issuer.hits(), 1);
}

#[tokio::test]
async fn etag_revalidation_gets_304_and_keeps_the_keys() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=60");
    issuer.ctl.set_etag("\"v1\"");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();

    // The issuer would now serve an empty set, but the ETag still matches, so
    // it answers 304 and the cached keys stay.
    issuer.ctl.set_jwks(json!({"keys": []}));
    clock.set(T0 + 60);
    assert!(v.verify(&token(&issuer, rsa_key(), T0 + 60)).await.is_ok());
    assert_eq!(issuer.hits(), 2);
    assert_eq!(issuer.ctl.not_modified.load(Ordering::SeqCst), 1);
    let stats = v.stats();
    assert_eq!(stats.jwks_not_modified, 1);
    assert_eq!(stats.keys, 1);
    // A 304 extends freshness by its own max-age.
    assert_eq!(stats.fresh_until, Some(T0 + 120));

    // A 304 without Cache-Control keeps the lifetime of the stored response
    // (60 s), rather than falling back to the 300 s default.
    *issuer.ctl.cache_control.lock().unwrap() = None;
    clock.set(T0 + 120);
    assert!(v.verify(&token(&issuer, rsa_key(), T0 + 120)).await.is_ok());
    assert_eq!(issuer.ctl.not_modified.load(Ordering::SeqCst), 2);
    assert_eq!(v.stats().fresh_until, Some(T0 + 180));
}

#[tokio::test]
async fn rotated_key_is_picked_up_on_first_use() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=3600");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();

    // The issuer publishes a new key and signs with it straight away.
    let new_key = TestKey::p256("ec-2");
    issuer.ctl.set_jwks(jwks(&[rsa_key(), &new_key]));
    let claims = v.verify(&token(&issuer, &new_key, T0)).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(issuer.hits(), 2);
    assert_eq!(v.stats().unknown_kid_refetches, 1);
    // Old and new keys both verify now, without further requests.
    v.verify(&token(&issuer, rsa_key(), T0)).await.unwrap();
    v.verify(&token(&issuer, &new_key, T0)).await.unwrap();
    assert_eq!(issuer.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_unknown_kids_cause_one_fetch() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=3600");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    // A slow issuer makes sure the requests overlap the one fetch.
    issuer.ctl.delay_ms.store(200, Ordering::SeqCst);

    let stranger = rsa_key().renamed("not-published");
    let t = token(&issuer, &stranger, T0);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            tokio::spawn(async move { v.verify(&t).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Err(VerifyError::UnknownKid)));
    }
    assert_eq!(issuer.hits(), 2, "one initial fetch and one refetch");
    assert_eq!(v.stats().unknown_kid_refetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_requests_share_the_rotation_fetch() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=3600");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    issuer.ctl.delay_ms.store(200, Ordering::SeqCst);
    let new_key = rsa_key().renamed("rsa-2");
    issuer.ctl.set_jwks(jwks(&[rsa_key(), &new_key]));

    let t = token(&issuer, &new_key, T0);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (v, t) = (v.clone(), t.clone());
            tokio::spawn(async move { v.verify(&t).await })
        })
        .collect();
    for task in tasks {
        // Every waiter shares the one fetch: none is turned away.
        assert_eq!(task.await.unwrap().unwrap().sub, "alice");
    }
    assert_eq!(issuer.hits(), 2);
}

#[tokio::test]
async fn cooldown_limits_unknown_kid_refetches() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=3600");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();

    let first = rsa_key().renamed("unknown-1");
    assert!(matches!(
        v.verify(&token(&issuer, &first, T0)).await,
        Err(VerifyError::UnknownKid)
    ));
    assert_eq!(issuer.hits(), 2);

    // Within the cool-down: another unknown kid is refused without a request.
    clock.set(T0 + 29);
    let second = rsa_key().renamed("unknown-2");
    assert!(matches!(
        v.verify(&token(&issuer, &second, T0 + 29)).await,
        Err(VerifyError::UnknownKid)
    ));
    assert_eq!(issuer.hits(), 2);

    // After it, one more refetch is allowed.
    clock.set(T0 + 30);
    assert!(matches!(
        v.verify(&token(&issuer, &second, T0 + 30)).await,
        Err(VerifyError::UnknownKid)
    ));
    assert_eq!(issuer.hits(), 3);
    assert_eq!(v.stats().unknown_kid_refetches, 2);
}

#[tokio::test]
async fn path_like_kids_never_reach_the_issuer_as_paths() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    for (i, kid) in ["../../etc/passwd", "' OR 1=1 --"].into_iter().enumerate() {
        clock.set(T0 + 31 * i as u64);
        let key = rsa_key().renamed(kid);
        let now = clock_now(&clock);
        assert!(matches!(
            v.verify(&token(&issuer, &key, now)).await,
            Err(VerifyError::UnknownKid)
        ));
    }
    let paths = issuer.ctl.paths.lock().unwrap().clone();
    assert!(
        paths
            .iter()
            .all(|p| p == "/.well-known/openid-configuration" || p == "/jwks"),
        "{paths:?}"
    );
    assert_eq!(paths.iter().filter(|p| *p == "/jwks").count(), 3);
}

fn clock_now(clock: &Arc<ManualClock>) -> u64 {
    use latchkey_verifier::Clock;
    clock.now()
}

#[tokio::test]
async fn stale_keys_serve_while_the_issuer_fails_then_run_out() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=60");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    issuer.ctl.fail.store(true, Ordering::SeqCst);

    // Expired, and the revalidation fails: the cached keys still verify.
    clock.set(T0 + 100);
    v.verify(&token(&issuer, rsa_key(), T0 + 100))
        .await
        .unwrap();
    assert_eq!(issuer.hits(), 2);
    assert_eq!(v.stats().jwks_failures, 1);

    // Within the allowance (fresh until T0+60, stale-if-error 300 s), later
    // requests do not wait on the failing issuer but keep verifying.
    clock.set(T0 + 359);
    v.verify(&token(&issuer, rsa_key(), T0 + 359))
        .await
        .unwrap();
    eventually("background retry", || v.stats().jwks_failures == 2).await;

    // Past it: a clear, specific error naming the cause.
    clock.set(T0 + 360);
    let err = v
        .verify(&token(&issuer, rsa_key(), T0 + 360))
        .await
        .unwrap_err();
    match &err {
        VerifyError::KeysUnavailable(cause) => {
            assert!(
                matches!(**cause, FetchError::Status { status: 500, .. }),
                "{cause:?}"
            )
        }
        other => panic!("expected KeysUnavailable, got {other:?}"),
    }
    assert!(err.is_unavailable());

    // The issuer recovers: one revalidation and verification works again.
    issuer.ctl.fail.store(false, Ordering::SeqCst);
    v.refresh().await.unwrap();
    v.verify(&token(&issuer, rsa_key(), T0 + 360))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_broken_jwks_does_not_replace_working_keys() {
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=60");
    let clock = clock();
    let v = builder(&issuer, &clock).build().await.unwrap();
    issuer
        .ctl
        .set_jwks(json!({"keys": [{"kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB"}]}));
    let err = v.refresh().await.unwrap_err();
    assert!(matches!(*err, FetchError::Jwks { .. }), "{err:?}");
    assert_eq!(v.key_ids(), vec!["rsa-1".to_owned()]);
    v.verify(&token(&issuer, rsa_key(), T0)).await.unwrap();
}

#[tokio::test]
async fn an_https_issuer_cannot_use_an_http_jwks_uri() {
    let err = Verifier::builder("https://issuer.example")
        .audience("a")
        .jwks_uri("http://issuer.example/jwks")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Config(_)), "{err:?}");
}
