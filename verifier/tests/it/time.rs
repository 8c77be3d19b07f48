//! exp, nbf and iat at their exact boundaries. The clock is injected, so each
//! case is one second on either side of the edge, with no sleeping.

use std::sync::Arc;
use std::time::Duration;

use latchkey_verifier::{ManualClock, Verifier, VerifyError};
use serde_json::json;

use crate::support::*;

fn verifier(clock: &Arc<ManualClock>, leeway: u64) -> Verifier {
    Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(Arc::clone(clock))
        .leeway(Duration::from_secs(leeway))
        .build_with_jwks(jwks(&[rsa_key()]).to_string())
        .unwrap()
}

#[tokio::test]
async fn exp_is_valid_until_exp_plus_leeway_exclusive() {
    let clock = clock();
    let v = verifier(&clock, 30);
    let mut c = claims(T0 - 1000);
    c["exp"] = json!(T0);
    let token = rsa_key().token(&c);

    clock.set(T0 + 29);
    assert!(v.verify(&token).await.is_ok());
    clock.set(T0 + 30);
    assert!(matches!(v.verify(&token).await, Err(VerifyError::Expired)));
}

#[tokio::test]
async fn without_leeway_a_token_expires_at_exp() {
    let clock = clock();
    let v = verifier(&clock, 0);
    let mut c = claims(T0 - 1000);
    c["exp"] = json!(T0);
    let token = rsa_key().token(&c);

    clock.set(T0 - 1);
    assert!(v.verify(&token).await.is_ok());
    clock.set(T0);
    assert!(matches!(v.verify(&token).await, Err(VerifyError::Expired)));
}

#[tokio::test]
async fn nbf_may_be_at_most_leeway_ahead() {
    let clock = clock();
    let v = verifier(&clock, 30);
    let mut c = claims(T0);
    c["nbf"] = json!(T0 + 30);
    assert_eq!(
        v.verify(&rsa_key().token(&c)).await.unwrap().nbf,
        Some(T0 + 30)
    );
    c["nbf"] = json!(T0 + 31);
    assert!(matches!(
        v.verify(&rsa_key().token(&c)).await,
        Err(VerifyError::NotYetValid)
    ));
    // The same token becomes valid one second later.
    clock.advance(1);
    assert!(v.verify(&rsa_key().token(&c)).await.is_ok());
}

#[tokio::test]
async fn iat_may_be_at_most_leeway_ahead() {
    let clock = clock();
    let v = verifier(&clock, 30);
    let mut c = claims(T0);
    c["iat"] = json!(T0 + 30);
    assert!(v.verify(&rsa_key().token(&c)).await.is_ok());
    c["iat"] = json!(T0 + 31);
    assert!(matches!(
        v.verify(&rsa_key().token(&c)).await,
        Err(VerifyError::IssuedInFuture)
    ));
}

#[tokio::test]
async fn default_leeway_is_thirty_seconds() {
    let clock = clock();
    let v = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(Arc::clone(&clock))
        .build_with_jwks(jwks(&[rsa_key()]).to_string())
        .unwrap();
    let mut c = claims(T0 - 1000);
    c["exp"] = json!(T0);
    let token = rsa_key().token(&c);
    clock.set(T0 + 29);
    assert!(v.verify(&token).await.is_ok());
    clock.set(T0 + 30);
    assert!(matches!(v.verify(&token).await, Err(VerifyError::Expired)));
}
