//! The load driver (`examples/load.rs`) against a real latchkey: every scenario
//! yields successes, verified tokens and the server's CPU and memory; a server
//! answering with a forged token makes it fail; errors are counted by status.
//! Runs are a fraction of a second: these check the instrument, not latchkey's
//! speed.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::helpers::{Options, PASSWORD, TestApp};

/// The load driver binary. `cargo test` builds examples with the tests; only
/// when it is missing or older than its source (`cargo test --test it` alone
/// builds no examples) is it built here, with `--workspace` so that features
/// resolve as in `cargo test --workspace` and nothing is rebuilt differently.
fn driver() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // target/<profile>/deps/it-HASH → target/<profile>/examples/load
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let path = profile_dir.join("examples").join("load");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/load.rs");
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&path).is_none() || modified(&path) < modified(&source) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "--workspace", "--example", "load"]);
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(status.success(), "building the load driver failed");
        }
        path
    })
    .clone()
}

/// Run the driver (half a second unless `-d` is given) with `--json`; returns (exit code, report).
async fn run(url: &str, args: &[&str]) -> (i32, Value) {
    let mut cmd = tokio::process::Command::new(driver());
    if !args.contains(&"-d") {
        cmd.args(["-d", "0.5"]);
    }
    let out = cmd
        .args(["--url", url, "--json", "--warmup", "0.2"])
        .args(["--server-pid", &std::process::id().to_string()])
        .args(args)
        .output()
        .await
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "driver printed no JSON ({e}), exit {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

#[tokio::test]
async fn every_scenario_succeeds_and_its_tokens_verify() {
    let app = TestApp::spawn_with(Options::unlimited()).await;
    app.create_user("bench", PASSWORD, &[]).await;
    let secret = app
        .create_client(
            "bench-es",
            "password,refresh_token,client_credentials",
            "openid profile api:read",
            "ES256",
        )
        .await;
    let url = app.url("");
    let client = [
        "--client-id",
        "bench-es",
        "--client-secret",
        secret.as_str(),
    ];
    let user = ["--username", "bench", "--password", PASSWORD];
    // (scenario, classes expected, whether tokens are issued and verified)
    let cases: [(&str, &[&str], bool); 7] = [
        ("jwks", &["jwks"], false),
        ("jwks-etag", &["jwks-304"], false),
        ("client-credentials", &["client_credentials"], true),
        ("password", &["password"], true),
        ("refresh-chain", &["refresh"], true),
        ("userinfo", &["userinfo"], false),
        ("mixed", &["jwks", "password", "refresh"], true),
    ];
    for (scenario, classes, tokens) in cases {
        let mut args = vec!["--scenario", scenario, "-c", "2", "--verify-every", "1"];
        args.extend(client);
        args.extend(user);
        let scope = if scenario == "client-credentials" {
            "api:read"
        } else {
            "openid profile api:read"
        };
        args.extend([
            "--scope",
            scope,
            "--mixed-password",
            "1",
            "--mixed-jwks",
            "1",
        ]);
        // A login costs an argon2 hash: give the scenarios that send them
        // time for several even on a busy machine.
        let secs = if matches!(scenario, "password" | "mixed") {
            "3"
        } else {
            "0.5"
        };
        args.extend(["-d", secs]);
        let (code, r) = run(&url, &args).await;
        assert_eq!(code, 0, "{scenario}: {r:#}");
        let got: Vec<&String> = r["classes"].as_object().unwrap().keys().collect();
        assert_eq!(got, classes.to_vec(), "{scenario}");
        for class in classes {
            let c = &r["classes"][class];
            assert!(c["ok"].as_u64().unwrap() > 0, "{scenario}/{class}: {c}");
            assert_eq!(c["errors"], json!({}), "{scenario}/{class}");
            assert!(c["p50_us"].as_u64().unwrap() > 0);
            assert!(c["p99_us"].as_u64() >= c["p50_us"].as_u64());
        }
        if tokens {
            assert!(r["tokens"]["verified"].as_u64().unwrap() > 0, "{scenario}");
        }
        assert_eq!(r["tokens"]["bad"], 0, "{scenario}");
        // The server here is this test process: its CPU and RSS are real.
        assert!(r["server"]["cpu_us_per_req"].as_f64().unwrap() > 0.0);
        assert!(r["server"]["rss_max_kib"].as_u64().unwrap() > 1000);
    }
}

#[tokio::test]
async fn errors_are_counted_by_status_and_oauth_code() {
    // Without rate limits: a flood of wrong secrets would (rightly) turn into
    // 429s, and this test is about how the driver classifies one error.
    let app = TestApp::spawn_with(Options::unlimited()).await;
    app.create_client("cc", "client_credentials", "api:read", "ES256")
        .await;
    let (code, r) = run(
        &app.url(""),
        &[
            "--scenario",
            "client-credentials",
            "-c",
            "2",
            "--client-id",
            "cc",
            // Secrets are base64url, so one in 64 starts with `-`: the
            // driver must take it as the value, not as a flag, and the
            // server must be the one refusing it.
            "--client-secret",
            "-not-the-secret",
        ],
    )
    .await;
    assert_eq!(code, 3, "nothing succeeded: {r:#}");
    let c = &r["classes"]["client_credentials"];
    assert_eq!(c["ok"], 0);
    let errors = c["errors"].as_object().unwrap();
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["401 invalid_client"]);
    assert!(errors["401 invalid_client"].as_u64().unwrap() > 0);
}

/// A server that answers quickly with a token latchkey never signed as it is
/// (a real token's header and claims under another token's signature), while
/// serving latchkey's real discovery and JWKS.
#[tokio::test]
async fn a_fast_wrong_answer_fails_the_run() {
    let app = TestApp::spawn().await;
    let secret = app
        .create_client("cc", "client_credentials", "api:read", "ES256")
        .await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let r = app
            .token(("cc", &secret), &[("grant_type", "client_credentials")])
            .await;
        let v: Value = r.json().await.unwrap();
        tokens.push(v["access_token"].as_str().unwrap().to_string());
    }
    let (a, b) = (&tokens[0], &tokens[1]);
    let forged = format!(
        "{}.{}",
        &a[..a.rfind('.').unwrap()],
        &b[b.rfind('.').unwrap() + 1..]
    );
    assert_ne!(&forged, a);
    let discovery: Value = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks = app.jwks().await;
    let fake = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/.well-known/jwks.json",
            get(move || async move { axum::Json(jwks) }),
        )
        .route(
            "/token",
            post(move || async move {
                axum::Json(
                    json!({"access_token": forged, "token_type": "Bearer", "expires_in": 600}),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, fake).await });

    let (code, r) = run(
        &format!("http://{addr}"),
        &[
            "--scenario",
            "client-credentials",
            "-c",
            "2",
            "--verify-every",
            "1",
            "--client-id",
            "cc",
            "--client-secret",
            &secret,
        ],
    )
    .await;
    assert_eq!(code, 2, "bad tokens must fail the run: {r:#}");
    assert!(r["classes"]["client_credentials"]["ok"].as_u64().unwrap() > 0);
    let bad = r["tokens"]["bad"].as_u64().unwrap();
    assert!(bad > 0);
    assert_eq!(r["tokens"]["verified"], 0);
    assert_eq!(bad, r["tokens"]["sampled"].as_u64().unwrap());
    assert!(
        r["tokens"]["bad_examples"][0]
            .as_str()
            .unwrap()
            .contains("Signature"),
        "{r:#}"
    );
}

/// Throughput counts the answers inside the measured window, whenever their
/// request was sent. The server answers after 250 ms; the window runs from
/// 0.2 s (the warm-up) to 1.35 s, so each of 4 users is answered near 0.25,
/// 0.5, 0.75, 1.0 and 1.25 s inside it: 5 answers each while a round trip
/// costs under 20 ms more than the sleep. A rule that also required the send
/// to be inside the window would drop each user's first answer (sent at 0 s)
/// and count at most 16.
#[tokio::test]
async fn the_rate_counts_every_answer_inside_the_window() {
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, slow).await });

    let (code, r) = run(
        &format!("http://{addr}"),
        &[
            "--scenario",
            "static",
            "--path",
            "/slow",
            "-c",
            "4",
            "-d",
            "1.15",
        ],
    )
    .await;
    assert_eq!(code, 0, "{r:#}");
    let c = &r["classes"]["static"];
    let ok = c["ok"].as_u64().unwrap();
    assert!((17..=20).contains(&ok), "{ok} answers counted: {r:#}");
    // Every answer took the server's 250 ms, whenever it was sent.
    assert!(c["p50_us"].as_u64().unwrap() >= 250_000, "{r:#}");
}
