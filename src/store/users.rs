//! Users and their roles.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::columns::Columns;
use super::{Result, Store, StoreError};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub email: Option<String>,
    pub disabled: bool,
    pub created_at: UnixTime,
    /// Counted failed logins since the last success or unlock.
    pub failed_logins: i64,
    /// Logins are refused until this time (lockout).
    pub locked_until: Option<UnixTime>,
}

fn user(row: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        email: row.try_get("email")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: row.try_get("created_at")?,
        failed_logins: row.try_get("failed_logins")?,
        locked_until: row.try_get("locked_until")?,
    })
}

/// The user columns under `u_` names, for statements that join `users u`.
pub(super) const JOINED_USER_COLUMNS: &str = "u.id AS u_id, u.username AS u_username, \
     u.password_hash AS u_password_hash, u.email AS u_email, u.disabled AS u_disabled, \
     u.created_at AS u_created_at, u.failed_logins AS u_failed_logins, \
     u.locked_until AS u_locked_until";

/// The user of a row selected with [`JOINED_USER_COLUMNS`]; `None` when the
/// (left) join found no user.
pub(super) fn joined_user(row: &impl Columns) -> Result<Option<UserRow>> {
    let Some(id) = row.opt_text("u_id")? else {
        return Ok(None);
    };
    Ok(Some(UserRow {
        id,
        username: row.text("u_username")?,
        password_hash: row.text("u_password_hash")?,
        email: row.opt_text("u_email")?,
        disabled: row.int("u_disabled")? != 0,
        created_at: row.int("u_created_at")?,
        failed_logins: row.int("u_failed_logins")?,
        locked_until: row.opt_int("u_locked_until")?,
    }))
}

const USER_COLUMNS: &str =
    "id, username, password_hash, email, disabled, created_at, failed_logins, locked_until";

impl Store {
    /// Create a user with roles; `event` is written in the same transaction.
    #[allow(
        clippy::too_many_arguments,
        reason = "one row, its roles and its event"
    )]
    pub async fn create_user(
        &self,
        id: &str,
        username: &str,
        password_hash: &str,
        email: Option<&str>,
        roles: &[String],
        now: UnixTime,
        event: &crate::audit::Event,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, email, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5)",
        )
        .bind(id)
        .bind(username)
        .bind(password_hash)
        .bind(email)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_or(e, format!("user {username}")))?;
        for role in roles {
            sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
                .bind(id)
                .bind(role)
                .execute(&mut *tx)
                .await?;
        }
        crate::audit::append(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn find_user_by_username(&self, username: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn find_user(&self, id: &str) -> Result<Option<UserRow>> {
        let mut conn = self.pool.acquire().await?;
        find_user_on(&mut conn, id).await
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user).collect()
    }

    /// The user's roles, sorted.
    pub async fn user_roles(&self, user_id: &str) -> Result<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        user_roles_on(&mut conn, user_id).await
    }

    /// Count one failed login atomically; returns the new count.
    pub async fn count_login_failure(&self, user_id: &str, now: UnixTime) -> Result<i64> {
        let row = sqlx::query(
            "UPDATE users SET failed_logins = failed_logins + 1, updated_at = $2 \
             WHERE id = $1 RETURNING failed_logins",
        )
        .bind(user_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get("failed_logins"))
            .transpose()?
            .unwrap_or(0))
    }

    pub async fn lock_user(&self, user_id: &str, until: UnixTime) -> Result<()> {
        sqlx::query("UPDATE users SET locked_until = $2 WHERE id = $1")
            .bind(user_id)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn reset_login_failures(&self, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Clear a user's lockout and failure count; false when there is no such user.
    pub async fn unlock_user(&self, username: &str, now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET failed_logins = 0, locked_until = NULL, updated_at = $2 \
             WHERE username = $1",
        )
        .bind(username)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Disable or re-enable a login. Disabling also revokes every live
    /// refresh-token family of the user, in the same transaction, as is `event`.
    pub async fn set_user_disabled(
        &self,
        username: &str,
        disabled: bool,
        now: UnixTime,
        event: &crate::audit::Event,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE username = $3")
                .bind(super::flag(disabled))
                .bind(now)
                .bind(username)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if disabled {
            sqlx::query(
                "UPDATE token_families SET revoked_at = $1, revoked_reason = 'user disabled' \
                 WHERE revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE username = $2)",
            )
            .bind(now)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        }
        crate::audit::append(&mut tx, event).await?;
        self.commit_revocation(tx).await?;
        Ok(true)
    }

    /// Replace a user's password hash and end every session of the user, in
    /// one transaction. Returns the user id and how many sessions ended, or
    /// `None` for an unknown user.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: &str,
        now: UnixTime,
    ) -> Result<Option<(String, u64)>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: String = row.try_get("id")?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(password_hash)
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let ended =
            super::tokens::revoke_user_sessions_in(&mut tx, &id, now, "password changed").await?;
        self.commit_revocation(tx).await?;
        Ok(Some((id, ended)))
    }
}

pub(super) async fn find_user_on(conn: &mut AnyConnection, id: &str) -> Result<Option<UserRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(user).transpose()
}

pub(super) async fn user_roles_on(conn: &mut AnyConnection, user_id: &str) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role")
        .bind(user_id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("role")?)).collect()
}
