//! The durable event log: key transitions and admin actions (who, what, when, why).

use sqlx::{AnyConnection, Row};

use super::{Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: UnixTime,
    pub actor: String,
    pub action: String,
    pub subject: Option<String>,
    pub detail: String,
}

pub(super) async fn record_on(
    conn: &mut AnyConnection,
    at: UnixTime,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Record an event outside any other transaction (e.g. a failed KMS call).
    pub async fn record_event(
        &self,
        at: UnixTime,
        actor: &str,
        action: &str,
        subject: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        record_on(&mut conn, at, actor, action, subject, detail).await
    }

    /// The newest events first, optionally only one action.
    pub async fn list_events(&self, action: Option<&str>, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, subject, detail FROM events \
             WHERE (CAST($1 AS TEXT) IS NULL OR action = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(action)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
