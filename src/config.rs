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

use crate::keyring::Alg;

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
    log: RawLog,
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
            audience: None,
            default_alg: "RS256".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    pepper: Option<String>,
    pepper_file: Option<String>,
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
    pub log: LogConfig,
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
    pub jwks_max_age_secs: u64,
    pub reload_interval_secs: u64,
    pub safety_margin_secs: u64,
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
}

/// How one algorithm's keys rotate.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// The cron expression as written (six or seven fields, or `@monthly` etc.).
    pub schedule_expr: String,
    pub schedule: cron::Schedule,
    /// How long a new key is published before it may sign.
    pub lead_secs: u64,
    /// How long a replaced key stays published after it stops signing.
    pub retention_secs: u64,
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
    pub audience: String,
    pub default_alg: Alg,
}

impl TokenConfig {
    /// The longest lifetime of anything a signing key signs.
    pub fn longest_signed_ttl(&self) -> u64 {
        self.access_ttl_secs.max(self.id_ttl_secs)
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

        let secs = |v: u64, what: &str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(bounded(v, 1, 3600, what)?))
        };
        let header_read_timeout = secs(
            self.server.header_read_timeout_secs,
            "server.header_read_timeout_secs",
        )?;
        let body_read_timeout = secs(
            self.server.body_read_timeout_secs,
            "server.body_read_timeout_secs",
        )?;
        let request_timeout = secs(
            self.server.request_timeout_secs,
            "server.request_timeout_secs",
        )?;
        let shutdown_grace = secs(
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
                    poll_interval: secs(t.poll_secs, "server.tls.poll_secs")?,
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
            refresh_idle_ttl_secs: nonzero(
                self.tokens.refresh_idle_ttl_secs,
                "tokens.refresh_idle_ttl_secs",
            )?,
            refresh_absolute_ttl_secs: nonzero(
                self.tokens.refresh_absolute_ttl_secs,
                "tokens.refresh_absolute_ttl_secs",
            )?,
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

        let keys = self.keys.validate(&tokens)?;

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
            security: SecurityConfig { pepper },
            log,
        })
    }
}

impl RawKeys {
    fn validate(self, tokens: &TokenConfig) -> Result<KeysConfig, ConfigError> {
        let jwks_max_age_secs = self.jwks_max_age_secs;
        let reload_interval_secs = bounded(
            self.reload_interval_secs,
            1,
            300,
            "keys.reload_interval_secs",
        )?;
        // By default the margin scales with the max-age (a fifth of it, at least 2 s).
        let safety_margin_secs = match self.safety_margin_secs {
            Some(m) => nonzero(m, "keys.safety_margin_secs")?,
            None => (jwks_max_age_secs / 5).max(2),
        };
        let kms = match self.kms.as_str() {
            "local" => KmsConfig::Local,
            "aws" => KmsConfig::Aws(self.aws.validate()?),
            other => {
                return Err(invalid(format!(
                    "keys.kms must be local or aws, not {other:?}"
                )));
            }
        };
        // A verifier may hold a JWKS for max-age, and a replica may run on a ring
        // up to one reload interval old: publication must outlast both.
        let min_lead = jwks_max_age_secs + reload_interval_secs + safety_margin_secs;
        let min_retention = tokens.longest_signed_ttl() + min_lead;
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
                lead_secs,
                retention_secs,
                rsa_bits: raw.rsa_bits,
            })
        };
        Ok(KeysConfig {
            dir: PathBuf::from(self.dir),
            kms,
            jwks_max_age_secs,
            reload_interval_secs,
            safety_margin_secs,
            rs256: policy(self.rs256, "rs256")?,
            es256: policy(self.es256, "es256")?,
        })
    }
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
        assert_eq!(c.keys.safety_margin_secs, 60);
        assert_eq!(c.keys.rs256.lead_secs, 362);
        assert_eq!(c.keys.es256.retention_secs, 600 + 362);
        let c = Config::from_toml_str(
            MINIMAL,
            env(&[
                ("LATCHKEY_KEYS__JWKS_MAX_AGE_SECS", "1"),
                ("LATCHKEY_KEYS__RELOAD_INTERVAL_SECS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.keys.rs256.lead_secs, 1 + 1 + 2);
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
    fn bad_database_url_is_refused() {
        let err = Config::from_toml_str(MINIMAL, env(&[("LATCHKEY_DATABASE__URL", "mysql://x")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("sqlite:// or postgres://"),
            "{err}"
        );
    }
}
