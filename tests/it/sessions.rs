use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Options, PASSWORD, TestApp, jwt_part};

async fn setup() -> (TestApp, String) {
    setup_with(Options::default()).await
}

async fn setup_with(options: Options) -> (TestApp, String) {
    let app = TestApp::spawn_with(options).await;
    app.create_user("alice", PASSWORD, &[]).await;
    app.create_user("bob", PASSWORD, &[]).await;
    let secret = app
        .create_client(
            "web",
            "password,refresh_token",
            "openid profile api:read",
            "ES256",
        )
        .await;
    (app, secret)
}

/// Log in as `user` from a "device" (a device name, or a User-Agent).
async fn login_from(
    app: &TestApp,
    secret: &str,
    user: &str,
    device_name: Option<&str>,
    user_agent: &str,
) -> Value {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", PASSWORD),
        ("scope", "openid profile api:read"),
    ];
    if let Some(d) = device_name {
        form.push(("device_name", d));
    }
    let r = app
        .http
        .post(app.url("/token"))
        .basic_auth("web", Some(secret))
        .header("user-agent", user_agent)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap()
}

async fn sessions_of(app: &TestApp, access: &str) -> Vec<Value> {
    let r = app.bearer(Method::GET, "/account/sessions", access).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

#[tokio::test]
async fn two_devices_logout_one_then_logout_everywhere() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let laptop = login_from(&app, &secret, "alice", None, FIREFOX).await;
    let phone = login_from(&app, &secret, "alice", Some("Alice's phone"), "okhttp/4.12").await;

    // Both sessions are listed with their labels, address and last use.
    let list = sessions_of(&app, s(&laptop, "access_token")).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let laptop_sid = jwt_part(s(&laptop, "access_token"), 1)["sid"].clone();
    let phone_sid = jwt_part(s(&phone, "access_token"), 1)["sid"].clone();
    let find = |sid: &Value| list.iter().find(|e| &e["id"] == sid).unwrap().clone();
    let (l, p) = (find(&laptop_sid), find(&phone_sid));
    assert_eq!(l["device"], "Firefox on Linux");
    assert_eq!(p["device"], "Alice's phone");
    assert_eq!(l["current"], true);
    assert_eq!(p["current"], false);
    assert_eq!(l["ip"], "127.0.0.1");
    assert_eq!(l["client_id"], "web");
    assert!(l["last_used_at"].as_i64().unwrap() >= l["created_at"].as_i64().unwrap());

    // A refresh moves the session's last use and keeps it listed.
    let refreshed: Value = app
        .refresh(client, s(&phone, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    let list = sessions_of(&app, s(&refreshed, "access_token")).await;
    assert_eq!(list.len(), 2);

    // Logout on the laptop: its refresh token and access token stop working.
    let r = app
        .bearer(Method::POST, "/account/logout", s(&laptop, "access_token"))
        .await;
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "logout clears the refresh cookie"
    );
    let r = app.refresh(client, s(&laptop, "refresh_token")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        app.userinfo(Some(s(&laptop, "access_token")))
            .await
            .status(),
        401
    );
    assert_eq!(
        app.introspect(client, s(&laptop, "access_token")).await,
        serde_json::json!({"active": false})
    );
    // The phone is untouched.
    assert_eq!(
        app.userinfo(Some(s(&refreshed, "access_token")))
            .await
            .status(),
        200
    );
    let list = sessions_of(&app, s(&refreshed, "access_token")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], phone_sid);

    // Logout everywhere from the phone: every session and access token dies,
    // including ones issued to it a moment ago.
    let before = app
        .refresh(client, s(&refreshed, "refresh_token"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let r = app
        .bearer(
            Method::POST,
            "/account/logout-all",
            s(&before, "access_token"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["sessions_ended"], 1);
    for token in [s(&refreshed, "access_token"), s(&before, "access_token")] {
        assert_eq!(app.userinfo(Some(token)).await.status(), 401);
        assert_eq!(app.introspect(client, token).await["active"], false);
    }
    assert_eq!(
        app.refresh(client, s(&before, "refresh_token"))
            .await
            .status(),
        400
    );
    // A new login afterwards works normally.
    let again = login_from(&app, &secret, "alice", None, FIREFOX).await;
    assert_eq!(
        app.userinfo(Some(s(&again, "access_token"))).await.status(),
        200
    );
}

#[tokio::test]
async fn a_user_ends_only_their_own_sessions() {
    let (app, secret) = setup().await;
    let a1 = login_from(&app, &secret, "alice", Some("one"), "x").await;
    let a2 = login_from(&app, &secret, "alice", Some("two"), "x").await;
    let b = login_from(&app, &secret, "bob", None, "x").await;
    let a2_sid = jwt_part(s(&a2, "access_token"), 1)["sid"]
        .as_str()
        .unwrap()
        .to_string();
    // Bob cannot end (or learn about) alice's session: 404, and it lives on.
    let r = app
        .bearer(
            Method::DELETE,
            &format!("/account/sessions/{a2_sid}"),
            s(&b, "access_token"),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    assert_eq!(
        app.userinfo(Some(s(&a2, "access_token"))).await.status(),
        200
    );
    // Alice ends her second session from the first.
    let r = app
        .bearer(
            Method::DELETE,
            &format!("/account/sessions/{a2_sid}"),
            s(&a1, "access_token"),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        app.userinfo(Some(s(&a2, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.userinfo(Some(s(&a1, "access_token"))).await.status(),
        200
    );
    assert_eq!(
        app.userinfo(Some(s(&b, "access_token"))).await.status(),
        200
    );
    // Unknown, over-long and already-ended ids are all "not found".
    for id in [a2_sid.as_str(), "nope", &"x".repeat(300)] {
        let r = app
            .bearer(
                Method::DELETE,
                &format!("/account/sessions/{id}"),
                s(&a1, "access_token"),
            )
            .await;
        assert_eq!(r.status(), 404, "{id}");
    }
    // Without a token: the RFC 6750 challenge.
    let r = app
        .http
        .get(app.url("/account/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}

#[tokio::test]
async fn operators_list_and_revoke_sessions_from_the_cli() {
    let (app, secret) = setup().await;
    let a1 = login_from(&app, &secret, "alice", Some("desk"), "x").await;
    let a2 = login_from(&app, &secret, "alice", Some("tablet"), "x").await;
    let b = login_from(&app, &secret, "bob", None, "x").await;
    let out = app
        .cli_ok(&["sessions", "list", "--user", "alice", "--json"], None)
        .await;
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2);
    let mut devices: Vec<&str> = list.iter().map(|e| e["device"].as_str().unwrap()).collect();
    devices.sort();
    assert_eq!(devices, ["desk", "tablet"]);

    // Revoke one by id (ids may begin with '-': pass them as listed).
    let a1_sid = jwt_part(s(&a1, "access_token"), 1)["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let mark = app.revocations();
    app.cli_ok(&["sessions", "revoke", &a1_sid], None).await;
    app.wait_revocation_seen(mark).await;
    assert_eq!(
        app.userinfo(Some(s(&a1, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.userinfo(Some(s(&a2, "access_token"))).await.status(),
        200
    );
    let out = app.cli(&["sessions", "revoke", &a1_sid], None).await;
    assert!(
        !out.status.success(),
        "revoking an ended session is an error"
    );

    // Revoke every session of a user; bob is untouched.
    let mark = app.revocations();
    let out = app
        .cli_ok(&["sessions", "revoke", "--user", "alice", "--json"], None)
        .await;
    app.wait_revocation_seen(mark).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["sessions_ended"],
        1
    );
    assert_eq!(
        app.userinfo(Some(s(&a2, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.userinfo(Some(s(&b, "access_token"))).await.status(),
        200
    );
    let out = app
        .cli(&["sessions", "list", "--user", "nobody"], None)
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
}

#[tokio::test]
async fn admins_list_and_revoke_sessions_over_http() {
    let (app, secret) = setup().await;
    app.create_user("root", PASSWORD, &["admin"]).await;
    // The admin API needs a token with latchkey:admin, from an --admin client.
    let ops = app
        .create_admin_client("ops", "password", "openid", "ES256")
        .await;
    let admin = app
        .login(("ops", &ops), "root", PASSWORD, "openid latchkey:admin")
        .await;
    let a = login_from(&app, &secret, "alice", Some("desk"), "x").await;
    let token = s(&admin, "access_token");
    let r = app
        .bearer(Method::GET, "/admin/sessions?user=alice", token)
        .await;
    assert_eq!(r.status(), 200);
    let list: Vec<Value> = r.json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["device"], "desk");
    let id = list[0]["id"].as_str().unwrap().to_string();
    // A non-admin may not.
    let r = app
        .bearer(
            Method::GET,
            "/admin/sessions?user=alice",
            s(&a, "access_token"),
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = app
        .bearer(Method::DELETE, &format!("/admin/sessions/{id}"), token)
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        401
    );
    let r = app
        .bearer(Method::DELETE, &format!("/admin/sessions/{id}"), token)
        .await;
    assert_eq!(r.status(), 404);
    let a = login_from(&app, &secret, "alice", None, "x").await;
    let r = app
        .bearer(Method::DELETE, "/admin/users/alice/sessions", token)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["sessions_ended"], 1);
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        401
    );
}

#[tokio::test]
async fn a_password_change_ends_every_session() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let a1 = login_from(&app, &secret, "alice", None, "x").await;
    let a2 = login_from(&app, &secret, "alice", None, "y").await;
    let mark = app.revocations();
    let out = app
        .cli_ok(
            &["users", "set-password", "alice", "--password-stdin"],
            Some("a brand new passphrase"),
        )
        .await;
    assert!(out.contains("2 sessions ended"), "{out}");
    app.wait_revocation_seen(mark).await;
    for login in [&a1, &a2] {
        assert_eq!(
            app.userinfo(Some(s(login, "access_token"))).await.status(),
            401
        );
        assert_eq!(
            app.refresh(client, s(login, "refresh_token"))
                .await
                .status(),
            400
        );
    }
    let old = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(old.status(), 400);
    app.login(client, "alice", "a brand new passphrase", "api:read")
        .await;
    // Bad input: unknown user, short password.
    let out = app
        .cli(
            &["users", "set-password", "nobody", "--password-stdin"],
            Some("long enough pw"),
        )
        .await;
    assert!(!out.status.success());
    let out = app
        .cli(
            &["users", "set-password", "alice", "--password-stdin"],
            Some("short"),
        )
        .await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn clients_act_only_on_their_own_tokens() {
    let (app, secret) = setup().await;
    let other = app
        .create_client("other", "client_credentials", "api:read", "RS256")
        .await;
    let rs = app
        .clients_create("api", "client_credentials", "api:read", &["--introspect"])
        .await;
    let rs_secret = rs["client_secret"].as_str().unwrap().to_string();
    let login = login_from(&app, &secret, "alice", None, "x").await;
    let (access, refresh) = (s(&login, "access_token"), s(&login, "refresh_token"));

    // Another client sees nothing and can revoke nothing.
    assert_eq!(
        app.introspect(("other", &other), access).await["active"],
        false
    );
    assert_eq!(
        app.introspect(("other", &other), refresh).await["active"],
        false
    );
    for token in [access, refresh] {
        let r = app
            .http
            .post(app.url("/revoke"))
            .basic_auth("other", Some(&other))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(app.userinfo(Some(access)).await.status(), 200);
    // A resource server registered with --introspect may introspect it.
    let seen = app.introspect(("api", &rs_secret), access).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["client_id"], "web");
    let seen = app.introspect(("web", &secret), refresh).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["token_type"], "refresh_token");
    assert_eq!(seen["username"], "alice");
    // Unknown and absurd tokens: 200 at revocation, inactive at introspection.
    for token in ["unknown", &"z".repeat(9000)] {
        let r = app
            .http
            .post(app.url("/revoke"))
            .basic_auth("web", Some(&secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            app.introspect(("web", &secret), token).await["active"],
            false
        );
    }
    // The owner's revocation works.
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", refresh), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.refresh(("web", &secret), refresh).await.status(), 400);
    assert_eq!(app.userinfo(Some(access)).await.status(), 401);
}

#[tokio::test]
async fn a_disabled_users_tokens_are_inactive_and_userinfo_takes_a_form_token() {
    let (app, secret) = setup().await;
    let login = login_from(&app, &secret, "alice", None, "x").await;
    let access = s(&login, "access_token");
    // RFC 6750 §2.2: the token in a form-encoded POST body.
    let r = app
        .http
        .post(app.url("/userinfo"))
        .form(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["preferred_username"],
        "alice"
    );
    // Both methods at once is a malformed request.
    let r = app
        .http
        .post(app.url("/userinfo"))
        .bearer_auth(access)
        .form(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

    let mark = app.revocations();
    app.cli_ok(&["users", "disable", "alice"], None).await;
    app.wait_revocation_seen(mark).await;
    assert_eq!(
        app.introspect(("web", &secret), access).await["active"],
        false
    );
    let r = app
        .http
        .post(app.url("/userinfo"))
        .form(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn cleanup_deletes_expired_rows_and_keeps_live_ones() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(Options {
        top_toml: "[tokens]\naccess_ttl_secs = 60\nrefresh_idle_ttl_secs = 100\nrefresh_absolute_ttl_secs = 300\ncleanup_batch_size = 2\n"
            .into(),
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "api:read", "RS256")
        .await;
    let client = ("web", secret.as_str());
    // Five old sessions, each refreshed once (two tokens each), each with a
    // denylisted access token.
    for _ in 0..5 {
        let l = app.login(client, "alice", PASSWORD, "api:read").await;
        app.refresh(client, s(&l, "refresh_token")).await;
        let r = app
            .bearer(Method::POST, "/account/logout", s(&l, "access_token"))
            .await;
        assert_eq!(r.status(), 204);
    }
    let store = &app.state.store;
    let before = store.token_table_counts().await.unwrap();
    assert_eq!(
        (before.sessions, before.refresh_tokens, before.denied_jtis),
        (5, 10, 5)
    );
    // Much later, one fresh session.
    clock.advance(400);
    let live = app.login(client, "alice", PASSWORD, "api:read").await;
    let removed = latchkey::session::cleanup::run_once(store, &app.state.clock, 2)
        .await
        .unwrap();
    assert_eq!(removed.sessions, 5);
    assert_eq!(removed.denied_jtis, 5);
    assert_eq!(removed.refresh_tokens, 10);
    let after = store.token_table_counts().await.unwrap();
    assert_eq!(
        (after.sessions, after.refresh_tokens, after.denied_jtis),
        (1, 1, 0)
    );
    assert_eq!(
        app.refresh(client, s(&live, "refresh_token"))
            .await
            .status(),
        200
    );
}

/// A refresh storm beside a login flood on one server: every answer is a 200
/// (or, for deliberately wrong passwords, a 400) — never a 5xx, never
/// "database is locked". `LATCHKEY_TEST_STORM_SECS` lengthens it (default 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_storm_beside_a_login_flood_never_fails() {
    let secs: u64 = std::env::var("LATCHKEY_TEST_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    // Dozens of logins for one user, and hundreds of refreshes a second, all
    // from one test address are exactly what the per-username and
    // per-address limits refuse; this test is about the database and the
    // argon2 queue under a flood, so the limits are off here (abuse.rs
    // tests them).
    let (app, secret) = setup_with(Options::unlimited()).await;
    let app = std::sync::Arc::new(app);
    let mut chains = Vec::new();
    for _ in 0..64 {
        let login = app
            .login(("web", &secret), "alice", PASSWORD, "openid api:read")
            .await;
        chains.push(s(&login, "refresh_token").to_string());
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, mut rt) in chains.into_iter().enumerate() {
        let (app, secret) = (app.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while tokio::time::Instant::now() < deadline {
                let r = app.refresh(("web", &secret), &rt).await;
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                assert_eq!(status, 200, "chain {i}: {body}");
                rt = s(&body, "refresh_token").to_string();
                n += 1;
            }
            n
        }));
    }
    let mut flood = Vec::new();
    for i in 0..4 {
        let (app, secret) = (app.clone(), secret.clone());
        flood.push(tokio::spawn(async move {
            let mut n = 0u32;
            while tokio::time::Instant::now() < deadline {
                let password = if (n + i).is_multiple_of(2) {
                    PASSWORD
                } else {
                    "wrong password"
                };
                let r = app
                    .token(
                        ("web", &secret),
                        &[
                            ("grant_type", "password"),
                            ("username", "bob"),
                            ("password", password),
                        ],
                    )
                    .await;
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                assert!(!text.contains("locked"), "{text}");
                assert!(status == 200 || status == 400, "login: {status} {text}");
                n += 1;
            }
            n
        }));
    }
    let mut refreshes = 0;
    for t in tasks {
        refreshes += t.await.unwrap();
    }
    let mut logins = 0;
    for t in flood {
        logins += t.await.unwrap();
    }
    assert!(refreshes > 64, "refreshes: {refreshes}");
    assert!(logins > 0);
    eprintln!("storm: {refreshes} refreshes and {logins} logins in {secs} s, no failures");
}

/// Userinfo answers and liveness checks are cached per `jti`; every
/// revocation this process commits drops them before its response.
#[tokio::test]
async fn cached_checks_end_at_once_with_a_revocation_here() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let a = login_from(&app, &secret, "alice", None, "x").await;
    let b = login_from(&app, &secret, "alice", None, "y").await;
    for login in [&a, &b] {
        for _ in 0..3 {
            let r = app.userinfo(Some(s(login, "access_token"))).await;
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.json::<Value>().await.unwrap()["preferred_username"],
                "alice"
            );
        }
        assert_eq!(
            app.introspect(client, s(login, "access_token")).await["active"],
            true
        );
    }
    // Logout of one session: its token is refused by the very next request.
    let r = app
        .bearer(Method::POST, "/account/logout", s(&a, "access_token"))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.introspect(client, s(&a, "access_token")).await["active"],
        false
    );
    assert_eq!(
        app.userinfo(Some(s(&b, "access_token"))).await.status(),
        200
    );
    // RFC 7009 revocation of the other access token, also at once.
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", s(&b, "access_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.userinfo(Some(s(&b, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.bearer(Method::GET, "/account/sessions", s(&b, "access_token"))
            .await
            .status(),
        401
    );
}

/// A revocation by another process (the CLI here, another replica in
/// production) reaches a running server's cached checks through
/// `revocation_state.version`, read every `tokens.revocation_poll_millis`.
#[tokio::test]
async fn another_process_revocation_reaches_cached_checks_within_the_poll_interval() {
    let (app, secret) = setup().await;
    let a = login_from(&app, &secret, "alice", None, "x").await;
    let bob = login_from(&app, &secret, "bob", None, "x").await;
    for login in [&a, &bob] {
        assert_eq!(
            app.userinfo(Some(s(login, "access_token"))).await.status(),
            200
        );
    }
    let mark = app.revocations();
    let started = std::time::Instant::now();
    app.cli_ok(&["users", "disable", "alice"], None).await;
    app.wait_revocation_seen(mark).await;
    let seen_after = started.elapsed();
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.introspect(("web", &secret), s(&a, "access_token"))
            .await["active"],
        false
    );
    // Nothing else was lost: bob's token still answers.
    assert_eq!(
        app.userinfo(Some(s(&bob, "access_token"))).await.status(),
        200
    );
    eprintln!("revocation seen {seen_after:?} after the CLI started");
}

/// `tokens.revocation_poll_millis = 0` turns the cache off: every check reads
/// the database, so another process's revocation counts at once.
#[tokio::test]
async fn without_the_cache_another_process_revocation_counts_at_once() {
    let (app, secret) = setup_with(Options {
        top_toml: "[tokens]\nrevocation_poll_millis = 0\n".into(),
        ..Default::default()
    })
    .await;
    let a = login_from(&app, &secret, "alice", None, "x").await;
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        200
    );
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        200
    );
    let mark = app.revocations();
    app.cli_ok(&["sessions", "revoke", "--user", "alice"], None)
        .await;
    assert_eq!(app.revocations(), mark, "no poller runs without the cache");
    assert_eq!(
        app.userinfo(Some(s(&a, "access_token"))).await.status(),
        401
    );
    assert_eq!(
        app.bearer(Method::GET, "/account/sessions", s(&a, "access_token"))
            .await
            .status(),
        401
    );
}
