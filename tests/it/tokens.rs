use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, jwt_part, verify_with_jsonwebtoken};

#[tokio::test]
async fn access_tokens_verify_with_an_independent_library_for_both_algorithms() {
    let app = TestApp::spawn().await;
    let user_id = app
        .create_user("alice", PASSWORD, &["admin", "billing"])
        .await;
    let rs = app
        .create_client(
            "rs-app",
            "password,refresh_token",
            "openid api:read",
            "RS256",
        )
        .await;
    let es = app
        .create_client(
            "es-app",
            "password,refresh_token",
            "openid api:read",
            "ES256",
        )
        .await;
    let jwks = app.jwks().await;
    for (client, secret, alg) in [("rs-app", &rs, "RS256"), ("es-app", &es, "ES256")] {
        let body = app
            .login((client, secret), "alice", PASSWORD, "openid api:read")
            .await;
        let at = body["access_token"].as_str().unwrap();
        let header = jwt_part(at, 0);
        assert_eq!(header["typ"], "at+jwt", "RFC 9068 §2.1");
        assert_eq!(header["alg"], alg);
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .unwrap();
        assert_eq!(
            jwk["alg"], alg,
            "signed by the active key of the client's algorithm"
        );

        let claims = verify_with_jsonwebtoken(&jwks, at, &app.issuer, &app.issuer).unwrap();
        assert_eq!(claims["iss"], app.issuer.as_str());
        assert_eq!(claims["sub"], user_id.as_str());
        assert_eq!(claims["aud"], app.issuer.as_str());
        assert_eq!(claims["client_id"], client);
        assert_eq!(claims["scope"], "api:read openid");
        assert_eq!(claims["roles"], serde_json::json!(["admin", "billing"]));
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 600);

        // Any change to the payload breaks the signature.
        let mut parts: Vec<String> = at.split('.').map(str::to_string).collect();
        let mut tampered = jwt_part(at, 1);
        tampered["roles"] = serde_json::json!(["superuser"]);
        use base64::Engine as _;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&tampered).unwrap());
        assert!(
            verify_with_jsonwebtoken(&jwks, &parts.join("."), &app.issuer, &app.issuer).is_err()
        );
        // The wrong audience is refused by the verifier.
        assert!(verify_with_jsonwebtoken(&jwks, at, &app.issuer, "https://other.example").is_err());
    }
}

#[tokio::test]
async fn id_token_claims_follow_oidc_core() {
    let app = TestApp::spawn().await;
    let out = app
        .cli(
            &[
                "users",
                "create",
                "bob",
                "--password-stdin",
                "--email",
                "bob@example.com",
                "--json",
            ],
            Some(PASSWORD),
        )
        .await;
    assert!(out.status.success());
    let user_id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = app
        .create_client("web", "password", "openid profile email", "ES256")
        .await;
    let body = app
        .login(("web", &secret), "bob", PASSWORD, "openid profile email")
        .await;
    let id = body["id_token"].as_str().unwrap();
    assert_eq!(jwt_part(id, 0)["typ"], "JWT");
    // Verified like any JWT against the JWKS, with the client as audience.
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
    let set: JwkSet = serde_json::from_value(app.jwks().await).unwrap();
    let kid = decode_header(id).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[&app.issuer]);
    v.set_audience(&["web"]);
    let claims: Value = decode(id, &key, &v).unwrap().claims;
    assert_eq!(claims["sub"], user_id.as_str());
    assert_eq!(claims["aud"], "web");
    assert_eq!(claims["azp"], "web");
    assert_eq!(claims["preferred_username"], "bob");
    assert_eq!(claims["email"], "bob@example.com");
    assert!(claims["auth_time"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );

    // Without profile/email scopes those claims are withheld.
    let body = app.login(("web", &secret), "bob", PASSWORD, "openid").await;
    let claims = jwt_part(body["id_token"].as_str().unwrap(), 1);
    assert!(claims.get("preferred_username").is_none());
    assert!(claims.get("email").is_none());
}
