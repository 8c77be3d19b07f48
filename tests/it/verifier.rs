//! latchkey-verifier against a real latchkey: what a resource server sees.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_verifier::{ManualClock, Verifier, VerifyError};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, jwt_part};

async fn setup() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &["reader"]).await;
    let rs = app
        .create_client("rs", "password,refresh_token", "openid api:read", "RS256")
        .await;
    let es = app
        .create_client("es", "password", "openid api:read", "ES256")
        .await;
    (app, rs, es)
}

async fn token(app: &TestApp, client: &str, secret: &str) -> String {
    app.login((client, secret), "alice", PASSWORD, "api:read")
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn verifier(app: &TestApp) -> Verifier {
    Verifier::builder(app.issuer.clone())
        .audience(app.issuer.clone())
        .build()
        .await
        .unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn accepts_latchkey_rs256_and_es256_tokens() {
    let (app, rs, es) = setup().await;
    let v = verifier(&app).await;
    for (client, secret) in [("rs", &rs), ("es", &es)] {
        let t = token(&app, client, secret).await;
        let claims = v.verify(&t).await.unwrap();
        assert_eq!(claims.client_id.as_deref(), Some(client));
        assert!(claims.has_scope("api:read"));
        assert_eq!(claims.roles, ["reader"]);
        assert_eq!(claims.iss, app.issuer);
        assert_eq!(claims.sub, jwt_part(&t, 1)["sub"].as_str().unwrap());
    }
}

#[tokio::test]
async fn rejects_forgeries_of_latchkey_tokens() {
    let (app, rs, _) = setup().await;
    let v = verifier(&app).await;
    let good = token(&app, "rs", &rs).await;
    let (header, payload) = (jwt_part(&good, 0), jwt_part(&good, 1));
    let sig = good.split('.').nth(2).unwrap();

    // alg none, with and without a signature.
    let mut h = header.clone();
    h["alg"] = json!("none");
    let none = format!("{}.{}.", b64(&h), b64(&payload));
    assert!(matches!(
        v.verify(&none).await,
        Err(VerifyError::AlgorithmNotAllowed { .. })
    ));

    // HS256 keyed with the RSA public key (the classic algorithm confusion).
    let jwks = app.jwks().await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap();
    let mut h = header.clone();
    h["alg"] = json!("HS256");
    let input = format!("{}.{}", b64(&h), b64(&payload));
    let key = openssl::pkey::PKey::hmac(serde_json::to_string(jwk).unwrap().as_bytes()).unwrap();
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    signer.update(input.as_bytes()).unwrap();
    let hs = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap())
    );
    assert!(matches!(
        v.verify(&hs).await,
        Err(VerifyError::AlgorithmNotAllowed { .. })
    ));

    // A tampered payload under the genuine signature.
    let mut p = payload.clone();
    p["roles"] = json!(["admin"]);
    let tampered = format!("{}.{}.{sig}", b64(&header), b64(&p));
    assert!(matches!(
        v.verify(&tampered).await,
        Err(VerifyError::InvalidSignature)
    ));

    // A foreign RSA key signing under latchkey's kid.
    let foreign =
        openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let input = format!("{}.{}", b64(&header), b64(&payload));
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &foreign).unwrap();
    signer.update(input.as_bytes()).unwrap();
    let forged = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap())
    );
    assert!(matches!(
        v.verify(&forged).await,
        Err(VerifyError::InvalidSignature)
    ));

    // Hostile kids are just unknown kids.
    for kid in [
        "../../etc/passwd",
        "' OR 1=1 --",
        "https://evil.example/jwks",
    ] {
        let mut h = header.clone();
        h["kid"] = json!(kid);
        let t = format!("{}.{}.{sig}", b64(&h), b64(&payload));
        assert!(
            matches!(v.verify(&t).await, Err(VerifyError::UnknownKid)),
            "{kid}"
        );
    }

    // The wrong audience and an ID token (typ JWT) where an access token is due.
    let other = Verifier::builder(app.issuer.clone())
        .audience("https://other.example")
        .build()
        .await
        .unwrap();
    assert!(matches!(
        other.verify(&good).await,
        Err(VerifyError::WrongAudience)
    ));
    let login = app
        .login(("rs", &rs), "alice", PASSWORD, "openid api:read")
        .await;
    let id = login["id_token"].as_str().unwrap();
    assert!(matches!(
        v.verify(id).await,
        Err(VerifyError::WrongType { .. } | VerifyError::WrongAudience)
    ));
    // Expiry, judged by the verifier's clock.
    let clock = Arc::new(ManualClock::new(
        jwt_part(&good, 1)["exp"].as_u64().unwrap() + 120,
    ));
    let late = Verifier::builder(app.issuer.clone())
        .audience(app.issuer.clone())
        .clock(clock)
        .build()
        .await
        .unwrap();
    assert!(matches!(
        late.verify(&good).await,
        Err(VerifyError::Expired)
    ));
}

#[tokio::test]
async fn after_a_rotation_new_tokens_verify_without_a_failed_request() {
    let (app, rs, _) = setup().await;
    let v = verifier(&app).await;
    let before = token(&app, "rs", &rs).await;
    v.verify(&before).await.unwrap();
    let out = app
        .cli(
            &["keys", "rotate", "--now", "--alg", "RS256", "--json"],
            None,
        )
        .await;
    assert!(out.status.success());
    let new_kid = serde_json::from_slice::<Value>(&out.stdout).unwrap()[0]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_for_ring("rotated", |r| {
        r.key(&new_kid).is_some_and(|k| k.signer.is_some())
    })
    .await;
    let after = token(&app, "rs", &rs).await;
    assert_eq!(jwt_part(&after, 0)["kid"], new_kid.as_str());
    // The verifier's cached JWKS predates the key: one refetch on the unknown
    // kid, and the request succeeds.
    v.verify(&after).await.unwrap();
    v.verify(&before).await.unwrap();
    assert_eq!(v.stats().unknown_kid_refetches, 1);
}

#[tokio::test]
async fn a_burst_of_unknown_kids_costs_at_most_one_jwks_fetch() {
    let (app, rs, _) = setup().await;
    let v = Arc::new(verifier(&app).await);
    let good = token(&app, "rs", &rs).await;
    let mut h = jwt_part(&good, 0);
    h["kid"] = json!("no-such-kid");
    let parts: Vec<&str> = good.split('.').collect();
    let unknown = format!("{}.{}.{}", b64(&h), parts[1], parts[2]);
    let hits_before = app.state.jwks_requests.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (v, t) = (v.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(VerifyError::UnknownKid)));
    }
    let hits = app.state.jwks_requests.load(Ordering::SeqCst) - hits_before;
    // Exactly one: the unknown kid was looked for (not short-circuited), and
    // the thousand waiters shared that one fetch.
    assert_eq!(hits, 1, "{hits} JWKS fetches for one burst");
    assert_eq!(v.stats().unknown_kid_refetches, 1);
    // The known kid still verifies, from cache.
    v.verify(&good).await.unwrap();
}

#[tokio::test]
async fn with_the_issuer_down_cached_keys_serve_until_stale_if_error_runs_out() {
    let (app, rs, es) = setup().await;
    let t_rs = token(&app, "rs", &rs).await;
    let t_es = token(&app, "es", &es).await;
    let now = jwt_part(&t_rs, 1)["iat"].as_u64().unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let v = Verifier::builder(app.issuer.clone())
        .audience(app.issuer.clone())
        .clock(clock.clone())
        .cache_ttl_bounds(Duration::from_secs(60), Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(120))
        .build()
        .await
        .unwrap();
    v.verify(&t_rs).await.unwrap();
    let _ = app.stop().await;

    // Past freshness, within stale-if-error: the cached keys keep working.
    clock.advance(90);
    v.verify(&t_rs).await.unwrap();
    v.verify(&t_es).await.unwrap();
    // Let the failed background revalidation settle, then go past the allowance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.advance(100);
    let err = v.verify(&t_rs).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[test]
fn latchkey_never_publishes_more_keys_than_the_verifier_accepts() {
    assert_eq!(
        latchkey::config::VERIFIER_MAX_KEYS,
        latchkey_verifier::MAX_JWKS_KEYS as u64
    );
}
