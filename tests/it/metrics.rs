use std::collections::HashMap;

use crate::helpers::{Options, PASSWORD, TestApp};

/// Scrape and parse with the `prometheus-parse` text-format parser.
async fn scrape(app: &TestApp, url: &str, token: Option<&str>) -> prometheus_parse::Scrape {
    let mut req = app.http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(k).is_some_and(|got| got == *v))
        })
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

const SERIES: &[&str] = &[
    "latchkey_http_requests_total",
    "latchkey_http_request_duration_seconds",
    "latchkey_tokens_issued_total",
    "latchkey_refresh_reuse_detected_total",
    "latchkey_refresh_state_lookups_total",
    "latchkey_rate_limit_rejections_total",
    "latchkey_account_lockouts_total",
    "latchkey_argon2_queue_depth",
    "latchkey_argon2_buffers",
    "latchkey_argon2_yield_seconds_total",
    "latchkey_db_pool_connections_in_use",
    "latchkey_db_pool_connections_idle",
    "latchkey_keyring_active_key_age_seconds",
    "latchkey_keyring_next_transition_seconds",
    "latchkey_keyring_last_transition_success",
    "latchkey_keyring_transition_failures",
    "latchkey_keyring_version",
    "latchkey_keyring_seconds_since_reload",
];

#[tokio::test]
async fn metrics_expose_every_series_and_move_with_requests() {
    let app = TestApp::spawn().await;
    app.create_user("alice", PASSWORD, &[]).await;
    let secret = app
        .create_client("web", "password,refresh_token", "openid", "ES256")
        .await;
    let svc = app
        .create_client("svc", "client_credentials", "api:read", "RS256")
        .await;
    let url = app.url("/metrics");
    // Labelled families appear once they have a sample: the first scrape is one.
    let _ = scrape(&app, &url, None).await;
    app.state.metrics.rate_limited("ip");
    let before = scrape(&app, &url, None).await;
    let docs: HashMap<_, _> = before.docs.clone();
    for name in SERIES {
        let base = name.trim_end_matches("_total");
        assert!(docs.contains_key(base), "no HELP for {base}: {docs:?}");
    }
    let issued = |s: &prometheus_parse::Scrape, grant: &str, alg: &str| {
        value(
            s,
            "latchkey_tokens_issued_total",
            &[("grant", grant), ("alg", alg)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(issued(&before, "password", "ES256"), 0.0);

    let login = app
        .login(("web", &secret), "alice", PASSWORD, "openid")
        .await;
    let s1 = scrape(&app, &url, None).await;
    assert_eq!(issued(&s1, "password", "ES256"), 1.0);
    let r = app
        .refresh(("web", &secret), login["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 200);
    let second: serde_json::Value = r.json().await.unwrap();
    let r = app
        .refresh(("web", &secret), second["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .token(("svc", &svc), &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.status(), 200);
    // Reuse of the first refresh token after its successor was used.
    let r = app
        .refresh(("web", &secret), login["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), 400);
    let s2 = scrape(&app, &url, None).await;
    assert_eq!(issued(&s2, "password", "ES256"), 1.0);
    assert_eq!(issued(&s2, "refresh_token", "ES256"), 2.0);
    assert_eq!(issued(&s2, "client_credentials", "RS256"), 1.0);
    assert_eq!(
        value(&s2, "latchkey_refresh_reuse_detected_total", &[]),
        Some(1.0)
    );
    // The login's token was read from the database; its successor's state
    // was kept by the refresh that issued it; the reused token was read.
    let lookups = |source: &str| {
        value(
            &s2,
            "latchkey_refresh_state_lookups_total",
            &[("source", source)],
        )
    };
    assert_eq!(lookups("kept"), Some(1.0));
    assert_eq!(lookups("database"), Some(2.0));

    // Requests by matched route and status, with a latency histogram.
    let ok = value(
        &s2,
        "latchkey_http_requests_total",
        &[("route", "/token"), ("method", "POST"), ("status", "200")],
    );
    assert_eq!(ok, Some(4.0));
    let refused = value(
        &s2,
        "latchkey_http_requests_total",
        &[("route", "/token"), ("status", "400")],
    );
    assert_eq!(refused, Some(1.0));
    assert!(
        s2.samples
            .iter()
            .any(|x| x.metric == "latchkey_http_request_duration_seconds"
                && x.labels.get("route") == Some("/token"))
    );
    // Raw paths never become labels.
    let _ = app.http.get(app.url("/no/such/path")).send().await.unwrap();
    let s3 = scrape(&app, &url, None).await;
    assert_eq!(
        value(
            &s3,
            "latchkey_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert!(
        !s3.samples
            .iter()
            .any(|x| x.labels.get("route") == Some("/no/such/path"))
    );

    // Key ring gauges.
    for alg in ["RS256", "ES256"] {
        let age = value(
            &s3,
            "latchkey_keyring_active_key_age_seconds",
            &[("alg", alg)],
        );
        assert!(
            age.is_some_and(|a| (0.0..60.0).contains(&a)),
            "{alg}: {age:?}"
        );
    }
    let next = value(&s3, "latchkey_keyring_next_transition_seconds", &[]).unwrap();
    assert!(next > 0.0, "{next}");
    assert_eq!(
        value(&s3, "latchkey_keyring_last_transition_success", &[]),
        Some(1.0)
    );
    assert!(value(&s3, "latchkey_keyring_version", &[]).unwrap() >= 1.0);
    let reload = value(&s3, "latchkey_keyring_seconds_since_reload", &[]).unwrap();
    assert!((0.0..5.0).contains(&reload), "{reload}");
    let idle = value(&s3, "latchkey_db_pool_connections_idle", &[]).unwrap();
    let used = value(&s3, "latchkey_db_pool_connections_in_use", &[]).unwrap();
    assert!(idle + used >= 1.0 && idle + used <= 8.0, "{idle} {used}");
}

#[tokio::test]
async fn metrics_token_and_separate_listener() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token = "metrics-scrape-token-0123456789";
    let app = TestApp::spawn_with(Options {
        extra_toml: format!("[metrics]\nbind = \"127.0.0.1:{port}\"\n"),
        env: vec![("LATCHKEY_METRICS__TOKEN".into(), token.into())],
        ..Default::default()
    })
    .await;
    // Not on the main listener any more.
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = app.http.get(&url).send().await {
            assert_eq!(r.status(), 401);
            assert!(r.headers().contains_key("www-authenticate"));
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the metrics listener never answered");
    let r = app
        .http
        .get(&url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = app.http.get(app.url("/healthz")).send().await.unwrap();
    let s = scrape(&app, &url, Some(token)).await;
    assert_eq!(
        value(
            &s,
            "latchkey_http_requests_total",
            &[("route", "/healthz"), ("status", "200")]
        ),
        Some(1.0)
    );
    // A short token in the environment is refused at start-up.
    let err = latchkey::config::Config::from_toml_str(
        "issuer = \"http://x\"\n",
        vec![("LATCHKEY_METRICS__TOKEN".to_string(), "short".to_string())],
    )
    .unwrap_err();
    assert!(err.to_string().contains("metrics.token"), "{err}");
}
