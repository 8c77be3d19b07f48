//! Persistence: the only module that contains SQL.
//!
//! One [`Store`] serves SQLite and PostgreSQL through sqlx's `Any` driver with a
//! portable schema (TEXT ids, BIGINT Unix seconds, BIGINT 0/1 flags, BLOB/BYTEA
//! digests), so nearly every statement is shared and `$N` placeholders work on
//! both. Where the dialects differ (how a write transaction starts, DDL) the
//! branch is explicit here; one integration suite runs on both backends.
//!
//! The store knows rows, not policy: it never decides whether a grant is allowed
//! or a key may rotate; it gives callers transactions in which to decide.

pub mod audit;
mod browser_sessions;
mod clients;
mod codes;
mod columns;
mod consents;
mod events;
mod keys;
mod rotation;
mod sqlite_direct;
mod tokens;
mod users;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, AssertSqlSafe, SqlSafeStr, Transaction};

pub use audit::AuditRow;
pub use browser_sessions::BrowserSessionRow;
pub use clients::ClientRow;
pub use codes::{CodeRedemption, CodeRow, NewCode};
pub use events::EventRow;
pub use keys::{KeyRow, NewKeyRow, RingTx};
pub use rotation::{RotateOutcome, Rotation, RotationIntent};
pub use tokens::{AccessState, FamilyRow, NewFamily, PurgeCounts, RefreshState, TokenState};
pub use users::UserRow;

use crate::config::{DatabaseConfig, DatabaseUrl};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("rotation group failed: {0}")]
    Batch(String),
}

impl StoreError {
    /// Map a unique-constraint violation to [`StoreError::Conflict`].
    fn conflict_or(e: sqlx::Error, what: impl Into<String>) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_unique_violation() => Self::Conflict(what.into()),
            _ => Self::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to latchkey's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Group-commit writer for refresh rotations (`None` only inside the
    /// writer tasks themselves).
    writer: Option<rotation::RotationWriter>,
    /// This process's revocation generation: bumped after every revocation
    /// this process commits and whenever `revocation_state.version` moves
    /// (another process revoked something). Caches of access-token checks
    /// (`session/live.rs`) are valid only at the generation they were filled.
    revocations: Arc<AtomicU64>,
    /// Direct SQLite connections for the refresh grant's read
    /// (`sqlite_direct.rs`); `None` on PostgreSQL.
    direct: Option<Arc<sqlite_direct::Readers>>,
}

impl Store {
    /// Connect (creating a SQLite file and its directory if missing).
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend, sqlite_file) = match &cfg.url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    Backend::Sqlite,
                    Some(path.as_path()),
                )
            }
            DatabaseUrl::Postgres(url) => (url.clone(), Backend::Postgres, None),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        // No ping before handing out a pooled connection: it is a round trip
        // on every query (4 % of a refresh on SQLite, more on PostgreSQL). A
        // connection that broke while idle fails its next query, and sqlx
        // closes it instead of returning it to the pool.
        let pool = AnyPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(cfg.max_connections)
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers (JWKS reloads, lookups) run beside the one writer;
            // the mode is stored in the file, so setting it once suffices.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let mut store = Self {
            pool,
            backend,
            writer: None,
            revocations: Arc::default(),
            direct: None,
        };
        store.direct = sqlite_file.map(|path| Arc::new(sqlite_direct::Readers::new(path)));
        store.writer = Some(rotation::RotationWriter::start(&store, sqlite_file)?);
        Ok(store)
    }

    /// Apply the embedded migrations for this backend.
    pub async fn migrate(&self) -> Result<()> {
        let files: &[(i64, &str, &'static str)] = match self.backend {
            Backend::Sqlite => &[
                (
                    1,
                    "init",
                    include_str!("../../migrations/sqlite/0001_init.sql"),
                ),
                (
                    2,
                    "sessions",
                    include_str!("../../migrations/sqlite/0002_sessions.sql"),
                ),
                (
                    3,
                    "lockout",
                    include_str!("../../migrations/sqlite/0003_lockout.sql"),
                ),
                (
                    4,
                    "audit",
                    include_str!("../../migrations/sqlite/0004_audit.sql"),
                ),
                (
                    5,
                    "authcode",
                    include_str!("../../migrations/sqlite/0005_authcode.sql"),
                ),
            ],
            Backend::Postgres => &[
                (
                    1,
                    "init",
                    include_str!("../../migrations/postgres/0001_init.sql"),
                ),
                (
                    2,
                    "sessions",
                    include_str!("../../migrations/postgres/0002_sessions.sql"),
                ),
                (
                    3,
                    "lockout",
                    include_str!("../../migrations/postgres/0003_lockout.sql"),
                ),
                (
                    4,
                    "audit",
                    include_str!("../../migrations/postgres/0004_audit.sql"),
                ),
                (
                    5,
                    "authcode",
                    include_str!("../../migrations/postgres/0005_authcode.sql"),
                ),
            ],
        };
        let migrations = files
            .iter()
            .map(|(version, desc, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*desc),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Begin a transaction that will write. SQLite takes the write lock up front
    /// (`BEGIN IMMEDIATE`) so that a transaction that reads first cannot fail
    /// later on a stale snapshot; PostgreSQL locks rows as statements reach them.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Cheap liveness check for health endpoints and start-up.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Open connections and how many of them are idle, for metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Flags are stored as BIGINT 0/1: `bool` does not round-trip through `Any` on SQLite.
fn flag(b: bool) -> i64 {
    i64::from(b)
}
