use serde_json::Value;

use crate::helpers::{Options, PASSWORD, TestApp, jwt_part};

async fn setup() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client(
            "web",
            "password,refresh_token",
            "openid api:read api:write",
            "ES256",
        )
        .await;
    (app, secret)
}

async fn expect_invalid_grant(r: reqwest::Response) {
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let login = app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await;
    let first = login["refresh_token"].as_str().unwrap().to_string();

    let r = app.refresh(client, &first).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    let second = body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second, "every refresh rotates");
    assert_eq!(body["scope"], "api:read openid");
    assert!(body["id_token"].is_string());
    // The same login session (family) carries on.
    assert_eq!(
        jwt_part(body["access_token"].as_str().unwrap(), 1)["sid"],
        jwt_part(login["access_token"].as_str().unwrap(), 1)["sid"]
    );

    let r = app.refresh(client, &second).await;
    assert_eq!(r.status(), 200);
    let third = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Presenting a consumed token is reuse: refused, and the whole family dies,
    // including the newest token.
    expect_invalid_grant(app.refresh(client, &first).await).await;
    expect_invalid_grant(app.refresh(client, &third).await).await;

    // A different login is a different family and unaffected.
    let other = app.login(client, "alice", PASSWORD, "api:read").await;
    assert_eq!(
        app.refresh(client, other["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn refresh_may_narrow_scope_but_never_widen_it() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let login = app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await;
    let rt = login["refresh_token"].as_str().unwrap();

    let r = app
        .token(
            client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("scope", "api:read"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let narrowed: Value = r.json().await.unwrap();
    assert_eq!(narrowed["scope"], "api:read");
    assert!(narrowed.get("id_token").is_none());
    assert_eq!(
        jwt_part(narrowed["access_token"].as_str().unwrap(), 1)["scope"],
        "api:read"
    );

    // api:write is allowed for the client but was never granted to this login.
    let rt2 = narrowed["refresh_token"].as_str().unwrap();
    let r = app
        .token(
            client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt2),
                ("scope", "api:read api:write"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");

    // The refused request consumed nothing, and the refresh token's own scope is
    // still the original grant (RFC 6749 §6).
    let r = app.refresh(client, rt2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["scope"], "api:read openid");
}

#[tokio::test]
async fn a_refresh_token_is_bound_to_its_client() {
    let (app, secret) = setup().await;
    let other_secret = app
        .create_client(
            "other",
            "password,refresh_token",
            "openid api:read",
            "RS256",
        )
        .await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "api:read")
        .await;
    let rt = login["refresh_token"].as_str().unwrap();
    expect_invalid_grant(app.refresh(("other", &other_secret), rt).await).await;
    // The theft attempt neither consumed nor revoked the token for its owner.
    assert_eq!(app.refresh(("web", &secret), rt).await.status(), 200);
}

/// Present one refresh token `n` times at once; returns (status, body) of each.
async fn concurrent_refreshes(
    app: &TestApp,
    secret: &str,
    rt: &str,
    n: usize,
) -> Vec<(u16, Value)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let http = app.http.clone();
        let url = app.url("/token");
        let (secret, rt) = (secret.to_string(), rt.to_string());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .basic_auth("web", Some(secret))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn twenty_concurrent_refreshes_of_one_token_all_get_the_one_successor() {
    let (app, secret) = setup().await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "openid api:read")
        .await;
    let rt = login["refresh_token"].as_str().unwrap().to_string();
    let results = concurrent_refreshes(&app, &secret, &rt, 20).await;
    let mut successors = std::collections::BTreeSet::new();
    let mut access = std::collections::BTreeSet::new();
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        successors.insert(body["refresh_token"].as_str().unwrap().to_string());
        access.insert(body["access_token"].as_str().unwrap().to_string());
    }
    assert_eq!(successors.len(), 1, "one distinct successor, never two");
    assert_eq!(access.len(), 20, "each answer carries its own access token");
    // The session is alive and the successor works; afterwards the original
    // token is plain reuse, which ends the session.
    let successor = successors.into_iter().next().unwrap();
    let r = app.refresh(("web", &secret), &successor).await;
    assert_eq!(r.status(), 200);
    let third = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    expect_invalid_grant(app.refresh(("web", &secret), &rt).await).await;
    expect_invalid_grant(app.refresh(("web", &secret), &third).await).await;
}

#[tokio::test]
async fn with_the_retry_window_off_concurrent_refreshes_revoke_the_session() {
    let app = TestApp::spawn_with(Options {
        top_toml: "[tokens]\nrefresh_retry_window_secs = 0\n".into(),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "api:read", "ES256")
        .await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "api:read")
        .await;
    let rt = login["refresh_token"].as_str().unwrap().to_string();
    let results = concurrent_refreshes(&app, &secret, &rt, 20).await;
    let mut ok = Vec::new();
    for (status, body) in results {
        match status {
            200 => ok.push(body),
            400 => assert_eq!(body["error"], "invalid_grant", "{body}"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one refresh wins");
    // The losers presented a consumed token: strict mode revokes the family,
    // so even the winner's successor is dead.
    let successor = ok[0]["refresh_token"].as_str().unwrap();
    expect_invalid_grant(app.refresh(("web", &secret), successor).await).await;
}

#[tokio::test]
async fn a_retry_within_the_window_gets_the_byte_identical_successor() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(Options {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid api:read", "RS256")
        .await;
    let other = app
        .create_client("other", "password,refresh_token", "api:read", "RS256")
        .await;
    let client = ("web", secret.as_str());
    let rt = |v: &Value| v["refresh_token"].as_str().unwrap().to_string();

    // A lost response: the client retries with the token it still has.
    let first = rt(&app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await);
    let r1: Value = app.refresh(client, &first).await.json().await.unwrap();
    clock.advance(10);
    let r = app.refresh(client, &first).await;
    assert_eq!(r.status(), 200);
    let r2: Value = r.json().await.unwrap();
    assert_eq!(rt(&r1), rt(&r2), "the same successor, byte for byte");
    assert_ne!(
        r1["access_token"], r2["access_token"],
        "with a fresh access token"
    );
    assert!(r2["id_token"].is_string());
    // Another client replaying it is refused and changes nothing.
    expect_invalid_grant(app.refresh(("other", &other), &first).await).await;
    // The successor works; after that, the old token is reuse and ends the session.
    let r3: Value = app.refresh(client, &rt(&r1)).await.json().await.unwrap();
    expect_invalid_grant(app.refresh(client, &first).await).await;
    expect_invalid_grant(app.refresh(client, &rt(&r3)).await).await;

    // After the window (10 s by default) a replay is reuse too.
    let first = rt(&app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await);
    let r1: Value = app.refresh(client, &first).await.json().await.unwrap();
    clock.advance(11);
    expect_invalid_grant(app.refresh(client, &first).await).await;
    expect_invalid_grant(app.refresh(client, &rt(&r1)).await).await;

    // An older token (two rotations back) is reuse even inside the window.
    let t0 = rt(&app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await);
    let t1 = rt(&app.refresh(client, &t0).await.json().await.unwrap());
    let t2 = rt(&app.refresh(client, &t1).await.json().await.unwrap());
    expect_invalid_grant(app.refresh(client, &t0).await).await;
    expect_invalid_grant(app.refresh(client, &t2).await).await;
}

#[tokio::test]
async fn refresh_grant_tokens_verify_independently_and_keep_the_session() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let login = app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await;
    let r: Value = app
        .refresh(client, login["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let jwks = app.jwks().await;
    let claims = crate::helpers::verify_with_jsonwebtoken(
        &jwks,
        r["access_token"].as_str().unwrap(),
        &app.issuer,
        &app.issuer,
    )
    .unwrap();
    let sid = jwt_part(login["access_token"].as_str().unwrap(), 1)["sid"].clone();
    assert!(sid.is_string(), "a password login carries a session id");
    assert_eq!(claims["sid"], sid);
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["scope"], "api:read openid");
}

#[tokio::test]
async fn refresh_tokens_expire_when_idle_and_at_the_absolute_limit() {
    use latchkey::clock::{Clock, ManualClock, SystemClock};
    let clock = std::sync::Arc::new(ManualClock::new(SystemClock.now()));
    let app = TestApp::spawn_with(Options {
        top_toml: "[tokens]\nrefresh_idle_ttl_secs = 60\nrefresh_absolute_ttl_secs = 150\n".into(),
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "api:read", "RS256")
        .await;
    let client = ("web", secret.as_str());
    let rt = |v: &Value| v["refresh_token"].as_str().unwrap().to_string();

    // Idle: a token lives exactly 60 s: at 59 s it rotates, at 60 s it is dead.
    let idle = rt(&app.login(client, "alice", PASSWORD, "api:read").await);
    clock.advance(59);
    let r = app.refresh(client, &idle).await;
    assert_eq!(r.status(), 200);
    let next = rt(&r.json().await.unwrap());
    clock.advance(60);
    expect_invalid_grant(app.refresh(client, &next).await).await;

    // Absolute: refreshed every 50 s the login still ends 150 s after it began.
    let mut token = rt(&app.login(client, "alice", PASSWORD, "api:read").await);
    for _ in 0..2 {
        clock.advance(50);
        let r = app.refresh(client, &token).await;
        assert_eq!(r.status(), 200);
        token = rt(&r.json().await.unwrap());
    }
    clock.advance(50);
    expect_invalid_grant(app.refresh(client, &token).await).await;
}

#[tokio::test]
async fn garbage_refresh_tokens_are_invalid_grant() {
    let (app, secret) = setup().await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "api:read")
        .await;
    let access = login["access_token"].as_str().unwrap();
    // Whatever it is — junk, an injection attempt, a 2 KB blob, an access
    // token — if it is not a latchkey refresh token it is invalid_grant.
    for rt in [
        "x",
        "' OR 1=1 --",
        &"A".repeat(43),
        &"A".repeat(600),
        &"%".repeat(2048),
        access,
    ] {
        expect_invalid_grant(app.refresh(("web", &secret), rt).await).await;
    }
    // None of that touched the real session.
    assert_eq!(
        app.refresh(("web", &secret), login["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn disabling_a_user_ends_logins_and_sessions() {
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let login = app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await;
    let mark = app.revocations();
    let out = app.cli(&["users", "disable", "alice"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_revocation_seen(mark).await;
    let r = app
        .token(
            client,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    expect_invalid_grant(r).await;
    expect_invalid_grant(
        app.refresh(client, login["refresh_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(
        app.userinfo(login["access_token"].as_str()).await.status(),
        401
    );
    // Enabled again, alice can log in; the revoked session stays revoked.
    assert!(
        app.cli(&["users", "enable", "alice"], None)
            .await
            .status
            .success()
    );
    app.login(client, "alice", PASSWORD, "api:read").await;
    expect_invalid_grant(
        app.refresh(client, login["refresh_token"].as_str().unwrap())
            .await,
    )
    .await;
    let out = app.cli(&["users", "disable", "nobody"], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user nobody"));
}

/// A refresh keeps its successor's state for the session's next refresh
/// (grant/chain_cache.rs). A session ended by another process whose
/// revocation this one has not seen yet (a replica, before the next poll of
/// `revocation_state`) must still refuse that successor: the rotation checks
/// the session in the database.
#[tokio::test]
async fn a_kept_successor_is_refused_once_its_session_ended_in_the_database() {
    use sqlx::Connection as _;
    let (app, secret) = setup().await;
    let client = ("web", secret.as_str());
    let login = app
        .login(client, "alice", PASSWORD, "openid api:read")
        .await;
    let sid = jwt_part(login["access_token"].as_str().unwrap(), 1)["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let r: Value = app
        .refresh(client, login["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let kept = r["refresh_token"].as_str().unwrap().to_string();

    // Ended behind this server's back: no revocation counter moves.
    let generation = app.revocations();
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&app.env.database_url)
        .await
        .unwrap();
    let ended = sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE id = $2")
        .bind(1_i64)
        .bind(&sid)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(ended.rows_affected(), 1);

    expect_invalid_grant(app.refresh(client, &kept).await).await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "latchkey_refresh_state_lookups_total{source=\"kept\"} 1"),
        "the refused presentation started from the kept state: {metrics}"
    );
    assert_eq!(
        app.revocations(),
        generation,
        "refused by the rotation's own check, not by a revocation this server saw"
    );
    // Nothing was consumed or stored for the refused presentation: the token
    // is still unused, and no successor joined the session.
    let rows: Vec<(Option<i64>,)> =
        sqlx::query_as("SELECT used_at FROM refresh_tokens WHERE family_id = $1")
            .bind(&sid)
            .fetch_all(&mut db)
            .await
            .unwrap();
    db.close().await.unwrap();
    assert_eq!(rows.len(), 2, "the login's token and its one successor");
    assert_eq!(
        rows.iter().filter(|(used,)| used.is_none()).count(),
        1,
        "the kept successor was not consumed: {rows:?}"
    );
}
