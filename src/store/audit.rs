//! Audit event rows: append (on the caller's transaction or alone), filtered
//! pages by id, and batched deletion past retention.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};

use super::{Result, Store};
use crate::audit::{AuditQuery, Event};
use crate::clock::UnixTime;

/// One stored event as the query API shows it (wire names).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: UnixTime,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub actor: String,
    pub user: Option<String>,
    pub client: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub message: String,
    pub detail: serde_json::Value,
}

/// The one statement that appends an event (also run by the direct SQLite
/// rotation writer, with the same binds in the same order).
pub(super) const INSERT: &str = "INSERT INTO events (at, actor, action, subject, detail, \
     severity, user_id, client_id, ip, user_agent, session_id, data) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// An event's values for [`INSERT`]'s columns, under the columns' names:
/// the one place that decides what each column holds (`detail` the
/// one-line message, `data` the JSON detail). [`bind_event`], the direct
/// SQLite rotation writer and the grouped PostgreSQL rotation (which sends
/// them as JSON) all take their values from here.
#[derive(serde::Serialize)]
pub(super) struct EventColumns<'a> {
    pub at: UnixTime,
    pub actor: &'a str,
    pub action: &'static str,
    pub subject: Option<&'a str>,
    pub detail: &'a str,
    pub severity: &'static str,
    pub user_id: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub ip: Option<String>,
    pub user_agent: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub data: String,
}

impl<'a> EventColumns<'a> {
    pub fn of(e: &'a Event) -> Self {
        Self {
            at: e.at,
            actor: &e.actor,
            action: e.kind.as_str(),
            subject: e.subject.as_deref(),
            detail: &e.message,
            severity: e.severity.as_str(),
            user_id: e.user.as_deref(),
            client_id: e.client.as_deref(),
            ip: e.ip.map(|ip| ip.to_string()),
            user_agent: e.user_agent.as_deref(),
            session_id: e.session.as_deref(),
            data: e.detail.to_string(),
        }
    }
}

/// Bind `e`'s columns in [`INSERT`]'s order, after whatever `q` already
/// binds.
pub(super) fn bind_event<'q>(
    q: Query<'q, Any, AnyArguments>,
    e: &'q Event,
) -> Query<'q, Any, AnyArguments> {
    let c = EventColumns::of(e);
    q.bind(c.at)
        .bind(c.actor)
        .bind(c.action)
        .bind(c.subject)
        .bind(c.detail)
        .bind(c.severity)
        .bind(c.user_id)
        .bind(c.client_id)
        .bind(c.ip)
        .bind(c.user_agent)
        .bind(c.session_id)
        .bind(c.data)
}

/// Insert `event` on `conn` — pass the open transaction of the change the
/// event records (`&mut tx`), so both commit together.
pub async fn insert(conn: &mut AnyConnection, e: &Event) -> Result<()> {
    bind_event(sqlx::query(INSERT), e).execute(conn).await?;
    Ok(())
}

impl Store {
    /// Append one event in its own transaction (an autocommit statement).
    pub async fn append_event(&self, e: &Event) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, e).await
    }

    /// Events matching `q`, newest first, at most `limit`.
    pub async fn query_audit(&self, q: &AuditQuery, limit: i64) -> Result<Vec<AuditRow>> {
        // Only fixed fragments are concatenated; every value is bound.
        let mut sql = String::from(
            "SELECT id, at, actor, action, subject, detail, severity, user_id, client_id, ip, \
             user_agent, session_id, data FROM events WHERE 1 = 1",
        );
        let mut n = 0;
        let mut next = |col: &str, op: &str| {
            n += 1;
            format!(" AND {col} {op} ${n}")
        };
        // Binds must follow placeholder order, so build both in one pass.
        let mut order: Vec<Bind> = Vec::new();
        if let Some(v) = q.since {
            sql += &next("at", ">=");
            order.push(Bind::Int(v));
        }
        if let Some(v) = q.until {
            sql += &next("at", "<");
            order.push(Bind::Int(v));
        }
        if let Some(v) = &q.user {
            sql += &next("user_id", "=");
            order.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &q.client {
            sql += &next("client_id", "=");
            order.push(Bind::Text(v.clone()));
        }
        if let Some(v) = q.kind {
            sql += &next("action", "=");
            order.push(Bind::Text(v.as_str().to_string()));
        }
        if let Some(v) = q.severity {
            sql += &next("severity", "=");
            order.push(Bind::Text(v.as_str().to_string()));
        }
        if let Some(v) = q.before {
            sql += &next("id", "<");
            order.push(Bind::Int(v));
        }
        n += 1;
        sql += &format!(" ORDER BY id DESC LIMIT ${n}");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for b in order {
            query = match b {
                Bind::Int(v) => query.bind(v),
                Bind::Text(v) => query.bind(v),
            };
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data")?;
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("action")?,
                    severity: r.try_get("severity")?,
                    actor: r.try_get("actor")?,
                    user: r.try_get("user_id")?,
                    client: r.try_get("client_id")?,
                    ip: r.try_get("ip")?,
                    user_agent: r.try_get("user_agent")?,
                    session: r.try_get("session_id")?,
                    subject: r.try_get("subject")?,
                    message: r.try_get("detail")?,
                    detail: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
                })
            })
            .collect()
    }

    /// Delete up to `batch` of the oldest events with `at < cutoff`; returns the
    /// number deleted. One short statement: the caller loops.
    pub async fn delete_events_before(&self, cutoff: UnixTime, batch: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

enum Bind {
    Int(i64),
    Text(String),
}
