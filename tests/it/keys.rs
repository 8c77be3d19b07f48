use serde_json::Value;

use crate::helpers::{Options, PASSWORD, TestApp, jwt_part, verify_with_jsonwebtoken};

/// A fast ring: a 1 s JWKS max-age lets a pre-published key activate after 3 s.
fn fast_ring() -> Options {
    ring_with_lead(3)
}

fn ring_with_lead(lead: u64) -> Options {
    Options {
        keys_toml: "jwks_max_age_secs = 1\nsafety_margin_secs = 1\nmax_clock_skew_secs = 1\n"
            .into(),
        extra_toml: format!(
            "[keys.rs256]\nlead_secs = {lead}\nretention_secs = 700\n[keys.es256]\nlead_secs = {lead}\nretention_secs = 700\n"
        ),
        ..Default::default()
    }
}

async fn keys_json(app: &TestApp) -> Vec<Value> {
    let out = app.cli(&["keys", "list", "--json"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

async fn cli_json(app: &TestApp, args: &[&str]) -> Value {
    let out = app.cli(args, None).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn rs256_token(app: &TestApp, secret: &str) -> String {
    app.login(("web", secret), "alice", PASSWORD, "api:read")
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn keys_list_uses_wire_names() {
    let app = TestApp::spawn().await;
    let keys = keys_json(&app).await;
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert!(k["kid"].is_string() && k["created_at"].is_i64());
        assert_eq!(k["state"], "active");
        assert_eq!(k["kms_provider"], "local");
    }
    let mut algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    algs.sort();
    assert_eq!(algs, ["ES256", "RS256"]);
}

#[tokio::test]
async fn rotate_prepublishes_then_activates_and_old_tokens_keep_verifying() {
    // A 10 s lead: the checks of the pending phase have seconds to spare even
    // on a loaded machine.
    let app = TestApp::spawn_with(ring_with_lead(10)).await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "api:read", "RS256")
        .await;
    let old_token = rs256_token(&app, &secret).await;
    let old_kid = jwt_part(&old_token, 0)["kid"].as_str().unwrap().to_string();

    let out = cli_json(&app, &["keys", "rotate", "--alg", "RS256", "--json"]).await;
    assert_eq!(out.as_array().unwrap().len(), 1, "only RS256 rotates");
    let out = &out[0];
    assert_eq!(out["state"], "pending");
    let new_kid = out["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);

    // The running server picks the CLI's change up and publishes the new key
    // before it signs anything.
    app.wait_for_ring("new key published", |r| r.key(&new_kid).is_some())
        .await;
    let kids = app.kids().await;
    assert!(kids.contains(&new_kid) && kids.contains(&old_kid));
    assert_eq!(
        jwt_part(&rs256_token(&app, &secret).await, 0)["kid"],
        old_kid.as_str(),
        "pending keys do not sign"
    );

    // After the lead the scheduler activates it; the old key turns retiring
    // and stays published.
    app.wait_for_ring("new key active", |r| {
        r.active(latchkey::keyring::Alg::Rs256)
            .is_some_and(|k| k.kid() == new_kid)
    })
    .await;
    let new_token = rs256_token(&app, &secret).await;
    assert_eq!(jwt_part(&new_token, 0)["kid"], new_kid.as_str());
    let jwks = app.jwks().await;
    verify_with_jsonwebtoken(&jwks, &old_token, &app.issuer, &app.issuer)
        .expect("old token still verifies");
    verify_with_jsonwebtoken(&jwks, &new_token, &app.issuer, &app.issuer)
        .expect("new token verifies");
    let states: Vec<(String, String)> = keys_json(&app)
        .await
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&(old_kid.clone(), "retiring".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(new_kid.clone(), "active".into())),
        "{states:?}"
    );

    // Its tokens are still valid: retiring it early is refused without
    // --emergency, and changes nothing.
    let out = app.cli(&["keys", "retire", &old_kid, "--json"], None).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--emergency"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(app.kids().await.contains(&old_kid));
    // With --emergency it is unpublished; its tokens stop verifying.
    let out = app
        .cli(&["keys", "retire", &old_kid, "--emergency", "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING"),
        "retiring before retention warns"
    );
    app.wait_for_ring("old key gone", |r| r.key(&old_kid).is_none())
        .await;
    let jwks = app.jwks().await;
    assert!(!app.kids().await.contains(&old_kid));
    assert!(verify_with_jsonwebtoken(&jwks, &old_token, &app.issuer, &app.issuer).is_err());
    verify_with_jsonwebtoken(&jwks, &new_token, &app.issuer, &app.issuer)
        .expect("new token unaffected");
}

#[tokio::test]
async fn rotate_now_signs_at_once_and_keeps_the_old_key_published() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "api:read", "RS256")
        .await;
    let old_token = rs256_token(&app, &secret).await;
    let old_kid = jwt_part(&old_token, 0)["kid"].as_str().unwrap().to_string();
    let all = cli_json(&app, &["keys", "rotate", "--now", "--json"]).await;
    // Without --alg every algorithm rotates.
    let algs: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["alg"].as_str().unwrap())
        .collect();
    assert_eq!(algs, ["RS256", "ES256"]);
    let out = all
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["alg"] == "RS256")
        .unwrap();
    assert_eq!(out["state"], "active");
    assert_eq!(out["replaced"], old_kid.as_str());
    let new_kid = out["kid"].as_str().unwrap().to_string();
    app.wait_for_ring("new key active", |r| r.key(&new_kid).is_some())
        .await;
    let kids = app.kids().await;
    assert!(kids.contains(&old_kid) && kids.contains(&new_kid));
    let new_token = rs256_token(&app, &secret).await;
    assert_eq!(jwt_part(&new_token, 0)["kid"], new_kid.as_str());
    let jwks = app.jwks().await;
    verify_with_jsonwebtoken(&jwks, &old_token, &app.issuer, &app.issuer).unwrap();
    verify_with_jsonwebtoken(&jwks, &new_token, &app.issuer, &app.issuer).unwrap();
}

#[tokio::test]
async fn retiring_the_active_key_needs_emergency_and_replaces_it() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid api:read", "RS256")
        .await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "openid api:read")
        .await;
    let old_token = login["access_token"].as_str().unwrap().to_string();
    let kid = jwt_part(&old_token, 0)["kid"].as_str().unwrap().to_string();

    let out = app.cli(&["keys", "retire", &kid], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--emergency"));
    assert!(
        app.kids().await.contains(&kid),
        "refused retirement changed nothing"
    );

    let out = app
        .cli(&["keys", "retire", &kid, "--emergency", "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let replacement = v["replacement"].as_str().unwrap().to_string();
    app.wait_for_ring("compromised key gone", |r| {
        r.key(&kid).is_none() && r.key(&replacement).is_some()
    })
    .await;
    assert!(!app.kids().await.contains(&kid));

    // Tokens the compromised key signed are now rejected by latchkey itself.
    assert_eq!(app.userinfo(Some(&old_token)).await.status(), 401);
    assert_eq!(
        app.introspect(("web", &secret), &old_token).await["active"],
        false
    );
    // The session itself survives: refresh issues tokens from the replacement.
    let r = app
        .refresh(("web", &secret), login["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 200);
    let at = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jwt_part(&at, 0)["kid"], replacement.as_str());

    let events = cli_json(&app, &["events", "list", "--json"]).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "key.retire_emergency" && e["subject"] == kid.as_str()),
        "{events}"
    );
}

#[tokio::test]
async fn restart_keeps_sessions_and_keys() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid api:read", "ES256")
        .await;
    let login = app
        .login(("web", &secret), "alice", PASSWORD, "openid api:read")
        .await;
    let kids_before = app.kids().await;
    let issuer = app.issuer.clone();
    let (env, port) = app.stop().await;

    let app = TestApp::spawn_in(
        env,
        Options {
            port: Some(port),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(app.issuer, issuer);
    assert_eq!(
        app.kids().await,
        kids_before,
        "the same keys, reloaded from the database"
    );
    let jwks = app.jwks().await;
    verify_with_jsonwebtoken(
        &jwks,
        login["access_token"].as_str().unwrap(),
        &issuer,
        &issuer,
    )
    .expect("an access token from before the restart verifies");
    let r = app
        .refresh(("web", &secret), login["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(
        r.status(),
        200,
        "a refresh token from before the restart works"
    );
}

#[tokio::test]
async fn cli_rejects_bad_input_clearly() {
    let app = TestApp::spawn().await;
    let out = app
        .cli(
            &["users", "create", "bad name", "--password-stdin"],
            Some(PASSWORD),
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid username"));
    let out = app
        .cli(&["users", "create", "bob", "--password-stdin"], Some(""))
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    app.create_user("carol", PASSWORD, &[]).await;
    let out = app
        .cli(
            &["users", "create", "carol", "--password-stdin"],
            Some(PASSWORD),
        )
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = app
        .cli(
            &[
                "clients",
                "create",
                "x",
                "--public",
                "--grant-types",
                "client_credentials",
                "--scopes",
                "a",
            ],
            None,
        )
        .await;
    assert!(!out.status.success());
    let out = app
        .cli(
            &[
                "clients",
                "create",
                "x",
                "--grant-types",
                "implicit",
                "--scopes",
                "a",
            ],
            None,
        )
        .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown grant type"));
    let out = app.cli(&["keys", "rotate", "--alg", "HS256"], None).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("RS256 or ES256"));
    let out = app.cli(&["keys", "retire", "no-such-kid"], None).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key with kid"));
}

/// A key whose private half cannot be loaded (here: a corrupt wrapped blob,
/// as after a KMS outage at the wrong moment) never stops signing.
#[tokio::test]
async fn an_unloadable_key_neither_activates_nor_stops_signing() {
    use latchkey::keyring::key::{PublicKey, generate};
    use latchkey::store::NewKeyRow;

    let app = TestApp::spawn_with(fast_ring()).await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password", "api:read", "RS256")
        .await;
    let old_kid = jwt_part(&rs256_token(&app, &secret).await, 0)["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let store = &app.state.store;
    let now = latchkey::clock::Clock::now(&latchkey::clock::SystemClock);
    let broken = |state: &str| {
        let k = generate(latchkey::keyring::Alg::Rs256, 2048).unwrap();
        let public =
            PublicKey::from_spki_der(latchkey::keyring::Alg::Rs256, &k.public_der).unwrap();
        NewKeyRow {
            kid: public.kid.clone(),
            alg: "RS256".into(),
            state: state.into(),
            public_der: k.public_der,
            wrapped_private: Some(b"LK1 not a wrapped key".to_vec()),
            kms_provider: "local".into(),
            kms_key_ref: None,
            created_at: now,
            activate_at: now,
        }
    };

    // A pending key that is already due but cannot be loaded stays pending.
    let pending = broken("pending");
    let mut tx = store.begin_ring().await.unwrap();
    tx.insert_key(&pending).await.unwrap();
    tx.commit().await.unwrap();
    // Poll until a scheduler pass has tried (and failed) to activate it.
    let tried = std::time::Instant::now();
    loop {
        let failed = app
            .state
            .store
            .list_events(Some("key.transition_failed"), 100)
            .await
            .unwrap();
        if failed.iter().any(|e| {
            e.detail
                .contains(&format!("cannot activate {}", pending.kid))
        }) {
            break;
        }
        assert!(
            tried.elapsed() < std::time::Duration::from_secs(20),
            "no scheduler pass tried the unloadable key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let keys = keys_json(&app).await;
    let state_of = |kid: &str| {
        keys.iter().find(|k| k["kid"] == kid).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state_of(&pending.kid), "pending");
    assert_eq!(state_of(&old_kid), "active");
    assert_eq!(
        jwt_part(&rs256_token(&app, &secret).await, 0)["kid"],
        old_kid.as_str()
    );
    let health: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        health["key_transition_failures"].as_u64().unwrap() > 0,
        "{health}"
    );
    let mut tx = store.begin_ring().await.unwrap();
    tx.retire(&pending.kid, now, "test cleanup").await.unwrap();
    tx.commit().await.unwrap();

    // An active key that this server cannot load: the previous key, still
    // published as retiring, keeps signing.
    let active = broken("active");
    let mut tx = store.begin_ring().await.unwrap();
    tx.start_retiring(&old_kid, now, now + 700).await.unwrap();
    tx.insert_key(&active).await.unwrap();
    tx.commit().await.unwrap();
    app.wait_for_ring("broken key published", |r| r.key(&active.kid).is_some())
        .await;
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
    assert_eq!(r.status(), 200, "signing continues");
    let at = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jwt_part(&at, 0)["kid"], old_kid.as_str());
    verify_with_jsonwebtoken(&app.jwks().await, &at, &app.issuer, &app.issuer).unwrap();
    assert!(app.state.ring.incomplete_loads() > 0);
    let health: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Tokens live 600 s and the old key is unpublished in 700: it may sign
    // for 700 − 600 − 1 (skew) more seconds, and says so.
    assert_eq!(
        health["key_ring"]["fallbacks"][0][1].as_i64().unwrap(),
        now + 700 - 600 - 1,
        "{health}"
    );
}

/// A replica whose fallback deadline has passed refuses to sign and reports
/// unready, instead of signing with a key about to be unpublished.
#[tokio::test]
async fn a_fallback_past_its_deadline_refuses_to_sign() {
    use latchkey::keyring::key::{PublicKey, generate};
    use latchkey::store::NewKeyRow;

    let app = TestApp::spawn_with(fast_ring()).await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "RS256")
        .await;
    let cc = || app.token(("svc", &secret), &[("grant_type", "client_credentials")]);
    let first = cc().await;
    assert_eq!(first.status(), 200);
    let old_kid = jwt_part(
        first.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap(),
        0,
    )["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let now = app.state.clock.now();
    let k = generate(latchkey::keyring::Alg::Rs256, 2048).unwrap();
    let public = PublicKey::from_spki_der(latchkey::keyring::Alg::Rs256, &k.public_der).unwrap();
    // The old key is unpublished in 600 s, exactly its tokens' lifetime: a
    // token it signs now (plus 1 s of allowed skew) would outlive it.
    let mut tx = app.state.store.begin_ring().await.unwrap();
    tx.start_retiring(&old_kid, now, now + 600).await.unwrap();
    tx.insert_key(&NewKeyRow {
        kid: public.kid.clone(),
        alg: "RS256".into(),
        state: "active".into(),
        public_der: k.public_der,
        wrapped_private: Some(b"LK1 not a wrapped key".to_vec()),
        kms_provider: "local".into(),
        kms_key_ref: None,
        created_at: now,
        activate_at: now,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    app.wait_for_ring("unloadable key published", |r| r.key(&public.kid).is_some())
        .await;
    assert_eq!(
        app.state
            .ring
            .current()
            .sign_until(latchkey::keyring::Alg::Rs256),
        now - 1
    );
    let r = cc().await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    // Alive (liveness is not readiness), but not ready for traffic.
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["key_ring"]["ok"], false, "{ready}");
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["key_ring"]["ready"], false, "{health}");
    assert!(
        health["key_ring"]["refusals"]
            .to_string()
            .contains("fallback_expired"),
        "{health}"
    );
}

/// base64url kids begin with `-` about once in 64 keys; every command and API
/// that takes a kid accepts it exactly as `keys list` prints it.
#[tokio::test]
async fn a_kid_beginning_with_a_dash_is_accepted_as_listed() {
    use latchkey::keyring::kms::Kms;
    use latchkey::oauth::Alg;
    use latchkey::store::NewKeyRow;

    let app = TestApp::spawn_with(fast_ring()).await;
    let kms = Kms::open(&app.state.config.keys).await.unwrap();
    // Pending keys made by the server's own KMS until two have a kid with a
    // leading dash (one for the CLI, one for the admin API).
    let mut dashed = Vec::new();
    for _ in 0..2000 {
        let m = kms.create_key(Alg::Es256, 2048).await.unwrap();
        if !m.public.kid.starts_with('-') {
            continue;
        }
        let now = app.state.clock.now();
        let mut tx = app.state.store.begin_ring().await.unwrap();
        tx.insert_key(&NewKeyRow {
            kid: m.public.kid.clone(),
            alg: "ES256".into(),
            state: "pending".into(),
            public_der: m.public_der.clone(),
            wrapped_private: m.wrapped_private.clone(),
            kms_provider: kms.provider().into(),
            kms_key_ref: None,
            created_at: now,
            activate_at: now + 3600,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        dashed.push(m.public.kid.clone());
        if dashed.len() == 2 {
            break;
        }
    }
    assert_eq!(dashed.len(), 2, "no kid with a leading dash in 2000 keys");
    let listed: Vec<String> = keys_json(&app)
        .await
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains(&dashed[0]), "{listed:?}");

    // The CLI, kid first and flags after, as copied from `keys list`.
    let out = app
        .cli(&["keys", "retire", &dashed[0], "--json"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kid"], dashed[0].as_str());
    assert_eq!(v["previous_state"], "pending");
    // And with the flag first.
    let out = app
        .cli(&["keys", "retire", "--json", &dashed[0]], None)
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already retired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_for_ring("dashed key gone", |r| r.key(&dashed[0]).is_none())
        .await;

    // The admin API, with the kid in the path.
    let admin = crate::lifecycle::admin_token(&app, "root", &["admin"]).await;
    let r = app
        .http
        .post(app.url(&format!("/admin/keys/{}/retire", dashed[1])))
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["kid"], dashed[1].as_str());
    assert_eq!(v["previous_state"], "pending");
    let row = app.state.store.list_keys(true).await.unwrap();
    let row = row.iter().find(|r| r.kid == dashed[1]).unwrap();
    assert_eq!(row.state, "retired");
}
