//! Configuration in two stages: raw (what the TOML file and the environment say)
//! and validated (typed, checked, with secrets that cannot be printed).
//!
//! This module is the only reader of configuration files and of `LATCHKEY_*`
//! environment variables. It does no I/O beyond reading the file and the pepper;
//! it knows nothing of HTTP, SQL or keys. Every key is documented, with its
//! default and environment name, in `config/latchkey.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::oauth::Alg;

/// Environment variables with this prefix override config keys:
/// `LATCHKEY_<SECTION>__<KEY>` (sections nest with more `__`), `LATCHKEY_<KEY>` for
/// top-level keys.
pub const ENV_PREFIX: &str = "LATCHKEY_";

/// Variables under the prefix that are not config keys (test harness switches and
/// the log filter); they are skipped rather than rejected as unknown keys.
/// `LATCHKEY_LOG` is matched exactly, so `LATCHKEY_LOG__FORMAT` stays a key.
const ENV_NOT_CONFIG: &[&str] = &["LATCHKEY_TEST_"];

/// The `tracing` filter directive (e.g. `info,latchkey=debug`).
pub const LOG_FILTER_ENV: &str = "LATCHKEY_LOG";

/// The process environment, for [`Config::load`].
#[allow(
    clippy::disallowed_methods,
    reason = "config.rs is the one reader of the environment"
)]
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// The log filter: `LATCHKEY_LOG` (tracing's env-filter syntax) or `default`.
#[allow(
    clippy::disallowed_methods,
    reason = "config.rs is the one reader of the environment"
)]
pub fn log_filter(default: &str) -> String {
    std::env::var("LATCHKEY_LOG").unwrap_or_else(|_| default.to_string())
}

/// Who runs a CLI command, for the audit trail: the login name (`USER`).
#[allow(
    clippy::disallowed_methods,
    reason = "config.rs is the one reader of the environment"
)]
pub fn operator_name() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------
// Stage one: the raw shape of the file.
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: String,
    #[serde(default = "default_profile")]
    profile: String,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    lockout: RawLockout,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    clock: RawClock,
    #[serde(default)]
    authorize: RawAuthorize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClock {
    insecure_offset_secs: i64,
    insecure_skip_database_check: bool,
}

fn default_profile() -> String {
    "dev".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    bind: String,
    max_body_bytes: u64,
    #[serde(deserialize_with = "string_or_list")]
    trusted_proxies: Vec<String>,
    header_read_timeout_secs: u64,
    body_read_timeout_secs: u64,
    request_timeout_secs: u64,
    max_connections: u64,
    shutdown_grace_secs: u64,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_chain_file: String,
    key_file: String,
    #[serde(default = "default_tls_poll_secs")]
    poll_secs: u64,
}

fn default_tls_poll_secs() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "auto".into(),
        }
    }
}

/// A list key given either as a TOML array or, as the environment must, as
/// one comma-separated string.
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 4096,
            shutdown_grace_secs: 20,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    max_connections: u32,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://data/latchkey.db".into(),
            max_connections: 8,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    dir: String,
    kms: String,
    jwks_max_age_secs: u64,
    reload_interval_secs: u64,
    safety_margin_secs: Option<u64>,
    max_clock_skew_secs: u64,
    verifier_leeway_secs: u64,
    max_published_keys: u64,
    rs256: RawKeyPolicy,
    es256: RawKeyPolicy,
    aws: RawAws,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            dir: "keys".into(),
            kms: "local".into(),
            jwks_max_age_secs: 300,
            reload_interval_secs: 2,
            safety_margin_secs: None,
            max_clock_skew_secs: 2,
            verifier_leeway_secs: 0,
            max_published_keys: VERIFIER_MAX_KEYS,
            rs256: RawKeyPolicy::default(),
            es256: RawKeyPolicy::default(),
            aws: RawAws::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeyPolicy {
    schedule: String,
    lead_secs: Option<u64>,
    retention_secs: Option<u64>,
    rsa_bits: u32,
}

impl Default for RawKeyPolicy {
    fn default() -> Self {
        Self {
            schedule: "@monthly".into(),
            lead_secs: None,
            retention_secs: None,
            rsa_bits: 2048,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAws {
    mode: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    key_id: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    access_ttl_secs: u64,
    id_ttl_secs: u64,
    refresh_idle_ttl_secs: u64,
    refresh_absolute_ttl_secs: u64,
    refresh_retry_window_secs: u64,
    cleanup_interval_secs: u64,
    cleanup_batch_size: u64,
    clients_cache_millis: u64,
    revocation_poll_millis: u64,
    audience: Option<String>,
    default_alg: String,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            access_ttl_secs: 600,
            id_ttl_secs: 600,
            refresh_idle_ttl_secs: 14 * 24 * 3600,
            refresh_absolute_ttl_secs: 30 * 24 * 3600,
            refresh_retry_window_secs: 10,
            cleanup_interval_secs: 300,
            cleanup_batch_size: 500,
            clients_cache_millis: 1000,
            revocation_poll_millis: 100,
            audience: None,
            default_alg: "RS256".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuthorize {
    code_ttl_secs: u64,
    session_ttl_secs: u64,
}

impl Default for RawAuthorize {
    fn default() -> Self {
        Self {
            code_ttl_secs: 60,
            session_ttl_secs: 12 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    pepper: Option<String>,
    pepper_file: Option<String>,
    /// 0: one per CPU.
    hash_concurrency: usize,
    hash_queue: usize,
    hash_queue_wait_ms: u64,
}

impl Default for RawSecurity {
    fn default() -> Self {
        Self {
            pepper: None,
            pepper_file: None,
            hash_concurrency: 0,
            hash_queue: 64,
            hash_queue_wait_ms: 2000,
        }
    }
}

/// One limit as written: `rate` requests per `per_secs`, up to `burst` at once.
/// `rate = 0` switches that limit off.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    rate: u64,
    #[serde(default = "one")]
    per_secs: u64,
    burst: Option<u64>,
}

fn one() -> u64 {
    1
}

fn rate(rate: u64, per_secs: u64, burst: u64) -> Option<RawRate> {
    Some(RawRate {
        rate,
        per_secs,
        burst: Some(burst),
    })
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEndpointLimits {
    per_ip: Option<RawRate>,
    per_client: Option<RawRate>,
    per_username: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    enabled: bool,
    backend: String,
    redis_url: Option<String>,
    redis_prefix: String,
    redis_timeout_ms: u64,
    per_username_by_address: bool,
    token: RawEndpointLimits,
    revoke: RawEndpointLimits,
    introspect: RawEndpointLimits,
    account: RawEndpointLimits,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: "memory".into(),
            redis_url: None,
            redis_prefix: "latchkey:rl:".into(),
            redis_timeout_ms: 50,
            per_username_by_address: true,
            token: RawEndpointLimits::default(),
            revoke: RawEndpointLimits::default(),
            introspect: RawEndpointLimits::default(),
            account: RawEndpointLimits::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLockout {
    threshold: u32,
    base_delay_secs: u64,
    max_delay_secs: u64,
    per_source_failures: u64,
    per_source_window_secs: u64,
}

impl Default for RawLockout {
    fn default() -> Self {
        Self {
            threshold: 5,
            base_delay_secs: 60,
            max_delay_secs: 3600,
            per_source_failures: 3,
            per_source_window_secs: 900,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    retention_days: u64,
    cleanup_interval_secs: u64,
    cleanup_batch: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention_days: 365,
            cleanup_interval_secs: 3600,
            cleanup_batch: 1000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    enabled: bool,
    bind: Option<String>,
    token: Option<String>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: None,
            token: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Stage two: the validated, typed configuration the rest of latchkey reads.
// ---------------------------------------------------------------------------

/// Bytes that must never be printed: `Debug` shows only their length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([{} bytes redacted])", self.0.len())
    }
}

/// A validated, non-negative span of seconds, bounded (at most [`Secs::MAX`])
/// so that adding it to any timestamp latchkey handles cannot overflow. Config
/// durations are converted once, here; nobody downstream converts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Secs(i64);

impl Secs {
    /// Ten years: longer than any lifetime latchkey can sensibly be asked for.
    pub const MAX: Secs = Secs(10 * 366 * 86_400);

    /// `v` seconds, or `None` past [`Secs::MAX`].
    pub fn new(v: u64) -> Option<Self> {
        i64::try_from(v)
            .ok()
            .filter(|v| *v <= Self::MAX.0)
            .map(Self)
    }

    /// The span as signed seconds, ready for timestamp arithmetic.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The span as unsigned seconds (never negative).
    pub fn as_u64(self) -> u64 {
        self.0.unsigned_abs()
    }
}

/// The most keys the `latchkey-verifier` crate accepts in one JWKS
/// (`VerifierBuilder::max_keys` default). `keys.max_published_keys` may not
/// exceed it, so latchkey never publishes a JWKS its own verifier refuses; a
/// test asserts the two numbers agree.
pub const VERIFIER_MAX_KEYS: u64 = 64;

/// `dev` tolerates conveniences (a pepper generated into `keys/`, plain-http
/// issuer); `prod` refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Prod,
}

#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    /// A file path; the file is created if missing.
    Sqlite(PathBuf),
    /// Passed to the PostgreSQL driver as given.
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub issuer: String,
    pub profile: Profile,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub keys: KeysConfig,
    pub tokens: TokenConfig,
    pub security: SecurityConfig,
    pub rate_limit: RateLimitConfig,
    pub lockout: LockoutConfig,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub clock: ClockConfig,
    pub authorize: AuthorizeConfig,
}

/// The audit log's retention and its batched cleanup.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Events older than this many days are deleted; `None` keeps them forever.
    pub retention_days: Option<u64>,
    pub cleanup_interval_secs: u64,
    /// Rows deleted per statement, so SQLite's write lock is held only briefly.
    pub cleanup_batch: u64,
}

/// Where `/metrics` is served and who may read it.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// A separate listener for `/metrics`; `None` serves it on the main one.
    pub bind: Option<SocketAddr>,
    /// A bearer token scrapers must present; `None` leaves `/metrics` open.
    pub token: Option<Secret>,
}

/// How this process reads time (see `clock.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockConfig {
    /// Added to the wall clock; for fault drills only (refused in `prod`).
    pub insecure_offset_secs: i64,
    /// Skip comparing this clock with the database's (tests that drive a
    /// manual clock far from real time; refused in `prod`).
    pub insecure_skip_database_check: bool,
}

/// The authorization-code flow and the browser (single sign-on) session.
#[derive(Debug, Clone)]
pub struct AuthorizeConfig {
    /// Lifetime of an authorization code (at most 60 s).
    pub code_ttl_secs: u64,
    /// Lifetime of the `__Host-latchkey-session` sign-in.
    pub session_ttl_secs: u64,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// From accepting a connection (or finishing a response) until the next
    /// request's headers are complete; also bounds an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// From the request's headers until its body is complete (answered 408).
    pub body_read_timeout: Duration,
    /// From the request's headers until the response is ready (answered 503).
    pub request_timeout: Duration,
    /// Open connections at most; connections past it are closed at once.
    pub max_connections: usize,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// HTTPS when set; plain HTTP otherwise.
    pub tls: Option<TlsConfig>,
}

/// The certificate chain and key files; both PEM, reloaded when they change.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_chain_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files' modification times are checked.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// The `tracing` filter from `LATCHKEY_LOG`, when set.
    pub filter: Option<String>,
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is
/// a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 peer seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub dir: PathBuf,
    pub kms: KmsConfig,
    pub jwks_max_age: Secs,
    pub reload_interval: Secs,
    pub safety_margin: Secs,
    /// Largest difference between this replica's clock and the database's
    /// before it stops signing and transitions.
    pub max_clock_skew: Secs,
    /// Leeway the resource servers' verifiers apply to `exp`/`nbf`.
    pub verifier_leeway: Secs,
    /// Most keys (all algorithms) the JWKS may hold.
    pub max_published_keys: usize,
    /// The longest lifetime of anything a key signs (from `[tokens]`).
    pub longest_signed_ttl: Secs,
    /// Copied from `[clock]`: skip the database clock comparison.
    pub skip_clock_check: bool,
    pub rs256: KeyPolicy,
    pub es256: KeyPolicy,
}

impl KeysConfig {
    pub fn policy(&self, alg: Alg) -> &KeyPolicy {
        match alg {
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
        }
    }

    /// How long a ring snapshot may go unconfirmed before the replica reports
    /// unready: the part of the shortest lead not already spent on a
    /// verifier's cache (`lead − jwks_max_age`, = reload interval + margin by
    /// default). A replica staler than this could serve a JWKS that lacks a
    /// pending key for longer than the lead allows.
    pub fn max_ring_age(&self) -> Secs {
        let lead = self.rs256.lead.min(self.es256.lead);
        Secs(lead.get().saturating_sub(self.jwks_max_age.get()).max(1))
    }

    /// How long after its last confirmed reload a replica may keep signing:
    /// its active key was still active then, so it stays published for at
    /// least the retention; tokens signed later than `retention − longest ttl −
    /// skew` after that could outlive the key's publication.
    pub fn max_sign_staleness(&self) -> Secs {
        let retention = self.rs256.retention.min(self.es256.retention);
        Secs(
            retention
                .get()
                .saturating_sub(self.longest_signed_ttl.get())
                .saturating_sub(self.max_clock_skew.get())
                .max(1),
        )
    }
}

/// How one algorithm's keys rotate.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// The cron expression as written (six or seven fields, or `@monthly` etc.).
    pub schedule_expr: String,
    pub schedule: cron::Schedule,
    /// How long a new key is published before it may sign.
    pub lead: Secs,
    /// How long a replaced key stays published after it stops signing.
    pub retention: Secs,
    /// RSA modulus size; ignored for ES256.
    pub rsa_bits: u32,
}

#[derive(Debug, Clone)]
pub enum KmsConfig {
    /// AES-256-GCM wrapping with a master key file in `keys.dir`.
    Local,
    Aws(AwsKmsConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsMode {
    /// Keys generated here, wrapped by a KMS key; signing in-process.
    Envelope,
    /// Asymmetric KMS keys; every signature is a KMS `Sign` call.
    Native,
}

#[derive(Clone)]
pub struct AwsKmsConfig {
    pub mode: AwsMode,
    pub region: String,
    pub endpoint_url: Option<String>,
    /// The symmetric wrapping key (envelope mode); id, ARN or `alias/...`.
    pub key_id: Option<String>,
    /// Static credentials; when absent the SDK's default chain is used.
    pub credentials: Option<(String, Secret)>,
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("mode", &self.mode)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("key_id", &self.key_id)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub access_ttl_secs: u64,
    pub id_ttl_secs: u64,
    pub refresh_idle_ttl_secs: u64,
    pub refresh_absolute_ttl_secs: u64,
    /// Retry-safe refresh: how long after a refresh token was used it may be
    /// presented again for the same successor (0 = strict: any reuse revokes).
    pub refresh_retry_window_secs: u64,
    /// How often expired tokens, sessions and denylist rows are deleted.
    pub cleanup_interval_secs: u64,
    /// Most rows of each kind deleted per cleanup transaction.
    pub cleanup_batch_size: u64,
    /// How long a client registration read from the database is reused
    /// (0 = read it on every request).
    pub clients_cache_millis: u64,
    /// How often revocations made by other processes (replicas, the CLI) are
    /// read; positive access-token checks are cached in between and dropped
    /// at once on a revocation by this process (0 = no cache: every check
    /// reads the database).
    pub revocation_poll_millis: u64,
    pub audience: String,
    pub default_alg: Alg,
}

impl TokenConfig {
    /// The longest lifetime of anything a signing key signs.
    pub fn longest_signed_ttl(&self) -> Secs {
        self.access_ttl().max(self.id_ttl())
    }

    // Typed views of the validated lifetimes (each checked against
    // `Secs::MAX` at load, so these never saturate).
    pub fn access_ttl(&self) -> Secs {
        Secs::new(self.access_ttl_secs).unwrap_or(Secs::MAX)
    }

    pub fn id_ttl(&self) -> Secs {
        Secs::new(self.id_ttl_secs).unwrap_or(Secs::MAX)
    }

    pub fn refresh_idle_ttl(&self) -> Secs {
        Secs::new(self.refresh_idle_ttl_secs).unwrap_or(Secs::MAX)
    }

    pub fn refresh_absolute_ttl(&self) -> Secs {
        Secs::new(self.refresh_absolute_ttl_secs).unwrap_or(Secs::MAX)
    }

    /// Bounded to 300 s at load.
    pub fn refresh_retry_window(&self) -> Secs {
        Secs::new(self.refresh_retry_window_secs).unwrap_or(Secs::MAX)
    }
}

#[derive(Debug, Clone)]
pub enum PepperSource {
    /// Given in config/env or read from a file.
    Provided(Secret),
    /// Dev profile without a pepper: generated into (or read from) this file.
    GenerateInto(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub pepper: PepperSource,
    pub hashing: HashingConfig,
}

/// The bound on argon2 work: computations at once, callers waiting, and how
/// long one waits before it is told to retry.
#[derive(Debug, Clone)]
pub struct HashingConfig {
    pub concurrency: usize,
    pub queue: usize,
    pub wait: std::time::Duration,
}

/// One limit: `burst` requests at once, refilled at one per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: std::time::Duration,
    pub burst: u64,
}

/// The limits of one endpoint, per key kind; `None` is no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointLimits {
    pub per_ip: Option<Rate>,
    pub per_client: Option<Rate>,
    pub per_username: Option<Rate>,
}

#[derive(Debug, Clone)]
pub enum RateLimitBackend {
    /// Each process counts for itself.
    Memory,
    /// One count shared by every replica through Redis.
    Redis {
        url: Secret,
        prefix: String,
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Key the per-username limit by username and caller address (the
    /// default) rather than by username alone; see ARCHITECTURE.md.
    pub per_username_by_address: bool,
    pub backend: RateLimitBackend,
    pub token: EndpointLimits,
    pub revoke: EndpointLimits,
    pub introspect: EndpointLimits,
    pub account: EndpointLimits,
}

#[derive(Debug, Clone)]
pub struct LockoutConfig {
    /// Failures (counted ones) before an account is refused; 0 disables lockout.
    pub threshold: u32,
    pub base_delay_secs: u64,
    pub max_delay_secs: u64,
    /// How many failures one source address may contribute to an account's
    /// count per window; further failures from it are not counted.
    pub per_source: Rate,
}

impl Config {
    /// Load `path` (which must exist) and apply `LATCHKEY_*` overrides from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, env)
    }

    /// Parse TOML text, overlay the environment, validate.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        refuse_file_secrets(&table)?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let log_filter = env
            .iter()
            .find(|(k, _)| k == LOG_FILTER_ENV)
            .map(|(_, v)| v.clone());
        apply_env(&mut table, env)?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let mut config = raw.validate()?;
        config.log.filter = log_filter;
        Ok(config)
    }
}

/// Secrets that may come from the environment (or a file path) but never from
/// the config file itself, which is meant to be committed.
const ENV_ONLY: &[(&str, &str, &str)] = &[
    (
        "security",
        "pepper",
        "LATCHKEY_SECURITY__PEPPER or security.pepper_file",
    ),
    (
        "keys.aws",
        "secret_access_key",
        "LATCHKEY_KEYS__AWS__SECRET_ACCESS_KEY",
    ),
    ("metrics", "token", "LATCHKEY_METRICS__TOKEN"),
];

fn refuse_file_secrets(table: &toml::Table) -> Result<(), ConfigError> {
    for (section, key, instead) in ENV_ONLY {
        let mut node = Some(table);
        for part in section.split('.') {
            node = node
                .and_then(|t| t.get(part))
                .and_then(toml::Value::as_table);
        }
        if node.is_some_and(|t| t.contains_key(*key)) {
            return Err(invalid(format!(
                "{section}.{key} must not be written in the config file; use {instead}"
            )));
        }
    }
    Ok(())
}

/// Overlay environment variables onto the parsed TOML table.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // Sorted so that the outcome never depends on the environment's order.
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .filter(|(k, _)| k != LOG_FILTER_ENV)
        .filter(|(k, _)| !ENV_NOT_CONFIG.iter().any(|skip| k.starts_with(skip)))
        .collect();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(invalid(format!("malformed environment override {name}")));
        }
        let mut node = &mut *table;
        for section in &path[..path.len() - 1] {
            let entry = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry
                .as_table_mut()
                .ok_or_else(|| invalid(format!("{name}: `{section}` is not a section")))?;
        }
        if let Some(key) = path.last() {
            node.insert(key.clone(), env_value(&value));
        }
    }
    Ok(())
}

/// Environment values are text; numbers and booleans are recognised so that
/// `LATCHKEY_TOKENS__ACCESS_TTL_SECS=60` fills an integer key.
fn env_value(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value.to_string()),
    }
}

fn parse_alg(s: &str, what: &str) -> Result<Alg, ConfigError> {
    Alg::parse(s).ok_or_else(|| {
        invalid(format!(
            "{what}: unsupported algorithm {s:?} (use RS256 or ES256)"
        ))
    })
}

fn nonzero(v: u64, what: &str) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(format!("{what} must be greater than zero")))
    } else {
        Ok(v)
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let profile = match self.profile.as_str() {
            "dev" => Profile::Dev,
            "prod" => Profile::Prod,
            other => {
                return Err(invalid(format!(
                    "profile must be dev or prod, not {other:?}"
                )));
            }
        };

        let issuer = validate_issuer(&self.issuer, profile)?;

        let bind: SocketAddr = self.server.bind.parse().map_err(|_| {
            invalid(format!(
                "server.bind {:?} is not host:port",
                self.server.bind
            ))
        })?;
        let max_body_bytes = usize::try_from(nonzero(
            self.server.max_body_bytes,
            "server.max_body_bytes",
        )?)
        .map_err(|_| invalid("server.max_body_bytes is too large"))?;

        let trusted_proxies = self
            .server
            .trusted_proxies
            .iter()
            .map(|p| {
                IpNet::parse(p.trim()).ok_or_else(|| {
                    invalid(format!(
                        "server.trusted_proxies: {p:?} is not an address or CIDR network"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let duration = |v: u64, what: &str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(bounded(v, 1, 3600, what)?))
        };
        let header_read_timeout = duration(
            self.server.header_read_timeout_secs,
            "server.header_read_timeout_secs",
        )?;
        let body_read_timeout = duration(
            self.server.body_read_timeout_secs,
            "server.body_read_timeout_secs",
        )?;
        let request_timeout = duration(
            self.server.request_timeout_secs,
            "server.request_timeout_secs",
        )?;
        let shutdown_grace = duration(
            self.server.shutdown_grace_secs,
            "server.shutdown_grace_secs",
        )?;
        let max_connections = usize::try_from(bounded(
            self.server.max_connections,
            1,
            1_000_000,
            "server.max_connections",
        )?)
        .map_err(|_| invalid("server.max_connections is too large"))?;
        let tls = match self.server.tls {
            None => None,
            Some(t) => {
                if t.cert_chain_file.trim().is_empty() || t.key_file.trim().is_empty() {
                    return Err(invalid(
                        "server.tls needs both cert_chain_file and key_file",
                    ));
                }
                Some(TlsConfig {
                    cert_chain_file: PathBuf::from(t.cert_chain_file),
                    key_file: PathBuf::from(t.key_file),
                    poll_interval: duration(t.poll_secs, "server.tls.poll_secs")?,
                })
            }
        };
        let log = LogConfig {
            format: match (self.log.format.as_str(), profile) {
                ("json", _) | ("auto", Profile::Prod) => LogFormat::Json,
                ("text", _) | ("auto", Profile::Dev) => LogFormat::Text,
                (other, _) => {
                    return Err(invalid(format!(
                        "log.format must be auto, json or text, not {other:?}"
                    )));
                }
            },
            filter: None,
        };

        let url = parse_database_url(&self.database.url)?;
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections must be at least 1"));
        }

        let tokens = TokenConfig {
            access_ttl_secs: bounded(
                self.tokens.access_ttl_secs,
                1,
                86_400,
                "tokens.access_ttl_secs",
            )?,
            id_ttl_secs: bounded(self.tokens.id_ttl_secs, 1, 86_400, "tokens.id_ttl_secs")?,
            refresh_idle_ttl_secs: secs(
                nonzero(
                    self.tokens.refresh_idle_ttl_secs,
                    "tokens.refresh_idle_ttl_secs",
                )?,
                "tokens.refresh_idle_ttl_secs",
            )?
            .as_u64(),
            refresh_absolute_ttl_secs: secs(
                nonzero(
                    self.tokens.refresh_absolute_ttl_secs,
                    "tokens.refresh_absolute_ttl_secs",
                )?,
                "tokens.refresh_absolute_ttl_secs",
            )?
            .as_u64(),
            refresh_retry_window_secs: bounded(
                self.tokens.refresh_retry_window_secs,
                0,
                300,
                "tokens.refresh_retry_window_secs",
            )?,
            cleanup_interval_secs: bounded(
                self.tokens.cleanup_interval_secs,
                1,
                86_400,
                "tokens.cleanup_interval_secs",
            )?,
            cleanup_batch_size: bounded(
                self.tokens.cleanup_batch_size,
                1,
                100_000,
                "tokens.cleanup_batch_size",
            )?,
            clients_cache_millis: bounded(
                self.tokens.clients_cache_millis,
                0,
                60_000,
                "tokens.clients_cache_millis",
            )?,
            revocation_poll_millis: bounded(
                self.tokens.revocation_poll_millis,
                0,
                10_000,
                "tokens.revocation_poll_millis",
            )?,
            audience: self.tokens.audience.unwrap_or_else(|| issuer.clone()),
            default_alg: parse_alg(&self.tokens.default_alg, "tokens.default_alg")?,
        };
        if tokens.refresh_idle_ttl_secs > tokens.refresh_absolute_ttl_secs {
            return Err(invalid(
                "tokens.refresh_idle_ttl_secs must not exceed tokens.refresh_absolute_ttl_secs",
            ));
        }
        if tokens.audience.is_empty() {
            return Err(invalid("tokens.audience must not be empty"));
        }

        let clock = ClockConfig {
            insecure_offset_secs: self.clock.insecure_offset_secs,
            insecure_skip_database_check: self.clock.insecure_skip_database_check,
        };
        if profile == Profile::Prod
            && (clock.insecure_offset_secs != 0 || clock.insecure_skip_database_check)
        {
            return Err(invalid(
                "clock.insecure_offset_secs and clock.insecure_skip_database_check are for drills and tests; profile prod refuses them",
            ));
        }
        if clock.insecure_offset_secs.unsigned_abs() > 86_400 {
            return Err(invalid("clock.insecure_offset_secs must be within one day"));
        }

        let keys = self
            .keys
            .validate(&tokens, clock.insecure_skip_database_check)?;

        let pepper = match (self.security.pepper, self.security.pepper_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set security.pepper or security.pepper_file, not both",
                ));
            }
            (Some(p), None) => PepperSource::Provided(Secret::new(p.into_bytes())),
            (None, Some(file)) => {
                let bytes = std::fs::read(&file).map_err(|e| {
                    invalid(format!("cannot read security.pepper_file {file}: {e}"))
                })?;
                let trimmed = bytes.trim_ascii_end().to_vec();
                PepperSource::Provided(Secret::new(trimmed))
            }
            (None, None) => match profile {
                Profile::Dev => PepperSource::GenerateInto(keys.dir.join("pepper")),
                Profile::Prod => {
                    return Err(invalid(
                        "profile prod requires a pepper: set LATCHKEY_SECURITY__PEPPER or security.pepper_file",
                    ));
                }
            },
        };
        if let PepperSource::Provided(p) = &pepper
            && p.expose().len() < 32
        {
            return Err(invalid("the pepper must be at least 32 bytes"));
        }

        Ok(Config {
            issuer,
            profile,
            server: ServerConfig {
                bind,
                max_body_bytes,
                trusted_proxies,
                header_read_timeout,
                body_read_timeout,
                request_timeout,
                max_connections,
                shutdown_grace,
                tls,
            },
            database: DatabaseConfig {
                url,
                max_connections: self.database.max_connections,
            },
            keys,
            tokens,
            security: SecurityConfig {
                pepper,
                hashing: HashingConfig {
                    concurrency: match self.security.hash_concurrency {
                        0 => crate::secret::default_hash_concurrency(),
                        n => bounded_usize(n, 1, 1024, "security.hash_concurrency")?,
                    },
                    queue: bounded_usize(
                        self.security.hash_queue,
                        0,
                        1_000_000,
                        "security.hash_queue",
                    )?,
                    wait: std::time::Duration::from_millis(bounded(
                        self.security.hash_queue_wait_ms,
                        1,
                        600_000,
                        "security.hash_queue_wait_ms",
                    )?),
                },
            },
            rate_limit: self.rate_limit.validate()?,
            lockout: self.lockout.validate()?,
            log,
            audit: self.audit.validate()?,
            metrics: self.metrics.validate()?,
            clock,
            authorize: AuthorizeConfig {
                // RFC 6749 §4.1.2 recommends at most ten minutes; a code is
                // redeemed by a machine within seconds, so latchkey caps it at 60.
                code_ttl_secs: bounded(
                    self.authorize.code_ttl_secs,
                    1,
                    60,
                    "authorize.code_ttl_secs",
                )?,
                session_ttl_secs: bounded(
                    self.authorize.session_ttl_secs,
                    60,
                    30 * 86_400,
                    "authorize.session_ttl_secs",
                )?,
            },
        })
    }
}

impl RawAudit {
    fn validate(self) -> Result<AuditConfig, ConfigError> {
        Ok(AuditConfig {
            retention_days: match self.retention_days {
                0 => None,
                d => Some(bounded(d, 1, 36_500, "audit.retention_days")?),
            },
            cleanup_interval_secs: bounded(
                self.cleanup_interval_secs,
                1,
                86_400,
                "audit.cleanup_interval_secs",
            )?,
            cleanup_batch: bounded(self.cleanup_batch, 1, 100_000, "audit.cleanup_batch")?,
        })
    }
}

impl RawMetrics {
    fn validate(self) -> Result<MetricsConfig, ConfigError> {
        let bind = self
            .bind
            .filter(|b| !b.is_empty())
            .map(|b| {
                b.parse::<SocketAddr>()
                    .map_err(|_| invalid(format!("metrics.bind {b:?} is not host:port")))
            })
            .transpose()?;
        let token = match self.token {
            Some(t) if t.len() < 16 => {
                return Err(invalid("metrics.token must be at least 16 characters"));
            }
            Some(t) => Some(Secret::new(t.into_bytes())),
            None => None,
        };
        Ok(MetricsConfig {
            enabled: self.enabled,
            bind,
            token,
        })
    }
}

fn bounded_usize(v: usize, min: usize, max: usize, what: &str) -> Result<usize, ConfigError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(format!(
            "{what} must be between {min} and {max}, got {v}"
        )))
    }
}

impl RawRate {
    fn validate(self, what: &str) -> Result<Option<Rate>, ConfigError> {
        if self.rate == 0 {
            return Ok(None);
        }
        let per = bounded(self.per_secs, 1, 86_400 * 7, &format!("{what}.per_secs"))?;
        let rate = bounded(self.rate, 1, 1_000_000, &format!("{what}.rate"))?;
        let burst = bounded(
            self.burst.unwrap_or(rate),
            1,
            10_000_000,
            &format!("{what}.burst"),
        )?;
        let interval = std::time::Duration::from_micros(per.saturating_mul(1_000_000) / rate);
        if interval.is_zero() {
            return Err(invalid(format!("{what}: rate is too high")));
        }
        Ok(Some(Rate { interval, burst }))
    }
}

impl RawEndpointLimits {
    /// Unset keys take `defaults`; a key set with `rate = 0` is off.
    fn validate(
        self,
        name: &str,
        defaults: RawEndpointLimits,
    ) -> Result<EndpointLimits, ConfigError> {
        let one = |v: Option<RawRate>, d: Option<RawRate>, key: &str| {
            v.or(d)
                .map(|r| r.validate(&format!("rate_limit.{name}.{key}")))
                .transpose()
                .map(Option::flatten)
        };
        Ok(EndpointLimits {
            per_ip: one(self.per_ip, defaults.per_ip, "per_ip")?,
            per_client: one(self.per_client, defaults.per_client, "per_client")?,
            per_username: one(self.per_username, defaults.per_username, "per_username")?,
        })
    }
}

impl RawRateLimit {
    fn validate(self) -> Result<RateLimitConfig, ConfigError> {
        let backend = match self.backend.as_str() {
            "memory" => RateLimitBackend::Memory,
            "redis" => {
                let url = self.redis_url.ok_or_else(|| {
                    invalid("rate_limit.redis_url is required with rate_limit.backend = \"redis\"")
                })?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(invalid("rate_limit.redis_url must start with redis://"));
                }
                if self.redis_prefix.is_empty() || self.redis_prefix.len() > 128 {
                    return Err(invalid("rate_limit.redis_prefix must be 1-128 characters"));
                }
                RateLimitBackend::Redis {
                    url: Secret::new(url.into_bytes()),
                    prefix: self.redis_prefix,
                    timeout: std::time::Duration::from_millis(bounded(
                        self.redis_timeout_ms,
                        1,
                        10_000,
                        "rate_limit.redis_timeout_ms",
                    )?),
                }
            }
            other => {
                return Err(invalid(format!(
                    "rate_limit.backend must be memory or redis, not {other:?}"
                )));
            }
        };
        // Generous per address and per client (the test suite and ordinary
        // traffic never meet them); tight per username, which is what stops
        // online password guessing whatever the number of addresses.
        let service = RawEndpointLimits {
            per_ip: rate(200, 1, 400),
            per_client: rate(1000, 1, 2000),
            per_username: None,
        };
        let token = RawEndpointLimits {
            per_username: rate(10, 60, 10),
            ..service
        };
        let account = RawEndpointLimits {
            per_ip: rate(20, 1, 40),
            per_client: rate(200, 1, 400),
            per_username: rate(10, 60, 10),
        };
        Ok(RateLimitConfig {
            enabled: self.enabled,
            per_username_by_address: self.per_username_by_address,
            backend,
            token: self.token.validate("token", token)?,
            revoke: self.revoke.validate("revoke", service)?,
            introspect: self.introspect.validate("introspect", service)?,
            account: self.account.validate("account", account)?,
        })
    }
}

impl RawLockout {
    fn validate(self) -> Result<LockoutConfig, ConfigError> {
        let base = bounded(
            self.base_delay_secs,
            1,
            86_400 * 30,
            "lockout.base_delay_secs",
        )?;
        let max = bounded(
            self.max_delay_secs,
            base,
            86_400 * 365,
            "lockout.max_delay_secs",
        )?;
        let per_source = RawRate {
            rate: bounded(
                self.per_source_failures,
                1,
                1_000_000,
                "lockout.per_source_failures",
            )?,
            per_secs: bounded(
                self.per_source_window_secs,
                1,
                86_400 * 30,
                "lockout.per_source_window_secs",
            )?,
            burst: None,
        }
        .validate("lockout")?
        .ok_or_else(|| invalid("lockout.per_source_failures must be at least 1"))?;
        Ok(LockoutConfig {
            threshold: self.threshold,
            base_delay_secs: base,
            max_delay_secs: max,
            per_source,
        })
    }
}

impl RawKeys {
    fn validate(
        self,
        tokens: &TokenConfig,
        skip_clock_check: bool,
    ) -> Result<KeysConfig, ConfigError> {
        // The verifier crate honours max-ages down to one second, so any value
        // from 1 s is safe; a day is far past any sensible cache.
        let jwks_max_age = secs(
            bounded(self.jwks_max_age_secs, 1, 86_400, "keys.jwks_max_age_secs")?,
            "keys.jwks_max_age_secs",
        )?;
        let reload_interval = secs(
            bounded(
                self.reload_interval_secs,
                1,
                300,
                "keys.reload_interval_secs",
            )?,
            "keys.reload_interval_secs",
        )?;
        let max_clock_skew = secs(
            bounded(self.max_clock_skew_secs, 0, 300, "keys.max_clock_skew_secs")?,
            "keys.max_clock_skew_secs",
        )?;
        let verifier_leeway = secs(
            bounded(
                self.verifier_leeway_secs,
                0,
                3600,
                "keys.verifier_leeway_secs",
            )?,
            "keys.verifier_leeway_secs",
        )?;
        // The margin absorbs a replica's clock running up to the allowed skew
        // early and a verifier's leeway on top of it, so its floor is their sum
        // (at least 1 s). By default it scales with the max-age, and is at
        // least 2 s for the KMS and commit latency between `now` and the commit.
        let margin_floor = (max_clock_skew.as_u64() + verifier_leeway.as_u64()).max(1);
        let safety_margin = match self.safety_margin_secs {
            Some(m) if m < margin_floor => {
                return Err(invalid(format!(
                    "keys.safety_margin_secs = {m} is below max_clock_skew_secs + verifier_leeway_secs (at least 1) = {margin_floor}: a replica with a skewed clock could sign with a key before verifiers have it"
                )));
            }
            Some(m) => m,
            None => (jwks_max_age.as_u64() / 5).max(margin_floor).max(2),
        };
        let safety_margin = secs(safety_margin, "keys.safety_margin_secs")?;
        let kms = match self.kms.as_str() {
            "local" => KmsConfig::Local,
            "aws" => KmsConfig::Aws(self.aws.validate()?),
            other => {
                return Err(invalid(format!(
                    "keys.kms must be local or aws, not {other:?}"
                )));
            }
        };
        let max_published_keys = bounded(
            self.max_published_keys,
            4,
            VERIFIER_MAX_KEYS,
            "keys.max_published_keys",
        )?;
        // A verifier may hold a JWKS for max-age, and a replica may run on a ring
        // up to one reload interval old: publication must outlast both.
        let min_lead = jwks_max_age.as_u64() + reload_interval.as_u64() + safety_margin.as_u64();
        let longest_signed_ttl = tokens.longest_signed_ttl();
        let min_retention = longest_signed_ttl.as_u64() + min_lead;
        let policy = |raw: RawKeyPolicy, name: &str| -> Result<KeyPolicy, ConfigError> {
            let schedule: cron::Schedule = raw.schedule.parse().map_err(|e| {
                invalid(format!(
                    "keys.{name}.schedule {:?} is not a cron expression (six fields, sec min hour dom month dow, or @daily/@weekly/@monthly): {e}",
                    raw.schedule
                ))
            })?;
            // Unset, the lead and the retention are the shortest safe values: a
            // key is published exactly as long as a verifier honouring max-age
            // needs, and kept exactly as long as its tokens can live.
            let lead_secs = raw.lead_secs.unwrap_or(min_lead);
            let retention_secs = raw.retention_secs.unwrap_or(min_retention);
            if lead_secs < min_lead {
                return Err(invalid(format!(
                    "keys.{name}.lead_secs = {} is shorter than jwks_max_age_secs + reload_interval_secs + safety_margin_secs = {min_lead}: verifiers could see tokens signed by a key they have not fetched",
                    lead_secs
                )));
            }
            if retention_secs < min_retention {
                return Err(invalid(format!(
                    "keys.{name}.retention_secs = {} is shorter than the longest token lifetime + jwks_max_age_secs + reload_interval_secs + safety_margin_secs = {min_retention}: tokens would outlive their key",
                    retention_secs
                )));
            }
            if !matches!(raw.rsa_bits, 2048 | 3072 | 4096) {
                return Err(invalid(format!(
                    "keys.{name}.rsa_bits must be 2048, 3072 or 4096"
                )));
            }
            Ok(KeyPolicy {
                schedule_expr: raw.schedule,
                schedule,
                lead: secs(lead_secs, &format!("keys.{name}.lead_secs"))?,
                retention: secs(retention_secs, &format!("keys.{name}.retention_secs"))?,
                rsa_bits: raw.rsa_bits,
            })
        };
        let rs256 = policy(self.rs256, "rs256")?;
        let es256 = policy(self.es256, "es256")?;
        let worst = max_published(&rs256, reload_interval) + max_published(&es256, reload_interval);
        if worst > max_published_keys {
            return Err(invalid(format!(
                "the rotation policy can publish up to {worst} keys at once (per algorithm: active + pending + one retiring key per rotation within retention), more than keys.max_published_keys = {max_published_keys}: rotate less often or shorten retention_secs"
            )));
        }
        Ok(KeysConfig {
            dir: PathBuf::from(self.dir),
            kms,
            jwks_max_age,
            reload_interval,
            safety_margin,
            max_clock_skew,
            verifier_leeway,
            max_published_keys: usize::try_from(max_published_keys)
                .map_err(|_| invalid("keys.max_published_keys is too large"))?,
            longest_signed_ttl,
            skip_clock_check,
            rs256,
            es256,
        })
    }
}

/// The most keys one algorithm's policy can have published at once.
///
/// Activations are at least `max(lead, shortest gap between fire times)` apart
/// (a pending key is made only after the previous one activated, and signs a
/// full lead later), and each replaced key stays published for the retention
/// plus up to one scheduler pass; add the active and the pending key.
fn max_published(policy: &KeyPolicy, pass: Secs) -> u64 {
    let period = shortest_gap(&policy.schedule)
        .max(policy.lead.as_u64())
        .max(1);
    let retained = (policy.retention.as_u64() + pass.as_u64()).div_ceil(period);
    2 + retained
}

/// The shortest gap between consecutive fire times over the schedule's next
/// two years (or 10,000 fires) from a fixed reference day, so the check does
/// not depend on the day it runs; cron schedules repeat within that span.
fn shortest_gap(schedule: &cron::Schedule) -> u64 {
    // 2026-01-01T00:00:00Z.
    let Some(start) = chrono::DateTime::from_timestamp(1_767_225_600, 0) else {
        return 1;
    };
    let horizon = start.timestamp() + 2 * 366 * 86_400;
    let mut best = u64::MAX;
    let mut prev: Option<i64> = None;
    for fire in schedule.after(&start).take(10_000) {
        let t = fire.timestamp();
        if t > horizon {
            break;
        }
        if let Some(p) = prev {
            best = best.min((t - p).unsigned_abs());
        }
        prev = Some(t);
    }
    if best == u64::MAX {
        Secs::MAX.as_u64()
    } else {
        best
    }
}

fn secs(v: u64, what: &str) -> Result<Secs, ConfigError> {
    Secs::new(v).ok_or_else(|| {
        invalid(format!(
            "{what} = {v} is longer than {} seconds",
            Secs::MAX.get()
        ))
    })
}

impl RawAws {
    fn validate(self) -> Result<AwsKmsConfig, ConfigError> {
        let mode = match self.mode.as_deref().unwrap_or("envelope") {
            "envelope" => AwsMode::Envelope,
            "native" => AwsMode::Native,
            other => {
                return Err(invalid(format!(
                    "keys.aws.mode must be envelope or native, not {other:?}"
                )));
            }
        };
        let region = self
            .region
            .ok_or_else(|| invalid("keys.aws.region is required with keys.kms = \"aws\""))?;
        if mode == AwsMode::Envelope && self.key_id.is_none() {
            return Err(invalid(
                "keys.aws.key_id (the wrapping key) is required in envelope mode",
            ));
        }
        let credentials = match (self.access_key_id, self.secret_access_key) {
            (Some(id), Some(secret)) => Some((id, Secret::new(secret.into_bytes()))),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "set both keys.aws.access_key_id and keys.aws.secret_access_key, or neither",
                ));
            }
        };
        Ok(AwsKmsConfig {
            mode,
            region,
            endpoint_url: self.endpoint_url,
            key_id: self.key_id,
            credentials,
        })
    }
}

fn bounded(v: u64, min: u64, max: u64, what: &str) -> Result<u64, ConfigError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(format!(
            "{what} must be between {min} and {max}, got {v}"
        )))
    }
}

fn validate_issuer(issuer: &str, profile: Profile) -> Result<String, ConfigError> {
    let rest = if let Some(r) = issuer.strip_prefix("https://") {
        r
    } else if let Some(r) = issuer.strip_prefix("http://") {
        if profile == Profile::Prod {
            return Err(invalid("profile prod requires an https issuer"));
        }
        r
    } else {
        return Err(invalid(format!(
            "issuer {issuer:?} must start with https:// (or http:// in dev)"
        )));
    };
    // OIDC Discovery: the issuer has no query or fragment, and identifiers are
    // compared as exact strings, so it is echoed exactly as configured.
    if rest.is_empty() || rest.contains(['?', '#', ' ']) || issuer.len() > 512 {
        return Err(invalid(format!(
            "issuer {issuer:?} must be a URL with a host and no query or fragment"
        )));
    }
    Ok(issuer.to_string())
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, ConfigError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(invalid("database.url sqlite:// needs a file path"));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseUrl::Postgres(url.to_string()))
    } else {
        Err(invalid(
            "database.url must start with sqlite:// or postgres://",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    const MINIMAL: &str = "issuer = \"http://127.0.0.1:8080\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_profile() {
        let c = Config::from_toml_str(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:8080");
        assert!(
            matches!(c.database.url, DatabaseUrl::Sqlite(ref p) if p == Path::new("data/latchkey.db"))
        );
        assert_eq!(c.tokens.access_ttl_secs, 600);
        assert_eq!(c.tokens.audience, "http://127.0.0.1:8080");
        assert!(
            matches!(c.security.pepper, PepperSource::GenerateInto(ref p) if p == Path::new("keys/pepper"))
        );
    }

    #[test]
    fn server_limits_tls_and_log_format() {
        let c = Config::from_toml_str(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.body_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.request_timeout, Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(20));
        assert!(c.server.tls.is_none());
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.filter, None);

        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_SERVER__HEADER_READ_TIMEOUT_SECS", "3"),
                ("LATCHKEY_SERVER__TLS__CERT_CHAIN_FILE", "/tls/chain.pem"),
                ("LATCHKEY_SERVER__TLS__KEY_FILE", "/tls/key.pem"),
                ("LATCHKEY_LOG__FORMAT", "json"),
                ("LATCHKEY_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(3));
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert_chain_file, Path::new("/tls/chain.pem"));
        assert_eq!(tls.poll_interval, Duration::from_secs(5));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.filter.as_deref(), Some("debug"));

        for (key, value) in [
            ("LATCHKEY_SERVER__BODY_READ_TIMEOUT_SECS", "0"),
            ("LATCHKEY_SERVER__MAX_CONNECTIONS", "0"),
            ("LATCHKEY_LOG__FORMAT", "xml"),
            ("LATCHKEY_SERVER__TLS__KEY_FILE", "/tls/key.pem"),
        ] {
            assert!(
                Config::from_toml_str(MINIMAL, env(&[(key, value)])).is_err(),
                "{key}={value} was accepted"
            );
        }
    }

    #[test]
    fn authorize_section_defaults_env_and_bounds() {
        let c = Config::from_toml_str(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.authorize.code_ttl_secs, 60);
        assert_eq!(c.authorize.session_ttl_secs, 43_200);
        let c = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_AUTHORIZE__CODE_TTL_SECS", "30")]))
            .unwrap();
        assert_eq!(c.authorize.code_ttl_secs, 30);
        for (k, v) in [
            ("LATCHKEY_AUTHORIZE__CODE_TTL_SECS", "61"),
            ("LATCHKEY_AUTHORIZE__CODE_TTL_SECS", "0"),
            ("LATCHKEY_AUTHORIZE__SESSION_TTL_SECS", "10"),
        ] {
            let err = Config::from_toml_str(MINIMAL, env(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains("authorize."), "{k}={v}: {err}");
        }
    }

    #[test]
    fn revocation_poll_defaults_and_bounds() {
        let c = Config::from_toml_str(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.tokens.revocation_poll_millis, 100);
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[("LATCHKEY_TOKENS__REVOCATION_POLL_MILLIS", "0")]),
        )
        .unwrap();
        assert_eq!(c.tokens.revocation_poll_millis, 0);
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[("LATCHKEY_TOKENS__REVOCATION_POLL_MILLIS", "10001")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("tokens.revocation_poll_millis must be between 0 and 10000"),
            "{err}"
        );
    }

    #[test]
    fn prod_logs_json_unless_told_otherwise() {
        let prod = "issuer = \"https://id.example.com\"\nprofile = \"prod\"\n";
        let pepper = (
            "LATCHKEY_SECURITY__PEPPER",
            "0123456789abcdef0123456789abcdef",
        );
        let c = Config::from_toml_str(prod, env(&[pepper])).unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let c =
            Config::from_toml_str(prod, env(&[pepper, ("LATCHKEY_LOG__FORMAT", "text")])).unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn env_overrides_nested_and_top_level_keys() {
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_ISSUER", "https://id.example.com"),
                ("LATCHKEY_SERVER__BIND", "0.0.0.0:9000"),
                ("LATCHKEY_TOKENS__ACCESS_TTL_SECS", "120"),
                ("LATCHKEY_KEYS__ES256__RSA_BITS", "3072"),
                ("LATCHKEY_TEST_DATABASE_URL", "postgres://ignored"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.issuer, "https://id.example.com");
        assert_eq!(c.server.bind.port(), 9000);
        assert_eq!(c.tokens.access_ttl_secs, 120);
        assert_eq!(c.keys.es256.rsa_bits, 3072);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_SERVER__BINDD", "x")])).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
        let err = Config::from_toml_str(
            "issuer = \"http://a\"\n[tokens]\naccess_ttl = 5\n",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("access_ttl"), "{err}");
    }

    #[test]
    fn prod_requires_pepper_and_https() {
        let err = Config::from_toml_str(
            "issuer = \"https://id.example\"\nprofile = \"prod\"\n",
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("pepper"), "{err}");
        let err = Config::from_toml_str(
            "issuer = \"http://id.example\"\nprofile = \"prod\"\n",
            env(&[(
                "LATCHKEY_SECURITY__PEPPER",
                "0123456789abcdef0123456789abcdef",
            )]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let ok = Config::from_toml_str(
            "issuer = \"https://id.example\"\nprofile = \"prod\"\n",
            env(&[(
                "LATCHKEY_SECURITY__PEPPER",
                "0123456789abcdef0123456789abcdef",
            )]),
        )
        .unwrap();
        assert!(matches!(ok.security.pepper, PepperSource::Provided(_)));
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn secrets_in_the_file_are_refused_but_allowed_from_env() {
        let file =
            "issuer = \"http://a\"\n[security]\npepper = \"0123456789abcdef0123456789abcdef\"\n";
        let err = Config::from_toml_str(file, env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("LATCHKEY_SECURITY__PEPPER"),
            "{err}"
        );
        let file = "issuer = \"http://a\"\n[keys.aws]\nsecret_access_key = \"x\"\n";
        assert!(Config::from_toml_str(file, env(&[])).is_err());
        let ok = Config::from_toml_str(
            MINIMAL,
            env(&[(
                "LATCHKEY_SECURITY__PEPPER",
                "0123456789abcdef0123456789abcdef",
            )]),
        )
        .unwrap();
        assert!(matches!(ok.security.pepper, PepperSource::Provided(_)));
    }

    #[test]
    fn short_pepper_is_refused() {
        let err = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_SECURITY__PEPPER", "short")]))
            .unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }

    #[test]
    fn lead_and_retention_default_to_the_shortest_safe_values() {
        let c = Config::from_toml_str(MINIMAL, env(&[])).unwrap();
        // 300 s max-age + 2 s reload + 60 s margin (a fifth of the max-age).
        assert_eq!(c.keys.safety_margin.get(), 60);
        assert_eq!(c.keys.rs256.lead.get(), 362);
        assert_eq!(c.keys.es256.retention.get(), 600 + 362);
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "1"),
                ("LATCHKEY_KEYS__RELOAD_INTERVAL_SECS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.keys.rs256.lead.get(), 1 + 1 + 2);
    }

    #[test]
    fn lead_shorter_than_max_age_is_refused() {
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "3600"),
                ("LATCHKEY_KEYS__RS256__LEAD_SECS", "3000"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("keys.rs256.lead_secs"), "{err}");
    }

    #[test]
    fn retention_shorter_than_token_lifetime_is_refused() {
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_TOKENS__ACCESS_TTL_SECS", "86400"),
                ("LATCHKEY_KEYS__ES256__RETENTION_SECS", "86400"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("keys.es256.retention_secs"),
            "{err}"
        );
    }

    #[test]
    fn five_field_cron_is_refused_with_a_hint() {
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[("LATCHKEY_KEYS__RS256__SCHEDULE", "0 0 1 * *")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("six fields"), "{err}");
    }

    #[test]
    fn abuse_defaults_and_overrides() {
        let shipped = include_str!("../config/latchkey.toml");
        let c = Config::from_toml_str(shipped, env(&[])).unwrap();
        assert!(c.rate_limit.enabled);
        assert!(matches!(c.rate_limit.backend, RateLimitBackend::Memory));
        let per_user = c.rate_limit.token.per_username.unwrap();
        assert_eq!(per_user.burst, 10);
        assert_eq!(per_user.interval, std::time::Duration::from_secs(6));
        assert_eq!(c.lockout.threshold, 5);
        assert_eq!(c.security.hashing.queue, 64);
        assert_eq!(
            c.security.hashing.concurrency,
            crate::secret::default_hash_concurrency()
        );
        assert!(c.security.hashing.concurrency >= 1);
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_RATE_LIMIT__BACKEND", "redis"),
                ("LATCHKEY_RATE_LIMIT__REDIS_URL", "redis://127.0.0.1:6379"),
                ("LATCHKEY_RATE_LIMIT__TOKEN__PER_IP__RATE", "0"),
                ("LATCHKEY_RATE_LIMIT__REVOKE__PER_CLIENT__RATE", "5"),
                ("LATCHKEY_RATE_LIMIT__REVOKE__PER_CLIENT__PER_SECS", "10"),
            ]),
        )
        .unwrap();
        assert!(matches!(
            c.rate_limit.backend,
            RateLimitBackend::Redis { .. }
        ));
        assert!(
            !format!("{c:?}").contains("6379"),
            "the Redis URL may hold a password"
        );
        assert!(c.rate_limit.token.per_ip.is_none());
        let r = c.rate_limit.revoke.per_client.unwrap();
        assert_eq!(
            (r.interval, r.burst),
            (std::time::Duration::from_secs(2), 5)
        );
        let err = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_RATE_LIMIT__BACKEND", "redis")]))
            .unwrap_err();
        assert!(err.to_string().contains("redis_url"), "{err}");
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[("LATCHKEY_SECURITY__HASH_QUEUE_WAIT_MS", "0")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hash_queue_wait_ms"), "{err}");
    }

    #[test]
    fn bad_database_url_is_refused() {
        let err = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_DATABASE__URL", "mysql://x")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("sqlite:// or postgres://"),
            "{err}"
        );
    }

    #[test]
    fn the_committed_config_file_is_valid() {
        let text = include_str!("../config/latchkey.toml");
        let c = Config::from_toml_str(text, env(&[])).unwrap();
        assert_eq!(c.keys.max_published_keys, 64);
        assert_eq!(c.keys.max_clock_skew.get(), 2);
    }

    #[test]
    fn the_margin_covers_skew_and_leeway() {
        let err = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_KEYS__MAX_CLOCK_SKEW_SECS", "3"),
                ("LATCHKEY_KEYS__VERIFIER_LEEWAY_SECS", "2"),
                ("LATCHKEY_KEYS__SAFETY_MARGIN_SECS", "4"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("= 5"), "{err}");
        // Unset, the margin is at least that sum.
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "5"),
                ("LATCHKEY_KEYS__MAX_CLOCK_SKEW_SECS", "3"),
                ("LATCHKEY_KEYS__VERIFIER_LEEWAY_SECS", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.keys.safety_margin.get(), 5);
        assert_eq!(c.keys.rs256.lead.get(), 5 + 2 + 5);
        // The unready threshold is the lead not spent on a verifier's cache.
        assert_eq!(c.keys.max_ring_age().get(), 2 + 5);
    }

    #[test]
    fn a_policy_that_could_publish_too_many_keys_is_refused() {
        // Every 10 s, kept for 700 s: 2 + ceil(702 / 10) = 73 keys per algorithm.
        let many = env(&[
            ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "2"),
            ("LATCHKEY_TOKENS__ACCESS_TTL_SECS", "60"),
            ("LATCHKEY_TOKENS__ID_TTL_SECS", "60"),
            ("LATCHKEY_KEYS__RS256__SCHEDULE", "*/10 * * * * *"),
            ("LATCHKEY_KEYS__RS256__RETENTION_SECS", "700"),
        ]);
        let err = Config::from_toml_str(MINIMAL, many).unwrap_err();
        assert!(err.to_string().contains("max_published_keys"), "{err}");
        // Kept for 70 s: 2 + ceil(72 / 10) = 10, plus ES256's 3: fine at 13...
        let few = env(&[
            ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "2"),
            ("LATCHKEY_TOKENS__ACCESS_TTL_SECS", "60"),
            ("LATCHKEY_TOKENS__ID_TTL_SECS", "60"),
            ("LATCHKEY_KEYS__RS256__SCHEDULE", "*/10 * * * * *"),
            ("LATCHKEY_KEYS__RS256__RETENTION_SECS", "70"),
            ("LATCHKEY_KEYS__MAX_PUBLISHED_KEYS", "13"),
        ]);
        Config::from_toml_str(MINIMAL, few.clone()).unwrap();
        // ...and refused at 12.
        let mut tight = few;
        tight.pop();
        tight.push(("LATCHKEY_KEYS__MAX_PUBLISHED_KEYS".into(), "12".into()));
        assert!(Config::from_toml_str(MINIMAL, tight).is_err());
        // Above the verifier crate's limit is refused outright.
        let err =
            Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_KEYS__MAX_PUBLISHED_KEYS", "65")]))
                .unwrap_err();
        assert!(err.to_string().contains("between 4 and 64"), "{err}");
    }

    #[test]
    fn drill_clock_settings_are_refused_in_prod() {
        let err = Config::from_toml_str(
            "issuer = \"https://id.example\"\nprofile = \"prod\"\n[clock]\ninsecure_offset_secs = 3\n",
            env(&[(
                "LATCHKEY_SECURITY__PEPPER",
                "0123456789abcdef0123456789abcdef",
            )]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("prod"), "{err}");
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[("LATCHKEY_CLOCK__INSECURE_OFFSET_SECS", "-4")]),
        )
        .unwrap();
        assert_eq!(c.clock.insecure_offset_secs, -4);
    }

    #[test]
    fn max_age_below_a_second_is_refused() {
        let err = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("jwks_max_age_secs"), "{err}");
    }
}
