//! The command line: `serve`, `migrate`, and the operator commands. Each
//! command calls the same services the HTTP handlers call; the CLI adds only
//! argument parsing, input validation and output formatting (`--json` prints
//! records with their wire names).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::app::{AppState, Services};
use crate::audit::{Event, EventType, RawAuditQuery};
use crate::clock::{SharedClock, UnixTime};
use crate::config::{Config, LogConfig, LogFormat};
use crate::keyring::lifecycle::{self, KeyInfo};
use crate::oauth::Alg;
use crate::oauth::{GrantType, Scope};
use crate::store::ClientRow;

#[derive(Debug, Parser)]
#[command(
    name = "latchkey",
    version,
    about = "An OIDC-style identity provider with a rotating signing key ring"
)]
pub struct Cli {
    /// Configuration file (TOML). Every key can be overridden by LATCHKEY_<SECTION>__<KEY>.
    #[arg(long, global = true, default_value = "config/latchkey.toml")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the key scheduler.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Inspect and operate the signing key ring.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Read the event log (the six original columns; see `audit list` for all).
    #[command(subcommand)]
    Events(EventsCmd),
    /// Query the audit log of security events.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Print the OpenAPI 3.1 document of the HTTP API (as `/openapi.json` serves it).
    Openapi,
    /// List and end users' sessions (refresh-token families).
    #[command(subcommand)]
    Sessions(SessionsCmd),
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// A user's live sessions: id, client, device, address, created, last used.
    List {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// End one session by id, or every session of a user with --user.
    Revoke {
        /// The session id, as `sessions list` prints it.
        #[arg(
            required_unless_present = "user",
            conflicts_with = "user",
            allow_hyphen_values = true
        )]
        id: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user; the password is read from standard input.
    Create {
        username: String,
        /// Read the password from stdin (the only way: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Comma-separated roles, e.g. admin,billing.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List users.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Disable a user: logins fail and every session (refresh-token family) is revoked.
    Disable { username: String },
    /// Re-enable a disabled user.
    Enable { username: String },
    /// Clear a user's lockout (after repeated failed logins) and failure count.
    Unlock { username: String },
    /// Set a new password (read from stdin); every session of the user ends.
    SetPassword {
        username: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCmd {
    /// Register a client; prints a generated secret once (unless --public or --secret-stdin).
    Create {
        client_id: String,
        /// A public client (no secret; authorization_code, password and refresh_token only).
        #[arg(long)]
        public: bool,
        /// Read the client secret from stdin instead of generating one (at least 32 characters).
        #[arg(long, conflicts_with = "public")]
        secret_stdin: bool,
        /// Comma-separated: authorization_code, password, refresh_token, client_credentials.
        #[arg(long, value_delimiter = ',', required = true)]
        grant_types: Vec<String>,
        /// Space-separated scopes the client may request.
        #[arg(long, required = true)]
        scopes: String,
        /// Signing algorithm of this client's tokens (default: tokens.default_alg).
        #[arg(long)]
        alg: Option<String>,
        /// An admin client: may be granted the latchkey:admin scope (added to
        /// its scopes), which the admin API requires beside the admin role.
        #[arg(long)]
        admin: bool,
        /// Comma-separated redirect URIs for the authorization-code flow, matched
        /// exactly (a loopback http URI matches any port).
        #[arg(long, value_delimiter = ',')]
        redirect_uris: Vec<String>,
        /// Comma-separated URIs a browser may be sent to after logout.
        #[arg(long, value_delimiter = ',')]
        post_logout_redirect_uris: Vec<String>,
        /// A first-party client: its users are not asked for consent.
        #[arg(long)]
        first_party: bool,
        /// A browser client: its refresh token travels only in an HttpOnly
        /// cookie scoped to the token endpoint, never in a response body.
        #[arg(long, requires = "origins")]
        refresh_cookie: bool,
        /// Comma-separated browser origins (scheme://host[:port]) allowed to call
        /// latchkey with credentials for this client (CORS, cookie refreshes).
        #[arg(long, value_delimiter = ',')]
        origins: Vec<String>,
        /// A resource server: may introspect tokens issued to other clients.
        #[arg(long)]
        introspect: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List clients (never their secrets).
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List every key with its state and lifecycle times.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Rotate: publish a new key now and let it sign once the pre-publication lead passed.
    Rotate {
        /// Only this algorithm (default: every algorithm).
        #[arg(long)]
        alg: Option<String>,
        /// Sign with the new key immediately (skips pre-publication; for emergencies).
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Retire a key: unpublish it now. The active key, and a retiring key whose
    /// tokens may still be valid, need --emergency.
    Retire {
        /// The kid exactly as `keys list` prints it; base64url kids may begin
        /// with `-`, which is accepted as the value, not read as a flag.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// The key is compromised: unpublish it at once, even while it signs or
        /// its tokens are still valid.
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show the next scheduled transitions per algorithm.
    Schedule {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// The newest events first.
    List {
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Events newest first, filtered; `--json` prints `{"events": [...], "next": cursor}`.
    List {
        /// Only events at or after this time (Unix seconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (Unix seconds or RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// A user id or username.
        #[arg(long)]
        user: Option<String>,
        /// A client id.
        #[arg(long)]
        client: Option<String>,
        /// An event type, e.g. login.failure or key.activate.
        #[arg(long = "type")]
        kind: Option<String>,
        /// info, warning or critical.
        #[arg(long)]
        severity: Option<String>,
        /// The `next` cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Logs go to stderr. `LATCHKEY_LOG` sets the filter (default `info` for
/// `serve`, `warn` otherwise so command output stays clean); `[log] format`
/// chooses JSON lines (the default under `profile = "prod"`) or text. A
/// server's lines go through the writer thread of [`crate::logging`] (keep
/// the returned [`crate::logging::Flush`] until the server has stopped);
/// other commands write directly.
pub fn init_logging(cli: &Cli, log: &LogConfig) -> Option<crate::logging::Flush> {
    let serving = matches!(cli.command, Command::Serve);
    let filter = tracing_subscriber::EnvFilter::new(log.filter.as_deref().unwrap_or(if serving {
        "info"
    } else {
        "warn"
    }));
    // A server's lines go through the buffered writer; the dynamic
    // dispatch per line costs nothing beside formatting it.
    let (writer, flush) = if serving {
        let (writer, flush) = crate::logging::buffered_stderr();
        (BoxMakeWriter::new(writer), Some(flush))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    flush
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config, crate::config::process_env()).with_context(|| {
        format!(
            "loading {} (pass --config FILE to use another file)",
            cli.config.display()
        )
    })?;
    let _flush_logs = init_logging(&cli, &config.log);
    let clock: SharedClock = crate::clock::from_config(&config.clock);
    match cli.command {
        Command::Serve => serve(config, clock).await,
        Command::Migrate => {
            let store = crate::store::Store::connect(&config.database).await?;
            store.migrate().await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Users(cmd) => users(cmd, &config, clock).await,
        Command::Clients(cmd) => clients(cmd, &config, clock).await,
        Command::Keys(cmd) => keys(cmd, &config, clock).await,
        Command::Events(cmd) => events(cmd, &config, clock).await,
        Command::Audit(cmd) => audit(cmd, &config, clock).await,
        Command::Openapi => print_json(&crate::http::openapi::document(
            &config,
            &crate::http::routes(&config),
        )),
        Command::Sessions(cmd) => sessions(cmd, &config, clock).await,
    }
}

async fn serve(config: Config, clock: SharedClock) -> anyhow::Result<()> {
    let bind = config.server.bind;
    let state = AppState::build(config, clock).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let server = crate::server::Server::new(state, listener)?;
    if let Some(tls) = server.tls_reloader() {
        tokio::spawn(reload_on_sighup(tls));
    }
    server.run(shutdown_signal()).await
}

/// SIGHUP reloads the TLS certificate (file changes are also noticed by
/// polling, within `server.tls.poll_secs`).
async fn reload_on_sighup(tls: crate::server::TlsReloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; TLS reloads rely on file polling");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the TLS certificate");
            if let Err(e) = tls.reload() {
                tracing::error!(error = %format!("{e:#}"), "TLS reload failed; still serving the previous certificate");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// Who ran a CLI command, for the event log.
fn actor() -> String {
    let user = crate::config::operator_name();
    format!("cli:{user}")
}

/// Read one secret from stdin: the whole input, minus one trailing newline.
fn read_stdin_secret(what: &str, max: usize) -> anyhow::Result<String> {
    let mut buf = String::new();
    std::io::stdin()
        .take(u64::try_from(max + 2).unwrap_or(u64::MAX))
        .read_to_string(&mut buf)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let s = buf.strip_suffix('\n').unwrap_or(&buf);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        bail!("the {what} on stdin is empty");
    }
    if s.len() > max {
        bail!("the {what} is longer than {max} bytes");
    }
    Ok(s.to_string())
}

/// Usernames: 1–64 of letters, digits and `. _ @ + -`.
pub fn valid_username(u: &str) -> bool {
    (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
}

/// A browser origin as the `Origin` header carries it: `http(s)://host[:port]`,
/// no path, no trailing slash.
pub fn valid_origin(o: &str) -> anyhow::Result<&str> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .with_context(|| format!("origin {o:?} must start with https:// or http://"))?;
    let host_ok = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !host_ok {
        bail!("origin {o:?} must be scheme://host[:port] with no path");
    }
    Ok(o)
}

/// Client ids: 1–128 of letters, digits and `. _ : -`.
pub fn valid_client_id(c: &str) -> bool {
    (1..=128).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn valid_role(r: &str) -> bool {
    (1..=64).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn parse_alg(s: Option<&str>, default: Alg) -> anyhow::Result<Alg> {
    match s {
        None => Ok(default),
        Some(a) => Alg::parse(&a.to_ascii_uppercase())
            .with_context(|| format!("unsupported algorithm {a:?}: use RS256 or ES256")),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn time(t: Option<UnixTime>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `users disable|enable`: the switch and its audit event in one transaction.
async fn set_disabled(
    services: &Services,
    clock: &SharedClock,
    username: &str,
    disable: bool,
) -> anyhow::Result<()> {
    let user_id = services
        .store
        .find_user_by_username(username)
        .await?
        .map(|u| u.id)
        .ok_or_else(|| anyhow::anyhow!("no user {username}"))?;
    let (kind, message) = if disable {
        (EventType::UserDisabled, "sessions revoked")
    } else {
        (EventType::UserEnabled, "")
    };
    let event = Event::new(kind, clock.now())
        .actor(actor())
        .user(&user_id)
        .subject(username)
        .message(message)
        .detail(json!({ "username": username }));
    if !services
        .store
        .set_user_disabled(username, disable, clock.now(), &event)
        .await?
    {
        bail!("no user {username}");
    }
    if disable {
        println!("user {username} disabled; their sessions are revoked");
    } else {
        println!("user {username} enabled");
    }
    Ok(())
}

async fn users(cmd: UsersCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let services = Services::open(config, clock.clone()).await?;
    match cmd {
        UsersCmd::Create {
            username,
            password_stdin: _,
            roles,
            email,
            out,
        } => {
            if !valid_username(&username) {
                bail!("invalid username: use 1-64 letters, digits and . _ @ + -");
            }
            let roles: Vec<String> = roles
                .into_iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect();
            if let Some(bad) = roles.iter().find(|r| !valid_role(r)) {
                bail!("invalid role {bad:?}: use 1-64 letters, digits and . _ : -");
            }
            if email.as_deref().is_some_and(|e| {
                e.len() > 254 || !e.contains('@') || e.chars().any(char::is_whitespace)
            }) {
                bail!("invalid email address");
            }
            let password = read_stdin_secret("password", crate::oauth::request::MAX_PASSWORD_LEN)?;
            if password.chars().count() < 8 {
                bail!("the password must be at least 8 characters");
            }
            let hash = services.secrets.hash_password(password).await?;
            let id = crate::secret::random_id()?;
            services
                .store
                .create_user(
                    &id,
                    &username,
                    &hash,
                    email.as_deref(),
                    &roles,
                    clock.now(),
                    &Event::new(EventType::UserCreated, clock.now())
                        .actor(actor())
                        .user(&id)
                        .subject(username.as_str())
                        .message(format!("user {username} created"))
                        .detail(json!({ "username": username, "roles": roles })),
                )
                .await?;
            if out.json {
                print_json(&json!({ "id": id, "username": username, "roles": roles }))
            } else {
                println!("created user {username} (id {id})");
                Ok(())
            }
        }
        UsersCmd::SetPassword { username, .. } if !valid_username(&username) => {
            bail!("invalid username {username:?}")
        }
        UsersCmd::SetPassword { username, .. } => {
            let password = read_stdin_secret("password", crate::oauth::request::MAX_PASSWORD_LEN)?;
            if password.chars().count() < 8 {
                bail!("the password must be at least 8 characters");
            }
            let hash = services.secrets.hash_password(password).await?;
            let Some((user_id, ended)) = services
                .store
                .set_password(&username, &hash, clock.now())
                .await?
            else {
                bail!("no user {username}");
            };
            let event = Event::new(EventType::PasswordChanged, clock.now())
                .actor(actor())
                .user(user_id)
                .subject(username.as_str())
                .message(format!("{ended} sessions ended"))
                .detail(json!({ "sessions_ended": ended }));
            event.emit();
            services.store.append_event(&event).await?;
            println!("password of {username} changed; {ended} sessions ended");
            Ok(())
        }
        UsersCmd::Disable { username }
        | UsersCmd::Enable { username }
        | UsersCmd::Unlock { username }
            if !valid_username(&username) =>
        {
            bail!("invalid username {username:?}")
        }
        UsersCmd::Disable { username } => set_disabled(&services, &clock, &username, true).await,
        UsersCmd::Enable { username } => set_disabled(&services, &clock, &username, false).await,
        UsersCmd::Unlock { username } => {
            if !services.store.unlock_user(&username, clock.now()).await? {
                bail!("no user {username}");
            }
            let event = Event::new(EventType::Unlock, clock.now())
                .actor(actor())
                .subject(&username)
                .message("unlocked from the command line")
                .detail(json!({ "username": username }));
            services.store.append_event(&event).await?;
            println!("user {username} unlocked");
            Ok(())
        }
        UsersCmd::List { out } => {
            let users = services.store.list_users().await?;
            let mut list = Vec::new();
            for u in users {
                let roles = services.store.user_roles(&u.id).await?;
                list.push(json!({
                    "id": u.id, "username": u.username, "email": u.email,
                    "roles": roles, "disabled": u.disabled, "created_at": u.created_at,
                    "failed_logins": u.failed_logins, "locked_until": u.locked_until,
                }));
            }
            if out.json {
                print_json(&list)
            } else {
                for u in list {
                    println!(
                        "{}  {}  roles={}",
                        u["id"].as_str().unwrap_or(""),
                        u["username"].as_str().unwrap_or(""),
                        u["roles"]
                    );
                }
                Ok(())
            }
        }
    }
}

async fn sessions(cmd: SessionsCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let store = crate::store::Store::connect(&config.database).await?;
    store.migrate().await?;
    let fail = |e: crate::oauth::Error| anyhow::anyhow!("{}", e.description);
    match cmd {
        SessionsCmd::List { user, out } => {
            let list = crate::session::list_for_user(&store, clock.now(), &user)
                .await
                .map_err(fail)?;
            if out.json {
                return print_json(&list);
            }
            for s in &list {
                println!(
                    "{}  client={}  device={:?}  ip={}  created={}  last_used={}",
                    s.id,
                    s.client_id,
                    s.device.as_deref().unwrap_or("-"),
                    s.ip.as_deref().unwrap_or("-"),
                    time(Some(s.created_at)),
                    time(Some(s.last_used_at)),
                );
            }
            if list.is_empty() {
                println!("{user} has no live sessions");
            }
            Ok(())
        }
        SessionsCmd::Revoke { id, user, out } => {
            let ended = match (id, user) {
                (Some(id), None) => {
                    crate::session::revoke_by_id(&store, clock.now(), &id, &actor())
                        .await
                        .map_err(fail)?;
                    1
                }
                (None, Some(user)) => {
                    crate::session::revoke_for_user(&store, clock.now(), &user, &actor())
                        .await
                        .map_err(fail)?
                }
                _ => bail!("give a session id or --user NAME"),
            };
            if out.json {
                print_json(&json!({ "sessions_ended": ended }))
            } else {
                println!("{ended} sessions ended");
                Ok(())
            }
        }
    }
}

async fn clients(cmd: ClientsCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let services = Services::open(config, clock.clone()).await?;
    match cmd {
        ClientsCmd::Create {
            client_id,
            public,
            secret_stdin,
            grant_types,
            scopes,
            alg,
            admin,
            redirect_uris,
            post_logout_redirect_uris,
            first_party,
            refresh_cookie,
            origins,
            introspect,
            out,
        } => {
            let origins = origins
                .iter()
                .map(|o| o.trim())
                .filter(|o| !o.is_empty())
                .map(|o| valid_origin(o).map(str::to_string))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if introspect && public {
                bail!("a public client cannot introspect (it has no secret)");
            }
            if !valid_client_id(&client_id) {
                bail!("invalid client id: use 1-128 letters, digits and . _ : -");
            }
            let mut grants = Vec::new();
            for g in grant_types
                .iter()
                .map(|g| g.trim())
                .filter(|g| !g.is_empty())
            {
                let grant = GrantType::parse(g).with_context(|| {
                    format!(
                        "unknown grant type {g:?}: use authorization_code, password, refresh_token, client_credentials"
                    )
                })?;
                if !grants.contains(&grant) {
                    grants.push(grant);
                }
            }
            if grants.is_empty() {
                bail!("--grant-types needs at least one grant type");
            }
            if public && grants.contains(&GrantType::ClientCredentials) {
                bail!("a public client cannot use client_credentials");
            }
            let uri_list = |uris: &[String], flag: &str| -> anyhow::Result<String> {
                let mut out: Vec<&str> = Vec::new();
                for u in uris.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
                    crate::authorize::validate_registered_uri(u)
                        .map_err(|e| anyhow::anyhow!("invalid {flag}: {e}"))?;
                    if !out.contains(&u) {
                        out.push(u);
                    }
                }
                Ok(out.join(" "))
            };
            let redirect_uris = uri_list(&redirect_uris, "--redirect-uris")?;
            let post_logout_redirect_uris =
                uri_list(&post_logout_redirect_uris, "--post-logout-redirect-uris")?;
            if grants.contains(&GrantType::AuthorizationCode) && redirect_uris.is_empty() {
                bail!("the authorization_code grant needs --redirect-uris");
            }
            if refresh_cookie && !grants.contains(&GrantType::RefreshToken) {
                bail!("--refresh-cookie needs the refresh_token grant");
            }
            let scope = Scope::parse(&scopes)
                .map_err(|e| anyhow::anyhow!("invalid --scopes: {}", e.description))?;
            let admin_scope = crate::oauth::scope::ADMIN_SCOPE;
            if scope.contains(admin_scope) && !admin {
                bail!(
                    "--scopes must not contain {admin_scope}: register an admin client with --admin instead"
                );
            }
            let scope = if admin {
                Scope::parse(&format!("{scope} {admin_scope}"))
                    .map_err(|e| anyhow::anyhow!("invalid --scopes: {}", e.description))?
            } else {
                scope
            };
            let alg = parse_alg(alg.as_deref(), config.tokens.default_alg)?;
            let (shown_secret, digest) = if public {
                (None, None)
            } else if secret_stdin {
                let s = read_stdin_secret(
                    "client secret",
                    crate::oauth::request::MAX_CLIENT_SECRET_LEN,
                )?;
                if s.len() < 32 {
                    bail!("a client secret must be at least 32 characters");
                }
                (None, Some(services.secrets.client_secret_digest(&s)))
            } else {
                let (secret, digest) = services.secrets.new_client_secret()?;
                (Some(secret), Some(digest))
            };
            services
                .store
                .create_client(
                    &ClientRow {
                        client_id: client_id.clone(),
                        secret_digest: digest,
                        is_public: public,
                        grant_types: grants
                            .iter()
                            .map(|g| g.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                        scopes: scope.to_string(),
                        token_alg: alg.as_str().to_string(),
                        created_at: clock.now(),
                        redirect_uris,
                        post_logout_redirect_uris,
                        first_party,
                        refresh_cookie,
                        origins: origins.join(" "),
                        may_introspect: introspect,
                    },
                    &Event::new(EventType::ClientCreated, clock.now())
                        .actor(actor())
                        .client(&client_id)
                        .subject(&client_id)
                        .message(format!("client {client_id} created"))
                        .detail(json!({
                            "public": public,
                            "grant_types": grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
                            "scopes": scope.to_string(),
                            "alg": alg.as_str(),
                        })),
                )
                .await?;
            if out.json {
                let mut v = json!({ "client_id": client_id });
                if let Some(s) = &shown_secret {
                    v["client_secret"] = json!(s);
                }
                print_json(&v)
            } else {
                println!("client_id: {client_id}");
                if let Some(s) = shown_secret {
                    println!("client_secret: {s}");
                    eprintln!(
                        "(the secret is shown once and stored only as a digest: keep it now)"
                    );
                }
                Ok(())
            }
        }
        ClientsCmd::List { out } => {
            let list: Vec<_> = services
                .store
                .list_clients()
                .await?
                .into_iter()
                .map(|c| {
                    json!({
                        "client_id": c.client_id, "public": c.is_public,
                        "grant_types": c.grant_types.split(' ').collect::<Vec<_>>(),
                        "scopes": c.scopes, "alg": c.token_alg, "created_at": c.created_at,
                        "redirect_uris": c.redirect_uri_list().collect::<Vec<_>>(),
                        "post_logout_redirect_uris": c.post_logout_redirect_uri_list().collect::<Vec<_>>(),
                        "first_party": c.first_party,
                        "refresh_cookie": c.refresh_cookie, "introspect": c.may_introspect,
                        "origins": c.origin_list().collect::<Vec<_>>(),
                    })
                })
                .collect();
            if out.json {
                print_json(&list)
            } else {
                for c in list {
                    println!(
                        "{}  grants={}  scopes=\"{}\"",
                        c["client_id"].as_str().unwrap_or(""),
                        c["grant_types"],
                        c["scopes"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            }
        }
    }
}

async fn keys(cmd: KeysCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let services = Services::open(config, clock.clone()).await?;
    // Reads stay reads: scheduled transitions are the server's job (a `keys
    // list` must not make keys through the KMS). A database no server has
    // started on yet simply has no keys to list.
    match cmd {
        KeysCmd::List { out } => {
            let keys: Vec<KeyInfo> = services
                .store
                .list_keys(true)
                .await?
                .iter()
                .map(KeyInfo::from)
                .collect();
            if out.json {
                return print_json(&keys);
            }
            if keys.is_empty() {
                println!("no keys yet: latchkey serve creates them when it first starts");
                return Ok(());
            }
            println!(
                "{:<44} {:<6} {:<9} {:<14} {:<21} {:<21} {:<21}",
                "KID", "ALG", "STATE", "KMS", "CREATED", "ACTIVATES", "RETIRES"
            );
            for k in keys {
                println!(
                    "{:<44} {:<6} {:<9} {:<14} {:<21} {:<21} {:<21}",
                    k.kid,
                    k.alg,
                    k.state,
                    k.kms_provider,
                    time(Some(k.created_at)),
                    time(k.activated_at.or(Some(k.activate_at))),
                    time(k.retired_at.or(k.retire_at))
                );
            }
            Ok(())
        }
        KeysCmd::Rotate { alg, now, out } => {
            // Without --alg every algorithm rotates: whichever a client uses.
            let algs = match alg.as_deref() {
                Some(a) => vec![parse_alg(Some(a), config.tokens.default_alg)?],
                None => Alg::ALL.to_vec(),
            };
            let mut outcomes = Vec::new();
            for alg in algs {
                outcomes.push(services.lifecycle.rotate(alg, now, &actor()).await?);
            }
            if out.json {
                return print_json(&outcomes);
            }
            for outcome in &outcomes {
                if outcome.already_pending {
                    println!(
                        "{} key {} is already pending; it starts signing at {}",
                        outcome.alg,
                        outcome.kid,
                        time(Some(outcome.activate_at))
                    );
                } else if now {
                    println!("{} key {} is signing now", outcome.alg, outcome.kid);
                    if let Some(old) = &outcome.replaced {
                        println!("previous key {old} stays published until its tokens expire");
                    }
                } else {
                    println!(
                        "{} key {} published now; it starts signing at {} (after the pre-publication lead)",
                        outcome.alg,
                        outcome.kid,
                        time(Some(outcome.activate_at)),
                    );
                }
            }
            if now {
                eprintln!(
                    "warning: the new keys were not pre-published; verifiers with a cached JWKS will refetch on the unknown kid"
                );
            }
            Ok(())
        }
        KeysCmd::Retire {
            kid,
            emergency,
            out,
        } => {
            let outcome = services.lifecycle.retire(&kid, emergency, &actor()).await?;
            if let Some(w) = &outcome.warning {
                eprintln!("WARNING: {w}");
            }
            if out.json {
                return print_json(&outcome);
            }
            println!("key {} ({}) retired", outcome.kid, outcome.alg);
            if let Some(r) = outcome.replacement {
                println!("replacement {} key {r} is signing now", outcome.alg);
            }
            Ok(())
        }
        KeysCmd::Schedule { out } => {
            let rows = services.store.list_keys(false).await?;
            let upcoming = lifecycle::upcoming(clock.now(), &rows, &config.keys);
            if out.json {
                return print_json(&upcoming);
            }
            for u in upcoming {
                println!(
                    "{}: schedule \"{}\", active {}, next key {} publishes {} and signs from {}",
                    u.alg,
                    u.schedule,
                    u.active_kid.as_deref().unwrap_or("-"),
                    u.pending_kid.as_deref().unwrap_or("(new)"),
                    time(u.next_prepublish_at),
                    time(u.next_activation_at)
                );
                for (kid, at) in u.retirements {
                    println!("   retiring {kid} is unpublished at {}", time(Some(at)));
                }
            }
            Ok(())
        }
    }
}

async fn events(cmd: EventsCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let services = Services::open(config, clock).await?;
    match cmd {
        EventsCmd::List { action, limit, out } => {
            let rows = services
                .store
                .list_events(action.as_deref(), limit.clamp(1, 10_000))
                .await?;
            if out.json {
                return print_json(&rows);
            }
            for e in rows {
                println!(
                    "{}  {:<22} {:<28} {:<44} {}",
                    time(Some(e.at)),
                    e.actor,
                    e.action,
                    e.subject.unwrap_or_default(),
                    e.detail
                );
            }
            Ok(())
        }
    }
}

async fn audit(cmd: AuditCmd, config: &Config, clock: SharedClock) -> anyhow::Result<()> {
    let AuditCmd::List {
        since,
        until,
        user,
        client,
        kind,
        severity,
        cursor,
        limit,
        out,
    } = cmd;
    let query = RawAuditQuery {
        since,
        until,
        user,
        client,
        kind,
        severity,
        cursor,
        limit: Some(limit.to_string()),
    }
    .validate()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let services = Services::open(config, clock.clone()).await?;
    let page = crate::audit::Audit::new(services.store.clone(), clock)
        .query(&query)
        .await?;
    if out.json {
        return print_json(&page);
    }
    for e in &page.events {
        println!(
            "{}  {:<8} {:<28} {:<24} user={} client={} ip={} {}",
            time(Some(e.at)),
            e.severity,
            e.kind,
            e.actor,
            e.user.as_deref().unwrap_or("-"),
            e.client.as_deref().unwrap_or("-"),
            e.ip.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    if let Some(next) = page.next {
        println!("more: --cursor {next}");
    }
    Ok(())
}
