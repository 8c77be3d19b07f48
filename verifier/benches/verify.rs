//! The cost of `Verifier::verify` against its floor.
//!
//! For RS256 (2048-bit) and ES256 tokens this compares, in one run:
//! - `latchkey_verifier`: the full `verify` (size and segment checks, header
//!   parse, allow-list, kid lookup, signature, claims parse and checks);
//! - `raw_openssl`: only the base64 decode of the signature and the OpenSSL
//!   signature check of the same signing input with a preloaded key, the floor
//!   any verifier pays;
//! - `jsonwebtoken`: the `jsonwebtoken` crate's `decode` with a preloaded
//!   `DecodingKey` (aws-lc-rs backend) and typed claims.
//!
//! Run: `cargo bench -p latchkey-verifier --bench verify -- --warm-up-time 1 --measurement-time 3`.
#![allow(
    clippy::disallowed_methods,
    reason = "a stand-alone program outside the library: configured by its environment, timed by the wall clock"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark setup"
)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_verifier::Verifier;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use serde::Deserialize;
use serde_json::json;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "https://api.example";

/// The claims `jsonwebtoken` decodes into: the same fields the verifier
/// types, so both do comparable work.
#[derive(Deserialize)]
#[allow(dead_code, reason = "decoded for a fair comparison, never read")]
struct JwtClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
    client_id: String,
    scope: String,
    roles: Vec<String>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `verify` completes without waiting when the keys are cached (no fetch can
/// happen with a static JWKS), so one poll with a no-op waker drives it
/// without any executor overhead in the measurement.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("verify waited although the keys are static"),
    }
}

fn token(kid: &str, alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 86_400, "iat": now,
        "jti": "5f0c6a3e-8a53-4a7e-9f0b-0d0d2f6b9a11", "client_id": "my-app",
        "scope": "openid profile api:read", "roles": ["admin"],
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn split_signature(token: &str) -> (&str, Vec<u8>) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    (input, URL_SAFE_NO_PAD.decode(sig).unwrap())
}

fn benches(c: &mut Criterion) {
    // RS256, 2048-bit.
    let rsa: PKey<Private> = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let rsa_pem = rsa.public_key_to_pem().unwrap();
    let rsa_pub: PKey<Public> = PKey::public_key_from_pem(&rsa_pem).unwrap();
    let rsa_token = token("rsa-1", "RS256", |input| {
        Signer::new(MessageDigest::sha256(), &rsa)
            .unwrap()
            .sign_oneshot_to_vec(input)
            .unwrap()
    });
    let r = rsa.rsa().unwrap();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
                         "n": b64(&r.n().to_vec()), "e": b64(&r.e().to_vec())});

    // ES256, P-256.
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let ec_pkey = PKey::from_ec_key(ec.clone()).unwrap();
    let ec_pem = ec_pkey.public_key_to_pem().unwrap();
    let ec_pub: EcKey<Public> = EcKey::public_key_from_pem(&ec_pem).unwrap();
    let ec_token = token("ec-1", "ES256", |input| {
        let der = Signer::new(MessageDigest::sha256(), &ec_pkey)
            .unwrap()
            .sign_oneshot_to_vec(input)
            .unwrap();
        let sig = EcdsaSig::from_der(&der).unwrap();
        [
            sig.r().to_vec_padded(32).unwrap(),
            sig.s().to_vec_padded(32).unwrap(),
        ]
        .concat()
    });
    let mut ctx = BigNumContext::new().unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
                        "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())});

    let verifier = Verifier::from_jwks(
        ISSUER,
        AUDIENCE,
        json!({"keys": [rsa_jwk, ec_jwk]}).to_string(),
    )
    .unwrap();
    assert_eq!(ready(verifier.verify(&rsa_token)).unwrap().sub, "alice");
    assert_eq!(ready(verifier.verify(&ec_token)).unwrap().sub, "alice");

    let validation = |alg| {
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v
    };
    let jwt_rsa_key = jsonwebtoken::DecodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let jwt_rsa_validation = validation(jsonwebtoken::Algorithm::RS256);
    let jwt_ec_key = jsonwebtoken::DecodingKey::from_ec_pem(&ec_pem).unwrap();
    let jwt_ec_validation = validation(jsonwebtoken::Algorithm::ES256);
    jsonwebtoken::decode::<JwtClaims>(&rsa_token, &jwt_rsa_key, &jwt_rsa_validation).unwrap();
    jsonwebtoken::decode::<JwtClaims>(&ec_token, &jwt_ec_key, &jwt_ec_validation).unwrap();

    let mut group = c.benchmark_group("RS256");
    group.bench_function("latchkey_verifier", |b| {
        b.iter(|| ready(verifier.verify(black_box(&rsa_token))).unwrap())
    });
    group.bench_function("raw_openssl", |b| {
        b.iter(|| {
            let (input, sig) = split_signature(black_box(&rsa_token));
            let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &rsa_pub).unwrap();
            assert!(v.verify_oneshot(&sig, input.as_bytes()).unwrap());
        })
    });
    group.bench_function("jsonwebtoken", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(
                black_box(&rsa_token),
                &jwt_rsa_key,
                &jwt_rsa_validation,
            )
            .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("ES256");
    group.bench_function("latchkey_verifier", |b| {
        b.iter(|| ready(verifier.verify(black_box(&ec_token))).unwrap())
    });
    group.bench_function("raw_openssl", |b| {
        b.iter(|| {
            let (input, sig) = split_signature(black_box(&ec_token));
            let r = BigNum::from_slice(&sig[..32]).unwrap();
            let s = BigNum::from_slice(&sig[32..]).unwrap();
            let sig = EcdsaSig::from_private_components(r, s).unwrap();
            assert!(
                sig.verify(&openssl::sha::sha256(input.as_bytes()), &ec_pub)
                    .unwrap()
            );
        })
    });
    group.bench_function("jsonwebtoken", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(black_box(&ec_token), &jwt_ec_key, &jwt_ec_validation)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(verify, benches);
criterion_main!(verify);
