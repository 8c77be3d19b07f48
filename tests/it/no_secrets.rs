//! Every log line of this test binary is captured (one global JSON subscriber,
//! installed by the first server any test starts), and one scenario with known
//! secrets greps those lines, its CLI runs' stderr and every audit row for each
//! secret in its raw, hex and base64 forms.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use serde_json::Value;

use crate::helpers::{Options, TestApp};

static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber once per process (idempotent).
pub fn install() {
    CAPTURED.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                // Everything latchkey emits, at every level; dependencies at the
                // level a production filter shows (their debug firehose would slow
                // every test of the binary for little: sqlx logs no bound values).
                "info,latchkey=trace,audit=trace",
            ))
            .with_writer(move || Sink(sink.clone()))
            .finish();
        // Another subscriber already set (not expected) only means no capture:
        // the scenario below then fails on its "captured our own lines" check.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    });
}

fn captured() -> String {
    let buf = CAPTURED.get().unwrap().lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A secret and the encodings it might leak in.
fn forms(secret: &[u8]) -> Vec<String> {
    let b = base64::engine::general_purpose::STANDARD;
    let u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = vec![
        b.encode(secret),
        u.encode(secret),
        secret
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>(),
        secret
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>(),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        out.push(text.to_string());
        // What a form body or query string would carry.
        out.push(text.replace(' ', "+"));
        out.push(text.replace(' ', "%20"));
    }
    // Byte arrays as Debug would print them.
    out.push(format!("{secret:?}").trim_matches(['[', ']']).to_string());
    out.retain(|s| s.len() >= 12);
    out
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_an_audit_row() {
    const PEPPER: &str = "pepper-known-to-the-test-0123456789abcdef";
    const PASSWORD: &str = "s3cret horse battery staple";
    const WRONG_PASSWORD: &str = "wrong-password-typed-by-alice";
    const WRONG_SECRET: &str = "wrong-client-secret-0123456789abcdef";
    const METRICS_TOKEN: &str = "metrics-token-known-to-the-test";
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("LATCHKEY_SECURITY__PEPPER".into(), PEPPER.into()),
            ("LATCHKEY_METRICS__TOKEN".into(), METRICS_TOKEN.into()),
            ("LATCHKEY_LOG".into(), "trace".into()),
        ],
        ..Default::default()
    })
    .await;
    install();
    let mut cli_stderr = String::new();
    let mut cli = async |args: &[&str], stdin: Option<&str>| {
        let out = app.cli(args, stdin).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cli_stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        out.stdout
    };

    // Users and clients through the CLI (passwords and secrets on stdin).
    cli(
        &[
            "users",
            "create",
            "alice",
            "--password-stdin",
            "--roles",
            "admin",
        ],
        Some(PASSWORD),
    )
    .await;
    let out = cli(
        &[
            "clients",
            "create",
            "leaky-web",
            "--grant-types",
            "password,refresh_token",
            "--scopes",
            "openid profile api:read",
            "--json",
        ],
        None,
    )
    .await;
    let client_secret = serde_json::from_slice::<Value>(&out).unwrap()["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let chosen_secret = "a-client-secret-chosen-by-the-operator-000";
    cli(
        &[
            "clients",
            "create",
            "leaky-svc",
            "--secret-stdin",
            "--grant-types",
            "client_credentials",
            "--scopes",
            "api:read",
        ],
        Some(chosen_secret),
    )
    .await;
    let web = ("leaky-web", client_secret.as_str());

    // Logins, a failed login, a failed client authentication.
    let login = app.login(web, "alice", PASSWORD, "openid profile").await;
    let access = login["access_token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    let id_token = login["id_token"].as_str().unwrap().to_string();
    let r = app
        .token(
            web,
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", WRONG_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .token(
            ("leaky-web", WRONG_SECRET),
            &[
                ("grant_type", "password"),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .token(
            ("leaky-svc", chosen_secret),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let svc_access = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Refresh, then reuse of the consumed token (the family is revoked).
    let r = app.refresh(web, &refresh).await;
    assert_eq!(r.status(), 200);
    let rotated = r.json::<Value>().await.unwrap();
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_string();
    let access2 = rotated["access_token"].as_str().unwrap().to_string();
    let r = app.refresh(web, &refresh2).await;
    assert_eq!(r.status(), 200);
    let refresh2b = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    // The first token again, after its successor was used: reuse.
    assert_eq!(app.refresh(web, &refresh).await.status(), 400);

    // A second login for userinfo, introspection, revocation and the admin API.
    let login2 = app.login(web, "alice", PASSWORD, "openid").await;
    let access3 = login2["access_token"].as_str().unwrap().to_string();
    let refresh3 = login2["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(app.userinfo(Some(&access3)).await.status(), 200);
    assert_eq!(app.userinfo(Some(&access)).await.status(), 401);
    app.introspect(web, &access3).await;
    app.introspect(web, &refresh3).await;
    app.introspect(web, &refresh2b).await;
    for token in [&refresh3, &access3] {
        let r = app
            .http
            .post(app.url("/revoke"))
            .basic_auth(web.0, Some(web.1))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let ops_secret = app
        .create_admin_client("leaky-ops", "password", "openid", "ES256")
        .await;
    let admin = app
        .login(
            ("leaky-ops", &ops_secret),
            "alice",
            PASSWORD,
            "openid latchkey:admin",
        )
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/admin/keys", "/admin/audit?limit=1000", "/admin/events"] {
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = app
        .http
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"alg": "ES256", "now": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(WRONG_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    cli(&["keys", "rotate", "--alg", "RS256", "--now"], None).await;
    cli(&["users", "disable", "alice"], None).await;
    cli(&["audit", "list", "--limit", "1000"], None).await;
    cli(&["events", "list"], None).await;
    // A failed login with the password typed into the username field.
    let r = app
        .token(
            web,
            &[
                ("grant_type", "password"),
                ("username", PASSWORD),
                ("password", "x"),
            ],
        )
        .await;
    assert_eq!(r.status(), 400);

    // Key material: the local master key and every wrapped private key.
    let master = std::fs::read(app.env.path().join("keys").join("master.key")).unwrap();
    let wrapped: Vec<Vec<u8>> = app
        .state
        .store
        .list_keys(true)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|k| k.wrapped_private)
        .collect();
    assert!(wrapped.len() >= 2);

    // Wait until the server's audit lines of the last request are flushed.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let logs = captured();
    let rows = app
        .state
        .audit
        .query(
            &latchkey::audit::RawAuditQuery {
                limit: Some("1000".into()),
                ..Default::default()
            }
            .validate()
            .unwrap(),
        )
        .await
        .unwrap();
    let audit = serde_json::to_string(&rows).unwrap();
    let legacy =
        serde_json::to_string(&app.state.store.list_events(None, 10_000).await.unwrap()).unwrap();

    // The capture works and holds this scenario's lines (not an empty pass).
    assert!(
        logs.contains("\"target\":\"audit\""),
        "no audit lines captured"
    );
    assert!(
        logs.contains("leaky-web"),
        "this scenario's lines were not captured"
    );
    assert!(logs.contains("login.failure") && audit.contains("token.introspected_inactive"));
    assert!(
        cli_stderr.contains("audit event"),
        "the CLI runs' trace logs were not captured"
    );

    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("password", PASSWORD.into()),
        // Every other test's users share this one: grep the whole suite's lines.
        ("the suite's password", crate::helpers::PASSWORD.into()),
        ("wrong password", WRONG_PASSWORD.into()),
        ("wrong client secret", WRONG_SECRET.into()),
        ("pepper", PEPPER.into()),
        ("metrics token", METRICS_TOKEN.into()),
        ("client secret", client_secret.clone().into_bytes()),
        ("chosen client secret", chosen_secret.into()),
        ("refresh token", refresh.clone().into_bytes()),
        ("rotated refresh token", refresh2.clone().into_bytes()),
        (
            "twice rotated refresh token",
            refresh2b.clone().into_bytes(),
        ),
        ("second refresh token", refresh3.clone().into_bytes()),
        ("master key", master.clone()),
        ("admin client secret", ops_secret.clone().into_bytes()),
    ];
    for (what, jwt) in [
        ("access token", &access),
        ("rotated access token", &access2),
        ("revoked access token", &access3),
        ("admin token", &admin),
        ("service token", &svc_access),
        ("id token", &id_token),
    ] {
        secrets.push((what, jwt.clone().into_bytes()));
        // The signature alone identifies the token too.
        secrets.push((what, jwt.rsplit('.').next().unwrap().as_bytes().to_vec()));
    }
    for w in &wrapped {
        secrets.push(("wrapped private key", w.clone()));
    }
    // The refresh-token digests are stored, but they are not logged either.
    secrets.push((
        "refresh digest",
        latchkey::secret::refresh_token_digest(&refresh),
    ));

    let haystacks = [
        ("logs", &logs),
        ("audit rows", &audit),
        ("events", &legacy),
        ("CLI stderr", &cli_stderr),
    ];
    for (what, secret) in &secrets {
        for form in forms(secret) {
            for (where_, hay) in &haystacks {
                assert!(
                    !hay.contains(&form),
                    "{what} found in {where_} (as {form:?})"
                );
            }
        }
    }
}
