//! The rotation writer: refresh-token rotations committed in groups.
//!
//! A durable commit costs one `fsync` (about a millisecond on a typical disk),
//! and SQLite admits one writer at a time, so one transaction per rotation
//! caps refresh throughput near 1,000/s whatever the CPU does. Rotations are
//! therefore sent to writer tasks that take every rotation waiting in the
//! queue (up to [`MAX_BATCH`]) and apply them in one transaction: one lock
//! acquisition and one `fsync` for the group.
//!
//! Each rotation in a group is still checked and applied on its own: its
//! consuming `UPDATE` is conditional (token unused and unexpired, session
//! live), and only if it consumed the token are the successor and the
//! session's `last_used_at` written. A rotation that does not apply writes
//! nothing, so a group never contains half a rotation. A caller hears back
//! only after the group committed, so an answered rotation is durable at the
//! database's configured durability (SQLite `synchronous = FULL`).
//!
//! SQLite gets one writer (it has one write lock anyway), a thread with a
//! direct connection of its own (`sqlite_direct.rs`) that also waits up to
//! [`MAX_LINGER`] for rotations announced as on their way
//! ([`Store::announce_rotation`]). PostgreSQL gets one task on the pool
//! ([`POSTGRES_WRITERS`]), each group one statement (one round trip, see
//! [`PG_ROTATE_GROUP`]), whose row locks are taken in digest order.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Backend, Result, Store, StoreError, sqlite_direct};
use crate::clock::UnixTime;

/// Most rotations committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Rotations waiting for a writer before callers wait to enqueue.
const QUEUE: usize = 4096;
/// PostgreSQL writer tasks. Row locks would let several groups commit side
/// by side, but with a group one statement, fewer and larger groups cost
/// less per rotation than parallel small ones: refresh ES256 on two cores
/// (c=32, alternating runs) went from 4,390–4,540/s at p99 11.6–12.7 ms with
/// four writers to 4,709–5,300/s with two and 5,290–5,307/s at p99 9.7–9.8 ms
/// with one, PostgreSQL's own CPU falling from about 205 to 145 µs per
/// refresh; without `BEGIN`/`COMMIT` around the statement ([`apply`]) one
/// writer measured 5,277–5,464/s at p99 9.3–9.7 ms, two 5,133–5,190/s at
/// p99 10.3–10.7 ms. One writer also cannot deadlock with another on a
/// group's rows.
const POSTGRES_WRITERS: usize = 1;

/// One rotation: consume `presented`, store `successor`.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub presented: Vec<u8>,
    pub successor: Vec<u8>,
    pub family_id: String,
    pub now: UnixTime,
    /// Idle expiry of the successor.
    pub successor_expires_at: UnixTime,
    /// An audit event written in the same transaction when the rotation applies.
    pub event: Option<crate::audit::Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was consumed and the successor stored, durably.
    Rotated,
    /// Nothing was written: the token was already used (another presentation
    /// won), expired, or its session ended meanwhile.
    NotApplied,
}

pub(super) struct Job {
    pub(super) rotation: Rotation,
    reply: oneshot::Sender<Result<RotateOutcome>>,
}

/// The sending half, held by every [`Store`] clone.
#[derive(Debug, Clone)]
pub struct RotationWriter {
    tx: mpsc::Sender<Job>,
    /// Rotations announced and released ([`RotationIntent`]); only the
    /// SQLite writer waits for them.
    intents: Option<Arc<Intents>>,
}

/// Two running counts: rotations announced, and announced rotations released
/// (queued or abandoned). Each intent is released exactly once, so
/// `released <= announced` always.
#[derive(Debug, Default)]
pub(super) struct Intents {
    announced: AtomicU64,
    released: AtomicU64,
}

impl Intents {
    /// Where announcements stand now: a group opening takes this mark.
    pub(super) fn mark(&self) -> u64 {
        self.announced.load(Ordering::Acquire)
    }

    /// Whether some rotation announced before `mark` was taken may still be
    /// on its way. Released counts include later announcements, so this can
    /// end a wait early, never extend it.
    pub(super) fn pending_before(&self, mark: u64) -> bool {
        self.released.load(Ordering::Acquire) < mark
    }
}

/// A rotation on its way to the writer: its tokens are being signed. A
/// group the SQLite writer opens waits (for at most [`MAX_LINGER`]) for the
/// rotations announced before it opened, so that they commit with it instead
/// of paying a commit each; rotations announced later go to the next group,
/// so under a steady stream a group is not held open for the full linger by
/// newcomers while the rotations it already holds wait. With none announced it
/// commits at once, so a lone refresh never waits. Released just before the
/// rotation is queued (or when it is abandoned), so the writer never waits for
/// a rotation it already holds. On PostgreSQL it counts nothing.
#[derive(Debug)]
#[must_use = "an intent counts until it is dropped"]
pub struct RotationIntent(Option<Arc<Intents>>);

impl Drop for RotationIntent {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.released.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Longest a group waits for announced rotations before it commits.
pub(super) const MAX_LINGER: Duration = Duration::from_millis(1);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl RotationWriter {
    /// Start the writer tasks for `store`'s pool. They end when every
    /// [`Store`] clone (and so every sender) is gone.
    pub(super) fn start(store: &Store, sqlite_file: Option<&Path>) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let intents = match (store.backend, sqlite_file) {
            (Backend::Sqlite, Some(path)) => {
                let intents = Arc::new(Intents::default());
                sqlite_direct::spawn_writer(sqlite_direct::open(path)?, rx, intents.clone())?;
                Some(intents)
            }
            (Backend::Sqlite, None) => {
                return Err(StoreError::Batch(
                    "the SQLite rotation writer needs the database file".into(),
                ));
            }
            (Backend::Postgres, _) => {
                let rx = Arc::new(Mutex::new(rx));
                for _ in 0..POSTGRES_WRITERS {
                    let (pool, backend, rx) = (store.pool.clone(), store.backend, rx.clone());
                    let revocations = store.revocations.clone();
                    tokio::spawn(async move {
                        // A store without the writer, so this task holds no sender.
                        let store = Store {
                            pool,
                            backend,
                            writer: None,
                            revocations,
                            direct: None,
                        };
                        run(store, rx).await;
                    });
                }
                None
            }
        };
        Ok(Self { tx, intents })
    }
}

async fn run(store: Store, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // Row locks in one order, so two PostgreSQL writers cannot deadlock on
        // the token rows of one group.
        batch.sort_by(|a, b| a.rotation.presented.cmp(&b.rotation.presented));
        let mut result = apply(&store, &batch).await;
        if result.is_err() {
            // One retry: a deadlock victim or a busy timeout is transient, and
            // nothing of a failed group was committed.
            result = apply(&store, &batch).await;
        }
        finish(batch, result.map_err(|e| e.to_string()));
    }
}

/// Tell every caller of a group how it went, once the group committed (or
/// failed as a whole). The event's log line follows its committed row.
pub(super) fn finish(batch: Vec<Job>, result: std::result::Result<Vec<RotateOutcome>, String>) {
    match result {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                if outcome == RotateOutcome::Rotated
                    && let Some(event) = &job.rotation.event
                {
                    event.emit();
                }
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(msg) => {
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Batch(msg.clone())));
            }
        }
    }
}

/// A group on PostgreSQL: its one statement, committed on its own. A single
/// statement is atomic without `BEGIN`/`COMMIT` around it, and PostgreSQL
/// answers it only once its commit is flushed (`synchronous_commit = on`),
/// so the group costs one round trip instead of three. On a busy machine each
/// round trip also waits for PostgreSQL's process to get a core, so the
/// saved two shorten every group's wait, not only its CPU.
async fn apply(store: &Store, batch: &[Job]) -> Result<Vec<RotateOutcome>> {
    let mut conn = store.pool.acquire().await?;
    let rotations: Vec<&Rotation> = batch.iter().map(|j| &j.rotation).collect();
    apply_group(&mut conn, &rotations).await
}

/// A whole group of rotations on PostgreSQL in one statement (one round
/// trip, one plan execution): the group travels as one JSON array, one
/// element per rotation with its position `n`, and the statement answers the
/// positions it applied.
///
/// Each rotation is still decided on its own. The consuming `UPDATE` is
/// conditional per element (token unused and unexpired, session live), and
/// only the elements it consumed get their successor, their session's
/// `last_used_at` and their audit row; the data-modifying CTEs all see one
/// snapshot and apply together or not at all. Two presentations of one token
/// in a group match one row, which an `UPDATE … FROM` changes once: exactly
/// one of them applies, as when they were two statements.
///
/// A session's `last_used_at` (whole seconds) is written only when it moves
/// forward: a session refreshed again within the same second already holds
/// the value, and rewriting its row would only add a dead row version and WAL.
///
/// The token is found by its digest alone. Its family is the one the grant
/// read from that same row (a token's family never changes), so the family
/// is checked only in `token_families`: a `family_id` condition on
/// `refresh_tokens` let PostgreSQL's cached generic plan walk the family
/// index, every token of a long refresh chain, instead of the primary key.
/// The elements are in digest order ([`run`] sorts each group), which the
/// nested-loop plan follows when it locks the token rows, so writers (one
/// today, [`POSTGRES_WRITERS`]) would meet shared rows in one order; a
/// deadlock victim is retried once.
const PG_ROTATE_GROUP: &str = "\
WITH input AS ( \
  SELECT i.n, decode(i.presented, 'base64') AS presented, \
         decode(i.successor, 'base64') AS successor, i.family_id, i.now, \
         i.successor_expires_at, i.event \
  FROM json_to_recordset($1::json) AS i(n int, presented text, successor text, \
       family_id text, now bigint, successor_expires_at bigint, event json)), \
consumed AS (UPDATE refresh_tokens t SET used_at = i.now FROM input i \
  WHERE t.token_digest = i.presented AND t.used_at IS NULL AND t.expires_at > i.now \
  AND EXISTS (SELECT 1 FROM token_families f \
              WHERE f.id = i.family_id AND f.revoked_at IS NULL AND f.expires_at > i.now) \
  RETURNING i.n, t.family_id), \
applied AS (SELECT i.*, c.family_id AS consumed_family FROM input i JOIN consumed c ON c.n = i.n), \
successor AS (INSERT INTO refresh_tokens (token_digest, family_id, issued_at, expires_at) \
  SELECT successor, consumed_family, now, successor_expires_at FROM applied), \
touched AS (UPDATE token_families f SET last_used_at = a.now FROM applied a \
  WHERE f.id = a.consumed_family AND (f.last_used_at IS NULL OR f.last_used_at < a.now)), \
audited AS (INSERT INTO events (at, actor, action, subject, detail, severity, user_id, \
  client_id, ip, user_agent, session_id, data) \
  SELECT e.at, e.actor, e.action, e.subject, e.detail, e.severity, e.user_id, e.client_id, \
         e.ip, e.user_agent, e.session_id, e.data \
  FROM applied a, json_to_record(a.event) AS e(at bigint, actor text, action text, \
       subject text, detail text, severity text, user_id text, client_id text, ip text, \
       user_agent text, session_id text, data text) \
  WHERE a.event IS NOT NULL ORDER BY a.n) \
SELECT n FROM consumed";

/// One element of [`PG_ROTATE_GROUP`]'s JSON array, named as the
/// statement's `json_to_recordset` columns; digests travel as base64.
#[derive(serde::Serialize)]
struct GroupElement<'a> {
    n: usize,
    presented: String,
    successor: String,
    family_id: &'a str,
    now: UnixTime,
    successor_expires_at: UnixTime,
    event: Option<super::audit::EventColumns<'a>>,
}

/// Apply `rotations` on PostgreSQL in one statement on `conn`; one outcome
/// per rotation, in order.
async fn apply_group(
    conn: &mut AnyConnection,
    rotations: &[&Rotation],
) -> Result<Vec<RotateOutcome>> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let input: Vec<GroupElement<'_>> = rotations
        .iter()
        .enumerate()
        .map(|(n, r)| GroupElement {
            n,
            presented: b64(&r.presented),
            successor: b64(&r.successor),
            family_id: &r.family_id,
            now: r.now,
            successor_expires_at: r.successor_expires_at,
            event: r.event.as_ref().map(super::audit::EventColumns::of),
        })
        .collect();
    let input = serde_json::to_string(&input)
        .map_err(|e| StoreError::Batch(format!("cannot encode the group: {e}")))?;
    let rows = sqlx::query(PG_ROTATE_GROUP)
        .bind(input)
        .fetch_all(conn)
        .await?;
    let mut out = vec![RotateOutcome::NotApplied; rotations.len()];
    for row in rows {
        let n: i32 = row.try_get("n")?;
        let slot = usize::try_from(n)
            .ok()
            .and_then(|n| out.get_mut(n))
            .ok_or_else(|| StoreError::Batch(format!("the group answered position {n}")))?;
        *slot = RotateOutcome::Rotated;
    }
    Ok(out)
}

impl Store {
    /// Announce a rotation that will reach [`Store::rotate`] once its tokens
    /// are signed; pass the intent along with it.
    pub fn announce_rotation(&self) -> RotationIntent {
        let intents = self.writer.as_ref().and_then(|w| w.intents.as_ref());
        RotationIntent(intents.map(|n| {
            n.announced.fetch_add(1, Ordering::AcqRel);
            n.clone()
        }))
    }

    /// Apply one rotation through the group-commit writer; returns once the
    /// group holding it has committed. `intent` (from
    /// [`Store::announce_rotation`]) is released as the rotation is queued.
    pub async fn rotate(
        &self,
        rotation: Rotation,
        intent: RotationIntent,
    ) -> Result<RotateOutcome> {
        let Some(writer) = &self.writer else {
            // Only the PostgreSQL writer tasks' own handle lacks a writer;
            // they never rotate.
            let mut conn = self.pool.acquire().await?;
            let out = apply_group(&mut conn, &[&rotation]).await?;
            return Ok(out.into_iter().next().unwrap_or(RotateOutcome::NotApplied));
        };
        let (reply, rx) = oneshot::channel();
        drop(intent);
        writer
            .tx
            .send(Job { rotation, reply })
            .await
            .map_err(|_| StoreError::Batch("the rotation writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Batch("the rotation writer has stopped".into()))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::audit::{Event, EventType};
    use crate::config::{DatabaseConfig, DatabaseUrl};
    use crate::store::{ClientRow, NewFamily};

    const NOW: UnixTime = 1_000_000;

    #[test]
    fn a_group_waits_only_for_rotations_announced_before_it_opened() {
        let intents = Arc::new(Intents::default());
        let announce = || {
            intents.announced.fetch_add(1, Ordering::AcqRel);
            RotationIntent(Some(intents.clone()))
        };
        assert!(!intents.pending_before(intents.mark()), "nothing announced");
        let (early, other) = (announce(), announce());
        let mark = intents.mark();
        let late = announce();
        assert!(intents.pending_before(mark));
        drop(early);
        assert!(
            intents.pending_before(mark),
            "one announced before the mark is still out"
        );
        drop(other);
        assert!(
            !intents.pending_before(mark),
            "a later announcement does not hold the group"
        );
        assert!(
            intents.pending_before(intents.mark()),
            "but it holds the next one"
        );
        drop(late);
        assert!(!intents.pending_before(intents.mark()));
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        store_at(DatabaseUrl::Sqlite(dir.path().join("lk.db"))).await
    }

    /// A fresh PostgreSQL database on the server of `LATCHKEY_TEST_DATABASE_URL`,
    /// or `None` when it is not set (a laptop without PostgreSQL).
    #[allow(
        clippy::disallowed_methods,
        reason = "a test's switch, read from the environment like the integration tests'"
    )]
    async fn postgres_store() -> Option<Store> {
        use sqlx::Connection as _;
        let base = std::env::var("LATCHKEY_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        sqlx::any::install_default_drivers();
        let name = format!(
            "lk_unit_{}",
            crate::secret::random_id()
                .unwrap()
                .to_lowercase()
                .replace(['-', '_'], "x")
        );
        let mut conn = sqlx::AnyConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let (scheme, rest) = base.split_once("://").unwrap();
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        Some(
            store_at(DatabaseUrl::Postgres(format!(
                "{scheme}://{authority}/{name}"
            )))
            .await,
        )
    }

    async fn store_at(url: DatabaseUrl) -> Store {
        let store = Store::connect(&DatabaseConfig {
            url,
            max_connections: 4,
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let event = Event::new(EventType::TokenRefresh, NOW);
        store
            .create_user("u1", "alice", "hash", None, &[], NOW, &event)
            .await
            .unwrap();
        let client = ClientRow {
            client_id: "app".into(),
            secret_digest: None,
            is_public: true,
            grant_types: "refresh_token".into(),
            scopes: "openid".into(),
            token_alg: "ES256".into(),
            created_at: NOW,
            redirect_uris: String::new(),
            post_logout_redirect_uris: String::new(),
            first_party: true,
            refresh_cookie: false,
            origins: String::new(),
            may_introspect: false,
        };
        store.create_client(&client, &event).await.unwrap();
        for (family, digest) in [("f1", b"t1"), ("f2", b"t2")] {
            store
                .create_family(
                    NewFamily {
                        id: family,
                        user_id: "u1",
                        client_id: "app",
                        scope: "openid",
                        auth_time: NOW,
                        now: NOW,
                        expires_at: NOW + 3600,
                        device_label: None,
                        client_ip: None,
                    },
                    digest,
                    NOW + 600,
                    None,
                )
                .await
                .unwrap();
        }
        store
    }

    fn rotation(presented: &[u8], successor: &[u8], family: &str, now: UnixTime) -> Rotation {
        Rotation {
            presented: presented.to_vec(),
            successor: successor.to_vec(),
            family_id: family.into(),
            now,
            successor_expires_at: now + 600,
            event: Some(
                Event::new(EventType::TokenRefresh, now)
                    .session(family)
                    .message("refresh token rotated"),
            ),
        }
    }

    async fn refresh_events(store: &Store) -> usize {
        store
            .list_events(Some(EventType::TokenRefresh.as_str()), 100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.detail == "refresh token rotated")
            .count()
    }

    /// Rotations announced and sent together (so the direct SQLite writer
    /// may group them) are each decided on their own: of two presentations
    /// of one token exactly one applies, a rotation of an ended session or
    /// of an unknown token writes nothing, and only the applied rotation
    /// leaves a successor, a `last_used_at` and an audit row.
    #[tokio::test]
    async fn a_group_applies_each_rotation_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        store.revoke_family("f2", NOW, "test").await.unwrap();
        let now = NOW + 10;
        // Announced together, as concurrent refreshes are.
        let intents: Vec<_> = (0..4).map(|_| store.announce_rotation()).collect();
        let mut intents = intents.into_iter();
        let mut next = || intents.next().unwrap();
        let (a, b, c, d) = tokio::join!(
            store.rotate(rotation(b"t1", b"s1", "f1", now), next()),
            store.rotate(rotation(b"t1", b"s1", "f1", now), next()),
            store.rotate(rotation(b"t2", b"s2", "f2", now), next()),
            // A token that does not exist.
            store.rotate(rotation(b"nope", b"s3", "f1", now), next()),
        );
        let outcomes = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == RotateOutcome::Rotated)
                .count(),
            1,
            "{outcomes:?}"
        );
        assert_eq!(outcomes[2], RotateOutcome::NotApplied);
        assert_eq!(outcomes[3], RotateOutcome::NotApplied);

        let (family, consumed) = store.refresh_token(b"t1").await.unwrap().unwrap();
        assert_eq!((family.as_str(), consumed.used_at), ("f1", Some(now)));
        let (_, successor) = store.refresh_token(b"s1").await.unwrap().unwrap();
        assert_eq!((successor.issued_at, successor.used_at), (now, None));
        assert!(store.refresh_token(b"s2").await.unwrap().is_none());
        assert!(store.refresh_token(b"s3").await.unwrap().is_none());
        let (_, untouched) = store.refresh_token(b"t2").await.unwrap().unwrap();
        assert_eq!(untouched.used_at, None);
        assert_eq!(refresh_events(&store).await, 1);
        let f1 = store.find_family("f1").await.unwrap().unwrap();
        assert_eq!(f1.last_used_at, now);
    }

    /// A session's `last_used_at` moves only forward: a rotation stamped
    /// earlier than the session's last use (a replica whose clock is behind)
    /// still applies but leaves the later time, on both backends.
    #[tokio::test]
    async fn last_used_at_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = vec![store(&dir).await];
        if let Some(pg) = postgres_store().await {
            stores.push(pg);
        }
        for store in stores {
            let later = NOW + 20;
            let outcome = store
                .rotate(
                    rotation(b"t1", b"s1", "f1", later),
                    store.announce_rotation(),
                )
                .await
                .unwrap();
            assert_eq!(outcome, RotateOutcome::Rotated);
            assert_eq!(
                store.find_family("f1").await.unwrap().unwrap().last_used_at,
                later
            );
            // The successor, presented through a clock 5 s behind.
            let outcome = store
                .rotate(
                    rotation(b"s1", b"s2", "f1", later - 5),
                    store.announce_rotation(),
                )
                .await
                .unwrap();
            assert_eq!(outcome, RotateOutcome::Rotated, "{:?}", store.backend);
            let (_, consumed) = store.refresh_token(b"s1").await.unwrap().unwrap();
            assert_eq!(consumed.used_at, Some(later - 5));
            assert_eq!(
                store.find_family("f1").await.unwrap().unwrap().last_used_at,
                later,
                "{:?}",
                store.backend
            );
            // And forward again.
            let outcome = store
                .rotate(
                    rotation(b"s2", b"s3", "f1", later + 7),
                    store.announce_rotation(),
                )
                .await
                .unwrap();
            assert_eq!(outcome, RotateOutcome::Rotated);
            assert_eq!(
                store.find_family("f1").await.unwrap().unwrap().last_used_at,
                later + 7
            );
        }
    }

    /// PostgreSQL's grouped statement decides each element of one group on
    /// its own, whatever else the group holds: of two presentations of one
    /// token exactly one applies, a rotation of an ended session or of an
    /// unknown token writes nothing, and only the applied one leaves a
    /// successor, a `last_used_at` and an audit row with the event's columns.
    #[tokio::test]
    async fn one_postgres_group_statement_applies_each_rotation_on_its_own() {
        let Some(store) = postgres_store().await else {
            eprintln!("LATCHKEY_TEST_DATABASE_URL is not set: the PostgreSQL group is not tested");
            return;
        };
        store.revoke_family("f2", NOW, "test").await.unwrap();
        let now = NOW + 10;
        let mut applied = rotation(b"t1", b"s1", "f1", now);
        if let Some(e) = applied.event.as_mut() {
            e.user = Some("u1".into());
            e.client = Some("app".into());
            e.ip = Some("192.0.2.7".parse().unwrap());
            e.user_agent = Some("agent \"quoted\", with ünïcode".into());
        }
        let group = [
            rotation(b"nope", b"s3", "f1", now),
            applied.clone(),
            rotation(b"t2", b"s2", "f2", now),
            applied,
        ];
        let mut conn = store.pool.acquire().await.unwrap();
        let outcomes = apply_group(&mut conn, &group.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(outcomes[0], RotateOutcome::NotApplied, "unknown token");
        assert_eq!(outcomes[2], RotateOutcome::NotApplied, "ended session");
        let mut twice = [outcomes[1], outcomes[3]];
        twice.sort_by_key(|o| *o == RotateOutcome::NotApplied);
        assert_eq!(
            twice,
            [RotateOutcome::Rotated, RotateOutcome::NotApplied],
            "{outcomes:?}"
        );

        let (family, consumed) = store.refresh_token(b"t1").await.unwrap().unwrap();
        assert_eq!((family.as_str(), consumed.used_at), ("f1", Some(now)));
        let (family, successor) = store.refresh_token(b"s1").await.unwrap().unwrap();
        assert_eq!(
            (
                family.as_str(),
                successor.issued_at,
                successor.expires_at,
                successor.used_at
            ),
            ("f1", now, now + 600, None)
        );
        assert!(store.refresh_token(b"s2").await.unwrap().is_none());
        assert!(store.refresh_token(b"s3").await.unwrap().is_none());
        let (_, untouched) = store.refresh_token(b"t2").await.unwrap().unwrap();
        assert_eq!(untouched.used_at, None);
        assert_eq!(
            store.find_family("f1").await.unwrap().unwrap().last_used_at,
            now
        );
        let query = crate::audit::AuditQuery {
            kind: Some(EventType::TokenRefresh),
            limit: 100,
            ..Default::default()
        };
        // The set-up's own rows (users, clients) carry no message.
        let events: Vec<_> = store
            .query_audit(&query, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| !e.message.is_empty())
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(
            (
                e.at,
                e.kind.as_str(),
                e.session.as_deref(),
                e.user.as_deref(),
                e.client.as_deref(),
                e.ip.as_deref(),
                e.user_agent.as_deref(),
                e.message.as_str(),
            ),
            (
                now,
                "token.refreshed",
                Some("f1"),
                Some("u1"),
                Some("app"),
                Some("192.0.2.7"),
                Some("agent \"quoted\", with ünïcode"),
                "refresh token rotated",
            )
        );

        // A second group finds the token used: nothing more is written.
        let again = apply_group(&mut conn, &[&rotation(b"t1", b"s1", "f1", now + 1)])
            .await
            .unwrap();
        assert_eq!(again, [RotateOutcome::NotApplied]);
        assert_eq!(refresh_events(&store).await, 1);
    }

    /// The direct read of the refresh state and the read through the pool
    /// decode the same row the same way.
    #[tokio::test]
    async fn the_direct_read_matches_the_pool_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let mut pooled = store.clone();
        pooled.direct = None;
        for digest in [&b"t1"[..], b"absent"] {
            let direct = store.refresh_state(digest).await.unwrap();
            let through_pool = pooled.refresh_state(digest).await.unwrap();
            assert_eq!(format!("{direct:?}"), format!("{through_pool:?}"));
        }
        let state = store.refresh_state(b"t1").await.unwrap().unwrap();
        assert_eq!(state.family.id, "f1");
        assert_eq!(state.user.unwrap().username, "alice");
        assert_eq!(state.token.expires_at, NOW + 600);
    }
}
