//! A real headless Chromium for tests, driven over WebDriver (`chromedriver`
//! on a free loopback port, `fantoccini` as the client), and latchkey's
//! sign-in flow exercised in it.
//!
//! [`Browser::start`] returns `None` when `LATCHKEY_TEST_BROWSER` is unset (a
//! laptop without Chromium), and fails the test when
//! `LATCHKEY_TEST_REQUIRE_BROWSER=1` and no browser can be started (CI).
//! Paths: `LATCHKEY_TEST_CHROMEDRIVER` (default `/usr/bin/chromedriver`) and
//! `LATCHKEY_TEST_CHROMIUM` (default `/usr/bin/chromium`). Chrome treats
//! `http://127.0.0.1` as a secure context, so `Secure` and `__Host-` cookies
//! work over plain HTTP on loopback.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect};
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::net::TcpListener;

use crate::authcode::{pkce, query};
use crate::helpers::{PASSWORD, TestApp};

fn require() -> bool {
    std::env::var("LATCHKEY_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// A headless Chromium with a fresh profile, and the chromedriver serving it.
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

impl Browser {
    /// Start a browser, or `None` when browser tests are not enabled.
    pub async fn start() -> Option<Browser> {
        let enabled = std::env::var("LATCHKEY_TEST_BROWSER").is_ok_and(|v| !v.is_empty());
        if !enabled {
            assert!(
                !require(),
                "LATCHKEY_TEST_REQUIRE_BROWSER=1 but LATCHKEY_TEST_BROWSER is not set"
            );
            eprintln!("browser test skipped: set LATCHKEY_TEST_BROWSER=1 to run it");
            return None;
        }
        match Self::try_start().await {
            Ok(b) => Some(b),
            Err(e) if require() => panic!("cannot start the browser: {e}"),
            Err(e) => {
                eprintln!("browser test skipped: cannot start the browser: {e}");
                None
            }
        }
    }

    async fn try_start() -> Result<Browser, String> {
        let driver_path = std::env::var("LATCHKEY_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("LATCHKEY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port().await;
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{driver_path}: {e}"))?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=800,700",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        // chromedriver needs a moment to listen; bounded retries.
        for _ in 0..50 {
            match ClientBuilder::native()
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Browser {
                        client,
                        driver,
                        _profile: profile,
                    });
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "chromedriver at {url} did not start a session: {last}"
        ))
    }

    /// Save a PNG screenshot as a test artefact; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = artefacts_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot saved: {}", path.display());
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// `LATCHKEY_TEST_ARTEFACTS`, or `target/test-artefacts/` in the checkout.
pub fn artefacts_dir() -> PathBuf {
    std::env::var("LATCHKEY_TEST_ARTEFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts"))
}

/// Every callback query the relying party received, in order.
type Received = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A tiny relying-party web app on its own loopback port: `/` has a login
/// link, `/login` sends the browser to latchkey, `/cb` shows what came back.
pub struct RpApp {
    pub base: String,
    pub client_id: String,
    pub received: Received,
}

#[derive(Clone)]
struct RpState {
    authorize: String,
    client_id: String,
    redirect_uri: String,
    received: Received,
    latchkey: String,
}

async fn rp_home() -> Html<&'static str> {
    Html(
        "<!doctype html><html><body><h1>Demo app</h1>\
         <a id=\"login\" href=\"/login\">Sign in with latchkey</a></body></html>",
    )
}

async fn rp_login(
    State(s): State<RpState>,
    Query(q): Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let (_, challenge) = pkce();
    let mut params = vec![
        ("response_type", "code".to_string()),
        ("client_id", s.client_id.clone()),
        ("redirect_uri", s.redirect_uri.clone()),
        ("scope", "openid profile".to_string()),
        ("state", "st-123".to_string()),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256".to_string()),
    ];
    for (k, v) in &q {
        if k == "prompt" {
            params.push(("prompt", v.clone()));
        }
    }
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Redirect::to(&format!("{}?{}", s.authorize, query(&pairs)))
}

async fn rp_callback(
    State(s): State<RpState>,
    Query(q): Query<Vec<(String, String)>>,
) -> Html<String> {
    s.received.lock().unwrap().push(q.clone());
    let shown: String = q
        .iter()
        .map(|(k, v)| format!("<li id=\"{k}\">{k}={v}</li>"))
        .collect();
    Html(format!(
        "<!doctype html><html><body><h1>Callback</h1><ul>{shown}</ul></body></html>"
    ))
}

/// A form on the relying party's origin posting straight to latchkey's login
/// endpoint without the CSRF token: what a malicious site would do.
async fn rp_forge(State(s): State<RpState>) -> Html<String> {
    let (_, challenge) = pkce();
    let q = query(&[
        ("response_type", "code"),
        ("client_id", &s.client_id),
        ("redirect_uri", &s.redirect_uri),
        ("scope", "openid"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    Html(format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{}/authorize/login?{}\">\
         <input name=\"username\" value=\"alice\"><input name=\"password\" value=\"{PASSWORD}\">\
         <button id=\"go\" type=\"submit\">Go</button></form></body></html>",
        s.latchkey,
        q.replace('&', "&amp;")
    ))
}

impl RpApp {
    /// Register a client for this app at latchkey and serve it.
    pub async fn start(app: &TestApp, client_id: &str, extra: &[&str]) -> RpApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let redirect_uri = format!("{base}/cb");
        let mut args = vec![
            "clients",
            "create",
            client_id,
            "--public",
            "--grant-types",
            "authorization_code",
            "--scopes",
            "openid profile",
            "--redirect-uris",
            &redirect_uri,
        ];
        args.extend_from_slice(extra);
        let out = app.cli(&args, None).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = RpState {
            authorize: app.url("/authorize"),
            client_id: client_id.to_string(),
            redirect_uri,
            received: received.clone(),
            latchkey: app.issuer.clone(),
        };
        let router = axum::Router::new()
            .route("/", axum::routing::get(rp_home))
            .route("/login", axum::routing::get(rp_login))
            .route("/cb", axum::routing::get(rp_callback))
            .route("/forge", axum::routing::get(rp_forge))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        RpApp {
            base,
            client_id: client_id.to_string(),
            received,
        }
    }

    fn last(&self) -> Vec<(String, String)> {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn last_param(&self, name: &str) -> Option<String> {
        self.last()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The text of the first element matching `css`, waiting (bounded) for it:
/// after a form post the next page may still be loading.
async fn text_of(b: &Browser, css: &str) -> String {
    for _ in 0..100 {
        if let Ok(el) = b.client.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fill_and_submit(b: &Browser, user: &str, password: &str) {
    let c = &b.client;
    let u = c.find(Locator::Css("input#username")).await.unwrap();
    u.clear().await.unwrap();
    u.send_keys(user).await.unwrap();
    c.find(Locator::Css("input#password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    let submit = c.find(Locator::Css("button[type=submit]")).await.unwrap();
    submit.click().await.unwrap();
    // The post replaces the page. Wait (bounded) until the page that held
    // the form is gone, so that what the test reads next is the answer: a
    // second failed sign-in shows the same alert as the first, and a field
    // found on the old page goes stale when the answer arrives.
    for _ in 0..100 {
        if submit.is_displayed().await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the sign-in page was still there 10 s after its form was submitted");
}

/// Wait (bounded) until the browser shows `expected`, then assert it: a
/// click returns before a cross-origin redirect chain has finished loading.
async fn wait_path(b: &Browser, expected: &str) {
    for _ in 0..100 {
        if path_of(b).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(path_of(b).await, expected);
}

async fn path_of(b: &Browser) -> String {
    let url = b.client.current_url().await.unwrap();
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

#[tokio::test]
async fn browser_signs_in_then_single_sign_on_and_consent() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let first = RpApp::start(&app, "demo-one", &["--first-party"]).await;
    let second = RpApp::start(&app, "demo-two", &["--first-party"]).await;
    let third = RpApp::start(&app, "partner", &[]).await;

    // The app's login link leads to latchkey's page.
    b.client.goto(&first.base).await.unwrap();
    b.client
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&b, &app.url("/authorize")).await;
    assert_eq!(text_of(&b, "h1").await, "Sign in");
    assert!(text_of(&b, "main").await.contains("demo-one"));
    // The labels name their fields, and the username field has the focus.
    assert_eq!(text_of(&b, "label[for=username]").await, "Username");
    assert_eq!(text_of(&b, "label[for=password]").await, "Password");
    let focused = b
        .client
        .active_element()
        .await
        .unwrap()
        .attr("id")
        .await
        .unwrap();
    assert_eq!(focused.as_deref(), Some("username"));
    b.screenshot("login-page").await;

    // A wrong password: the generic error, still on latchkey's page.
    fill_and_submit(&b, "alice", "not the password").await;
    wait_path(&b, &app.url("/authorize/login")).await;
    assert_eq!(
        text_of(&b, "[role=alert]").await,
        "Invalid username or password."
    );
    b.screenshot("login-page-error").await;
    // An unknown user sees exactly the same message.
    fill_and_submit(&b, "nobody", PASSWORD).await;
    assert_eq!(
        text_of(&b, "[role=alert]").await,
        "Invalid username or password."
    );

    // The right password: back at the app with a code.
    fill_and_submit(&b, "alice", PASSWORD).await;
    wait_path(&b, &format!("{}/cb", first.base)).await;
    assert!(first.last_param("code").is_some_and(|c| c.len() >= 43));
    assert_eq!(first.last_param("state").as_deref(), Some("st-123"));
    assert_eq!(
        first.last_param("iss").as_deref(),
        Some(app.issuer.as_str())
    );

    // A second app: single sign-on, no form.
    b.client
        .goto(&format!("{}/login", second.base))
        .await
        .unwrap();
    wait_path(&b, &format!("{}/cb", second.base)).await;
    assert!(second.last_param("code").is_some());
    assert_eq!(second.received.lock().unwrap().len(), 1);

    // A third-party app: no password again, but a consent screen.
    b.client
        .goto(&format!("{}/login", third.base))
        .await
        .unwrap();
    assert_eq!(text_of(&b, "h1").await, "Allow access?");
    assert!(text_of(&b, "main").await.contains("partner"));
    b.screenshot("consent-page").await;
    b.client
        .find(Locator::Css("button[value=allow]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&b, &format!("{}/cb", third.base)).await;
    assert!(third.last_param("code").is_some());
    assert_eq!(third.client_id, "partner");
    b.close().await;
}

#[tokio::test]
async fn browser_prompt_none_without_session_and_forged_post() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let rp = RpApp::start(&app, "demo", &["--first-party"]).await;

    // prompt=none and no session: straight back with login_required.
    b.client
        .goto(&format!("{}/login?prompt=none", rp.base))
        .await
        .unwrap();
    wait_path(&b, &format!("{}/cb", rp.base)).await;
    assert_eq!(rp.last_param("error").as_deref(), Some("login_required"));
    assert_eq!(rp.last_param("state").as_deref(), Some("st-123"));
    assert!(rp.last_param("code").is_none());

    // A form on another origin posting credentials without the CSRF token.
    b.client.goto(&format!("{}/forge", rp.base)).await.unwrap();
    b.client
        .find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&b, &app.url("/authorize/login")).await;
    let main = text_of(&b, "main").await;
    assert!(main.contains("access_denied"), "{main}");
    b.screenshot("forged-post-refused").await;
    // And it signed nobody in: prompt=none still finds no session.
    b.client
        .goto(&format!("{}/login?prompt=none", rp.base))
        .await
        .unwrap();
    assert_eq!(rp.last_param("error").as_deref(), Some("login_required"));
    b.close().await;
}
