use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn discovery_names_every_endpoint_and_capability() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    let d: Value = r.json().await.unwrap();
    // The issuer is echoed exactly, with no slash added.
    assert_eq!(d["issuer"], app.issuer.as_str());
    assert_eq!(d["jwks_uri"], app.url("/.well-known/jwks.json").as_str());
    assert_eq!(d["token_endpoint"], app.url("/token").as_str());
    assert_eq!(d["userinfo_endpoint"], app.url("/userinfo").as_str());
    assert_eq!(d["revocation_endpoint"], app.url("/revoke").as_str());
    assert_eq!(d["introspection_endpoint"], app.url("/introspect").as_str());
    let list = |k: &str| -> Vec<String> {
        d[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        list("grant_types_supported"),
        [
            "password",
            "refresh_token",
            "client_credentials",
            "authorization_code"
        ]
    );
    assert_eq!(d["authorization_endpoint"], app.url("/authorize").as_str());
    assert_eq!(d["end_session_endpoint"], app.url("/logout").as_str());
    assert_eq!(list("response_types_supported"), ["code"]);
    assert_eq!(list("response_modes_supported"), ["query"]);
    assert_eq!(list("code_challenge_methods_supported"), ["S256"]);
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        list("token_endpoint_auth_methods_supported"),
        ["client_secret_basic", "client_secret_post", "none"]
    );
    assert_eq!(
        list("id_token_signing_alg_values_supported"),
        ["RS256", "ES256"]
    );
    for s in ["openid", "profile", "email", "offline_access"] {
        assert!(list("scopes_supported").contains(&s.to_string()), "{s}");
    }
    for c in [
        "sub",
        "iss",
        "roles",
        "scope",
        "client_id",
        "nonce",
        "at_hash",
        "amr",
        "sid",
    ] {
        assert!(list("claims_supported").contains(&c.to_string()), "{c}");
    }
    assert_eq!(list("subject_types_supported"), ["public"]);
}

#[tokio::test]
async fn rfc8414_metadata_is_the_same_document() {
    let app = TestApp::spawn().await;
    let get = |path: &'static str| {
        let url = app.url(path);
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let oidc = get("/.well-known/openid-configuration").await;
    let oauth = get("/.well-known/oauth-authorization-server").await;
    assert_eq!(oidc, oauth);
    // Nothing is claimed that latchkey does not do.
    for absent in [
        "registration_endpoint",
        "check_session_iframe",
        "frontchannel_logout_supported",
        "backchannel_logout_supported",
        "request_object_signing_alg_values_supported",
    ] {
        assert!(oauth.get(absent).is_none(), "{absent}");
    }
    assert!(
        !oauth["claims_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "email_verified")
    );
}

#[tokio::test]
async fn jwks_publishes_public_keys_only_with_caching_headers() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag: {etag}"
    );
    let jwks: Value = r.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "one RS256 and one ES256 key on first start");
    let kids: HashSet<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), keys.len(), "kids are unique");
    for k in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                k.get(private).is_none(),
                "private member {private} published: {k}"
            );
        }
        assert_eq!(k["use"], "sig");
        match k["alg"].as_str().unwrap() {
            "RS256" => {
                assert_eq!(k["kty"], "RSA");
                assert_eq!(k["e"], "AQAB");
                assert!(k["n"].as_str().unwrap().len() >= 342, "2048-bit modulus");
            }
            "ES256" => {
                assert_eq!(k["kty"], "EC");
                assert_eq!(k["crv"], "P-256");
                assert_eq!(k["x"].as_str().unwrap().len(), 43);
                assert_eq!(k["y"].as_str().unwrap().len(), 43);
            }
            other => panic!("unexpected alg {other}"),
        }
        // kid is the RFC 7638 thumbprint: 32 bytes of SHA-256 in base64url.
        assert_eq!(k["kid"].as_str().unwrap().len(), 43);
    }

    // Revalidation: a matching If-None-Match gets 304 with no body.
    let r = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
