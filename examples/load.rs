//! latchkey's load driver: drives a live server over HTTP for a fixed time and
//! reports throughput, latency percentiles, errors by status, the server's CPU
//! per request and memory, and whether the tokens it was given are valid.
//!
//! ```text
//! cargo run --release --example load -- --url http://127.0.0.1:8080 \
//!     --scenario refresh-chain --client-id bench-es256 --client-secret S \
//!     --username bench --password P --concurrency 32 --duration 10 --server-pid PID
//! ```
//!
//! Scenarios: `static` (GET `--path`, for the static-reply baseline), `jwks`,
//! `jwks-etag` (`If-None-Match`, expects 304), `client-credentials`, `password`,
//! `refresh-chain` (each virtual user refreshes with the token its previous
//! call returned), `userinfo`, and `mixed` (a password flood beside refresh
//! chains and JWKS, each class reported separately).
//!
//! Closed loop by default: each virtual user sends its next request when the
//! previous one is answered. With `--rate R` the loop is open: the users share
//! a schedule of R requests per second, and latency is measured from the
//! scheduled send time, so a server that falls behind shows it in the tail
//! instead of silently slowing the schedule down.
//!
//! Server CPU per request is the growth of utime + stime in /proc/PID/stat over
//! the measured window divided by the requests answered in it. A sample of the
//! issued access and ID tokens is verified after the run with `jsonwebtoken`
//! against the server's JWKS: a fast wrong answer must not count, so any bad
//! token makes the driver exit with status 2 (status 3: nothing succeeded).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "a command-line driver: a failed set-up ends the run with its message"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Static,
    Jwks,
    JwksEtag,
    ClientCredentials,
    Password,
    RefreshChain,
    Userinfo,
    Mixed,
}

#[derive(Parser, Debug)]
#[command(about = "Drive a live latchkey over HTTP and report rates, tails and costs")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Virtual users (concurrent connections) of the scenario; in `mixed`, the
    /// refresh chains.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds (set-up and warm-up come before).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: total requests per second to schedule (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Path of the `static` scenario.
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long)]
    client_id: Option<String>,
    /// Secrets may start with `-` (base64url): taken as values, not flags.
    #[arg(long, allow_hyphen_values = true)]
    client_secret: Option<String>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    password: Option<String>,
    /// Scope requested by password logins and client_credentials.
    #[arg(long)]
    scope: Option<String>,
    /// Expected `aud` of access tokens (default: the issuer).
    #[arg(long)]
    audience: Option<String>,
    /// In `mixed`: virtual users sending password logins.
    #[arg(long, default_value_t = 8)]
    mixed_password: usize,
    /// In `mixed`: virtual users fetching the JWKS.
    #[arg(long, default_value_t = 4)]
    mixed_jwks: usize,
    /// Server process to measure (CPU per request, RSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Keep every Nth issued token for verification.
    #[arg(long, default_value_t = 25)]
    verify_every: u64,
    /// At most this many tokens are verified per virtual user.
    #[arg(long, default_value_t = 100)]
    verify_max_per_user: usize,
    /// A name for this run in the output.
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    json: bool,
}

/// Request classes, reported separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Static,
    Jwks,
    JwksEtag,
    ClientCredentials,
    Password,
    Refresh,
    Userinfo,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Static => "static",
            Class::Jwks => "jwks",
            Class::JwksEtag => "jwks-304",
            Class::ClientCredentials => "client_credentials",
            Class::Password => "password",
            Class::Refresh => "refresh",
            Class::Userinfo => "userinfo",
        }
    }
}

/// One virtual user's record of one class.
struct Stats {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn new() -> Self {
        // Microseconds from 1 µs to 5 minutes, three significant digits.
        Self {
            hist: Histogram::new_with_bounds(1, 300_000_000, 3).unwrap(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).unwrap();
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    fn requests(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// A token kept for verification after the run.
struct Sample {
    kind: TokenKind,
    token: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Access,
    Id,
}

/// What the server told us at the start, shared by every virtual user.
struct Target {
    http: reqwest::Client,
    base: String,
    basic: Option<String>,
    args: Args,
}

/// The outcome of one request: its class and either success or an error key.
enum Outcome {
    Ok,
    Err(String),
}

/// What a virtual user does, one request at a time.
enum Role {
    Get {
        class: Class,
        path: String,
        etag: Option<String>,
    },
    ClientCredentials,
    Password,
    Refresh {
        token: String,
    },
    Userinfo {
        bearer: String,
    },
}

impl Role {
    fn class(&self) -> Class {
        match self {
            Role::Get { class, .. } => *class,
            Role::ClientCredentials => Class::ClientCredentials,
            Role::Password => Class::Password,
            Role::Refresh { .. } => Class::Refresh,
            Role::Userinfo { .. } => Class::Userinfo,
        }
    }
}

/// Form-urlencode one value (RFC 6749 Appendix B, also used inside Basic auth).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Target {
    fn require<'a>(&self, v: &'a Option<String>, flag: &str) -> &'a str {
        match v {
            Some(v) => v,
            None => {
                eprintln!("load: scenario {:?} needs --{flag}", self.args.scenario);
                std::process::exit(64);
            }
        }
    }

    fn token_request(&self, body: String) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}/token", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(basic) = &self.basic {
            r = r.header("authorization", basic);
        }
        r
    }

    fn password_body(&self) -> String {
        let user = self.require(&self.args.username, "username");
        let pass = self.require(&self.args.password, "password");
        let mut pairs = vec![
            ("grant_type", "password"),
            ("username", user),
            ("password", pass),
        ];
        if let Some(scope) = &self.args.scope {
            pairs.push(("scope", scope));
        }
        form(&pairs)
    }

    /// A password login outside the measured window (set-up of chains and
    /// userinfo users); retried a few times because a login flood may queue.
    async fn login(&self) -> Value {
        let mut last = String::new();
        for _ in 0..5 {
            match self.token_request(self.password_body()).send().await {
                Ok(r) if r.status() == 200 => return r.json().await.unwrap(),
                Ok(r) => {
                    let status = r.status();
                    last = format!("{status}: {}", r.text().await.unwrap_or_default());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("load: set-up login failed: {last}");
        std::process::exit(65);
    }
}

/// One virtual user's results.
struct UserResult {
    stats: BTreeMap<Class, Stats>,
    samples: Vec<Sample>,
    relogins: u64,
}

struct Schedule {
    /// Open loop: this user's first send time and its interval.
    open: Option<(Instant, Duration)>,
}

/// Run one virtual user until `stop`; the requests answered inside the
/// measured window (from `measure_from` until `stop`) are recorded, whenever
/// they were sent. Throughput is completions per second of the window: a
/// rule that also required the send to fall inside the window would drop
/// each user's first answer of the window and so undercount by about
/// latency ÷ window (11 % for a 450 ms password login in a 4 s window).
async fn run_user(
    target: Arc<Target>,
    mut role: Role,
    schedule: Schedule,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> UserResult {
    let class = role.class();
    let mut stats = Stats::new();
    let mut samples = Vec::new();
    let mut relogins = 0;
    let mut issued: u64 = 0;
    let args = &target.args;
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let start = match schedule.open {
            Some((first, interval)) => {
                let due = first + interval * k;
                k += 1;
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                due
            }
            None => Instant::now(),
        };
        let mut keep = |kind: TokenKind, token: Option<&str>, samples: &mut Vec<Sample>| {
            if let Some(t) = token {
                // The first token and every Nth after it.
                let pick = issued.is_multiple_of(args.verify_every.max(1));
                issued += 1;
                if pick && samples.len() < args.verify_max_per_user {
                    samples.push(Sample {
                        kind,
                        token: t.to_string(),
                    });
                }
            }
        };
        let outcome = match &mut role {
            Role::Get { path, etag, .. } => {
                let mut r = target.http.get(format!("{}{path}", target.base));
                if let Some(e) = etag {
                    r = r.header("if-none-match", e.as_str());
                }
                match r.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await;
                        let want = if etag.is_some() { 304 } else { 200 };
                        match body {
                            Ok(b) if status == want && (want == 304 || !b.is_empty()) => {
                                Outcome::Ok
                            }
                            Ok(_) => Outcome::Err(status.to_string()),
                            Err(e) => Outcome::Err(io_key(&e)),
                        }
                    }
                    Err(e) => Outcome::Err(io_key(&e)),
                }
            }
            Role::ClientCredentials => {
                let mut pairs = vec![("grant_type", "client_credentials")];
                if let Some(s) = &args.scope {
                    pairs.push(("scope", s));
                }
                match json_call(target.token_request(form(&pairs))).await {
                    Ok(v) => match v["access_token"].as_str() {
                        Some(at) => {
                            keep(TokenKind::Access, Some(at), &mut samples);
                            Outcome::Ok
                        }
                        None => Outcome::Err("200 without access_token".into()),
                    },
                    Err(e) => Outcome::Err(e),
                }
            }
            Role::Password => match json_call(target.token_request(target.password_body())).await {
                Ok(v) => match v["access_token"].as_str() {
                    Some(at) => {
                        keep(TokenKind::Access, Some(at), &mut samples);
                        keep(TokenKind::Id, v["id_token"].as_str(), &mut samples);
                        Outcome::Ok
                    }
                    None => Outcome::Err("200 without access_token".into()),
                },
                Err(e) => Outcome::Err(e),
            },
            Role::Refresh { token } => {
                let body = form(&[("grant_type", "refresh_token"), ("refresh_token", token)]);
                match json_call(target.token_request(body)).await {
                    Ok(v) => match (v["access_token"].as_str(), v["refresh_token"].as_str()) {
                        (Some(at), Some(rt)) if rt != token.as_str() => {
                            keep(TokenKind::Access, Some(at), &mut samples);
                            keep(TokenKind::Id, v["id_token"].as_str(), &mut samples);
                            *token = rt.to_string();
                            Outcome::Ok
                        }
                        (Some(_), Some(_)) => Outcome::Err("refresh token not rotated".into()),
                        _ => Outcome::Err("200 without access/refresh token".into()),
                    },
                    Err(e) => {
                        // The chain is broken (consumed or revoked): log in again,
                        // outside the measurement.
                        let login = target.login().await;
                        relogins += 1;
                        *token = login["refresh_token"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        Outcome::Err(e)
                    }
                }
            }
            Role::Userinfo { bearer } => {
                let r = target
                    .http
                    .get(format!("{}/userinfo", target.base))
                    .header("authorization", bearer.as_str());
                match json_call(r).await {
                    Ok(v) if v["sub"].is_string() => Outcome::Ok,
                    Ok(_) => Outcome::Err("200 without sub".into()),
                    Err(e) => Outcome::Err(e),
                }
            }
        };
        let answered = Instant::now();
        if answered < measure_from || stop.load(Ordering::Relaxed) {
            continue;
        }
        let micros = u64::try_from((answered - start).as_micros()).unwrap_or(u64::MAX);
        stats.hist.saturating_record(micros.max(1));
        match outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::Err(key) => *stats.errors.entry(key).or_default() += 1,
        }
    }
    let mut map = BTreeMap::new();
    map.insert(class, stats);
    UserResult {
        stats: map,
        samples,
        relogins,
    }
}

fn scenario_name(s: Scenario) -> String {
    s.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn io_key(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "io".into()
    }
}

/// Send, expect 200 with a JSON body; an error key otherwise.
async fn json_call(r: reqwest::RequestBuilder) -> Result<Value, String> {
    let resp = r.send().await.map_err(|e| io_key(&e))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| io_key(&e))?;
    if status != 200 {
        // Keep the OAuth error code: "400 invalid_grant" says more than "400".
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        return Err(match code {
            Some(c) => format!("{status} {c}"),
            None => status.to_string(),
        });
    }
    serde_json::from_slice(&body).map_err(|_| "200 with a body that is not JSON".into())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec)
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Verify one sampled token with `jsonwebtoken` against the JWKS, as a
/// resource server would: the algorithm comes from the key, never the token.
fn verify(
    jwks: &jsonwebtoken::jwk::JwkSet,
    sample: &Sample,
    issuer: &str,
    audience: &str,
    client_id: Option<&str>,
) -> Result<(), String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let header = decode_header(&sample.token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.clone().ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwk: {e}"))?;
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        other => return Err(format!("unexpected JWK alg {other:?}")),
    };
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    match sample.kind {
        TokenKind::Access => {
            if header.typ.as_deref() != Some("at+jwt") {
                return Err(format!("access token typ {:?}", header.typ));
            }
            v.set_audience(&[audience]);
        }
        TokenKind::Id => match client_id {
            Some(c) => v.set_audience(&[c]),
            None => return Err("an ID token without a client".into()),
        },
    }
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Value>(&sample.token, &key, &v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn percentiles(s: &Stats, secs: f64) -> Value {
    let h = &s.hist;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    json!({
        "requests": s.requests(),
        "ok": s.ok,
        "rps": s.ok as f64 / secs,
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": if h.is_empty() { 0 } else { h.max() },
        "errors": s.errors,
    })
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let base = args.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + args.mixed_password + args.mixed_jwks)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let scenario = args.scenario;

    // What a relying party learns first: the issuer and the JWKS.
    let (issuer, jwks_text) = if scenario == Scenario::Static {
        (String::new(), String::new())
    } else {
        let disco: Value = http
            .get(format!("{base}/.well-known/openid-configuration"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| {
                eprintln!("load: cannot read the discovery document: {e}");
                std::process::exit(65)
            })
            .json()
            .await
            .unwrap();
        let issuer = disco["issuer"].as_str().unwrap_or_default().to_string();
        let jwks = http
            .get(format!("{base}/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        (issuer, jwks.text().await.unwrap())
    };
    let basic = match (&args.client_id, &args.client_secret) {
        (Some(id), Some(secret)) => Some(format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
        )),
        _ => None,
    };
    let target = Arc::new(Target {
        http: http.clone(),
        base: base.clone(),
        basic,
        args,
    });
    let args = &target.args;
    if matches!(
        scenario,
        Scenario::ClientCredentials | Scenario::Password | Scenario::RefreshChain | Scenario::Mixed
    ) && target.basic.is_none()
    {
        eprintln!("load: scenario {scenario:?} needs --client-id and --client-secret");
        std::process::exit(64);
    }

    // Set-up (not measured): the ETag, and one login per chain or userinfo user.
    let etag = if matches!(scenario, Scenario::JwksEtag) {
        let r = http
            .get(format!("{base}/.well-known/jwks.json"))
            .send()
            .await
            .unwrap();
        Some(
            r.headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| {
                    eprintln!("load: the JWKS has no ETag");
                    std::process::exit(65)
                })
                .to_string(),
        )
    } else {
        None
    };
    let get = |class: Class, path: &str, etag: Option<String>| Role::Get {
        class,
        path: path.to_string(),
        etag,
    };
    let mut roles: Vec<Role> = Vec::new();
    match scenario {
        Scenario::Static => {
            roles.extend((0..args.concurrency).map(|_| get(Class::Static, &args.path, None)))
        }
        Scenario::Jwks => roles.extend(
            (0..args.concurrency).map(|_| get(Class::Jwks, "/.well-known/jwks.json", None)),
        ),
        Scenario::JwksEtag => roles.extend(
            (0..args.concurrency)
                .map(|_| get(Class::JwksEtag, "/.well-known/jwks.json", etag.clone())),
        ),
        Scenario::ClientCredentials => {
            roles.extend((0..args.concurrency).map(|_| Role::ClientCredentials))
        }
        Scenario::Password => roles.extend((0..args.concurrency).map(|_| Role::Password)),
        Scenario::RefreshChain | Scenario::Mixed => {
            for _ in 0..args.concurrency {
                let login = target.login().await;
                let Some(token) = login["refresh_token"].as_str() else {
                    eprintln!("load: the login returned no refresh token (client grants?)");
                    std::process::exit(65);
                };
                roles.push(Role::Refresh {
                    token: token.to_string(),
                });
            }
            if scenario == Scenario::Mixed {
                roles.extend((0..args.mixed_password).map(|_| Role::Password));
                roles.extend(
                    (0..args.mixed_jwks).map(|_| get(Class::Jwks, "/.well-known/jwks.json", None)),
                );
            }
        }
        Scenario::Userinfo => {
            for _ in 0..args.concurrency {
                let login = target.login().await;
                let at = login["access_token"].as_str().unwrap_or_default();
                roles.push(Role::Userinfo {
                    bearer: format!("Bearer {at}"),
                });
            }
        }
    }

    let ticks = clock_ticks();
    let pid = args.server_pid;
    let rss_before = pid.and_then(rss_kib);
    let self_pid = std::process::id();

    let stop = Arc::new(AtomicBool::new(false));
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs_f64(args.warmup);
    let n = roles.len();
    let mut handles = Vec::with_capacity(n);
    for (i, role) in roles.into_iter().enumerate() {
        let open = args.rate.map(|rate| {
            let interval = Duration::from_secs_f64(n as f64 / rate);
            (begin + Duration::from_secs_f64(i as f64 / rate), interval)
        });
        handles.push(tokio::spawn(run_user(
            target.clone(),
            role,
            Schedule { open },
            measure_from,
            stop.clone(),
        )));
    }

    // Measure the window: CPU at its edges, RSS sampled through it.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = pid.and_then(|p| cpu_seconds(p, ticks));
    let self0 = cpu_seconds(self_pid, ticks);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.duration);
    let mut rss_max = rss_before.unwrap_or(0);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100).min(end - Instant::now())).await;
        if let Some(r) = pid.and_then(rss_kib) {
            rss_max = rss_max.max(r);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(|p| cpu_seconds(p, ticks));
    let self1 = cpu_seconds(self_pid, ticks);

    let mut classes: BTreeMap<Class, Stats> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut relogins = 0;
    for h in handles {
        let r = h.await.unwrap();
        for (c, s) in &r.stats {
            classes.entry(*c).or_insert_with(Stats::new).merge(s);
        }
        samples.extend(r.samples);
        relogins += r.relogins;
    }
    let rss_after = pid.and_then(rss_kib);
    if let Some(r) = rss_after {
        rss_max = rss_max.max(r);
    }

    // Verification of the sampled tokens against the JWKS (refetched if a
    // rotation happened during the run).
    let mut verified = 0u64;
    let mut bad: Vec<String> = Vec::new();
    if !samples.is_empty() {
        let mut set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks_text).unwrap();
        let audience = args.audience.clone().unwrap_or_else(|| issuer.clone());
        let mut refetched = false;
        for s in &samples {
            let mut r = verify(&set, s, &issuer, &audience, args.client_id.as_deref());
            if r.as_ref().is_err_and(|e| e.contains("not in the JWKS")) && !refetched {
                refetched = true;
                let text = http
                    .get(format!("{base}/.well-known/jwks.json"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                set = serde_json::from_str(&text).unwrap();
                r = verify(&set, s, &issuer, &audience, args.client_id.as_deref());
            }
            match r {
                Ok(()) => verified += 1,
                Err(e) => bad.push(e),
            }
        }
    }

    let total: u64 = classes.values().map(Stats::requests).sum();
    let total_ok: u64 = classes.values().map(|s| s.ok).sum();
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_us_per_req = server_cpu
        .filter(|_| total > 0)
        .map(|c| c * 1e6 / total as f64);
    let server_util = server_cpu.map(|c| c / elapsed);
    let driver_util = match (self0, self1) {
        (Some(a), Some(b)) => Some((b - a) / elapsed),
        _ => None,
    };
    let mode = match args.rate {
        Some(r) => format!("open loop at {r}/s"),
        None => "closed loop".to_string(),
    };
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| scenario_name(scenario));
    let bad_examples: Vec<&String> = bad.iter().take(5).collect();

    if args.json {
        let class_json: serde_json::Map<String, Value> = classes
            .iter()
            .map(|(c, s)| (c.name().to_string(), percentiles(s, elapsed)))
            .collect();
        let out = json!({
            "label": label,
            "scenario": scenario_name(scenario),
            "concurrency": args.concurrency,
            "mode": mode,
            "rate": args.rate,
            "duration_s": elapsed,
            "classes": class_json,
            "requests": total,
            "ok": total_ok,
            "rps": total_ok as f64 / elapsed,
            "relogins": relogins,
            "server": {
                "pid": pid,
                "cpu_s": server_cpu,
                "cpu_us_per_req": cpu_us_per_req,
                "cpu_utilisation": server_util,
                "rss_before_kib": rss_before,
                "rss_max_kib": if pid.is_some() { Some(rss_max) } else { None },
                "rss_after_kib": rss_after,
            },
            "driver_cpu_utilisation": driver_util,
            "tokens": { "sampled": samples.len(), "verified": verified, "bad": bad.len(), "bad_examples": bad_examples },
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        println!(
            "{label}: c={} {mode}, {elapsed:.1} s measured after {:.1} s warm-up",
            args.concurrency, args.warmup
        );
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  errors",
            "class", "req/s", "p50", "p90", "p99", "p99.9", "max"
        );
        for (c, s) in &classes {
            let h = &s.hist;
            let q = |p: f64| {
                fmt_us(if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(p)
                })
            };
            println!(
                "{:<20} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
                c.name(),
                s.ok as f64 / elapsed,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                fmt_us(if h.is_empty() { 0 } else { h.max() }),
                if s.errors.is_empty() {
                    "none".to_string()
                } else {
                    format!("{:?}", s.errors)
                }
            );
        }
        if let (Some(us), Some(util)) = (cpu_us_per_req, server_util) {
            println!("server CPU: {us:.1} µs per request ({util:.2} of a core busy)");
        }
        if let (Some(b), Some(a)) = (rss_before, rss_after) {
            println!(
                "server RSS: {:.1} MB before, {:.1} MB max, {:.1} MB after",
                b as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                a as f64 / 1024.0
            );
        }
        if let Some(d) = driver_util {
            println!("driver CPU: {d:.2} of a core busy");
        }
        if relogins > 0 {
            println!("chains broken and logged in again: {relogins}");
        }
        println!(
            "tokens: {} sampled, {verified} verified, {} bad{}",
            samples.len(),
            bad.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {bad_examples:?})")
            }
        );
    }
    if !bad.is_empty() {
        std::process::exit(2);
    }
    if total_ok == 0 {
        std::process::exit(3);
    }
}
