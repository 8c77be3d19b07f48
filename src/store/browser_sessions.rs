//! Browser sessions: the server side of the `__Host-latchkey-session` cookie
//! (single sign-on). Only a digest of the cookie value is stored.

use sqlx::Row;

use super::{Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct BrowserSessionRow {
    pub id: String,
    pub user_id: String,
    pub auth_time: UnixTime,
    pub expires_at: UnixTime,
}

impl Store {
    pub async fn create_browser_session(
        &self,
        s: &BrowserSessionRow,
        token_digest: &[u8],
        now: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO browser_sessions (id, token_digest, user_id, auth_time, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.id)
        .bind(token_digest.to_vec())
        .bind(&s.user_id)
        .bind(s.auth_time)
        .bind(now)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session a cookie digest names, if any (not ended, not expired,
    /// its user not disabled).
    pub async fn find_browser_session(
        &self,
        token_digest: &[u8],
        now: UnixTime,
    ) -> Result<Option<BrowserSessionRow>> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, s.auth_time, s.expires_at FROM browser_sessions s \
             JOIN users u ON u.id = s.user_id \
             WHERE s.token_digest = $1 AND s.ended_at IS NULL AND s.expires_at > $2 AND u.disabled = 0",
        )
        .bind(token_digest.to_vec())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(BrowserSessionRow {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                auth_time: r.try_get("auth_time")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// End the session a cookie digest names. Returns whether one was live.
    pub async fn end_browser_session(&self, token_digest: &[u8], now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE browser_sessions SET ended_at = $1 WHERE token_digest = $2 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(token_digest.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
