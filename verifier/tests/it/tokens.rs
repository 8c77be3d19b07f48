//! Validation against a static JWKS: what is accepted, and what each attack
//! gets back.

use latchkey_verifier::{Algorithm, Malformed, TokenType, Verifier, VerifyError};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde_json::{Value, json};

use crate::support::*;

fn verifier() -> Verifier {
    Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .build_with_jwks(jwks(&[rsa_key(), ec_key()]).to_string())
        .unwrap()
}

async fn reject(verifier: &Verifier, token: &str) -> VerifyError {
    let err = verifier.verify(token).await.unwrap_err();
    // Whatever the error, its message never carries the token or a part of it.
    let text = format!("{err} {err:?}");
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "error text leaks the token: {text}");
    }
    err
}

#[tokio::test]
async fn valid_rs256_token_yields_typed_claims() {
    let token = rsa_key().token(&claims(T0));
    let claims = verifier().verify(&token).await.unwrap();
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.aud, vec![AUDIENCE.to_owned()]);
    assert_eq!(claims.exp, T0 + 300);
    assert_eq!(claims.iat, Some(T0));
    assert_eq!(claims.nbf, None);
    assert_eq!(claims.jti.as_deref(), Some("jti-1"));
    assert_eq!(claims.client_id.as_deref(), Some("my-app"));
    assert!(claims.has_scope("api:read") && claims.has_scope("openid"));
    assert!(!claims.has_scope("api:write"));
    assert_eq!(claims.scope.len(), 2);
    assert_eq!(claims.roles, vec!["admin".to_owned()]);
    assert!(claims.has_role("admin"));
    assert_eq!(claims.extra.len(), 1);
    assert_eq!(claims.extra["email"], "alice@example.com");
}

#[tokio::test]
async fn valid_es256_token_is_accepted() {
    let mut c = claims(T0);
    c["aud"] = json!(["other", AUDIENCE]);
    c.as_object_mut().unwrap().remove("roles");
    let claims = verifier().verify(&ec_key().token(&c)).await.unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.aud, vec!["other".to_owned(), AUDIENCE.to_owned()]);
    assert!(claims.roles.is_empty());
}

#[tokio::test]
async fn application_at_jwt_typ_is_accepted_in_any_case() {
    let mut h = rsa_key().header();
    h["typ"] = json!("Application/AT+JWT");
    assert!(
        verifier()
            .verify(&rsa_key().token_with(&h, &claims(T0)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let h = b64(json!({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"})
        .to_string()
        .as_bytes());
    let p = b64(claims(T0).to_string().as_bytes());
    let err = reject(&verifier(), &format!("{h}.{p}.")).await;
    assert!(
        matches!(err, VerifyError::AlgorithmNotAllowed { alg: "none" }),
        "{err:?}"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The classic confusion attack: use the published public key as an HMAC
    // secret and hope the verifier takes the algorithm from the header.
    let secret = rsa_key().pkey.public_key_to_pem().unwrap();
    let h = b64(json!({"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"})
        .to_string()
        .as_bytes());
    let p = b64(claims(T0).to_string().as_bytes());
    let input = format!("{h}.{p}");
    let hmac = PKey::hmac(&secret).unwrap();
    let sig = Signer::new(MessageDigest::sha256(), &hmac)
        .unwrap()
        .sign_oneshot_to_vec(input.as_bytes())
        .unwrap();
    let err = reject(&verifier(), &format!("{input}.{}", b64(&sig))).await;
    assert!(
        matches!(err, VerifyError::AlgorithmNotAllowed { alg: "HS256" }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_kid_is_rejected() {
    let key = rsa_key().renamed("rsa-2");
    let err = reject(&verifier(), &key.token(&claims(T0))).await;
    assert!(matches!(err, VerifyError::UnknownKid), "{err:?}");
}

#[tokio::test]
async fn kid_with_path_or_sql_characters_is_just_unknown() {
    for kid in [
        "../../etc/passwd",
        "' OR 1=1 --",
        "%2e%2e/jwks",
        "rsa-1\u{0}",
    ] {
        let key = rsa_key().renamed(kid);
        let err = reject(&verifier(), &key.token(&claims(T0))).await;
        assert!(matches!(err, VerifyError::UnknownKid), "{kid}: {err:?}");
    }
}

#[tokio::test]
async fn missing_and_overlong_kid_are_rejected() {
    let mut h = rsa_key().header();
    h.as_object_mut().unwrap().remove("kid");
    let err = reject(&verifier(), &rsa_key().token_with(&h, &claims(T0))).await;
    assert!(matches!(err, VerifyError::MissingKid), "{err:?}");

    let key = rsa_key().renamed(&"k".repeat(129));
    let err = reject(&verifier(), &key.token(&claims(T0))).await;
    assert!(
        matches!(err, VerifyError::KidTooLong { max: 128 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_issuer_and_audience_are_rejected() {
    let mut c = claims(T0);
    c["iss"] = json!(format!("{ISSUER}/"));
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::WrongIssuer), "{err:?}");

    let mut c = claims(T0);
    c["aud"] = json!(["https://other.example", "x"]);
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::WrongAudience), "{err:?}");

    let mut c = claims(T0);
    c.as_object_mut().unwrap().remove("exp");
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::MissingClaim("exp")), "{err:?}");
}

#[tokio::test]
async fn expired_not_yet_valid_and_future_iat_are_rejected() {
    let mut c = claims(T0);
    c["exp"] = json!(T0 - 3600);
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::Expired), "{err:?}");

    let mut c = claims(T0);
    c["nbf"] = json!(T0 + 3600);
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::NotYetValid), "{err:?}");

    let mut c = claims(T0);
    c["iat"] = json!(T0 + 3600);
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::IssuedInFuture), "{err:?}");
}

#[tokio::test]
async fn wrong_and_missing_typ_are_rejected() {
    let mut h = rsa_key().header();
    h["typ"] = json!("JWT");
    let plain_jwt = rsa_key().token_with(&h, &claims(T0));
    let err = reject(&verifier(), &plain_jwt).await;
    assert!(
        matches!(err, VerifyError::WrongType { expected: "at+jwt" }),
        "{err:?}"
    );

    h.as_object_mut().unwrap().remove("typ");
    let untyped = rsa_key().token_with(&h, &claims(T0));
    let err = reject(&verifier(), &untyped).await;
    assert!(matches!(err, VerifyError::MissingType), "{err:?}");

    // An ID-token verifier takes plain JWTs and refuses access tokens.
    let id_verifier = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .token_type(TokenType::Jwt)
        .build_with_jwks(jwks(&[rsa_key()]).to_string())
        .unwrap();
    assert!(id_verifier.verify(&plain_jwt).await.is_ok());
    assert!(id_verifier.verify(&untyped).await.is_ok());
    let err = reject(&id_verifier, &rsa_key().token(&claims(T0))).await;
    assert!(
        matches!(err, VerifyError::WrongType { expected: "JWT" }),
        "{err:?}"
    );
}

#[tokio::test]
async fn tampered_payload_fails_the_signature() {
    let token = rsa_key().token(&claims(T0));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c = claims(T0);
    c["roles"] = json!(["admin", "superuser"]);
    parts[1] = b64(c.to_string().as_bytes());
    let err = reject(&verifier(), &parts.join(".")).await;
    assert!(matches!(err, VerifyError::InvalidSignature), "{err:?}");

    // The same for ES256.
    let token = ec_key().token(&claims(T0));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(c.to_string().as_bytes());
    let err = reject(&verifier(), &parts.join(".")).await;
    assert!(matches!(err, VerifyError::InvalidSignature), "{err:?}");
}

#[tokio::test]
async fn token_from_a_foreign_key_under_a_known_kid_fails() {
    let foreign = foreign_rsa_key();
    assert_eq!(foreign.kid, rsa_key().kid);
    let err = reject(&verifier(), &foreign.token(&claims(T0))).await;
    assert!(matches!(err, VerifyError::InvalidSignature), "{err:?}");
}

#[tokio::test]
async fn algorithm_and_key_type_must_fit() {
    // RS256 header on the EC key's kid (signed with that EC key).
    let mut h = ec_key().header();
    h["alg"] = json!("RS256");
    let err = reject(&verifier(), &ec_key().token_with(&h, &claims(T0))).await;
    assert!(
        matches!(
            err,
            VerifyError::KeyAlgorithmMismatch {
                alg: Algorithm::RS256
            }
        ),
        "{err:?}"
    );

    // ES256 header on the RSA key's kid.
    let mut h = rsa_key().header();
    h["alg"] = json!("ES256");
    let err = reject(&verifier(), &ec_key().token_with(&h, &claims(T0))).await;
    assert!(
        matches!(
            err,
            VerifyError::KeyAlgorithmMismatch {
                alg: Algorithm::ES256
            }
        ),
        "{err:?}"
    );

    // A JWK that declares alg RS256 refuses RS512, even where RS512 is allowed.
    let wide = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .algorithms([Algorithm::RS256, Algorithm::RS512])
        .build_with_jwks(jwks(&[rsa_key()]).to_string())
        .unwrap();
    let mut h = rsa_key().header();
    h["alg"] = json!("RS512");
    let err = reject(&wide, &rsa_key().token_with(&h, &claims(T0))).await;
    assert!(
        matches!(
            err,
            VerifyError::KeyAlgorithmMismatch {
                alg: Algorithm::RS512
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn algorithms_off_the_allow_list_are_rejected() {
    let rs_only = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .algorithms([Algorithm::RS256])
        .build_with_jwks(jwks(&[rsa_key(), ec_key()]).to_string())
        .unwrap();
    let err = reject(&rs_only, &ec_key().token(&claims(T0))).await;
    assert!(
        matches!(err, VerifyError::AlgorithmNotAllowed { alg: "ES256" }),
        "{err:?}"
    );
}

#[tokio::test]
async fn ps256_and_eddsa_verify_only_when_allowed() {
    let rsa = rsa_key().renamed("rsa-ps");
    let ed = TestKey::ed25519("ed-1");
    let set = json!({"keys": [rsa.bare_jwk(), ed.jwk()]}).to_string();
    let mut h = rsa.header();
    h["alg"] = json!("PS256");
    let ps = rsa.token_with(&h, &claims(T0));
    let eddsa = ed.token(&claims(T0));

    let default = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .build_with_jwks(&set)
        .unwrap();
    assert!(matches!(
        reject(&default, &ps).await,
        VerifyError::AlgorithmNotAllowed { alg: "PS256" }
    ));
    assert!(matches!(
        reject(&default, &eddsa).await,
        VerifyError::AlgorithmNotAllowed { alg: "EdDSA" }
    ));

    let wide = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .clock(clock())
        .algorithms([Algorithm::PS256, Algorithm::EdDSA])
        .build_with_jwks(&set)
        .unwrap();
    assert_eq!(wide.verify(&ps).await.unwrap().sub, "alice");
    assert_eq!(wide.verify(&eddsa).await.unwrap().sub, "alice");
    // A PKCS#1 v1.5 signature under a PS256 header does not pass.
    let rs_sig_ps_header = rsa.sign_parts(
        "RS256",
        ps.split('.').next().unwrap(),
        ps.split('.').nth(1).unwrap(),
    );
    assert!(matches!(
        reject(&wide, &rs_sig_ps_header).await,
        VerifyError::InvalidSignature
    ));
}

#[tokio::test]
async fn oversized_token_is_rejected_before_parsing() {
    // Not even a JWT: the size check must come first.
    let junk = "x".repeat(8 * 1024 + 1);
    let err = reject(&verifier(), &junk).await;
    assert!(
        matches!(
            err,
            VerifyError::TokenTooLarge {
                size: 8193,
                max: 8192
            }
        ),
        "{err:?}"
    );

    let mut c = claims(T0);
    c["padding"] = json!("p".repeat(7000));
    let err = reject(&verifier(), &rsa_key().token(&c)).await;
    assert!(matches!(err, VerifyError::TokenTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_number_of_segments_is_malformed() {
    let token = rsa_key().token(&claims(T0));
    let parts: Vec<&str> = token.split('.').collect();
    for bad in [
        parts[..2].join("."),
        format!("{token}.{}", parts[2]),
        String::new(),
        "abc".to_owned(),
    ] {
        let err = verifier().verify(&bad).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::Malformed(Malformed::Segments)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn malformed_base64_and_json_are_rejected() {
    let key = rsa_key();
    let good_h = b64(key.header().to_string().as_bytes());
    let good_p = b64(claims(T0).to_string().as_bytes());
    let cases: Vec<(String, Malformed)> = vec![
        // Invalid characters, and padding, in the header.
        (
            key.sign_parts("RS256", "eyJ!bGciOi", &good_p),
            Malformed::HeaderEncoding,
        ),
        (
            key.sign_parts("RS256", &format!("{good_h}=="), &good_p),
            Malformed::HeaderEncoding,
        ),
        // A header that decodes but is not a JOSE header.
        (
            key.sign_parts("RS256", &b64(b"not json"), &good_p),
            Malformed::HeaderJson,
        ),
        (
            key.sign_parts("RS256", &b64(br#"{"alg":5}"#), &good_p),
            Malformed::HeaderJson,
        ),
        // Payloads that are signed, so they get past the signature check.
        (
            key.sign_parts("RS256", &good_h, "e30*"),
            Malformed::PayloadEncoding,
        ),
        (
            key.sign_parts("RS256", &good_h, &b64(b"[1,2]")),
            Malformed::ClaimsJson,
        ),
        (
            key.sign_parts("RS256", &good_h, &b64(br#"{"exp":1,"exp":2}"#)),
            Malformed::ClaimsJson,
        ),
        (
            format!("{good_h}.{good_p}.sig+nature"),
            Malformed::SignatureEncoding,
        ),
    ];
    for (token, expected) in cases {
        let err = verifier().verify(&token).await.unwrap_err();
        assert!(
            matches!(err, VerifyError::Malformed(m) if m == expected),
            "expected {expected:?}, got {err:?}"
        );
    }
}

#[tokio::test]
async fn es256_signature_of_the_wrong_length_is_rejected() {
    let key = ec_key();
    let h = b64(key.header().to_string().as_bytes());
    let p = b64(claims(T0).to_string().as_bytes());
    let input = format!("{h}.{p}");
    // A DER signature, as a naive signer would produce, is 70 to 72 bytes.
    let der = Signer::new(MessageDigest::sha256(), &key.pkey)
        .unwrap()
        .sign_oneshot_to_vec(input.as_bytes())
        .unwrap();
    let raw = key.sign("ES256", input.as_bytes());
    for sig in [der, raw[..63].to_vec(), [raw.as_slice(), &[0]].concat()] {
        let err = reject(&verifier(), &format!("{input}.{}", b64(&sig))).await;
        assert!(
            matches!(err, VerifyError::Malformed(Malformed::SignatureLength)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn critical_header_extensions_are_rejected() {
    let mut h = rsa_key().header();
    h["crit"] = json!(["exp"]);
    h["exp"] = json!(1);
    let err = reject(&verifier(), &rsa_key().token_with(&h, &claims(T0))).await;
    assert!(
        matches!(err, VerifyError::UnsupportedCriticalHeader),
        "{err:?}"
    );
}

#[tokio::test]
async fn header_jku_and_jwk_are_never_used() {
    // A token that brings its own key is still checked against the JWKS.
    let foreign = foreign_rsa_key();
    let mut h: Value = foreign.header();
    h["jwk"] = foreign.bare_jwk();
    h["jku"] = json!("https://attacker.example/jwks");
    let err = reject(&verifier(), &foreign.token_with(&h, &claims(T0))).await;
    assert!(matches!(err, VerifyError::InvalidSignature), "{err:?}");
}

#[tokio::test]
async fn from_jwks_with_defaults_uses_the_wall_clock() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verifier = Verifier::from_jwks(ISSUER, AUDIENCE, jwks(&[rsa_key()]).to_string()).unwrap();
    assert_eq!(verifier.key_ids(), vec!["rsa-1".to_owned()]);
    assert!(
        verifier
            .verify(&rsa_key().token(&claims(now)))
            .await
            .is_ok()
    );
    assert!(matches!(
        verifier.verify(&rsa_key().token(&claims(T0))).await,
        Err(VerifyError::Expired)
    ));
}
