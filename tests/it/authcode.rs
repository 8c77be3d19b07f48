//! The authorization-code flow over plain HTTP (a cookie-keeping client in the
//! role of the browser): the happy path, single sign-on, consent, logout, and
//! every refusal the flow promises.

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, jwt_part};

pub const APP_CB: &str = "https://app.example.com/cb";
pub const LOOPBACK_CB: &str = "http://127.0.0.1/callback";
pub const LOGOUT_CB: &str = "https://app.example.com/bye";

/// A PKCE pair computed with OpenSSL directly.
pub fn pkce() -> (String, String) {
    let verifier = latchkey::secret::random_token().unwrap();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(openssl::sha::sha256(verifier.as_bytes()));
    (verifier, challenge)
}

/// A client that keeps cookies and does not follow redirects, like a browser
/// whose every step the test inspects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn query(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A value of `name` in a URL's query.
pub fn param(url: &str, name: &str) -> Option<String> {
    let u = url::Url::parse(url).unwrap();
    u.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `value` of the hidden input `name` on a page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].replace("&amp;", "&"))
}

/// The `action` of the page's form, unescaped.
pub fn form_action(html: &str) -> String {
    let start = html.find("action=\"").unwrap() + 8;
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].replace("&amp;", "&")
}

pub async fn code_client(app: &TestApp, id: &str, alg: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "clients",
        "create",
        id,
        "--grant-types",
        "authorization_code,refresh_token",
        "--scopes",
        "openid profile email api:read",
        "--alg",
        alg,
        "--redirect-uris",
        "https://app.example.com/cb,http://127.0.0.1/callback",
        "--post-logout-redirect-uris",
        LOGOUT_CB,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = app.cli(&args, None).await;
    assert!(
        out.status.success(),
        "clients create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["client_secret"].as_str().unwrap().to_string()
}

pub struct Flow {
    pub client_id: String,
    pub redirect_uri: String,
    pub verifier: String,
    pub challenge: String,
    pub state: String,
    pub nonce: String,
    pub scope: String,
}

impl Flow {
    pub fn new(client_id: &str) -> Self {
        let (verifier, challenge) = pkce();
        Self {
            client_id: client_id.into(),
            redirect_uri: APP_CB.into(),
            verifier,
            challenge,
            state: latchkey::secret::random_id().unwrap(),
            nonce: latchkey::secret::random_id().unwrap(),
            scope: "openid profile api:read".into(),
        }
    }

    pub fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", self.scope.clone()),
            ("state", self.state.clone()),
            ("nonce", self.nonce.clone()),
            ("code_challenge", self.challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ]
    }

    pub fn url_with(&self, app: &TestApp, extra: &[(&str, &str)]) -> String {
        let mut p: Vec<(&str, String)> = self.params();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k, v.to_string()));
            }
        }
        let pairs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app.url(&format!("/authorize?{}", query(&pairs)))
    }

    pub fn url(&self, app: &TestApp) -> String {
        self.url_with(app, &[])
    }
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, r.text().await.unwrap())
}

/// Submit the login page's form.
pub async fn submit_login(
    client: &reqwest::Client,
    page: &str,
    user: &str,
    password: &str,
) -> (u16, Option<String>, String) {
    let csrf = hidden(page, "csrf").expect("the login page carries a CSRF token");
    let r = client
        .post(form_action(page))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, location, r.text().await.unwrap())
}

/// Run the browser part of a flow (sign in on the page) and return the code.
pub async fn sign_in(app: &TestApp, client: &reqwest::Client, flow: &Flow, user: &str) -> String {
    let (status, _, page) = get(client, &flow.url(app)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Sign in"), "{page}");
    let (status, location, body) = submit_login(client, &page, user, PASSWORD).await;
    assert_eq!(status, 303, "{body}");
    let location = location.unwrap();
    assert!(location.starts_with(&flow.redirect_uri), "{location}");
    assert_eq!(param(&location, "state").unwrap(), flow.state);
    assert_eq!(param(&location, "iss").unwrap(), app.issuer);
    param(&location, "code").unwrap()
}

pub async fn exchange(
    app: &TestApp,
    client: (&str, &str),
    code: &str,
    flow: &Flow,
) -> reqwest::Response {
    app.token(
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &flow.redirect_uri),
            ("code_verifier", &flow.verifier),
        ],
    )
    .await
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn code_flow_issues_tokens_with_nonce_at_hash_and_sso() {
    let app = TestApp::spawn().await;
    let user_id = app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "ES256", &["--first-party"]).await;
    let b = browser();
    let flow = Flow::new("web");
    let code = sign_in(&app, &b, &flow, "alice").await;

    let r = exchange(&app, ("web", &secret), &code, &flow).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "api:read openid profile");
    let access = body["access_token"].as_str().unwrap();
    let id = jwt_part(body["id_token"].as_str().unwrap(), 1);
    assert_eq!(id["sub"], user_id.as_str());
    assert_eq!(id["aud"], "web");
    assert_eq!(id["nonce"], flow.nonce.as_str());
    assert_eq!(id["amr"], serde_json::json!(["pwd"]));
    assert_eq!(id["preferred_username"], "alice");
    let digest = openssl::sha::sha256(access.as_bytes());
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
    assert_eq!(id["at_hash"], expected.as_str());
    let at = jwt_part(access, 1);
    assert_eq!(at["sid"], id["sid"]);
    assert!(id["auth_time"].as_i64().unwrap() <= id["iat"].as_i64().unwrap());
    assert_eq!(jwt_part(access, 0)["alg"], "ES256");
    // The tokens work and the refresh token rotates.
    assert_eq!(app.userinfo(Some(access)).await.status(), 200);
    let r = app
        .refresh(("web", &secret), body["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 200);

    // Single sign-on: the next authorization needs no form.
    let again = Flow::new("web");
    let (status, location, _) = get(&b, &again.url(&app)).await;
    assert_eq!(status, 303);
    let location = location.unwrap();
    assert_eq!(param(&location, "state").unwrap(), again.state);
    let code2 = param(&location, "code").unwrap();
    assert_ne!(code2, code);
    let r = exchange(&app, ("web", &secret), &code2, &again).await;
    assert_eq!(r.status(), 200);
    // The session cookie is __Host-, HttpOnly, Secure and SameSite=Lax.
    let r = browser().get(flow.url(&app)).send().await.unwrap();
    let page = r.text().await.unwrap();
    let csrf = hidden(&page, "csrf").unwrap();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(form_action(&page))
        .header("cookie", format!("__Host-latchkey-csrf={csrf}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-latchkey-session="), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
}

#[tokio::test]
async fn loopback_redirect_uri_matches_any_port_and_public_clients_work() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let out = app
        .cli(
            &[
                "clients",
                "create",
                "native",
                "--public",
                "--first-party",
                "--grant-types",
                "authorization_code",
                "--scopes",
                "openid",
                "--redirect-uris",
                LOOPBACK_CB,
                "--json",
            ],
            None,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flow = Flow::new("native");
    flow.redirect_uri = "http://127.0.0.1:49152/callback".into();
    flow.scope = "openid".into();
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let r = app
        .http
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "native"),
            ("code", &code),
            ("redirect_uri", &flow.redirect_uri),
            ("code_verifier", &flow.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // The client may not refresh, so no refresh token is handed out.
    assert!(body.get("refresh_token").is_none(), "{body}");
}

#[tokio::test]
async fn unregistered_and_near_miss_redirect_uris_get_a_page_not_a_redirect() {
    let app = TestApp::spawn().await;
    code_client(&app, "web", "RS256", &["--first-party"]).await;
    let flow = Flow::new("web");
    let b = browser();
    for bad in [
        "https://evil.example/cb",
        "https://app.example.com/cb/extra",
        "https://app.example.com:8443/cb",
        "https://app.example.com/cb?x=1",
        "https://app.example.com/cb#frag",
        "http://app.example.com/cb",
        "https://app.example.com/cb/../evil",
        "https://app.example.com/cb@evil.example",
        "https://app.example.com.evil.example/cb",
        "//evil.example/cb",
        "http://127.0.0.1:8080/callback/x",
        "http://127.1:8080/callback",
        "http://localhost:8080/callback",
    ] {
        let (status, location, page) =
            get(&b, &flow.url_with(&app, &[("redirect_uri", bad)])).await;
        assert_eq!(status, 400, "{bad}: {page}");
        assert!(location.is_none(), "{bad} was redirected");
        assert!(
            page.contains("redirect_uri is not registered"),
            "{bad}: {page}"
        );
    }
    // Unknown client and missing redirect_uri: a page too.
    let (status, location, page) = get(&b, &flow.url_with(&app, &[("client_id", "nobody")])).await;
    assert_eq!((status, location.is_none()), (400, true));
    assert!(page.contains("unknown client_id"));
    let (status, location, _) = get(&b, &flow.url_with(&app, &[("redirect_uri", "")])).await;
    assert_eq!((status, location.is_none()), (400, true));
    // A repeated parameter cannot smuggle a second redirect URI.
    let url = format!(
        "{}&redirect_uri={}",
        flow.url(&app),
        enc("https://evil.example/")
    );
    let (status, location, _) = get(&b, &url).await;
    assert_eq!((status, location.is_none()), (400, true));
    // A registered URI on a different port is fine only on loopback.
    let (status, _, page) = get(
        &b,
        &flow.url_with(&app, &[("redirect_uri", "http://127.0.0.1:8080/callback")]),
    )
    .await;
    assert_eq!(status, 200, "{page}");
}

#[tokio::test]
async fn redirectable_errors_carry_error_state_and_iss() {
    let app = TestApp::spawn().await;
    code_client(&app, "web", "RS256", &["--first-party"]).await;
    let flow = Flow::new("web");
    let b = browser();
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("code_challenge", "")], "invalid_request"),
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("code_challenge_method", "")], "invalid_request"),
        (&[("scope", "openid admin:all")], "invalid_scope"),
        (&[("prompt", "none")], "login_required"),
        (&[("max_age", "soon")], "invalid_request"),
    ];
    for (extra, error) in cases {
        let (status, location, body) = get(&b, &flow.url_with(&app, extra)).await;
        assert_eq!(status, 303, "{extra:?}: {body}");
        let location = location.unwrap();
        assert!(location.starts_with(APP_CB), "{location}");
        assert_eq!(param(&location, "error").unwrap(), error, "{extra:?}");
        assert!(param(&location, "error_description").is_some());
        assert_eq!(param(&location, "state").unwrap(), flow.state);
        assert_eq!(param(&location, "iss").unwrap(), app.issuer);
        assert!(param(&location, "code").is_none());
    }
    // A client not allowed the code flow is told so at its redirect URI.
    app.cli(
        &[
            "clients",
            "create",
            "pw-only",
            "--grant-types",
            "password",
            "--scopes",
            "openid",
            "--redirect-uris",
            APP_CB,
        ],
        None,
    )
    .await;
    let other = Flow::new("pw-only");
    let (_, location, _) = get(&b, &other.url_with(&app, &[("scope", "openid")])).await;
    assert_eq!(
        param(&location.unwrap(), "error").unwrap(),
        "unauthorized_client"
    );
}

#[tokio::test]
async fn wrong_verifier_redirect_uri_or_client_spend_the_code() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    let other_secret = code_client(&app, "other", "RS256", &["--first-party"]).await;

    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let (_, wrong) = pkce();
    let r = app
        .token(
            ("web", &secret),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_CB),
                ("code_verifier", &wrong),
            ],
        )
        .await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    // Spent: the right verifier no longer helps.
    let r = exchange(&app, ("web", &secret), &code, &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));

    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let mut moved = Flow::new("web");
    moved.verifier = flow.verifier.clone();
    moved.redirect_uri = "http://127.0.0.1/callback".into();
    let r = exchange(&app, ("web", &secret), &code, &moved).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));

    // A code issued to "web" is refused to "other".
    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let r = exchange(&app, ("other", &other_secret), &code, &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));

    // Malformed grant parameters are invalid_request.
    for form in [
        vec![
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("redirect_uri", APP_CB),
        ],
        vec![
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("redirect_uri", APP_CB),
            ("code_verifier", "short"),
        ],
        vec![
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("redirect_uri", APP_CB),
            ("code_verifier", &"a%b".repeat(20)),
        ],
    ] {
        let r = app.token(("web", &secret), &form).await;
        assert_eq!(error_of(r).await, (400, "invalid_request".into()));
    }
    // An unknown code.
    let r = exchange(&app, ("web", &secret), "no-such-code", &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
}

#[tokio::test]
async fn code_replay_revokes_the_tokens_issued_from_it() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let body: Value = exchange(&app, ("web", &secret), &code, &flow)
        .await
        .json()
        .await
        .unwrap();
    let access = body["access_token"].as_str().unwrap();
    let refresh = body["refresh_token"].as_str().unwrap();
    assert_eq!(app.userinfo(Some(access)).await.status(), 200);
    assert_eq!(
        app.introspect(("web", &secret), access).await["active"],
        true
    );

    let r = exchange(&app, ("web", &secret), &code, &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    // Everything the first exchange issued is dead now.
    assert_eq!(app.userinfo(Some(access)).await.status(), 401);
    assert_eq!(
        app.introspect(("web", &secret), access).await["active"],
        false
    );
    let r = app.refresh(("web", &secret), refresh).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
}

#[tokio::test]
async fn expired_code_is_refused() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(crate::helpers::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    // At 59 s the code still works; at exactly 60 s it has expired.
    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    clock.advance(59);
    assert_eq!(
        exchange(&app, ("web", &secret), &code, &flow)
            .await
            .status(),
        200
    );
    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    clock.advance(60);
    let r = exchange(&app, ("web", &secret), &code, &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
}

#[tokio::test]
async fn purging_keeps_codes_a_day_for_replay_detection() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(crate::helpers::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    let flow = Flow::new("web");
    let code = sign_in(&app, &browser(), &flow, "alice").await;
    let body: Value = exchange(&app, ("web", &secret), &code, &flow)
        .await
        .json()
        .await
        .unwrap();
    // An hour later the code is expired but still remembered: a purge keeps it
    // and a replay still revokes the session. (The access token itself has
    // expired by then, so the refresh token shows the revocation.)
    clock.advance(3600);
    app.state
        .store
        .purge_expired_sign_ins(clock.now())
        .await
        .unwrap();
    let r = exchange(&app, ("web", &secret), &code, &flow).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    let r = app
        .refresh(("web", &secret), body["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    // Past a day, the code and the (ended or expired) browser sessions go.
    clock.advance(86_400);
    let purged = app
        .state
        .store
        .purge_expired_sign_ins(clock.now())
        .await
        .unwrap();
    assert_eq!(purged, 2, "one code and one expired browser session");
}

#[tokio::test]
async fn login_errors_are_generic_and_forged_posts_are_refused() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    code_client(&app, "web", "RS256", &["--first-party"]).await;
    let flow = Flow::new("web");
    let b = browser();
    let (_, _, page) = get(&b, &flow.url(&app)).await;
    let (s1, l1, wrong_pw) = submit_login(&b, &page, "alice", "wrong password").await;
    let (s2, l2, no_user) = submit_login(&b, &page, "mallory", PASSWORD).await;
    assert_eq!((s1, s2), (200, 200));
    assert!(l1.is_none() && l2.is_none());
    for p in [&wrong_pw, &no_user] {
        assert!(p.contains("Invalid username or password."), "{p}");
        assert!(p.contains("role=\"alert\""));
    }
    // Apart from the echoed username, the two pages are the same.
    assert_eq!(
        wrong_pw.replace("value=\"alice\"", ""),
        no_user.replace("value=\"mallory\"", "")
    );

    // A post without the CSRF token, with a wrong one, or from a browser
    // without the cookie is refused and signs nobody in.
    let action = form_action(&page);
    let csrf = hidden(&page, "csrf").unwrap();
    let wrong = "x".repeat(43);
    for (client, form) in [
        (&b, vec![("username", "alice"), ("password", PASSWORD)]),
        (
            &b,
            vec![
                ("csrf", wrong.as_str()),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        ),
        (
            &browser(),
            vec![
                ("csrf", csrf.as_str()),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        ),
    ] {
        let r = client.post(&action).form(&form).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("location").is_none());
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains("access_denied"));
    }
    // Tampering with the carried request (another redirect URI) is a page.
    let tampered = action.replace(&enc(APP_CB), &enc("https://evil.example/cb"));
    assert_ne!(tampered, action);
    let r = b
        .post(&tampered)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn third_party_clients_ask_for_consent_once() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "partner", "RS256", &[]).await;
    let b = browser();
    let flow = Flow::new("partner");
    let (_, _, page) = get(&b, &flow.url(&app)).await;
    let (status, _, consent) = submit_login(&b, &page, "alice", PASSWORD).await;
    assert_eq!(status, 200);
    assert!(consent.contains("Allow access?"), "{consent}");
    assert!(consent.contains("partner"));
    assert!(consent.contains("See your username"));
    let csrf = hidden(&consent, "csrf").unwrap();
    let action = form_action(&consent);

    // Deny: access_denied at the redirect URI.
    let r = b
        .post(&action)
        .form(&[("csrf", csrf.as_str()), ("decision", "deny")])
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(param(&location, "error").unwrap(), "access_denied");
    // prompt=none while consent is missing: consent_required.
    let (_, location, _) = get(&b, &flow.url_with(&app, &[("prompt", "none")])).await;
    assert_eq!(
        param(&location.unwrap(), "error").unwrap(),
        "consent_required"
    );

    // Allow: a code, and the grant is remembered for these scopes.
    let r = b
        .post(&action)
        .form(&[("csrf", csrf.as_str()), ("decision", "allow")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let code = param(&location, "code").unwrap();
    assert_eq!(
        exchange(&app, ("partner", &secret), &code, &flow)
            .await
            .status(),
        200
    );
    let (status, location, _) = get(&b, &Flow::new("partner").url(&app)).await;
    assert_eq!(status, 303);
    assert!(param(&location.unwrap(), "code").is_some());
    // A wider scope asks again.
    let wider = Flow::new("partner");
    let (status, _, page) = get(
        &b,
        &wider.url_with(&app, &[("scope", "openid profile email")]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("See your email address"), "{page}");
    // A forged consent post is refused.
    let r = browser()
        .post(&action)
        .form(&[("csrf", csrf.as_str()), ("decision", "allow")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn prompt_login_and_max_age_ask_for_the_password_again() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(crate::helpers::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    let b = browser();
    sign_in(&app, &b, &Flow::new("web"), "alice").await;
    let flow = Flow::new("web");
    let (status, _, page) = get(&b, &flow.url_with(&app, &[("prompt", "login")])).await;
    assert_eq!(status, 200);
    assert!(page.contains("Sign in"));
    // Signing in from a prompt=login page does not loop back to the form.
    let (status, location, _) = submit_login(&b, &page, "alice", PASSWORD).await;
    assert_eq!(status, 303);
    let code = param(&location.unwrap(), "code").unwrap();
    let body: Value = exchange(&app, ("web", &secret), &code, &flow)
        .await
        .json()
        .await
        .unwrap();
    let auth_time = jwt_part(body["id_token"].as_str().unwrap(), 1)["auth_time"]
        .as_i64()
        .unwrap();
    assert_eq!(auth_time, clock.now());

    clock.advance(120);
    let (status, _, _) = get(&b, &flow.url_with(&app, &[("max_age", "300")])).await;
    assert_eq!(status, 303, "a sign-in 120 s old satisfies max_age=300");
    let (status, _, page) = get(&b, &flow.url_with(&app, &[("max_age", "60")])).await;
    assert_eq!(status, 200, "a sign-in 120 s old is too old for max_age=60");
    assert!(page.contains("Sign in"));
    let (_, location, _) = get(
        &b,
        &flow.url_with(&app, &[("max_age", "60"), ("prompt", "none")]),
    )
    .await;
    assert_eq!(
        param(&location.unwrap(), "error").unwrap(),
        "login_required"
    );
    // login_hint fills the username.
    let (_, _, page) = get(&browser(), &flow.url_with(&app, &[("login_hint", "alice")])).await;
    assert!(page.contains("value=\"alice\""), "{page}");
}

#[tokio::test]
async fn rp_initiated_logout_ends_the_sso_session_and_its_tokens() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = code_client(&app, "web", "RS256", &["--first-party"]).await;
    let b = browser();
    let flow = Flow::new("web");
    let code = sign_in(&app, &b, &flow, "alice").await;
    let body: Value = exchange(&app, ("web", &secret), &code, &flow)
        .await
        .json()
        .await
        .unwrap();
    let id_token = body["id_token"].as_str().unwrap();
    let logout = |extra: &[(&str, &str)]| {
        let mut p = vec![("id_token_hint", id_token)];
        p.extend_from_slice(extra);
        app.url(&format!("/logout?{}", query(&p)))
    };
    // An unregistered post-logout URI is refused on a page, nothing ends.
    let (status, location, _) = get(
        &b,
        &logout(&[("post_logout_redirect_uri", "https://evil.example/")]),
    )
    .await;
    assert_eq!((status, location.is_none()), (400, true));
    // A forged hint is refused.
    // Change the signature's first character (the last one may carry only
    // padding bits, so changing it can leave the signature bytes as they were).
    let sig_start = id_token.rfind('.').unwrap() + 1;
    let first = &id_token[sig_start..sig_start + 1];
    let forged = format!(
        "{}{}{}",
        &id_token[..sig_start],
        if first == "A" { "B" } else { "A" },
        &id_token[sig_start + 1..]
    );
    let (status, _, _) = get(
        &b,
        &app.url(&format!("/logout?{}", query(&[("id_token_hint", &forged)]))),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&b, &Flow::new("web").url(&app)).await;
    assert_eq!(status, 303, "still signed in");

    let (status, location, _) = get(
        &b,
        &logout(&[("post_logout_redirect_uri", LOGOUT_CB), ("state", "bye-1")]),
    )
    .await;
    assert_eq!(status, 303);
    let location = location.unwrap();
    assert!(location.starts_with(LOGOUT_CB));
    assert_eq!(param(&location, "state").unwrap(), "bye-1");
    // Signed out: the form again, and the session's tokens are dead.
    let (status, _, page) = get(&b, &Flow::new("web").url(&app)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Sign in"));
    assert_eq!(
        app.userinfo(Some(body["access_token"].as_str().unwrap()))
            .await
            .status(),
        401
    );
    let r = app
        .refresh(("web", &secret), body["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 400);

    // Without a hint, logout asks first (a cross-site link cannot sign anyone out).
    sign_in(&app, &b, &Flow::new("web"), "alice").await;
    let (status, _, page) = get(&b, &app.url("/logout")).await;
    assert_eq!(status, 200);
    assert!(page.contains("Sign out?"));
    let (status, _, _) = get(&b, &Flow::new("web").url(&app)).await;
    assert_eq!(status, 303, "still signed in until confirmed");
    let csrf = hidden(&page, "csrf").unwrap();
    let r = b
        .post(app.url("/logout"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("You are signed out"));
    let (status, _, _) = get(&b, &Flow::new("web").url(&app)).await;
    assert_eq!(status, 200, "signed out");
}

#[tokio::test]
async fn clients_create_validates_redirect_uris() {
    let app = TestApp::spawn().await;
    for (uris, why) in [
        ("http://app.example.com/cb", "plain http"),
        ("https://app.example.com/cb#x", "fragment"),
        ("/relative", "absolute"),
    ] {
        let out = app
            .cli(
                &[
                    "clients",
                    "create",
                    "bad",
                    "--grant-types",
                    "authorization_code",
                    "--scopes",
                    "openid",
                    "--redirect-uris",
                    uris,
                ],
                None,
            )
            .await;
        assert!(!out.status.success(), "{uris} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{uris}");
    }
    let out = app
        .cli(
            &[
                "clients",
                "create",
                "bad",
                "--grant-types",
                "authorization_code",
                "--scopes",
                "openid",
            ],
            None,
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redirect-uris"));
}
