//! Abuse resistance on a real server: rate limits per address (behind a
//! trusted proxy), per username and per client, shared through Redis by two
//! servers and surviving a Redis outage; account lockout and unlock; the
//! bounded argon2 queue; the admin scope.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Env, Options, PASSWORD, TestApp};

fn proxied(extra_toml: &str) -> Options {
    Options {
        extra_toml: extra_toml.to_string(),
        env: vec![(
            "LATCHKEY_SERVER__TRUSTED_PROXIES".into(),
            "127.0.0.1".into(),
        )],
        ..Options::default()
    }
}

/// client_credentials from `ip` (as the trusted proxy reports it).
async fn cc_from(app: &TestApp, secret: &str, ip: &str) -> reqwest::Response {
    app.http
        .post(app.url("/token"))
        .basic_auth("svc", Some(secret))
        .header("x-forwarded-for", ip)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

/// A password login from `ip`; returns status and the raw body bytes.
async fn login_from(
    app: &TestApp,
    client: (&str, &str),
    user: &str,
    password: &str,
    ip: &str,
) -> (u16, Vec<u8>) {
    let r = app
        .http
        .post(app.url("/token"))
        .basic_auth(client.0, Some(client.1))
        .header("x-forwarded-for", ip)
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
            ("scope", "openid"),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// A 429 as the contract says: whole-second Retry-After within the window,
/// `rate_limited`, not cached.
async fn assert_rate_limited(r: reqwest::Response, max_secs: u64) {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=max_secs).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["error_description"].is_string());
}

#[tokio::test]
async fn per_address_limit_answers_429_while_another_address_gets_through() {
    let app = TestApp::spawn_with(proxied(
        "[rate_limit.token]\nper_ip = { rate = 1, per_secs = 60, burst = 3 }\n\
         [rate_limit.revoke]\nper_ip = { rate = 1, per_secs = 30, burst = 2 }\n",
    ))
    .await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    for _ in 0..3 {
        assert_eq!(cc_from(&app, &secret, "203.0.113.7").await.status(), 200);
    }
    assert_rate_limited(cc_from(&app, &secret, "203.0.113.7").await, 60).await;
    assert_rate_limited(cc_from(&app, &secret, "203.0.113.7").await, 60).await;
    // Each refusal is counted; the audit log gets one event per address and
    // minute, however many refusals there are.
    assert_eq!(audit_types(&app, "rate_limit.triggered").await, 1);
    assert!(metric(&app, "latchkey_rate_limit_rejections_total").await >= 2.0);
    // Another address behind the same proxy is its own key.
    assert_eq!(cc_from(&app, &secret, "203.0.113.8").await.status(), 200);
    // Bad client credentials count against the address too (checked first).
    let r = cc_from(&app, "wrong-secret", "203.0.113.7").await;
    assert_eq!(r.status(), 429);

    // /revoke has its own limits.
    for expected in [200, 200, 429] {
        let r = app
            .http
            .post(app.url("/revoke"))
            .basic_auth("svc", Some(&secret))
            .header("x-forwarded-for", "198.51.100.1")
            .form(&[("token", "not-a-token")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
        if expected == 429 {
            assert_rate_limited(r, 30).await;
        }
    }
}

#[tokio::test]
async fn per_client_limit_applies_across_addresses() {
    let app = TestApp::spawn_with(proxied(
        "[rate_limit.introspect]\nper_client = { rate = 1, per_secs = 60, burst = 2 }\n",
    ))
    .await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    for (ip, expected) in [("192.0.2.1", 200), ("192.0.2.2", 200), ("192.0.2.3", 429)] {
        let r = app
            .http
            .post(app.url("/introspect"))
            .basic_auth("svc", Some(&secret))
            .header("x-forwarded-for", ip)
            .form(&[("token", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "from {ip}");
    }
}

#[tokio::test]
async fn username_limit_stops_guessing_from_one_address_only() {
    // The default burst (10 per username and address) with a refill slow
    // enough that a loaded machine cannot earn a token back mid-test.
    let app = TestApp::spawn_with(proxied(
        "[rate_limit.token]\nper_username = { rate = 10, per_secs = 3600, burst = 10 }\n",
    ))
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "openid", "ES256")
        .await;
    let client = ("web", secret.as_str());
    // 10 attempts per username and address, then 429 even for the right password.
    for _ in 0..10 {
        let (status, _) = login_from(&app, client, "alice", "guess", "203.0.113.50").await;
        assert_eq!(status, 400);
    }
    let (status, body) = login_from(&app, client, "alice", PASSWORD, "203.0.113.50").await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    // The guessing address neither rate-limits nor locks the user elsewhere:
    // it could contribute only 3 counted failures, below the threshold of 5.
    let (status, body) = login_from(&app, client, "alice", PASSWORD, "198.51.100.9").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

const LOCKOUT: &str = "[lockout]\nthreshold = 3\nbase_delay_secs = 60\nper_source_failures = 2\nper_source_window_secs = 600\n";

#[tokio::test]
async fn lockout_after_n_failures_answers_like_an_unknown_user_until_unlocked() {
    let app = TestApp::spawn_with(proxied(LOCKOUT)).await;
    app.create_user("bob", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "openid", "ES256")
        .await;
    let client = ("web", secret.as_str());
    let (_, unknown) = login_from(&app, client, "nobody", PASSWORD, "192.0.2.99").await;
    let (_, wrong) = login_from(&app, client, "bob", "nope", "192.0.2.10").await;
    assert_eq!(wrong, unknown, "wrong password and unknown user differ");
    // Counted: 192.0.2.10 twice (its share), then one more from it is not
    // counted, then one from 192.0.2.11 reaches the threshold of 3.
    login_from(&app, client, "bob", "nope", "192.0.2.10").await;
    login_from(&app, client, "bob", "nope", "192.0.2.10").await;
    let (status, _) = login_from(&app, client, "bob", PASSWORD, "192.0.2.12").await;
    assert_eq!(status, 200, "one address alone must not lock the account");
    // The success reset the count: three more counted failures are needed.
    login_from(&app, client, "bob", "nope", "192.0.2.20").await;
    login_from(&app, client, "bob", "nope", "192.0.2.20").await;
    login_from(&app, client, "bob", "nope", "192.0.2.21").await;

    // Locked: the right password is refused with the same bytes as an unknown user.
    let (status, locked) = login_from(&app, client, "bob", PASSWORD, "192.0.2.30").await;
    assert_eq!(status, 400);
    assert_eq!(
        locked, unknown,
        "a locked account must look like any failure"
    );
    let (_, unknown_again) = login_from(&app, client, "ghost", "x", "192.0.2.30").await;
    assert_eq!(locked, unknown_again);
    let body: Value = serde_json::from_slice(&locked).unwrap();
    assert_eq!(body["error"], "invalid_grant");

    let out = app.cli(&["users", "list", "--json"], None).await;
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bob = &users.as_array().unwrap()[0];
    assert_eq!(bob["failed_logins"], 3);
    assert!(bob["locked_until"].as_i64().unwrap() > app.state.clock.now() + 50);
    // The lockout is an audit event and a counted metric.
    assert_eq!(audit_types(&app, "account.locked").await, 1);
    assert_eq!(metric(&app, "latchkey_account_lockouts_total").await, 1.0);

    // The operator unlocks from the CLI.
    let out = app.cli(&["users", "unlock", "bob"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = login_from(&app, client, "bob", PASSWORD, "192.0.2.30").await;
    assert_eq!(status, 200);
    let out = app.cli(&["users", "unlock", "nobody"], None).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn the_lock_delay_doubles_and_the_admin_api_unlocks() {
    let app = TestApp::spawn_with(proxied(LOCKOUT)).await;
    app.create_user("carol", PASSWORD, &[]).await;
    app.create_user("root", PASSWORD, &["admin"]).await;
    let secret = app
        .create_client("web", "password", "openid", "ES256")
        .await;
    let client = ("web", secret.as_str());
    for ip in ["10.9.0.1", "10.9.0.1", "10.9.0.2"] {
        login_from(&app, client, "carol", "nope", ip).await;
    }
    let locked_until = |app: &TestApp| {
        let app_cfg = app.config_path.clone();
        let env = app.env_vars.clone();
        async move {
            let out =
                crate::helpers::run_cli(&app_cfg, &env, &["users", "list", "--json"], None).await;
            let users: Value = serde_json::from_slice(&out.stdout).unwrap();
            users
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["username"] == "carol")
                .unwrap()["locked_until"]
                .as_i64()
                .unwrap()
        }
    };
    let first = locked_until(&app).await - app.state.clock.now();
    assert!((30..=60).contains(&first), "first delay {first}");

    // An ordinary client's token cannot unlock, even for an admin user.
    let plain = app.login(client, "root", PASSWORD, "openid").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let unlock = |token: String| {
        let http = app.http.clone();
        let url = app.url("/admin/users/carol/unlock");
        async move { http.post(url).bearer_auth(token).send().await.unwrap() }
    };
    let r = unlock(plain).await;
    assert_eq!(r.status(), 403);
    let admin_secret = app
        .create_admin_client("ops", "password", "openid", "ES256")
        .await;
    let admin = app
        .login(
            ("ops", &admin_secret),
            "root",
            PASSWORD,
            "openid latchkey:admin",
        )
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = unlock(admin.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["unlocked"], true);
    let (status, _) = login_from(&app, client, "carol", PASSWORD, "10.9.0.3").await;
    assert_eq!(status, 200);
    let r = app
        .http
        .post(app.url("/admin/users/nobody/unlock"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let events = app
        .cli(
            &["events", "list", "--action", "account.unlocked", "--json"],
            None,
        )
        .await;
    assert!(String::from_utf8_lossy(&events.stdout).contains("admin-api:"));

    // Lock again, let the lock lapse with one more counted failure while
    // unlocked: the delay doubles.
    for ip in ["10.9.1.1", "10.9.1.1", "10.9.1.2"] {
        login_from(&app, client, "carol", "nope", ip).await;
    }
    app.state
        .store
        .lock_user(
            &app.state
                .store
                .find_user_by_username("carol")
                .await
                .unwrap()
                .unwrap()
                .id,
            app.state.clock.now() - 1,
        )
        .await
        .unwrap();
    login_from(&app, client, "carol", "nope", "10.9.1.3").await;
    let second = locked_until(&app).await - app.state.clock.now();
    assert!((90..=120).contains(&second), "second delay {second}");
}

#[tokio::test]
async fn argon2_queue_past_its_bound_answers_503_while_refresh_succeeds() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[security]\nhash_concurrency = 1\nhash_queue = 1\nhash_queue_wait_ms = 2000\n\
                     [rate_limit.token]\nper_username = { rate = 0 }\n"
            .into(),
        ..Options::default()
    })
    .await;
    app.create_user("dave", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid", "ES256")
        .await;
    let client = ("web", secret.as_str());
    let refresh = app.login(client, "dave", PASSWORD, "openid").await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    let mut logins = Vec::new();
    const LOGINS: usize = 16;
    for _ in 0..LOGINS {
        let http = app.http.clone();
        let url = app.url("/token");
        let secret = secret.clone();
        logins.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .basic_auth("web", Some(secret))
                .form(&[
                    ("grant_type", "password"),
                    ("username", "dave"),
                    ("password", "wrong password"),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            (status, retry, body)
        }));
    }
    // While the hash queue is saturated, a refresh needs no argon2 and passes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = app.refresh(client, &refresh).await;
    assert_eq!(r.status(), 200);

    let mut busy = 0;
    let mut refused = 0;
    for h in logins {
        let (status, retry, body) = h.await.unwrap();
        match status {
            503 => {
                busy += 1;
                assert_eq!(retry.as_deref(), Some("2"));
                assert_eq!(body["error"], "temporarily_unavailable");
            }
            400 => {
                refused += 1;
                assert_eq!(body["error"], "invalid_grant");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // One computes, one waits, whoever arrives meanwhile is turned away at
    // once (how many overlap depends on the machine's load).
    assert!(
        busy >= 1,
        "none of {LOGINS} concurrent logins met a full queue"
    );
    assert!(refused >= 1);
    assert_eq!(busy + refused, LOGINS);
}

#[tokio::test]
async fn admin_api_needs_the_admin_scope_from_an_admin_client() {
    let app = TestApp::spawn().await;
    app.create_user("root", PASSWORD, &["admin"]).await;
    app.create_user("eve", PASSWORD, &["dev"]).await;
    let plain_secret = app
        .create_client("app", "password", "openid api:read", "ES256")
        .await;
    let admin_secret = app
        .create_admin_client("ops", "password,refresh_token", "openid", "ES256")
        .await;

    // A pending key to retire.
    let out = app
        .cli(&["keys", "rotate", "--alg", "ES256", "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Value =
        serde_json::from_slice(&app.cli(&["keys", "list", "--json"], None).await.stdout).unwrap();
    let pending = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["state"] == "pending")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let retire = |token: String| {
        let http = app.http.clone();
        let url = app.url(&format!("/admin/keys/{pending}/retire"));
        async move { http.post(url).bearer_auth(token).send().await.unwrap() }
    };
    let token_of = |v: Value| v["access_token"].as_str().unwrap().to_string();

    // An admin user through an ordinary client: refused.
    let plain = token_of(
        app.login(("app", &plain_secret), "root", PASSWORD, "openid api:read")
            .await,
    );
    let r = retire(plain).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    // An ordinary client cannot even ask for the scope.
    let r = app
        .token(
            ("app", &plain_secret),
            &[
                ("grant_type", "password"),
                ("username", "root"),
                ("password", PASSWORD),
                ("scope", "latchkey:admin"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
    // The admin client without asking: no admin scope by default.
    let defaulted = app
        .login(("ops", &admin_secret), "root", PASSWORD, "openid")
        .await;
    assert!(
        !defaulted["scope"]
            .as_str()
            .unwrap()
            .contains("latchkey:admin")
    );
    assert_eq!(retire(token_of(defaulted)).await.status(), 403);
    // The admin client for a user without the role: invalid_scope.
    let r = app
        .token(
            ("ops", &admin_secret),
            &[
                ("grant_type", "password"),
                ("username", "eve"),
                ("password", PASSWORD),
                ("scope", "openid latchkey:admin"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");

    // The admin client's token for an admin user works, and so does its refresh.
    let login = app
        .login(
            ("ops", &admin_secret),
            "root",
            PASSWORD,
            "openid latchkey:admin",
        )
        .await;
    assert!(login["scope"].as_str().unwrap().contains("latchkey:admin"));
    let refreshed: Value = app
        .refresh(
            ("ops", &admin_secret),
            login["refresh_token"].as_str().unwrap(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        refreshed["scope"]
            .as_str()
            .unwrap()
            .contains("latchkey:admin")
    );
    let r = retire(token_of(refreshed)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // The CLI refuses the scope without --admin.
    let out = app
        .cli(
            &[
                "clients",
                "create",
                "sneaky",
                "--grant-types",
                "password",
                "--scopes",
                "openid latchkey:admin",
            ],
            None,
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin"));
}

// ---------------------------------------------------------------------------
// Redis: run when LATCHKEY_TEST_REDIS_URL is set; a missing Redis fails
// instead of skipping when LATCHKEY_TEST_REQUIRE_REDIS=1 (CI).
// ---------------------------------------------------------------------------

fn redis_url() -> Option<String> {
    let url = std::env::var("LATCHKEY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() && std::env::var("LATCHKEY_TEST_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("LATCHKEY_TEST_REQUIRE_REDIS=1 but LATCHKEY_TEST_REDIS_URL is not set");
    }
    url
}

fn redis_options(url: &str, prefix: &str, burst: u64) -> Options {
    proxied(&format!(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\nredis_timeout_ms = 500\n\
         [rate_limit.token]\nper_ip = {{ rate = 1, per_secs = 60, burst = {burst} }}\n"
    ))
}

/// How many audit events of one type the CLI lists.
async fn audit_types(app: &TestApp, kind: &str) -> usize {
    let out = app
        .cli_ok(&["audit", "list", "--type", kind, "--json"], None)
        .await;
    let v: Value = serde_json::from_str(&out).unwrap();
    v["events"].as_array().unwrap().len()
}

/// The sum of every sample of one metric family on `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn health(app: &TestApp) -> Value {
    app.http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_servers_sharing_redis_enforce_one_combined_limit() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("lktest:{}:", latchkey::secret::random_id().unwrap());
    let env = Env::new().await;
    let a = TestApp::spawn_in(env.clone(), redis_options(&url, &prefix, 4)).await;
    let b = TestApp::spawn_in(env.clone(), redis_options(&url, &prefix, 4)).await;
    assert_eq!(health(&a).await["rate_limit"]["redis_reachable"], true);
    let secret = a
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let ip = "203.0.113.77";
    for app in [&a, &b, &a, &b] {
        assert_eq!(cc_from(app, &secret, ip).await.status(), 200);
    }
    // Four in total were allowed: each server alone would allow four more.
    assert_rate_limited(cc_from(&a, &secret, ip).await, 60).await;
    assert_rate_limited(cc_from(&b, &secret, ip).await, 60).await;
    assert_eq!(cc_from(&b, &secret, "203.0.113.78").await.status(), 200);
}

/// A throwaway `redis-server` on a free loopback port, stopped on drop.
struct ThrowawayRedis {
    child: tokio::process::Child,
    port: u16,
}

impl ThrowawayRedis {
    async fn start(port: Option<u16>) -> Self {
        let port = match port {
            Some(p) => p,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed for the Redis tests");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { child, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    async fn stop(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

#[tokio::test]
async fn redis_outage_falls_back_to_local_limits_and_recovers() {
    if redis_url().is_none() {
        return;
    }
    let redis = ThrowawayRedis::start(None).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let env = Env::new().await;
    let a = TestApp::spawn_in(env.clone(), redis_options(&url, "lkoutage:", 3)).await;
    let b = TestApp::spawn_in(env.clone(), redis_options(&url, "lkoutage:", 3)).await;
    let secret = a
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let ip = "192.0.2.200";
    for app in [&a, &b, &a] {
        assert_eq!(cc_from(app, &secret, ip).await.status(), 200);
    }
    assert_eq!(cc_from(&b, &secret, ip).await.status(), 429);

    // Redis goes away: both keep serving, each enforcing the limit locally
    // (3 per server, counted from the outage on), never a 500.
    let port = redis.stop().await;
    for app in [&a, &b] {
        for _ in 0..3 {
            let r = cc_from(app, &secret, ip).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
        assert_rate_limited(cc_from(app, &secret, ip).await, 60).await;
        let h = health(app).await;
        assert_eq!(h["rate_limit"]["backend"], "redis");
        assert_eq!(h["rate_limit"]["redis_reachable"], false);
        assert_eq!(h["rate_limit"]["shared"], false);
        // Readiness says so too: serving, but not with the shared limit.
        let r = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["checks"]["rate_limit_redis"]["ok"], false, "{body}");
    }
    // Other endpoints are untouched by the outage.
    assert_eq!(
        a.http
            .get(a.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Redis comes back on the same port: the servers reconnect by themselves.
    let _redis = ThrowawayRedis::start(Some(port)).await;
    let mut back = false;
    for _ in 0..150 {
        if health(&a).await["rate_limit"]["redis_reachable"] == true
            && health(&b).await["rate_limit"]["redis_reachable"] == true
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the servers did not reconnect to Redis");
    let body: Value = a
        .http
        .get(a.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["checks"]["rate_limit_redis"]["ok"], true, "{body}");
    // Shared again (the restarted Redis is empty): 3 in total across both.
    for app in [&a, &b, &a] {
        assert_eq!(cc_from(app, &secret, "192.0.2.201").await.status(), 200);
    }
    assert_eq!(cc_from(&b, &secret, "192.0.2.201").await.status(), 429);
}
