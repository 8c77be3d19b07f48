use std::time::Instant;

use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp};

async fn setup() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &["dev"]).await;
    let secret = app
        .create_client(
            "web",
            "password,refresh_token",
            "openid profile email api:read",
            "RS256",
        )
        .await;
    (app, secret)
}

/// Assert an RFC 6749 §5.2 error response and return its body.
async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    body
}

#[tokio::test]
async fn password_grant_with_client_secret_basic() {
    let (app, secret) = setup().await;
    let r = app
        .token(
            ("web", &secret),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["pragma"], "no-cache");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    // Without a scope parameter the client's whole allowance is granted.
    assert_eq!(body["scope"], "api:read email openid profile");
    // The client may refresh, so a refresh token comes without offline_access.
    assert_eq!(body["refresh_token"].as_str().unwrap().len(), 43);
    assert!(body["id_token"].is_string());
}

#[tokio::test]
async fn password_grant_with_client_secret_post() {
    let (app, secret) = setup().await;
    let r = app
        .http
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
            ("client_id", "web"),
            ("client_secret", secret.as_str()),
            ("scope", "api:read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "api:read");
    assert!(
        body.get("id_token").is_none(),
        "no openid scope, no ID token"
    );
}

#[tokio::test]
async fn public_client_authenticates_with_none_only() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    app.create_public_client("spa", "password,refresh_token", "openid api:read")
        .await;
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", PASSWORD),
        ("client_id", "spa"),
    ];
    let r = app
        .http
        .post(app.url("/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A secret for a public client is not a valid authentication.
    let r = app.token(("spa", "some-secret"), &form[..3]).await;
    expect_error(r, 401, "invalid_client").await;

    // A confidential client cannot skip its secret.
    app.create_client("conf", "password", "api:read", "RS256")
        .await;
    let r = app
        .http
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
            ("client_id", "conf"),
        ])
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_client").await;
}

#[tokio::test]
async fn client_credentials_grant() {
    let app = TestApp::spawn().await;
    let secret = app
        .create_client(
            "svc",
            "client_credentials",
            "openid api:read api:write",
            "ES256",
        )
        .await;
    let r = app
        .token(("svc", &secret), &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // User scopes are not granted to a client acting for itself.
    assert_eq!(body["scope"], "api:read api:write");
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
    let claims = crate::helpers::jwt_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "svc");
    assert_eq!(
        crate::helpers::jwt_part(body["access_token"].as_str().unwrap(), 0)["alg"],
        "ES256"
    );

    let r = app
        .token(
            ("svc", &secret),
            &[("grant_type", "client_credentials"), ("scope", "openid")],
        )
        .await;
    expect_error(r, 400, "invalid_scope").await;

    // A request inside the ceiling gets exactly what it asked for.
    let r = app
        .token(
            ("svc", &secret),
            &[("grant_type", "client_credentials"), ("scope", "api:write")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "api:write");
    // A scope the client was never registered for, and a user scope beside
    // a registered one, are refused and named.
    for (asked, named) in [
        ("api:read api:delete", "api:delete"),
        ("api:read openid", "openid"),
    ] {
        let r = app
            .token(
                ("svc", &secret),
                &[("grant_type", "client_credentials"), ("scope", asked)],
            )
            .await;
        let body = expect_error(r, 400, "invalid_scope").await;
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(named), "{asked}: {description}");
        assert!(!description.contains("api:read"), "{asked}: {description}");
    }
}

#[tokio::test]
async fn invalid_request_errors() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    // Missing grant_type.
    expect_error(
        app.token(client, &[("username", "alice")]).await,
        400,
        "invalid_request",
    )
    .await;
    // Missing password.
    expect_error(
        app.token(client, &[("grant_type", "password"), ("username", "alice")])
            .await,
        400,
        "invalid_request",
    )
    .await;
    // A repeated parameter.
    let r = app
        .token_raw(
            ("web", &secret),
            "grant_type=password&username=alice&username=bob&password=x",
        )
        .await;
    let body = expect_error(r, 400, "invalid_request").await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("repeated")
    );
    // Not a form.
    let r = app
        .http
        .post(app.url("/token"))
        .basic_auth("web", Some(&secret))
        .json(&serde_json::json!({"grant_type": "password"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_request").await;
    // Malformed percent-encoding / invalid UTF-8.
    let r = app
        .token_raw(
            ("web", &secret),
            "grant_type=password&username=%FF%FE&password=x",
        )
        .await;
    expect_error(r, 400, "invalid_request").await;
    // Two client authentication methods at once.
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
                ("client_secret", &secret),
            ],
        )
        .await;
    expect_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn invalid_client_errors_carry_www_authenticate() {
    let (app, secret) = setup().await;
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", PASSWORD),
    ];
    for (id, s) in [
        ("web", "wrong-secret"),
        ("nobody", secret.as_str()),
        ("web", ""),
    ] {
        let r = app.token((id, s), &form).await;
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"latchkey\"");
        let body = expect_error(r, 401, "invalid_client").await;
        // Unknown client and wrong secret read the same.
        assert_eq!(body["error_description"], "client authentication failed");
    }
    // No client authentication at all.
    let r = app
        .http
        .post(app.url("/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_client").await;
}

#[tokio::test]
async fn invalid_grant_does_not_say_which_part_was_wrong() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let wrong_password = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "nope"),
            ],
        )
        .await;
    let a = expect_error(wrong_password, 400, "invalid_grant").await;
    let unknown_user = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "mallory"),
                ("password", "nope"),
            ],
        )
        .await;
    let b = expect_error(unknown_user, 400, "invalid_grant").await;
    assert_eq!(a, b, "identical bodies for unknown user and wrong password");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_cost_comparable_time() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let time = |user: &'static str| {
        let app = &app;
        async move {
            let start = Instant::now();
            let r = app
                .token(
                    client,
                    &[
                        ("grant_type", "password"),
                        ("username", user),
                        ("password", "nope"),
                    ],
                )
                .await;
            assert_eq!(r.status(), 400);
            start.elapsed()
        }
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..9 {
        known.push(time("alice").await);
        unknown.push(time("mallory").await);
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[4].as_secs_f64(), unknown[4].as_secs_f64());
    // Both paths run one argon2id verification; a lookup-only shortcut for an
    // unknown user would be some fifty times faster. The bounds leave room for
    // a loaded machine, where the wrong password's lockout write (which an
    // unknown user has no row for) can wait on the database.
    assert!(
        u > k / 3.0 && u < k * 3.0,
        "median wrong-password {k:.4}s vs unknown-user {u:.4}s"
    );
}

#[tokio::test]
async fn unauthorized_client_unsupported_grant_and_invalid_scope() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    // The client was not registered for client_credentials.
    expect_error(
        app.token(client, &[("grant_type", "client_credentials")])
            .await,
        400,
        "unauthorized_client",
    )
    .await;
    // authorization_code is supported, but not for a client registered without it.
    expect_error(
        app.token(
            client,
            &[
                ("grant_type", "authorization_code"),
                ("code", "c"),
                ("redirect_uri", "https://app.example.com/cb"),
                ("code_verifier", &"v".repeat(43)),
            ],
        )
        .await,
        400,
        "unauthorized_client",
    )
    .await;
    for g in [
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        "PASSWORD",
    ] {
        expect_error(
            app.token(client, &[("grant_type", g)]).await,
            400,
            "unsupported_grant_type",
        )
        .await;
    }
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
                ("scope", "api:write"),
            ],
        )
        .await;
    let body = expect_error(r, 400, "invalid_scope").await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("api:write")
    );
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
                ("scope", "bad\"scope"),
            ],
        )
        .await;
    expect_error(r, 400, "invalid_scope").await;
}

#[tokio::test]
async fn hostile_input_gets_clear_4xx_and_loses_nothing() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    // An oversized body is refused before parsing.
    let huge = format!(
        "grant_type=password&username=alice&password={}",
        "x".repeat(70 * 1024)
    );
    let r = app.token_raw(("web", &secret), huge).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    // An oversized username.
    let long = "a".repeat(300);
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", &long),
                ("password", "x"),
            ],
        )
        .await;
    expect_error(r, 400, "invalid_request").await;
    // SQL metacharacters and odd bytes are just unknown usernames.
    for name in [
        "alice' OR '1'='1",
        "alice\"; DROP TABLE users; --",
        "al\u{7}ice",
        "../../etc/passwd",
        "ａｌｉｃｅ",
    ] {
        let r = app
            .token(
                client,
                &[
                    ("grant_type", "password"),
                    ("username", name),
                    ("password", PASSWORD),
                ],
            )
            .await;
        expect_error(r, 400, "invalid_grant").await;
    }
    // NUL is outside every RFC 6749 parameter syntax: a malformed request.
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "al\u{0}ice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    expect_error(r, 400, "invalid_request").await;
    let r = app
        .token(
            ("we\u{0}b", &secret),
            &[("grant_type", "client_credentials")],
        )
        .await;
    expect_error(r, 401, "invalid_client").await;
    // And nothing was lost: the real user still logs in.
    app.login(client, "alice", PASSWORD, "api:read").await;
}
