//! Cookie mode in a real browser: a page served from a registered origin logs
//! in, refreshes through the HttpOnly cookie, cannot read the refresh token
//! from script, and logs out.

use std::time::Duration;

use axum::response::Html;
use fantoccini::Locator;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::browser::Browser;
use crate::helpers::{PASSWORD, TestApp};

/// The single-page app: every step's outcome lands in `#out` as JSON. It is
/// served under `/token/` so that, were the refresh cookie readable by
/// script, `document.cookie` (path-matched) would show it.
fn page(issuer: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const idp = "{issuer}";
const form = (o) => new URLSearchParams(o);
async function run() {{
  const out = {{}};
  let r = await fetch(idp + "/token", {{method: "POST", credentials: "include",
      body: form({{grant_type: "password", client_id: "spa", username: "alice",
                   password: "{PASSWORD}", scope: "openid api:read"}})}});
  out.login_status = r.status;
  const login = await r.json();
  out.login_has_refresh = "refresh_token" in login;
  out.cookie_after_login = document.cookie;
  r = await fetch(idp + "/token", {{method: "POST", credentials: "include",
      body: form({{grant_type: "refresh_token", client_id: "spa"}})}});
  out.refresh_status = r.status;
  const refreshed = await r.json();
  out.refresh_has_refresh = "refresh_token" in refreshed;
  out.new_access = refreshed.access_token !== login.access_token && !!refreshed.access_token;
  r = await fetch(idp + "/account/logout", {{method: "POST", credentials: "include",
      headers: {{"Authorization": "Bearer " + refreshed.access_token}}}});
  out.logout_status = r.status;
  r = await fetch(idp + "/token", {{method: "POST", credentials: "include",
      body: form({{grant_type: "refresh_token", client_id: "spa"}})}});
  out.after_logout_status = r.status;
  out.cookie_at_end = document.cookie;
  document.getElementById("out").textContent = JSON.stringify(out);
}}
run().catch(e => document.getElementById("out").textContent = JSON.stringify({{error: String(e)}}));
</script></body></html>"#
    )
}

#[tokio::test]
async fn a_browser_refreshes_through_the_cookie_and_script_never_sees_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    app.clients_create(
        "spa",
        "password,refresh_token",
        "openid api:read",
        &["--public", "--refresh-cookie", "--origins", &origin],
    )
    .await;
    let html = page(&app.url(""));
    let router = axum::Router::new().route(
        "/token/app.html",
        axum::routing::get(move || {
            let html = html.clone();
            async move { Html(html) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let c = &browser.client;
    c.goto(&format!("{origin}/token/app.html")).await.unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = c
            .find(Locator::Id("out"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("page said {text}"));
    assert!(out.get("error").is_none(), "{out}");
    assert_eq!(out["login_status"], 200, "{out}");
    assert_eq!(out["login_has_refresh"], false, "{out}");
    assert_eq!(
        out["refresh_status"], 200,
        "the browser sent the cookie: {out}"
    );
    assert_eq!(out["refresh_has_refresh"], false, "{out}");
    assert_eq!(out["new_access"], true, "{out}");
    assert_eq!(out["logout_status"], 204, "{out}");
    assert_eq!(
        out["after_logout_status"], 400,
        "logout cleared the cookie: {out}"
    );
    for k in ["cookie_after_login", "cookie_at_end"] {
        assert!(
            !out[k].as_str().unwrap().contains("latchkey-refresh"),
            "script read the refresh cookie: {out}"
        );
    }
    browser.close().await;
    server.abort();
}
