use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp};

const ORIGIN: &str = "http://app.example.test:5173";

async fn setup() -> TestApp {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let v = app
        .clients_create(
            "spa",
            "password,refresh_token",
            "openid api:read",
            &["--public", "--refresh-cookie", "--origins", ORIGIN],
        )
        .await;
    assert!(v.get("client_secret").is_none());
    app
}

/// The refresh token from a `Set-Cookie`, checking every attribute.
fn refresh_cookie(r: &reqwest::Response) -> String {
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Secure-latchkey-refresh="))
        .expect("a refresh cookie");
    for attr in [
        "Path=/token",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let value = set.split(';').next().unwrap();
    value.split_once('=').unwrap().1.to_string()
}

async fn cookie_refresh(app: &TestApp, cookie: &str, origin: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/token"))
        .header("cookie", format!("__Secure-latchkey-refresh={cookie}"))
        .form(&[("grant_type", "refresh_token"), ("client_id", "spa")]);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_cookie_clients_refresh_token_never_appears_in_a_body() {
    let app = setup().await;
    let r = app
        .http
        .post(app.url("/token"))
        .header("origin", ORIGIN)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "spa"),
            ("username", "alice"),
            ("password", PASSWORD),
            ("scope", "openid api:read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let first = refresh_cookie(&r);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].is_string());

    // Without an Origin, or from an unregistered one: refused, token intact.
    for origin in [None, Some("http://evil.example.test")] {
        let r = cookie_refresh(&app, &first, origin).await;
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    }
    // In the body instead of the cookie: refused.
    let r = app
        .http
        .post(app.url("/token"))
        .header("origin", ORIGIN)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "spa"),
            ("refresh_token", first.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // From the registered origin: rotated, the successor again only in a cookie.
    let r = cookie_refresh(&app, &first, Some(ORIGIN)).await;
    assert_eq!(r.status(), 200);
    let second = refresh_cookie(&r);
    assert_ne!(first, second);
    let body: Value = r.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");

    // Logout clears the cookie and ends the session.
    let r = app
        .http
        .post(app.url("/account/logout"))
        .header("origin", ORIGIN)
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("__Secure-latchkey-refresh=;"),
        "{cleared}"
    );
    assert!(cleared.contains("Max-Age=0") && cleared.contains("Path=/token"));
    assert_eq!(
        cookie_refresh(&app, &second, Some(ORIGIN)).await.status(),
        400
    );
}

#[tokio::test]
async fn cors_answers_registered_origins_only() {
    let app = setup().await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/account/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight(ORIGIN).await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization")
    );
    let r = preflight("http://evil.example.test").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Server-to-server endpoints never answer CORS.
    let r = app
        .http
        .post(app.url("/introspect"))
        .header("origin", ORIGIN)
        .form(&[("token", "x"), ("client_id", "spa")])
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Bad registrations are refused with a clear message.
    for bad in ["ftp://x.test", "http://x.test/path", "x.test"] {
        let out = app
            .cli(
                &[
                    "clients",
                    "create",
                    "bad",
                    "--public",
                    "--grant-types",
                    "password,refresh_token",
                    "--scopes",
                    "api:read",
                    "--refresh-cookie",
                    "--origins",
                    bad,
                ],
                None,
            )
            .await;
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("origin"));
    }
}
