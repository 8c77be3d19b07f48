//! Authorization codes (RFC 6749 §4.1), stored only as digests.
//!
//! Redeeming is one `UPDATE ... WHERE used_at IS NULL`: of concurrent
//! presentations of one code exactly one wins. A later presentation is a
//! replay: it is marked on the row so that the winner, which creates its
//! session after redeeming, can notice a replay that raced it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct CodeRow {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub auth_time: UnixTime,
    pub expires_at: UnixTime,
}

pub struct NewCode<'a> {
    pub digest: &'a [u8],
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub redirect_uri: &'a str,
    pub scope: &'a str,
    pub nonce: Option<&'a str>,
    pub code_challenge: &'a str,
    pub auth_time: UnixTime,
    pub now: UnixTime,
    pub expires_at: UnixTime,
}

/// What presenting a code turned out to be.
pub enum CodeRedemption {
    /// First use: the code is now spent and bound to `family_id`.
    Redeemed(CodeRow),
    /// Already used: the session it opened (if any) should be revoked.
    Replayed {
        family_id: Option<String>,
    },
    Unknown,
}

/// How long past its expiry a code is remembered for replay detection.
const REPLAY_MEMORY_SECS: i64 = 86_400;

const COLUMNS: &str =
    "client_id, user_id, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at";

fn code(row: &AnyRow) -> Result<CodeRow> {
    Ok(CodeRow {
        client_id: row.try_get("client_id")?,
        user_id: row.try_get("user_id")?,
        redirect_uri: row.try_get("redirect_uri")?,
        scope: row.try_get("scope")?,
        nonce: row.try_get("nonce")?,
        code_challenge: row.try_get("code_challenge")?,
        auth_time: row.try_get("auth_time")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl Store {
    pub async fn create_code(&self, c: NewCode<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_digest, client_id, user_id, redirect_uri, scope, nonce, \
             code_challenge, auth_time, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(c.digest.to_vec())
        .bind(c.client_id)
        .bind(c.user_id)
        .bind(c.redirect_uri)
        .bind(c.scope)
        .bind(c.nonce)
        .bind(c.code_challenge)
        .bind(c.auth_time)
        .bind(c.now)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spend a code, binding it to the session `family_id` it is about to open.
    /// The caller checks expiry, client, redirect URI and verifier afterwards:
    /// a code presented wrongly is spent all the same (a guessed or stolen code
    /// must not get a second try).
    pub async fn redeem_code(
        &self,
        digest: &[u8],
        family_id: &str,
        now: UnixTime,
    ) -> Result<CodeRedemption> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE authorization_codes SET used_at = $1, family_id = $2 \
             WHERE code_digest = $3 AND used_at IS NULL RETURNING {COLUMNS}"
        )))
        .bind(now)
        .bind(family_id)
        .bind(digest.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let c = code(&row)?;
            tx.commit().await?;
            return Ok(CodeRedemption::Redeemed(c));
        }
        let used = sqlx::query(
            "UPDATE authorization_codes SET replayed_at = $1 WHERE code_digest = $2 RETURNING family_id",
        )
        .bind(now)
        .bind(digest.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match used {
            Some(r) => CodeRedemption::Replayed {
                family_id: r.try_get("family_id")?,
            },
            None => CodeRedemption::Unknown,
        })
    }

    /// Whether a redeemed code has since been presented again.
    pub async fn code_replayed(&self, digest: &[u8]) -> Result<bool> {
        let row = sqlx::query("SELECT replayed_at FROM authorization_codes WHERE code_digest = $1")
            .bind(digest.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>("replayed_at")?.is_some(),
            None => false,
        })
    }
}

impl Store {
    /// Delete authorization codes and browser sessions that can no longer be
    /// used. A code is kept for a day past its expiry, so that a replay in
    /// that time is still recognised and revokes what the code issued.
    pub async fn purge_expired_sign_ins(&self, now: UnixTime) -> Result<u64> {
        let codes = sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
            .bind(now - REPLAY_MEMORY_SECS)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let sessions = sqlx::query(
            "DELETE FROM browser_sessions WHERE expires_at < $1 OR ended_at IS NOT NULL",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(codes + sessions)
    }
}
