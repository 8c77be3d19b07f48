use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp};

async fn setup() -> (TestApp, String, Value) {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &["dev"]).await;
    let secret = app
        .create_client(
            "web",
            "password,refresh_token",
            "openid profile api:read",
            "RS256",
        )
        .await;
    let login = app
        .login(
            ("web", &secret),
            "alice",
            PASSWORD,
            "openid profile api:read",
        )
        .await;
    (app, secret, login)
}

#[tokio::test]
async fn userinfo_follows_rfc6750() {
    let (app, secret, login) = setup().await;
    let at = login["access_token"].as_str().unwrap();
    let r = app.userinfo(Some(at)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["preferred_username"], "alice");
    assert_eq!(body["roles"], serde_json::json!(["dev"]));
    assert_eq!(body["sub"], crate::helpers::jwt_part(at, 1)["sub"]);

    // No token: the bare challenge.
    let r = app.userinfo(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"latchkey\"");

    // A bad token: invalid_token in the challenge and the body.
    let r = app.userinfo(Some("not.a.token")).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"latchkey\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_token");

    // An alg=none token naming a real kid is refused.
    use base64::Engine as _;
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    };
    let header = crate::helpers::jwt_part(at, 0);
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "kid": header["kid"], "typ": "at+jwt"})),
        at.split('.').nth(1).unwrap()
    );
    assert_eq!(app.userinfo(Some(&none)).await.status(), 401);

    // An ID token is not an access token (typ JWT, not at+jwt).
    let r = app.userinfo(login["id_token"].as_str()).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("not an access token")
    );

    // A token without the openid scope is insufficient.
    let api_only = app
        .login(("web", &secret), "alice", PASSWORD, "api:read")
        .await;
    let r = app.userinfo(api_only["access_token"].as_str()).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
}

#[tokio::test]
async fn introspection_reports_active_and_inactive_tokens() {
    let (app, secret, login) = setup().await;
    let client = ("web", secret.as_str());
    let at = login["access_token"].as_str().unwrap();
    let rt = login["refresh_token"].as_str().unwrap();
    let v = app.introspect(client, at).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], "web");
    assert_eq!(v["scope"], "api:read openid profile");
    assert_eq!(v["token_type"], "Bearer");
    let v = app.introspect(client, rt).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "refresh_token");
    let v = app.introspect(client, "garbage").await;
    assert_eq!(v, serde_json::json!({"active": false}));

    // Public clients may not introspect.
    app.create_public_client("spa", "password", "openid").await;
    let r = app
        .http
        .post(app.url("/introspect"))
        .form(&[("token", at), ("client_id", "spa")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn revoking_a_refresh_token_ends_the_session() {
    let (app, secret, login) = setup().await;
    let client = ("web", secret.as_str());
    let at = login["access_token"].as_str().unwrap();
    let rt = login["refresh_token"].as_str().unwrap();
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", rt), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.refresh(client, rt).await.status(), 400);
    // Access tokens of the revoked session are no longer honoured by latchkey.
    assert_eq!(app.introspect(client, at).await["active"], false);
    assert_eq!(app.userinfo(Some(at)).await.status(), 401);
}

#[tokio::test]
async fn revoking_an_access_token_denies_its_jti() {
    let (app, secret, login) = setup().await;
    let client = ("web", secret.as_str());
    let at = login["access_token"].as_str().unwrap();
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", at)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.introspect(client, at).await["active"], false);
    // The session's refresh token is untouched.
    assert_eq!(
        app.refresh(client, login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    // Unknown tokens are accepted silently (RFC 7009 §2.2).
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", "no-such-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn health_reports_loaded_keys() {
    let (app, _, _) = setup().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["signing_keys"].as_array().unwrap().len(), 2);
    assert!(v["signing_keys"][0]["kid"].is_string());
}

#[tokio::test]
async fn expired_access_tokens_are_rejected_by_latchkey() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(crate::helpers::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "openid", "ES256")
        .await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "openid")
        .await;
    let at = login["access_token"].as_str().unwrap();
    // Within the lifetime plus 30 s of leeway: still good.
    clock.advance(600 + 29);
    assert_eq!(app.userinfo(Some(at)).await.status(), 200);
    clock.advance(1);
    let r = app.userinfo(Some(at)).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("expired")
    );
    assert_eq!(app.introspect(("web", &secret), at).await["active"], false);
}
