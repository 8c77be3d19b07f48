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
//! SQLite gets one writer (it has one write lock anyway); PostgreSQL gets a
//! few, whose row locks are taken in digest order within a group.

use std::sync::Arc;

use sqlx::{Any, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Backend, Result, Store, StoreError};
use crate::clock::UnixTime;

/// Most rotations committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Rotations waiting for a writer before callers wait to enqueue.
const QUEUE: usize = 4096;

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

struct Job {
    rotation: Rotation,
    reply: oneshot::Sender<Result<RotateOutcome>>,
}

/// The sending half, held by every [`Store`] clone.
#[derive(Debug, Clone)]
pub struct RotationWriter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl RotationWriter {
    /// Start the writer tasks for `store`'s pool. They end when every
    /// [`Store`] clone (and so every sender) is gone.
    pub(super) fn start(store: &Store) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let writers = match store.backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 4,
        };
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            let (pool, backend, rx) = (store.pool.clone(), store.backend, rx.clone());
            let revocations = store.revocations.clone();
            tokio::spawn(async move {
                // A store without the writer, so this task holds no sender.
                let store = Store {
                    pool,
                    backend,
                    writer: None,
                    revocations,
                };
                run(store, rx).await;
            });
        }
        Self { tx }
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
        match result {
            Ok(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    // The event's log line follows its committed row.
                    if outcome == RotateOutcome::Rotated
                        && let Some(event) = &job.rotation.event
                    {
                        event.emit();
                    }
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Batch(msg.clone())));
                }
            }
        }
    }
}

async fn apply(store: &Store, batch: &[Job]) -> Result<Vec<RotateOutcome>> {
    let mut tx = store.begin_write().await?;
    let mut out = Vec::with_capacity(batch.len());
    for job in batch {
        out.push(apply_one(&mut tx, &job.rotation).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn apply_one(tx: &mut Transaction<'static, Any>, r: &Rotation) -> Result<RotateOutcome> {
    let consumed = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $1 \
         WHERE token_digest = $2 AND used_at IS NULL AND expires_at > $1 AND family_id = $3 \
         AND EXISTS (SELECT 1 FROM token_families f \
                     WHERE f.id = $3 AND f.revoked_at IS NULL AND f.expires_at > $1)",
    )
    .bind(r.now)
    .bind(r.presented.clone())
    .bind(&r.family_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if consumed != 1 {
        return Ok(RotateOutcome::NotApplied);
    }
    sqlx::query(
        "INSERT INTO refresh_tokens (token_digest, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(r.successor.clone())
    .bind(&r.family_id)
    .bind(r.now)
    .bind(r.successor_expires_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE token_families SET last_used_at = $1 WHERE id = $2")
        .bind(r.now)
        .bind(&r.family_id)
        .execute(&mut **tx)
        .await?;
    if let Some(event) = &r.event {
        super::audit::insert(tx, event).await?;
    }
    Ok(RotateOutcome::Rotated)
}

impl Store {
    /// Apply one rotation through the group-commit writer; returns once the
    /// group holding it has committed.
    pub async fn rotate(&self, rotation: Rotation) -> Result<RotateOutcome> {
        let Some(writer) = &self.writer else {
            // Only the writer tasks' own handle lacks a writer; they never rotate.
            let mut tx = self.begin_write().await?;
            let out = apply_one(&mut tx, &rotation).await?;
            tx.commit().await?;
            return Ok(out);
        };
        let (reply, rx) = oneshot::channel();
        writer
            .tx
            .send(Job { rotation, reply })
            .await
            .map_err(|_| StoreError::Batch("the rotation writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Batch("the rotation writer has stopped".into()))?
    }
}
