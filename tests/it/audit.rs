use latchkey::audit::{Event, EventType, RawAuditQuery, Severity};
use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp};

async fn admin_token(app: &TestApp) -> String {
    app.create_user("root", PASSWORD, &["admin"]).await;
    // The admin API needs the latchkey:admin scope, which only an --admin
    // client can obtain.
    let secret = app
        .create_admin_client("ops", "password", "openid", "ES256")
        .await;
    app.login(("ops", &secret), "root", PASSWORD, "openid latchkey:admin")
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn audit(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(&format!("/admin/audit{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn of_type<'a>(page: &'a Value, kind: &str) -> Vec<&'a Value> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test]
async fn each_action_leaves_its_event_with_the_right_fields() {
    let app = TestApp::spawn().await;
    let admin = admin_token(&app).await;
    let alice = app.create_user("alice", PASSWORD, &["billing"]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid api:read", "ES256")
        .await;

    // A successful and a failed login, with a user agent.
    let ok = app
        .http
        .post(app.url("/token"))
        .basic_auth("web", Some(&secret))
        .header("user-agent", "audit-test/1.0")
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    let bad = app
        .token(
            ("web", &secret),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", "not the password"),
            ],
        )
        .await;
    assert_eq!(bad.status(), 400);
    let unknown = app
        .token(
            ("web", &secret),
            &[
                ("grant_type", "password"),
                ("username", "nobody-such"),
                ("password", "whatever-it-is"),
            ],
        )
        .await;
    assert_eq!(unknown.status(), 400);

    // Inactive introspection, then revocation of the refresh token.
    let inactive = app.introspect(("web", &secret), "not-a-token").await;
    assert_eq!(inactive["active"], false);
    let refresh = body["refresh_token"].as_str().unwrap();
    let r = app
        .http
        .post(app.url("/revoke"))
        .basic_auth("web", Some(&secret))
        .form(&[("token", refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Disable and enable from the CLI.
    assert!(
        app.cli(&["users", "disable", "alice"], None)
            .await
            .status
            .success()
    );
    assert!(
        app.cli(&["users", "enable", "alice"], None)
            .await
            .status
            .success()
    );

    let (status, page) = audit(&app, &admin, "?limit=1000").await;
    assert_eq!(status, 200, "{page}");

    let success = of_type(&page, "login.success");
    let alice_login = success
        .iter()
        .find(|e| e["user"] == alice.as_str())
        .unwrap();
    assert_eq!(alice_login["client"], "web");
    assert_eq!(alice_login["actor"], "client:web");
    assert_eq!(alice_login["ip"], "127.0.0.1");
    assert_eq!(alice_login["user_agent"], "audit-test/1.0");
    assert_eq!(alice_login["severity"], "info");
    assert!(
        alice_login["session"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(alice_login["detail"]["grant"], "password");

    let failures = of_type(&page, "login.failure");
    assert_eq!(failures.len(), 2, "{failures:?}");
    let wrong = failures
        .iter()
        .find(|e| e["user"] == alice.as_str())
        .unwrap();
    assert_eq!(wrong["detail"]["reason"], "bad_password");
    assert_eq!(wrong["severity"], "warning");
    assert_eq!(wrong["ip"], "127.0.0.1");
    let nobody = failures.iter().find(|e| e["user"].is_null()).unwrap();
    assert_eq!(nobody["detail"]["reason"], "unknown_user");
    // An unknown "username" is not recorded: it may be a mistyped password.
    assert!(!nobody.to_string().contains("nobody-such"));

    let introspected = of_type(&page, "token.introspected_inactive");
    assert_eq!(introspected.len(), 1);
    assert_eq!(introspected[0]["client"], "web");

    let created = of_type(&page, "user.created");
    assert_eq!(created.len(), 2);
    let c = created
        .iter()
        .find(|e| e["user"] == alice.as_str())
        .unwrap();
    assert_eq!(c["subject"], "alice");
    assert!(c["actor"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(c["detail"]["roles"], serde_json::json!(["billing"]));

    let clients = of_type(&page, "client.created");
    let web = clients.iter().find(|e| e["client"] == "web").unwrap();
    assert_eq!(web["detail"]["alg"], "ES256");
    assert_eq!(web["detail"]["public"], false);

    let disabled = of_type(&page, "user.disable");
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["user"], alice.as_str());
    assert_eq!(disabled[0]["severity"], "warning");
    assert_eq!(of_type(&page, "user.enable").len(), 1);

    // Start-up created one active key per algorithm.
    let boots = of_type(&page, "key.bootstrap");
    assert_eq!(boots.len(), 2);
    let algs: Vec<&str> = boots
        .iter()
        .map(|e| e["detail"]["alg"].as_str().unwrap())
        .collect();
    assert!(
        algs.contains(&"RS256") && algs.contains(&"ES256"),
        "{algs:?}"
    );

    // Ids are strictly decreasing (newest first).
    let ids: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
}

#[tokio::test]
async fn key_actions_are_typed_events_in_the_ring_transaction() {
    let app = TestApp::spawn().await;
    let admin = admin_token(&app).await;
    let r = app
        .http
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "alg": "ES256", "now": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, page) = audit(&app, &admin, "?type=key.rotate_now").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["severity"], "warning");
    assert!(
        events[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("admin-api:")
    );
    assert_eq!(events[0]["detail"]["alg"], "ES256");
    let (_, retiring) = audit(&app, &admin, "?type=key.retiring").await;
    assert_eq!(retiring["events"].as_array().unwrap().len(), 1);
    // The legacy view shows the same rows under the old column names.
    let legacy: Value = app
        .http
        .get(app.url("/admin/events?action=key.rotate_now"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy[0]["action"], "key.rotate_now");
    assert_eq!(legacy[0]["id"], events[0]["id"]);
}

/// Seed `n` events at times `base + i` with alternating users, clients and severities.
async fn seed(app: &TestApp, base: i64, n: i64) {
    for i in 0..n {
        let kind = if i % 3 == 0 {
            EventType::LoginFailure
        } else {
            EventType::LoginSuccess
        };
        let mut e = Event::new(kind, base + i)
            .user(format!("u{}", i % 2))
            .client(format!("c{}", i % 4))
            .detail(serde_json::json!({ "i": i }));
        if i % 5 == 0 {
            e = e.severity(Severity::Critical);
        }
        app.state.store.append_event(&e).await.unwrap();
    }
}

fn is(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["i"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn filters_and_pagination_return_exactly_the_expected_rows() {
    let app = TestApp::spawn().await;
    let admin = admin_token(&app).await;
    let base = 1_000_000;
    seed(&app, base, 40).await;

    // Time range: since inclusive, until exclusive.
    let (_, p) = audit(
        &app,
        &admin,
        &format!("?since={}&until={}", base + 10, base + 15),
    )
    .await;
    assert_eq!(is(&p), vec![14, 13, 12, 11, 10]);
    // RFC 3339 works too (1_000_000 = 1970-01-12T13:46:40Z).
    let (_, p) = audit(
        &app,
        &admin,
        "?since=1970-01-12T13:47:15Z&until=1970-01-12T13:47:17Z",
    )
    .await;
    assert_eq!(is(&p), vec![36, 35]);

    // User, client, type, severity, combined.
    let (_, p) = audit(
        &app,
        &admin,
        &format!("?user=u1&client=c1&until={}", base + 100),
    )
    .await;
    assert_eq!(is(&p), vec![37, 33, 29, 25, 21, 17, 13, 9, 5, 1]);
    let (_, p) = audit(
        &app,
        &admin,
        &format!("?type=login.failure&user=u0&until={}", base + 100),
    )
    .await;
    assert_eq!(is(&p), vec![36, 30, 24, 18, 12, 6, 0]);
    let (_, p) = audit(&app, &admin, "?severity=critical").await;
    assert_eq!(is(&p), vec![35, 30, 25, 20, 15, 10, 5, 0]);

    // Pagination by cursor, stable while new events arrive between pages.
    let until = format!("&until={}", base + 100);
    let (_, p1) = audit(&app, &admin, &format!("?user=u0&limit=7{until}")).await;
    assert_eq!(is(&p1), vec![38, 36, 34, 32, 30, 28, 26]);
    seed(&app, base + 50, 6).await; // newer rows, some of them u0
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = audit(
        &app,
        &admin,
        &format!("?user=u0&limit=7{until}&cursor={next}"),
    )
    .await;
    assert_eq!(is(&p2), vec![24, 22, 20, 18, 16, 14, 12]);
    let next = p2["next"].as_str().unwrap();
    let (_, p3) = audit(
        &app,
        &admin,
        &format!("?user=u0&limit=7{until}&cursor={next}"),
    )
    .await;
    assert_eq!(is(&p3), vec![10, 8, 6, 4, 2, 0]);
    assert!(p3["next"].is_null());

    // The CLI runs the same query.
    let out = app
        .cli(
            &[
                "audit",
                "list",
                "--user",
                "u1",
                "--type",
                "login.failure",
                "--since",
                &(base + 50).to_string(),
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
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(is(&cli), vec![3]);
    // A username resolves to the user's id.
    let (_, p) = audit(&app, &admin, "?user=root&type=login.success").await;
    assert_eq!(p["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_queries_are_clear_400s_and_non_admins_are_refused() {
    let app = TestApp::spawn().await;
    let admin = admin_token(&app).await;
    for q in [
        "?since=yesterday",
        "?type=login.nope",
        "?severity=loud",
        "?cursor=%21%21",
        "?limit=0",
        "?limit=5000",
        "?since=10&until=5",
        "?bogus=1",
        "?user=a&user=b",
    ] {
        let (status, body) = audit(&app, &admin, q).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert_eq!(body["error"], "invalid_request", "{q}");
        assert!(body["error_description"].as_str().is_some(), "{q}");
    }
    let out = app
        .cli(&["audit", "list", "--type", "nope.nope"], None)
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown event type"));

    // Without a token, and with a non-admin token.
    let r = app.http.get(app.url("/admin/audit")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.create_user("bob", PASSWORD, &[]).await;
    let s = app
        .create_client("plain", "password", "openid", "ES256")
        .await;
    let bob = app.login(("plain", &s), "bob", PASSWORD, "openid").await;
    let (status, _) = audit(&app, bob["access_token"].as_str().unwrap(), "").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn cleanup_past_retention_removes_old_rows_only_in_batches() {
    // This server keeps events forever, so only the purge below deletes any.
    let app = TestApp::spawn_with(crate::helpers::Options {
        extra_toml: "[audit]\nretention_days = 0\n".into(),
        ..Default::default()
    })
    .await;
    assert!(latchkey::audit::retention::cutoff(&app.state.config.audit, 0).is_none());
    let now = app.state.clock.now();
    let day = 86_400;
    seed(&app, now - 400 * day, 25).await; // old
    seed(&app, now - 10 * day, 5).await; // recent
    let year = latchkey::config::AuditConfig {
        retention_days: Some(365),
        ..app.state.config.audit.clone()
    };
    let cutoff = latchkey::audit::retention::cutoff(&year, now).unwrap();
    assert_eq!(cutoff, now - 365 * day);
    let deleted = latchkey::audit::retention::purge_before(&app.state.store, cutoff, 4)
        .await
        .unwrap();
    assert_eq!(deleted, 25);
    let q = RawAuditQuery {
        limit: Some("1000".into()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let rows = app.state.audit.query(&q).await.unwrap().events;
    assert!(rows.iter().all(|r| r.at >= cutoff));
    let seeded: Vec<_> = rows
        .iter()
        .filter(|r| r.detail.get("i").is_some())
        .collect();
    assert_eq!(seeded.len(), 5);
    // Start-up events (recent) are kept.
    assert!(rows.iter().any(|r| r.kind == "key.bootstrap"));
}

#[tokio::test]
async fn the_server_runs_the_cleanup_on_its_schedule() {
    let env = crate::helpers::Env::new().await;
    let first = TestApp::spawn_in(env.clone(), Default::default()).await;
    let now = first.state.clock.now();
    seed(&first, now - 3 * 86_400, 3).await;
    let (env, _) = first.stop().await;
    let app =
        TestApp::spawn_in(
            env,
            crate::helpers::Options {
                extra_toml:
                    "[audit]\nretention_days = 2\ncleanup_interval_secs = 1\ncleanup_batch = 2\n"
                        .into(),
                ..Default::default()
            },
        )
        .await;
    let q = RawAuditQuery::default().validate().unwrap();
    for _ in 0..50 {
        let rows = app.state.audit.query(&q).await.unwrap().events;
        if rows.iter().all(|r| r.detail.get("i").is_none()) {
            assert!(rows.iter().any(|r| r.kind == "key.bootstrap"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("old events were not deleted");
}
