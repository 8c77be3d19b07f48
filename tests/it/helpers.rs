//! Test harness: a real latchkey on a loopback port with a fresh database
//! (a SQLite temp file, or a fresh PostgreSQL database when
//! `LATCHKEY_TEST_DATABASE_URL` is set), plus small clients for its endpoints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use latchkey::app::AppState;
use latchkey::clock::{SharedClock, SystemClock};
use latchkey::config::Config;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The backend this test run uses.
pub fn postgres_base_url() -> Option<String> {
    std::env::var("LATCHKEY_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A database and a keys directory that outlive one server (restarts, replicas).
#[derive(Clone)]
pub struct Env {
    pub dir: Arc<tempfile::TempDir>,
    pub database_url: String,
}

impl Env {
    /// A fresh, empty environment.
    pub async fn new() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let database_url = match postgres_base_url() {
            Some(base) => fresh_postgres_database(&base).await,
            None => format!("sqlite://{}", dir.path().join("latchkey.db").display()),
        };
        Self { dir, database_url }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Create `lk_test_<random>` on the server of `base` and return its URL.
async fn fresh_postgres_database(base: &str) -> String {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    let name = format!(
        "lk_test_{}",
        latchkey::secret::random_id()
            .unwrap()
            .to_lowercase()
            .replace(['-', '_'], "x")
    );
    let mut conn = sqlx::AnyConnection::connect(base)
        .await
        .expect("connect to LATCHKEY_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    // Replace the database name (the path) of the base URL.
    let (prefix, rest) = base.split_once("://").unwrap();
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    format!("{prefix}://{authority}/{name}")
}

/// Settings layered over the embedded defaults for one test server.
#[derive(Clone, Default)]
pub struct Options {
    /// Extra top-level lines and whole sections placed before `[server]`.
    pub top_toml: String,
    /// Extra lines inside the generated `[keys]` section.
    pub keys_toml: String,
    /// Extra lines inside the generated `[server]` section.
    pub server_toml: String,
    /// Extra TOML (other sections, or `[keys.*]` subsections) appended last.
    pub extra_toml: String,
    /// Reuse this port (restart tests keep the issuer stable).
    pub port: Option<u16>,
    pub clock: Option<SharedClock>,
    /// A fixed issuer (replicas behind one name); default: this server's URL.
    pub issuer: Option<String>,
    /// `LATCHKEY_*` variables for the server and every CLI run (secrets that
    /// must not be written into a config file).
    pub env: Vec<(String, String)>,
}

impl Options {
    /// A server without rate limits, for tests that drive load from one
    /// address (the per-address and per-username limits would refuse it).
    pub fn unlimited() -> Self {
        Self {
            env: vec![("LATCHKEY_RATE_LIMIT__ENABLED".into(), "false".into())],
            ..Default::default()
        }
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub issuer: String,
    pub env: Env,
    pub config_path: PathBuf,
    pub http: reqwest::Client,
    pub env_vars: Vec<(String, String)>,
    pub state: AppState,
    /// Connection and request counters of the running server.
    pub server_stats: Arc<latchkey::server::ServerStats>,
    /// Reloads the certificate when the server runs with `[server.tls]`.
    pub tls: Option<latchkey::server::TlsReloader>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The configuration file the server and the CLI of one test share.
fn write_config(env: &Env, issuer: &str, options: &Options) -> PathBuf {
    let path = env.path().join(format!(
        "latchkey-{}.toml",
        latchkey::secret::random_id().unwrap()
    ));
    // A manual clock is not the database's: skip the skew check that would
    // (rightly) stop such a server from signing.
    let clock = if options.clock.is_some() {
        "[clock]\ninsecure_skip_database_check = true\n"
    } else {
        ""
    };
    let text = format!(
        "issuer = \"{issuer}\"\nprofile = \"dev\"\n{top}\n[server]\nbind = \"127.0.0.1:0\"\n{server_extra}\n\n[database]\nurl = \"{db}\"\nmax_connections = 8\n\n[keys]\ndir = \"{keys}\"\nreload_interval_secs = 1\n{keys_extra}\n{extra}\n{clock}",
        db = env.database_url,
        keys = env.path().join("keys").display(),
        keys_extra = options.keys_toml,
        server_extra = options.server_toml,
        top = options.top_toml,
        extra = options.extra_toml,
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_in(Env::new().await, Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        Self::spawn_in(Env::new().await, options).await
    }

    /// Start a server on `env` (which may already hold data).
    pub async fn spawn_in(env: Env, options: Options) -> Self {
        crate::no_secrets::install();
        let listener = TcpListener::bind(("127.0.0.1", options.port.unwrap_or(0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = options
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", addr.port()));
        let config_path = write_config(&env, &issuer, &options);
        let config = Config::load(&config_path, options.env.clone()).unwrap();
        let clock = options.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let state = AppState::build(config, clock).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = latchkey::server::Server::new(state.clone(), listener).unwrap();
        let server_stats = server.stats();
        let tls = server.tls_reloader();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            issuer,
            env,
            config_path,
            http: reqwest::Client::builder().build().unwrap(),
            env_vars: options.env.clone(),
            state,
            server_stats,
            tls,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stop the server gracefully; the environment stays for a restart.
    pub async fn stop(mut self) -> (Env, u16) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        (self.env.clone(), self.addr.port())
    }

    /// A URL on this server (its own address, whatever the issuer says).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Run the `latchkey` binary against this server's config and database.
    pub async fn cli(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        run_cli(&self.config_path, &self.env_vars, args, stdin).await
    }

    pub async fn create_user(&self, username: &str, password: &str, roles: &[&str]) -> String {
        let mut args = vec!["users", "create", username, "--password-stdin", "--json"];
        let joined = roles.join(",");
        if !roles.is_empty() {
            args.extend(["--roles", joined.as_str()]);
        }
        let out = self.cli(&args, Some(password)).await;
        assert!(
            out.status.success(),
            "users create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    /// `clients create ... --json`, asserting success; returns the printed record.
    pub async fn clients_create(
        &self,
        id: &str,
        grants: &str,
        scopes: &str,
        extra: &[&str],
    ) -> Value {
        let mut args = vec![
            "clients",
            "create",
            id,
            "--grant-types",
            grants,
            "--scopes",
            scopes,
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args, None).await;
        assert!(
            out.status.success(),
            "clients create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Register a confidential client; returns its generated secret.
    pub async fn create_client(&self, id: &str, grants: &str, scopes: &str, alg: &str) -> String {
        let v = self
            .clients_create(id, grants, scopes, &["--alg", alg])
            .await;
        v["client_secret"].as_str().unwrap().to_string()
    }

    /// Register an admin client (`--admin`: may be granted `latchkey:admin`).
    pub async fn create_admin_client(
        &self,
        id: &str,
        grants: &str,
        scopes: &str,
        alg: &str,
    ) -> String {
        let v = self
            .clients_create(id, grants, scopes, &["--alg", alg, "--admin"])
            .await;
        v["client_secret"].as_str().unwrap().to_string()
    }

    pub async fn create_public_client(&self, id: &str, grants: &str, scopes: &str) {
        let v = self.clients_create(id, grants, scopes, &["--public"]).await;
        assert!(v.get("client_secret").is_none());
    }

    /// POST a form to the token endpoint with HTTP Basic client authentication.
    pub async fn token(&self, client: (&str, &str), form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url("/token"))
            .basic_auth(client.0, Some(client.1))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// A successful password grant's JSON body.
    pub async fn login(
        &self,
        client: (&str, &str),
        user: &str,
        password: &str,
        scope: &str,
    ) -> Value {
        let r = self
            .token(
                client,
                &[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                    ("scope", scope),
                ],
            )
            .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "login failed: {body}");
        body
    }

    /// POST a raw (possibly malformed) form body to the token endpoint.
    pub async fn token_raw(
        &self,
        client: (&str, &str),
        body: impl Into<String>,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/token"))
            .basic_auth(client.0, Some(client.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.into())
            .send()
            .await
            .unwrap()
    }

    /// GET /userinfo, with a bearer token when given.
    /// This server's revocation generation, to pass to
    /// [`TestApp::wait_revocation_seen`] after another process revoked something.
    pub fn revocations(&self) -> u64 {
        self.state.store.revocation_generation()
    }

    /// Wait until this server has seen a revocation made by another process
    /// (the CLI) since `mark`: it reads `revocation_state.version` every
    /// `tokens.revocation_poll_millis` (100 ms by default) and drops its
    /// cached access-token checks then. Panics past 10 s.
    pub async fn wait_revocation_seen(&self, mark: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.revocations() == mark {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not see another process's revocation within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The text `/metrics` serves now.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn userinfo(&self, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url("/userinfo"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// RFC 7662 introspection as `client`; asserts the response is a 200 with no-store.
    pub async fn introspect(&self, client: (&str, &str), token: &str) -> Value {
        let r = self
            .http
            .post(self.url("/introspect"))
            .basic_auth(client.0, Some(client.1))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        r.json().await.unwrap()
    }

    /// A request with this access token as `Authorization: Bearer`.
    pub async fn bearer(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Run a CLI command and assert it succeeded; returns its stdout.
    pub async fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin).await;
        assert!(
            out.status.success(),
            "latchkey {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn refresh(&self, client: (&str, &str), refresh_token: &str) -> reqwest::Response {
        self.token(
            client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    pub async fn jwks(&self) -> Value {
        self.http
            .get(self.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn kids(&self) -> Vec<String> {
        self.jwks().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    /// Wait (bounded) until this server's in-memory ring satisfies `f`.
    /// Bounded at 30 s: a transition that is due after a 10 s lead still has
    /// to wait for a scheduler pass on a loaded machine.
    pub async fn wait_for_ring(&self, what: &str, f: impl Fn(&latchkey::keyring::Ring) -> bool) {
        for _ in 0..300 {
            if f(&self.state.ring.current()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for the key ring: {what}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn run_cli(
    config: &Path,
    env: &[(String, String)],
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().cloned());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    drop(pipe);
    child.wait_with_output().await.unwrap()
}

/// Decode a JWT part without verifying (for asserting what was signed).
pub fn jwt_part(token: &str, index: usize) -> Value {
    use base64::Engine as _;
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// Verify an access token with the independent `jsonwebtoken` crate against a
/// JWKS fetched over HTTP, as a resource server would.
pub fn verify_with_jsonwebtoken(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<Value, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    // The algorithm comes from the key, never from the token.
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        other => return Err(format!("unexpected JWK alg {other:?}")),
    };
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = decode::<Value>(token, &key, &v).map_err(|e| e.to_string())?;
    Ok(data.claims)
}

pub const PASSWORD: &str = "correct horse battery staple";
