//! Direct SQLite connections for the refresh hot path.
//!
//! sqlx runs every SQLite connection on a thread of its own and hands each
//! statement, each row and each completion across a channel: on a busy core
//! that is a pair of thread switches per statement. A rotation is four
//! statements, so the rotation writer spent more time switching threads than
//! inside SQLite. The writer therefore keeps a connection of its own to the
//! same file, opened with rusqlite on the same bundled libsqlite3, and runs the
//! whole group on its own thread with prepared statements: one hand-over per
//! group instead of two per statement.
//!
//! The refresh grant's first step, the read of the presented token's state,
//! runs on direct connections too, on the calling thread. It is one lookup by
//! primary key (a few microseconds on hot pages): a WAL reader never waits for
//! the writer, and a reader that finds the database busy does not wait either
//! (no busy timeout) but reports it, and the store answers through its pool.
//! That read handed across threads cost more than the read itself.
//!
//! The writer's connection is configured like sqlx's: `foreign_keys = ON`,
//! `synchronous = FULL`, a 5 s busy timeout; the file is already in WAL mode
//! (`Store::connect`). Other writers (logins, revocations through sqlx) and this
//! one take SQLite's one write lock in turn.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::rotation::{Intents, Job, MAX_BATCH, MAX_LINGER, RotateOutcome, Rotation, finish};
use super::tokens::{RefreshState, refresh_state_of, refresh_state_sql};
use super::{Backend, Result};

/// How often a lingering group looks for newly queued rotations.
const LINGER_STEP: Duration = Duration::from_micros(50);

/// How long a statement waits for the write lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle reader connections kept for reuse; more may be open at a busy moment.
const MAX_IDLE_READERS: usize = 8;

/// Direct read connections to the database file, opened on demand.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// [`Store::refresh_state`](super::Store::refresh_state) on a direct connection.
    pub(super) fn refresh_state(&self, digest: &[u8]) -> Result<Option<RefreshState>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(refresh_state_sql(Backend::Sqlite))?;
            let mut rows = stmt.query([digest])?;
            rows.next()?.map(refresh_state_of).transpose()
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

/// A connection that only reads, and never waits for a lock.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// Open the writer's connection to an existing database file.
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Start the SQLite rotation writer on its own thread. It ends when every
/// sender is gone.
pub(super) fn spawn_writer(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    intents: Arc<Intents>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("latchkey-rotate".into())
        .spawn(move || writer_loop(conn, rx, &intents))?;
    Ok(())
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, intents: &Intents) {
    while let Some(first) = rx.blocking_recv() {
        let opened = Instant::now();
        let mark = intents.mark();
        let mut batch = Vec::with_capacity(32);
        batch.push(first);
        drain(&mut rx, &mut batch);
        // Rotations announced before this group opened are being signed
        // right now: give them until MAX_LINGER to join it rather than pay a
        // commit each. Later ones wait for the next group.
        while batch.len() < MAX_BATCH
            && intents.pending_before(mark)
            && opened.elapsed() < MAX_LINGER
        {
            std::thread::sleep(LINGER_STEP);
            drain(&mut rx, &mut batch);
        }
        let mut result = apply_group(&mut conn, &batch);
        if result.is_err() {
            // One retry: a busy timeout is transient, and nothing of a failed
            // group was committed (the transaction rolled back on drop).
            result = apply_group(&mut conn, &batch);
        }
        finish(batch, result.map_err(|e| e.to_string()));
    }
}

fn drain(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

fn apply_group(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<Vec<RotateOutcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(batch.len());
    for job in batch {
        out.push(apply_one(&tx, &job.rotation)?);
    }
    tx.commit()?;
    Ok(out)
}

/// The statements of one rotation: the conditional consume, and only if it
/// consumed the token, the successor, the session's `last_used_at` and the
/// audit row (the same decisions as the PostgreSQL statement in
/// `rotation.rs`). `$N` placeholders first appear in order, so SQLite numbers
/// them as the binds are listed. The token is found by its digest alone (see
/// the PostgreSQL statement for why the family is checked only in
/// `token_families`).
const CONSUME: &str = "UPDATE refresh_tokens SET used_at = $1 \
     WHERE token_digest = $2 AND used_at IS NULL AND expires_at > $1 \
     AND EXISTS (SELECT 1 FROM token_families f \
                 WHERE f.id = $3 AND f.revoked_at IS NULL AND f.expires_at > $1)";
const INSERT_SUCCESSOR: &str = "INSERT INTO refresh_tokens \
     (token_digest, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)";
/// `last_used_at` is in whole seconds: a session refreshed again within the
/// same second already holds the value, so it is not written again (nor
/// moved back by a replica whose clock is behind).
const TOUCH_FAMILY: &str = "UPDATE token_families SET last_used_at = $1 \
     WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)";

fn apply_one(conn: &Connection, r: &Rotation) -> rusqlite::Result<RotateOutcome> {
    let consumed =
        conn.prepare_cached(CONSUME)?
            .execute(params![r.now, r.presented, r.family_id])?;
    if consumed != 1 {
        return Ok(RotateOutcome::NotApplied);
    }
    conn.prepare_cached(INSERT_SUCCESSOR)?.execute(params![
        r.successor,
        r.family_id,
        r.now,
        r.successor_expires_at
    ])?;
    conn.prepare_cached(TOUCH_FAMILY)?
        .execute(params![r.now, r.family_id])?;
    if let Some(e) = &r.event {
        let c = super::audit::EventColumns::of(e);
        conn.prepare_cached(super::audit::INSERT)?.execute(params![
            c.at,
            c.actor,
            c.action,
            c.subject,
            c.detail,
            c.severity,
            c.user_id,
            c.client_id,
            c.ip,
            c.user_agent,
            c.session_id,
            c.data,
        ])?;
    }
    Ok(RotateOutcome::Rotated)
}
