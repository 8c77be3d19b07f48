//! The legacy view of the event log (`events list`, `GET /admin/events`): the
//! original six columns of every audit event. Writing and the full query API
//! are in `store::audit`.

use sqlx::Row;

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

impl Store {
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
