//! Graceful shutdown under load (in process and a rolling restart of one of
//! two replicas), and the binary: SIGTERM, SIGHUP certificate reload, JSON
//! request log lines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use crate::helpers::{Options, TestApp};
use crate::tls::{TestCa, TlsFiles, served_certificate};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Failures of requests sent before the shutdown signal.
    failed_before: AtomicU64,
    /// Refused after the signal (expected: the listener is closed).
    failed_after: AtomicU64,
}

/// Workers sending client_credentials requests to `url` until `stop`.
fn load(
    url: String,
    secret: String,
    signalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    (0..3)
        .map(|_| {
            let (url, secret) = (url.clone(), secret.clone());
            let (signalled, stop, tally) = (signalled.clone(), stop.clone(), tally.clone());
            let http = http.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let before = !signalled.load(Ordering::SeqCst);
                    let r = http
                        .post(&url)
                        .basic_auth("svc", Some(&secret))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await;
                    // A response whose body was cut off counts as a failure.
                    let r = match r {
                        Ok(r) if r.status() == 200 => r.text().await.map(|_| ()),
                        Ok(r) => panic!("a served request failed: {}", r.status()),
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) if before => {
                            tally.failed_before.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tally.failed_after.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn shutdown_during_load_answers_every_accepted_request_and_refuses_new_ones() {
    let app = TestApp::spawn_with(Options::unlimited()).await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let stats = app.server_stats.clone();
    let addr = app.addr;
    let signalled = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers = load(
        app.url("/token"),
        secret,
        signalled.clone(),
        stop.clone(),
        tally.clone(),
    );
    // Load for a few seconds, and at least until a few hundred requests were
    // served (the whole suite may be running beside this test on two cores).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) || tally.ok.load(Ordering::Relaxed) < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no load got through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served_before = tally.ok.load(Ordering::Relaxed);
    signalled.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    app.stop().await;
    let stop_took = stopped.elapsed();
    // The listener is closed: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let accepted = stats.requests_accepted.load(Ordering::Relaxed);
    let answered = stats.requests_answered.load(Ordering::Relaxed);
    let ok = tally.ok.load(Ordering::Relaxed);
    eprintln!(
        "served {served_before} before the signal; accepted {accepted}, answered {answered}, client saw {ok} ok, {} refused after; stop took {stop_took:?}",
        tally.failed_after.load(Ordering::Relaxed)
    );
    assert_eq!(tally.failed_before.load(Ordering::Relaxed), 0);
    assert_eq!(accepted, answered, "an accepted request was not answered");
    assert_eq!(ok, answered, "an answered request did not reach its client");
    assert!(stop_took < Duration::from_secs(5), "{stop_took:?}");
}

#[tokio::test]
async fn a_rolling_restart_of_one_of_two_replicas_loses_no_accepted_request() {
    let a = TestApp::spawn_with(Options::unlimited()).await;
    let secret = a
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let b = TestApp::spawn_in(a.env.clone(), Options::unlimited()).await;
    let mut all_stats = vec![a.server_stats.clone(), b.server_stats.clone()];
    let targets = Arc::new(Mutex::new(vec![a.url("/token"), b.url("/token")]));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    // A load balancer in miniature: round robin, and a request the chosen
    // replica refuses (connection error) is retried once on the other.
    let http = reqwest::Client::new();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let http = http.clone();
            let (targets, stop, ok, lost, secret) = (
                targets.clone(),
                stop.clone(),
                ok.clone(),
                lost.clone(),
                secret.clone(),
            );
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let urls = targets.lock().await.clone();
                    let mut done = false;
                    for k in 0..2 {
                        let url = &urls[(n + k) % urls.len()];
                        match http
                            .post(url)
                            .basic_auth("svc", Some(&secret))
                            .form(&[("grant_type", "client_credentials")])
                            .send()
                            .await
                        {
                            Ok(r) => {
                                assert_eq!(r.status(), 200);
                                r.text().await.unwrap();
                                ok.fetch_add(1, Ordering::Relaxed);
                                done = true;
                                break;
                            }
                            Err(_) => continue,
                        }
                    }
                    if !done {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let ok = ok.clone();
        async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) || ok.load(Ordering::Relaxed) < n {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no load got through"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(100).await;
    // Restart replica A on the same port and database.
    let (env, port) = a.stop().await;
    let a2 = TestApp::spawn_in(
        env,
        Options {
            port: Some(port),
            ..Options::unlimited()
        },
    )
    .await;
    all_stats.push(a2.server_stats.clone());
    let a2_stats = a2.server_stats.clone();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2)
        || a2_stats.requests_accepted.load(Ordering::Relaxed) < 20
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restarted replica took no traffic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let accepted: u64 = all_stats
        .iter()
        .map(|s| s.requests_accepted.load(Ordering::Relaxed))
        .sum();
    let answered: u64 = all_stats
        .iter()
        .map(|s| s.requests_answered.load(Ordering::Relaxed))
        .sum();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("accepted {accepted}, answered {answered}, clients saw {ok} ok");
    assert!(
        a2.server_stats.requests_accepted.load(Ordering::Relaxed) > 0,
        "the restarted replica took traffic"
    );
    assert_eq!(lost.load(Ordering::Relaxed), 0);
    assert_eq!(accepted, answered);
    assert_eq!(
        ok, answered,
        "a request a replica accepted never reached its client"
    );
    drop(b);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_binary_logs_json_reloads_on_sighup_and_stops_on_sigterm() {
    use tokio::io::AsyncReadExt as _;
    // Prepare a database with a client, then run `latchkey serve` on it.
    let app = TestApp::spawn().await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let config_path = app.config_path.clone();
    let mut env_vars = app.env_vars.clone();
    let (env, _) = app.stop().await;
    let ca = TestCa::new();
    let files = TlsFiles::new(env.path());
    files.install(&ca.leaf(1001, "binary-one"));
    let port = free_port();
    env_vars.extend(
        [
            ("LATCHKEY_SERVER__BIND", format!("127.0.0.1:{port}")),
            (
                "LATCHKEY_SERVER__TLS__CERT_CHAIN_FILE",
                files.chain.display().to_string(),
            ),
            (
                "LATCHKEY_SERVER__TLS__KEY_FILE",
                files.key.display().to_string(),
            ),
            ("LATCHKEY_SERVER__TLS__POLL_SECS", "3600".to_string()),
            ("LATCHKEY_LOG__FORMAT", "json".to_string()),
            ("LATCHKEY_LOG", "info".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .envs(env_vars)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let client = ca.client();
    let base = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "latchkey serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let r = client
        .post(format!("{base}/token"))
        .basic_auth("svc", Some(&secret))
        .header("x-request-id", "it-token-1")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/healthz?access_token=hunter2-in-a-query"))
        .header("x-request-id", "it-health-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_certificate(&r).0, "1001");

    // SIGHUP reloads the certificate.
    files.install(&ca.leaf(2002, "binary-two"));
    signal(pid, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
        if served_certificate(&r).0 == "2002" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: a clean exit, then the port refuses connections.
    signal(pid, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("latchkey did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );

    let log = log.await.unwrap();
    assert!(!log.contains("hunter2"), "a query string reached the log");
    assert!(!log.contains(&secret), "a client secret reached the log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = |id: &str| -> Value {
        lines
            .iter()
            .find(|l| l["fields"]["request_id"] == id && l["fields"]["message"] == "request")
            .unwrap_or_else(|| panic!("no request line for {id}:\n{log}"))["fields"]
            .clone()
    };
    let token = request("it-token-1");
    assert_eq!(token["method"], "POST");
    assert_eq!(token["route"], "/token");
    assert_eq!(token["status"], 200);
    assert_eq!(token["client_ip"], "127.0.0.1");
    assert!(token["latency_ms"].as_f64().unwrap() > 0.0);
    let health = request("it-health-1");
    assert_eq!(health["route"], "/healthz");
    assert_eq!(health["status"], 200);
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"TLS certificate reloaded"),
        "{messages:?}"
    );
    assert!(messages.contains(&"latchkey stopped"), "{messages:?}");
}
