//! Connection and request limits that actually fire, load shedding, security
//! headers, request ids, and readiness.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Options, TestApp};

fn server(lines: &str) -> Options {
    Options {
        server_toml: lines.to_string(),
        ..Options::default()
    }
}

async fn service_client(app: &TestApp) -> (String, String) {
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    ("svc".to_string(), secret)
}

async fn client_credentials(app: &TestApp, client: &(String, String)) -> reqwest::Response {
    app.token(
        (&client.0, &client.1),
        &[("grant_type", "client_credentials")],
    )
    .await
}

/// Write `bytes` one per second until the server closes the connection;
/// returns how long the connection lived and what the server sent.
async fn trickle(mut stream: TcpStream, prefix: &[u8], bytes: &[u8]) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    stream.write_all(prefix).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the server never closed the connection")
        .unwrap();
    writer.abort();
    (started.elapsed(), got)
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
    let app = TestApp::spawn_with(server("header_read_timeout_secs = 2")).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (lived, got) = trickle(
        stream,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    )
    .await;
    assert!(
        lived >= Duration::from_millis(1800) && lived < Duration::from_secs(6),
        "the connection lived {lived:?} with a 2 s header timeout"
    );
    // hyper answers a header timeout with 408 or by closing; never a 200.
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("200 OK"), "{text}");

    // An idle keep-alive connection is closed by the same timer.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("an idle connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(6));

    // Normal requests are unaffected.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_completes_is_cut_off_at_the_body_deadline() {
    let app = TestApp::spawn_with(server(
        "body_read_timeout_secs = 2\nrequest_timeout_secs = 30",
    ))
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (lived, got) = trickle(
        stream,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n",
        b"grant_type=client_credentials&scope=api%3Aread&padding=aaaaaaaaaaaaaaaaaaaaaaa",
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        lived >= Duration::from_millis(1800) && lived < Duration::from_secs(6),
        "the connection lived {lived:?} with a 2 s body deadline: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "invalid_request", "{v}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("x-content-type-options: nosniff"), "{text}");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_503_in_oauth_json() {
    let app = TestApp::spawn_with(server(
        "body_read_timeout_secs = 20\nrequest_timeout_secs = 2",
    ))
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (lived, got) = trickle(
        stream,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\nConnection: close\r\n\r\n",
        b"grant_type=client_credentials&padding=aaaaaaaaaaaaaaa",
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        lived >= Duration::from_millis(1800) && lived < Duration::from_secs(6),
        "{lived:?}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "temporarily_unavailable", "{v}");
}

/// The soft and hard limits on open files of this process.
fn fd_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Client and server sockets share this process: 2,000 idle connections need
/// about 4,100 descriptors. Many systems start with a soft limit of 1,024;
/// raise it up to the hard limit (util-linux `prlimit` acting on this process).
fn ensure_fd_limit(want: u64) {
    let (soft, hard) = fd_limits();
    if soft >= want {
        return;
    }
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status();
    let (soft, hard) = fd_limits();
    assert!(
        soft >= want,
        "this test needs {want} open files; the limit is {soft} (hard {hard}): raise it with ulimit -n"
    );
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_a_token_request() {
    ensure_fd_limit(4200);
    let app = TestApp::spawn_with(server("header_read_timeout_secs = 60")).await;
    let client = service_client(&app).await;
    let mut idle = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        // Half say nothing, half start a request and stall.
        if i % 2 == 0 {
            s.write_all(b"POST /token HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    // The server has accepted them all (not merely the kernel).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .server_stats
        .open_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2000
    {
        assert!(
            Instant::now() < deadline,
            "the server did not accept 2000 connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let r = client_credentials(&app, &client).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["access_token"].is_string());
    assert!(
        took < Duration::from_secs(2),
        "a token request took {took:?}"
    );
    assert_eq!(
        app.server_stats
            .shed_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(idle);
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_are_shed_at_once() {
    let app = TestApp::spawn_with(server(
        "max_connections = 20\nheader_read_timeout_secs = 60",
    ))
    .await;
    let client = service_client(&app).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .server_stats
        .open_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        < 20
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The 21st connection is closed at once, not queued.
    let started = Instant::now();
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("a connection past the limit was held open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        app.server_stats
            .shed_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Freed slots serve normal requests again.
    idle.truncate(10);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .server_stats
        .open_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > 10
    {
        assert!(
            Instant::now() < deadline,
            "closed connections were not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = client_credentials(&app, &client).await;
    assert_eq!(r.status(), 200);
}

fn assert_security_headers(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(
        h["content-security-policy"],
        latchkey::http::layers::API_CSP,
        "{what}"
    );
    assert!(
        h.get("strict-transport-security").is_none(),
        "{what}: HSTS on plain HTTP"
    );
    assert!(h.get("x-request-id").is_some(), "{what}");
}

#[tokio::test]
async fn security_headers_on_json_error_and_unmatched_answers() {
    let app = TestApp::spawn().await;
    let client = service_client(&app).await;

    let r = app
        .http
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers(&r, "discovery");

    let r = client_credentials(&app, &client).await;
    assert_eq!(r.status(), 200);
    assert_security_headers(&r, "token");

    let r = app
        .token(
            (&client.0, "wrong"),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_security_headers(&r, "invalid_client");

    let r = app
        .http
        .get(app.url("/no/such/route?secret=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_security_headers(&r, "404");

    let r = app.http.get(app.url("/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_security_headers(&r, "405");

    // Admin answers are never cached, errors included.
    let r = app.http.get(app.url("/admin/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_security_headers(&r, "admin");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn html_answers_get_the_strict_content_security_policy() {
    use tower::ServiceExt as _;
    // No HTML route exists yet; the layer is the one the router uses.
    let app = TestApp::spawn().await;
    let router = axum::Router::new()
        .route(
            "/account/page",
            axum::routing::get(|| async { axum::response::Html("<p>hi</p>") }),
        )
        .layer(axum::middleware::from_fn_with_state(
            app.state.clone(),
            latchkey::http::layers::edge,
        ));
    let r = router
        .oneshot(
            axum::http::Request::get("/account/page")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, latchkey::http::layers::HTML_CSP);
    assert!(csp.contains("default-src 'none'"));
    assert!(csp.contains("form-action 'self'"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_generated_otherwise() {
    let app = TestApp::spawn().await;
    let get = |id: Option<String>| {
        let mut req = app.http.get(app.url("/healthz"));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };
    let r = get(Some("trace-abc.123".into())).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");

    let long = "a".repeat(65);
    let r = get(Some(long.clone())).await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(generated, long);
    assert!(!generated.is_empty() && generated.len() <= 64);

    let a = get(None).await.unwrap();
    let b = get(None).await.unwrap();
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn readyz_is_200_when_ready_and_503_naming_the_database_when_it_is_gone() {
    let app = TestApp::spawn().await;
    // The scheduler's first pass runs at start; wait for its heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, v) = loop {
        let (status, v) = readyz(&app).await;
        if status == 200 || Instant::now() > deadline {
            break (status, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["failing"], serde_json::json!([]));
    for check in ["database", "signing_keys", "scheduler"] {
        assert_eq!(v["checks"][check]["ok"], true, "{check}: {v}");
    }

    // The database goes away (its pool is closed under the running server).
    app.state.store.close().await;
    // The previous probe is cached for up to a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, v) = readyz(&app).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "unready");
    assert_eq!(v["failing"], serde_json::json!(["database"]), "{v}");
    assert_eq!(v["checks"]["database"]["detail"], "unreachable");
    assert_eq!(v["checks"]["signing_keys"]["ok"], true);

    // Liveness needs no database: still 200.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
