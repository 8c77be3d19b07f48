//! The fault soak: three `latchkey serve` processes on one throwaway
//! PostgreSQL cluster (initdb + pg_ctl on its own loopback port), AWS KMS
//! envelope mode against the emulator, accelerated rotation, token load spread
//! over the replicas and strict caching verifiers. During the run one replica
//! is killed with SIGKILL at a transition's second and restarted, one
//! replica's KMS is cut (a TCP proxy in front of the emulator) for longer than
//! a lead, one replica runs a skewed clock (`clock.insecure_offset_secs`:
//! within the allowance first, then beyond it), and every replica is rolled.
//!
//! Runs only when `LATCHKEY_TEST_SOAK_SECS` is set (scripts/fault-soak.sh sets
//! it); it needs `LATCHKEY_TEST_KMS_ENDPOINT` and PostgreSQL's server binaries.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use latchkey::config::{DatabaseConfig, DatabaseUrl};
use latchkey::store::Store;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::kms::{Proxy, admin, wrapping_key_alias};

const ISSUER: &str = "http://latchkey.soak";
/// JWKS max-age, token lifetime, allowed skew: lead = 2 + 1 + 2 = 5 s,
/// retention = 6 + 5 = 11 s, a rotation every 10 s.
const MAX_AGE: u64 = 2;
const TTL: i64 = 6;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().expect("initdb and pg_ctl")
}

/// PostgreSQL refuses to run as root: as root, run its binaries as `postgres`.
fn as_pg_user(bin: &str) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false);
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(bin));
        c
    } else {
        std::process::Command::new(pg_bin(bin))
    }
}

/// A PostgreSQL cluster of its own, stopped (immediate) on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    async fn start(root: &Path) -> Self {
        let dir = root.join("pg");
        std::fs::create_dir(&dir).unwrap();
        // The cluster's owner must reach and own its directory.
        let _ = std::process::Command::new("chmod")
            .arg("755")
            .arg(root)
            .status();
        let _ = std::process::Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .output();
        let port = free_port();
        let out = Command::from(as_pg_user("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&dir)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.display()
        );
        let out = Command::from(as_pg_user("pg_ctl"))
            .arg("-D")
            .arg(&dir)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "start"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        Self { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_pg_user("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// One `latchkey serve` process and how to restart it.
struct Replica {
    name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Replica {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Write the config with `offset` seconds of clock skew and start.
    async fn start(&mut self, kms_endpoint: &str, alias: &str, db: &str, offset: i64) {
        let text = format!(
            "issuer = \"{ISSUER}\"\nprofile = \"dev\"\n\
             [clock]\ninsecure_offset_secs = {offset}\n\
             [server]\nbind = \"127.0.0.1:{port}\"\n\
             [database]\nurl = \"{db}\"\nmax_connections = 8\n\
             [tokens]\naccess_ttl_secs = {TTL}\nid_ttl_secs = {TTL}\n\
             [keys]\ndir = \"{dir}\"\nkms = \"aws\"\njwks_max_age_secs = {MAX_AGE}\nreload_interval_secs = 1\nmax_clock_skew_secs = 2\n\
             [keys.aws]\nmode = \"envelope\"\nregion = \"us-east-1\"\nendpoint_url = \"{kms_endpoint}\"\nkey_id = \"{alias}\"\naccess_key_id = \"testing\"\n\
             [keys.rs256]\nschedule = \"*/10 * * * * *\"\n\
             [keys.es256]\nschedule = \"5/10 * * * * *\"\n",
            port = self.port,
            dir = self.config.with_extension("keys").display(),
        );
        std::fs::write(&self.config, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// SIGTERM and wait for the graceful exit.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().unwrap().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .unwrap();
            let exited = tokio::time::timeout(Duration::from_secs(20), c.wait()).await;
            assert!(exited.is_ok(), "{} did not stop on SIGTERM", self.name);
        }
    }
}

async fn healthz(http: &reqwest::Client, r: &str) -> Option<(u16, Value)> {
    let resp = http.get(r).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

async fn wait_healthy(http: &reqwest::Client, url: &str, within: Duration) {
    let t = Instant::now();
    loop {
        if let Some((200, _)) = healthz(http, url).await {
            return;
        }
        assert!(t.elapsed() < within, "{url} not healthy in {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A resource server's cache: a JWKS held exactly as long as its
/// `Cache-Control: max-age`, never refetched early (not on an unknown kid).
struct StrictVerifier {
    jwks: Value,
    expires: Instant,
    /// Tokens handed to it, re-verified until they expire: (token, exp).
    held: Vec<(String, i64)>,
}

fn now_secs() -> i64 {
    #[allow(clippy::disallowed_methods, reason = "the soak's own wall clock")]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// jsonwebtoken with no leeway: `exp` and `nbf` exact, algorithm from the key.
fn strict_verify(jwks: &Value, token: &str) -> Result<(), String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the cached JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        other => return Err(format!("unexpected JWK alg {other:?}")),
    };
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    decode::<Value>(token, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[derive(Default)]
struct Counters {
    tokens: AtomicU64,
    verifications: AtomicU64,
    failures: AtomicU64,
    refused: AtomicU64,
    unreachable: AtomicU64,
    samples: AtomicU64,
    active_violations: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_soak() {
    #[allow(clippy::disallowed_methods, reason = "test switches")]
    let Some(secs) = std::env::var("LATCHKEY_TEST_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        eprintln!("skipping: LATCHKEY_TEST_SOAK_SECS is not set (scripts/fault-soak.sh runs it)");
        return;
    };
    assert!(secs >= 60, "the soak needs at least 60 s for its faults");
    #[allow(clippy::disallowed_methods, reason = "test switches")]
    let kms_endpoint = std::env::var("LATCHKEY_TEST_KMS_ENDPOINT")
        .expect("the soak needs the KMS emulator (scripts/kms-emulator.sh start)");
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(root.path()).await;
    let db = cluster.url();
    let alias = wrapping_key_alias(&admin(&kms_endpoint).await).await;
    let upstream: SocketAddr = tokio::net::lookup_host(
        kms_endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/'),
    )
    .await
    .unwrap()
    .next()
    .unwrap();
    // Replica b reaches the KMS only through this proxy, to be cut off.
    let mut proxy = Proxy::start(upstream).await;
    let env = vec![
        (
            "LATCHKEY_KEYS__AWS__SECRET_ACCESS_KEY".to_string(),
            "testing".to_string(),
        ),
        (
            "LATCHKEY_SECURITY__PEPPER".to_string(),
            "soak-pepper-0123456789abcdef0123456789".to_string(),
        ),
        ("LATCHKEY_LOG".to_string(), "info".to_string()),
    ];
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|n| Replica {
            name: n.to_string(),
            port: free_port(),
            config: root.path().join(format!("{n}.toml")),
            log: root.path().join(format!("{n}.log")),
            env: env.clone(),
            child: None,
        })
        .collect();
    let endpoint_of = |i: usize, proxy: &Proxy| {
        if i == 1 {
            proxy.url()
        } else {
            kms_endpoint.clone()
        }
    };
    // Replica c runs 1 s fast: within the allowed 2 s of skew.
    let offsets = [0i64, 0, 1];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The first replica bootstraps the ring alone, then the others join.
    for i in 0..3 {
        let ep = endpoint_of(i, &proxy);
        replicas[i].start(&ep, &alias, &db, offsets[i]).await;
        wait_healthy(&http, &replicas[i].url("/readyz"), Duration::from_secs(60)).await;
    }
    let cli = |args: Vec<String>| {
        let config = replicas[0].config.clone();
        let env = env.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::helpers::run_cli(&config, &env, &args, None).await
        }
    };
    let mut secrets = Vec::new();
    for (id, alg) in [("soak-rs", "RS256"), ("soak-es", "ES256")] {
        let out = cli([
            "clients",
            "create",
            id,
            "--grant-types",
            "client_credentials",
            "--scopes",
            "api:read",
            "--alg",
            alg,
            "--json",
        ]
        .map(String::from)
        .to_vec())
        .await;
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        secrets.push((id, v["client_secret"].as_str().unwrap().to_string()));
    }

    let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let issued: Arc<Mutex<Vec<(String, i64, i64)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let verifiers: Vec<Arc<Mutex<StrictVerifier>>> = (0..4)
        .map(|_| {
            Arc::new(Mutex::new(StrictVerifier {
                jwks: Value::Null,
                expires: Instant::now(),
                held: Vec::new(),
            }))
        })
        .collect();

    // Load: workers issue tokens round-robin over the replicas and hand each
    // to one verifier, which checks it at once and again until it expires.
    let mut load = tokio::task::JoinSet::new();
    for w in 0..4usize {
        let (http, urls, counters, stop, issued, failures, verifiers, secrets) = (
            http.clone(),
            urls.clone(),
            counters.clone(),
            stop.clone(),
            issued.clone(),
            failures.clone(),
            verifiers.clone(),
            secrets.clone(),
        );
        load.spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = &urls[i % urls.len()];
                let (client, secret) = &secrets[i % 2];
                let r = http
                    .post(format!("{url}/token"))
                    .basic_auth(client, Some(secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await;
                let token = match r {
                    Err(_) => {
                        counters.unreachable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok(r) if r.status() == 503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok(r) if r.status() != 200 => {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .await
                            .push(format!("token request to {url}: {}", r.status()));
                        continue;
                    }
                    Ok(r) => r.json::<Value>().await.unwrap()["access_token"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                };
                counters.tokens.fetch_add(1, Ordering::Relaxed);
                let claims = crate::helpers::jwt_part(&token, 1);
                let (iat, exp) = (
                    claims["iat"].as_i64().unwrap(),
                    claims["exp"].as_i64().unwrap(),
                );
                issued.lock().await.push((token.clone(), iat, exp));
                let v = &verifiers[i % verifiers.len()];
                let mut v = v.lock().await;
                if v.expires <= Instant::now() {
                    // Refetch from whichever replica answers, as a resource
                    // server behind a load balancer would.
                    for k in 0..urls.len() {
                        let u = &urls[(i + k) % urls.len()];
                        if let Ok(r) = http.get(format!("{u}/.well-known/jwks.json")).send().await
                            && r.status() == 200
                        {
                            let max_age = r.headers()["cache-control"]
                                .to_str()
                                .unwrap()
                                .split(',')
                                .find_map(|p| p.trim().strip_prefix("max-age="))
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap();
                            v.jwks = r.json().await.unwrap();
                            v.expires = Instant::now() + Duration::from_secs(max_age);
                            break;
                        }
                    }
                }
                counters.verifications.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = strict_verify(&v.jwks, &token) {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    failures
                        .lock()
                        .await
                        .push(format!("fresh token from {url}: {e}"));
                }
                v.held.push((token, exp));
                // Re-verify held tokens that are still comfortably unexpired.
                let now = now_secs();
                v.held.retain(|(_, exp)| *exp > now + 1);
                if i.is_multiple_of(8) {
                    let jwks = v.jwks.clone();
                    for (t, _) in &v.held {
                        counters.verifications.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = strict_verify(&jwks, t) {
                            counters.failures.fetch_add(1, Ordering::Relaxed);
                            failures.lock().await.push(format!("held token: {e}"));
                        }
                    }
                }
                drop(v);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    // Sampler: exactly one active key per algorithm at every sample.
    let store = Store::connect(&DatabaseConfig {
        url: DatabaseUrl::Postgres(db.clone()),
        max_connections: 2,
    })
    .await
    .unwrap();
    {
        let (store, counters, stop, failures) = (
            store.clone(),
            counters.clone(),
            stop.clone(),
            failures.clone(),
        );
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let keys = store.list_keys(false).await.unwrap();
                let mut active: HashMap<String, usize> = HashMap::new();
                for k in &keys {
                    if k.state == "active" {
                        *active.entry(k.alg.clone()).or_default() += 1;
                    }
                }
                counters.samples.fetch_add(1, Ordering::Relaxed);
                if active.get("RS256") != Some(&1) || active.get("ES256") != Some(&1) {
                    counters.active_violations.fetch_add(1, Ordering::Relaxed);
                    failures
                        .lock()
                        .await
                        .push(format!("active keys: {active:?}"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    let started = Instant::now();
    let at = |f: f64| Duration::from_secs_f64(secs as f64 * f);
    let sleep_until = |d: Duration| {
        let left = d.saturating_sub(started.elapsed());
        tokio::time::sleep(left)
    };
    let mut saw_skew_refusal = false;
    let mut saw_kms_cut_alert = false;

    // 1. SIGKILL replica a at the second a pending key is due to activate.
    sleep_until(at(0.10)).await;
    let due = loop {
        let keys = store.list_keys(false).await.unwrap();
        let now = now_secs();
        if let Some(p) = keys
            .iter()
            .filter(|k| k.state == "pending" && k.activate_at > now)
            .map(|k| k.activate_at)
            .min()
        {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    while now_secs() < due {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas[0].kill9().await;
    eprintln!("soak: killed a (SIGKILL) at a transition's second");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ep = endpoint_of(0, &proxy);
    replicas[0].start(&ep, &alias, &db, offsets[0]).await;
    wait_healthy(&http, &replicas[0].url("/readyz"), Duration::from_secs(30)).await;

    // 2. Cut replica b's KMS for three leads (15 s).
    sleep_until(at(0.30)).await;
    proxy.stop().await;
    eprintln!("soak: KMS cut for b");
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_secs(15) {
        if let Some((_, h)) = healthz(&http, &replicas[1].url("/healthz")).await
            && (h["key_transition_failures"].as_u64().unwrap_or(0) > 0
                || h["key_load_failures"].as_u64().unwrap_or(0) > 0)
        {
            saw_kms_cut_alert = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.restart().await;
    eprintln!("soak: KMS back for b");

    // 3. Replica c beyond the allowed skew (+6 s): it must stop signing.
    sleep_until(at(0.50)).await;
    replicas[2].stop().await;
    replicas[2].start(&kms_endpoint, &alias, &db, 6).await;
    let skewed = Instant::now();
    while skewed.elapsed() < Duration::from_secs(8) {
        // Alive (`/healthz` answers 200 with the ring's refusals), not ready.
        if let Some((200, h)) = healthz(&http, &replicas[2].url("/healthz")).await
            && h["key_ring"]["refusals"].to_string().contains("clock_skew")
            && let Some((503, _)) = healthz(&http, &replicas[2].url("/readyz")).await
        {
            saw_skew_refusal = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    replicas[2].stop().await;
    replicas[2].start(&kms_endpoint, &alias, &db, 0).await;
    wait_healthy(&http, &replicas[2].url("/readyz"), Duration::from_secs(30)).await;

    // 4. Roll every replica (SIGTERM, restart, wait until healthy).
    sleep_until(at(0.70)).await;
    for (i, replica) in replicas.iter_mut().enumerate() {
        replica.stop().await;
        let ep = endpoint_of(i, &proxy);
        replica.start(&ep, &alias, &db, 0).await;
        wait_healthy(&http, &replica.url("/readyz"), Duration::from_secs(30)).await;
    }
    eprintln!("soak: rolled every replica");

    sleep_until(at(1.0)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}

    // Every replica back in sync: the same JWKS everywhere. The scheduler
    // keeps rotating (a ring change every few seconds), and each replica
    // picks a change up within `reload_interval_secs`, so "in sync" means the
    // replicas agree at some instant within a few reload intervals, not at
    // one arbitrary instant that may fall between a change and its pickup.
    let mut bodies = BTreeSet::new();
    let mut in_sync = false;
    for _ in 0..20 {
        bodies.clear();
        for r in &replicas {
            let body = http
                .get(r.url("/.well-known/jwks.json"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            bodies.insert(body);
        }
        if bodies.len() == 1 {
            in_sync = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // No token signed by a key that was not published when it was signed,
    // or unpublished before the token expired.
    let rows = store.list_keys(true).await.unwrap();
    let mut unpublished = 0u64;
    for (token, iat, exp) in issued.lock().await.iter() {
        let kid = crate::helpers::jwt_part(token, 0)["kid"]
            .as_str()
            .unwrap()
            .to_string();
        match rows.iter().find(|r| r.kid == kid) {
            Some(r) if r.created_at <= *iat + 2 && r.retired_at.is_none_or(|t| t >= *exp) => {}
            _ => unpublished += 1,
        }
    }
    let rotations = rows
        .iter()
        .filter(|r| r.activated_at.is_some())
        .count()
        .saturating_sub(2);
    let c = &counters;
    println!(
        "rotations {rotations}, tokens {}, verifications {}, failures {}, unpublished-signed {unpublished}, active-violations {}, samples {}, refused {}, unreachable {}, in-sync {in_sync}, skew-refusal {saw_skew_refusal}, kms-cut-alert {saw_kms_cut_alert}",
        c.tokens.load(Ordering::Relaxed),
        c.verifications.load(Ordering::Relaxed),
        c.failures.load(Ordering::Relaxed),
        c.active_violations.load(Ordering::Relaxed),
        c.samples.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.unreachable.load(Ordering::Relaxed),
    );
    for r in &mut replicas {
        r.stop().await;
    }
    let failures = failures.lock().await;
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert_eq!(unpublished, 0);
    assert!(in_sync, "replicas serve different JWKS: {bodies:#?}");
    assert!(saw_skew_refusal, "the replica past the skew kept signing");
    assert!(
        saw_kms_cut_alert,
        "the KMS cut raised no transition failure"
    );
    assert!(rotations >= 3, "only {rotations} rotations");
    drop(cluster);
}
