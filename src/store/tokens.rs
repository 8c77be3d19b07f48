//! Refresh-token families and tokens, and the access-token denylist.
//!
//! A family is one login; each refresh consumes the presented token and adds
//! its successor to the family, inside one write transaction. The consuming
//! `UPDATE ... WHERE used_at IS NULL` is the atomic step: of any number of
//! concurrent presentations of one token, exactly one sees a row.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct FamilyRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    /// The scope granted at login: the upper bound for every refresh.
    pub scope: String,
    pub auth_time: UnixTime,
    pub expires_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
}

fn family(row: &AnyRow) -> Result<FamilyRow> {
    Ok(FamilyRow {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        client_id: row.try_get("client_id")?,
        scope: row.try_get("scope")?,
        auth_time: row.try_get("auth_time")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const FAMILY_COLUMNS: &str = "id, user_id, client_id, scope, auth_time, expires_at, revoked_at";

pub struct NewFamily<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub now: UnixTime,
    pub expires_at: UnixTime,
}

/// What a presented refresh token turned out to be.
pub enum RefreshLookup {
    /// Unused: it is consumed in the open transaction, which the caller commits
    /// with a successor or drops (rolling the consumption back).
    Fresh(PendingRotation),
    /// Already used: reuse. The family has been revoked and that is committed.
    Reused { family: FamilyRow },
    /// No such token.
    Unknown,
}

/// A consumed refresh token whose successor is not yet written.
pub struct PendingRotation {
    tx: Transaction<'static, Any>,
    pub family: FamilyRow,
    /// Idle expiry of the presented token.
    pub token_expires_at: UnixTime,
}

impl PendingRotation {
    /// The family's user and roles, read on this transaction's connection (a
    /// second pool connection here could starve the pool under contention).
    pub async fn load_user(&mut self) -> Result<Option<(super::UserRow, Vec<String>)>> {
        let Some(user) = super::users::find_user_on(&mut self.tx, &self.family.user_id).await?
        else {
            return Ok(None);
        };
        let roles = super::users::user_roles_on(&mut self.tx, &user.id).await?;
        Ok(Some((user, roles)))
    }

    /// Store the successor and commit the rotation.
    pub async fn commit(
        mut self,
        successor_digest: &[u8],
        now: UnixTime,
        expires_at: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_digest, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(successor_digest.to_vec())
        .bind(&self.family.id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Open a family for a new login with its first refresh token.
    pub async fn create_family(
        &self,
        f: NewFamily<'_>,
        token_digest: &[u8],
        token_expires_at: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO token_families (id, user_id, client_id, scope, auth_time, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $5, $6)",
        )
        .bind(f.id)
        .bind(f.user_id)
        .bind(f.client_id)
        .bind(f.scope)
        .bind(f.now)
        .bind(f.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_digest, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_digest.to_vec())
        .bind(f.id)
        .bind(f.now)
        .bind(token_expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Consume a refresh token, or detect its reuse (and revoke its family).
    pub async fn begin_refresh(&self, digest: &[u8], now: UnixTime) -> Result<RefreshLookup> {
        let mut tx = self.begin_write().await?;
        // The write comes first so that, on every backend, the lock is taken
        // before anything is read.
        let consumed = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_digest = $2 AND used_at IS NULL \
             RETURNING family_id, expires_at",
        )
        .bind(now)
        .bind(digest.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(consumed) = consumed else {
            let used = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_digest = $1")
                .bind(digest.to_vec())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(used) = used else {
                return Ok(RefreshLookup::Unknown);
            };
            let family_id: String = used.try_get("family_id")?;
            revoke_family_in(&mut tx, &family_id, now, "refresh token reuse").await?;
            let fam = fetch_family(&mut tx, &family_id).await?;
            tx.commit().await?;
            return Ok(match fam {
                Some(family) => RefreshLookup::Reused { family },
                None => RefreshLookup::Unknown,
            });
        };
        let family_id: String = consumed.try_get("family_id")?;
        let token_expires_at: UnixTime = consumed.try_get("expires_at")?;
        let Some(family) = fetch_family(&mut tx, &family_id).await? else {
            return Ok(RefreshLookup::Unknown);
        };
        Ok(RefreshLookup::Fresh(PendingRotation {
            tx,
            family,
            token_expires_at,
        }))
    }

    pub async fn find_family(&self, id: &str) -> Result<Option<FamilyRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FAMILY_COLUMNS} FROM token_families WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(family).transpose()
    }

    /// The family a refresh token belongs to, whether or not it was used.
    pub async fn find_family_by_token(
        &self,
        digest: &[u8],
    ) -> Result<Option<(FamilyRow, Option<UnixTime>, UnixTime)>> {
        let row = sqlx::query(
            "SELECT f.id, f.user_id, f.client_id, f.scope, f.auth_time, f.expires_at, f.revoked_at, \
             t.used_at AS token_used_at, t.expires_at AS token_expires_at \
             FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id WHERE t.token_digest = $1",
        )
        .bind(digest.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((
            family(&row)?,
            row.try_get("token_used_at")?,
            row.try_get("token_expires_at")?,
        )))
    }

    /// Revoke a family (logout, revocation, reuse). Returns whether it was live.
    pub async fn revoke_family(&self, id: &str, now: UnixTime, reason: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = revoke_family_in(&mut tx, id, now, reason).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Deny an access token by `jti` until it would have expired anyway.
    pub async fn revoke_access_token(&self, jti: &str, expires_at: UnixTime) -> Result<()> {
        sqlx::query("INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn is_access_token_revoked(&self, jti: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM revoked_access_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Delete expired refresh tokens, dead families and expired denylist rows.
    pub async fn purge_expired(&self, now: UnixTime) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let a = sqlx::query("DELETE FROM revoked_access_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM token_families WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(a + b)
    }
}

async fn fetch_family(tx: &mut Transaction<'static, Any>, id: &str) -> Result<Option<FamilyRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FAMILY_COLUMNS} FROM token_families WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(family).transpose()
}

async fn revoke_family_in(
    tx: &mut Transaction<'static, Any>,
    id: &str,
    now: UnixTime,
    reason: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE token_families SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
