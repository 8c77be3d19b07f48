//! Sessions (refresh-token families), refresh tokens, and the access-token
//! denylist.
//!
//! A family is one login session; each refresh consumes the presented token
//! and adds its successor. Reads come first and take no lock
//! ([`Store::refresh_state`]); the consuming write is one short conditional
//! statement batch applied by the rotation writer (`store/rotation.rs`), so a
//! refresh never holds a write lock while tokens are signed. The consuming
//! `UPDATE ... WHERE used_at IS NULL` is the atomic step: of any number of
//! concurrent presentations of one token, exactly one consumes it.
//!
//! Every change that must end an access token early (a session ended, a `jti`
//! denied, a user disabled or logged out everywhere) bumps
//! `revocation_state.version` in the same transaction, so that caches of
//! access-token checks in every process can see it.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use super::columns::Columns;
use sqlx::{Any, Row, Transaction};

use super::{Backend, Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct FamilyRow {
    pub id: String,
    pub user_id: String,
    pub client_id: String,
    /// The scope granted at login: the upper bound for every refresh.
    pub scope: String,
    pub auth_time: UnixTime,
    pub created_at: UnixTime,
    pub last_used_at: UnixTime,
    pub expires_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
    pub device_label: Option<String>,
    pub client_ip: Option<String>,
}

pub(super) fn family(row: &impl Columns) -> Result<FamilyRow> {
    let created_at: UnixTime = row.int("created_at")?;
    Ok(FamilyRow {
        id: row.text("id")?,
        user_id: row.text("user_id")?,
        client_id: row.text("client_id")?,
        scope: row.text("scope")?,
        auth_time: row.int("auth_time")?,
        created_at,
        last_used_at: row.opt_int("last_used_at")?.unwrap_or(created_at),
        expires_at: row.int("expires_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        device_label: row.opt_text("device_label")?,
        client_ip: row.opt_text("client_ip")?,
    })
}

const FAMILY_COLUMNS: &str = "f.id, f.user_id, f.client_id, f.scope, f.auth_time, f.created_at, \
     f.last_used_at, f.expires_at, f.revoked_at, f.device_label, f.client_ip";

pub struct NewFamily<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub auth_time: UnixTime,
    pub now: UnixTime,
    pub expires_at: UnixTime,
    pub device_label: Option<&'a str>,
    pub client_ip: Option<&'a str>,
}

/// One refresh token as stored.
#[derive(Debug, Clone, Copy)]
pub struct TokenState {
    pub issued_at: UnixTime,
    /// Idle expiry.
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
}

/// Everything the refresh grant needs to decide, read without a lock.
#[derive(Debug, Clone)]
pub struct RefreshState {
    pub token: TokenState,
    pub family: FamilyRow,
    /// `None` if the user row is gone.
    pub user: Option<super::UserRow>,
    /// The user's roles, sorted (read in the same statement).
    pub roles: Vec<String>,
}

/// Whether an access token is still live as far as the database knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessState {
    pub jti_denied: bool,
    /// The session named by `sid` is revoked or gone.
    pub session_dead: bool,
    pub user_disabled: bool,
    /// The user's logout-all instant (0 = never).
    pub not_before: UnixTime,
}

impl Store {
    /// Open a session for a new login: its family row and first refresh token, and `event`
    /// (the login that opened it) in the same transaction, so a session never
    /// exists without its audit row and a login costs one commit.
    pub async fn create_family(
        &self,
        f: NewFamily<'_>,
        token_digest: &[u8],
        token_expires_at: UnixTime,
        event: Option<&crate::audit::Event>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO token_families (id, user_id, client_id, scope, auth_time, created_at, \
             last_used_at, expires_at, device_label, client_ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)",
        )
        .bind(f.id)
        .bind(f.user_id)
        .bind(f.client_id)
        .bind(f.scope)
        .bind(f.auth_time)
        .bind(f.now)
        .bind(f.expires_at)
        .bind(f.device_label)
        .bind(f.client_ip)
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
        if let Some(event) = event {
            crate::audit::append(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A refresh token with its session and user, read without taking a lock.
    pub async fn refresh_state(&self, digest: &[u8]) -> Result<Option<RefreshState>> {
        if let Some(direct) = &self.direct {
            match direct.refresh_state(digest) {
                Ok(state) => return Ok(state),
                // A busy or failed direct read is answered through the pool.
                Err(e) => {
                    tracing::warn!(error = %e, "direct SQLite read failed; reading through the pool")
                }
            }
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(refresh_state_sql(self.backend)))
            .bind(digest.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(refresh_state_of).transpose()
    }

    /// One refresh token's state, if it exists.
    pub async fn refresh_token(&self, digest: &[u8]) -> Result<Option<(String, TokenState)>> {
        let row = sqlx::query(
            "SELECT family_id, issued_at, expires_at, used_at FROM refresh_tokens WHERE token_digest = $1",
        )
        .bind(digest.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((
            row.try_get("family_id")?,
            TokenState {
                issued_at: row.try_get("issued_at")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
            },
        )))
    }

    pub async fn find_family(&self, id: &str) -> Result<Option<FamilyRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FAMILY_COLUMNS} FROM token_families f WHERE f.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(family).transpose()
    }

    /// A user's live sessions (not revoked, not expired), newest use first.
    pub async fn list_sessions(&self, user_id: &str, now: UnixTime) -> Result<Vec<FamilyRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FAMILY_COLUMNS} FROM token_families f \
             WHERE f.user_id = $1 AND f.revoked_at IS NULL AND f.expires_at > $2 \
             ORDER BY f.last_used_at DESC, f.id"
        )))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(family).collect()
    }

    /// End one session (logout, revocation, reuse, admin). Returns whether it was live.
    pub async fn revoke_family(&self, id: &str, now: UnixTime, reason: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = revoke_family_in(&mut tx, id, now, reason).await?;
        if n {
            self.commit_revocation(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(n)
    }

    /// End one session and deny one access token, together (logout).
    pub async fn logout(
        &self,
        family_id: Option<&str>,
        jti: &str,
        jti_expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let ended = match family_id {
            Some(id) => revoke_family_in(&mut tx, id, now, "logout").await?,
            None => false,
        };
        deny_jti_in(&mut tx, jti, jti_expires_at).await?;
        self.commit_revocation(tx).await?;
        Ok(ended)
    }

    /// End every live session of a user; with `not_before`, also refuse every
    /// access token issued to the user before that instant (logout-all).
    /// Returns how many sessions ended.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        now: UnixTime,
        reason: &str,
        not_before: Option<UnixTime>,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = revoke_user_sessions_in(&mut tx, user_id, now, reason).await?;
        if let Some(t) = not_before {
            sqlx::query("UPDATE users SET tokens_not_before = $1 WHERE id = $2")
                .bind(t)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit_revocation(tx).await?;
        Ok(n)
    }

    /// Deny an access token by `jti` until it would have expired anyway.
    pub async fn revoke_access_token(&self, jti: &str, expires_at: UnixTime) -> Result<()> {
        let mut tx = self.begin_write().await?;
        deny_jti_in(&mut tx, jti, expires_at).await?;
        self.commit_revocation(tx).await
    }

    /// Everything that can end an access token before its `exp`, in one round trip.
    pub async fn access_state(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<AccessState> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM revoked_access_tokens WHERE jti = $1) AS denied, \
               (SELECT COUNT(*) FROM token_families WHERE id = $2 AND revoked_at IS NULL) AS live, \
               (SELECT disabled FROM users WHERE id = $3) AS disabled, \
               (SELECT tokens_not_before FROM users WHERE id = $3) AS not_before",
        )
        .bind(jti)
        .bind(sid.unwrap_or(""))
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(AccessState {
            jti_denied: row.try_get::<i64, _>("denied")? > 0,
            session_dead: sid.is_some() && row.try_get::<i64, _>("live")? == 0,
            user_disabled: row.try_get::<Option<i64>, _>("disabled")?.unwrap_or(0) != 0,
            not_before: row.try_get::<Option<i64>, _>("not_before")?.unwrap_or(0),
        })
    }

    /// [`Store::access_state`] and the user's profile and roles, in one
    /// round trip (userinfo).
    pub async fn access_state_with_user(
        &self,
        jti: &str,
        sid: Option<&str>,
        user_id: &str,
    ) -> Result<(AccessState, Option<(super::UserRow, Vec<String>)>)> {
        let roles = self.roles_of("$3");
        let user_columns = super::users::JOINED_USER_COLUMNS;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT \
               (SELECT COUNT(*) FROM revoked_access_tokens WHERE jti = $1) AS denied, \
               (SELECT COUNT(*) FROM token_families WHERE id = $2 AND revoked_at IS NULL) AS live, \
               {user_columns}, u.tokens_not_before, {roles} AS u_roles \
             FROM (SELECT 1 AS one) x LEFT JOIN users u ON u.id = $3"
        )))
        .bind(jti)
        .bind(sid.unwrap_or(""))
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        let user = match super::users::joined_user(&row)? {
            Some(u) => Some((u, split_roles(row.try_get("u_roles")?))),
            None => None,
        };
        let state = AccessState {
            jti_denied: row.try_get::<i64, _>("denied")? > 0,
            session_dead: sid.is_some() && row.try_get::<i64, _>("live")? == 0,
            user_disabled: user.as_ref().is_some_and(|(u, _)| u.disabled),
            not_before: row
                .try_get::<Option<i64>, _>("tokens_not_before")?
                .unwrap_or(0),
        };
        Ok((state, user))
    }

    /// A scalar subquery: the roles of the user `user_expr` names, sorted and
    /// space-joined (role names contain no spaces), or NULL.
    fn roles_of(&self, user_expr: &str) -> String {
        roles_sql(self.backend, user_expr)
    }

    /// The counter bumped by every revocation (see the module docs).
    pub async fn revocation_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM revocation_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    /// This process's revocation generation (see [`Store::watch_revocations`]).
    /// Read it *before* asking the database about a token: a check filled
    /// at generation `g` is valid while the generation is still `g`.
    pub fn revocation_generation(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// A revocation by this process has committed, or another process's
    /// was seen.
    fn revoked_here(&self) {
        self.revocations.fetch_add(1, Ordering::AcqRel);
    }

    /// Commit a transaction that ends access tokens early: bump
    /// `revocation_state.version` in it (for other processes), commit, then
    /// bump this process's generation (for its own cached checks) before the
    /// caller answers. Every revoking write ends with this.
    pub(super) async fn commit_revocation(&self, mut tx: Transaction<'static, Any>) -> Result<()> {
        sqlx::query("UPDATE revocation_state SET version = version + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(())
    }

    /// Follow revocations made by other processes: read
    /// `revocation_state.version` every `interval` and bump this process's
    /// generation whenever it moved, until `shutdown`. A failed read bumps it
    /// too (nothing cached survives a moment this process could not see).
    pub async fn watch_revocations(
        &self,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut seen = None;
        loop {
            match self.revocation_version().await {
                Ok(v) if seen == Some(v) => {}
                Ok(v) => {
                    if seen.is_some() {
                        self.revoked_here();
                    }
                    seen = Some(v);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the revocation version");
                    self.revoked_here();
                    seen = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Delete at most `batch` rows of each kind that can no longer matter:
    /// refresh tokens past their idle expiry, sessions past their absolute
    /// expiry (with their tokens), and denylisted `jti`s past their `exp`.
    /// Each kind is its own short transaction, so the SQLite write lock is
    /// held only for one small batch at a time.
    pub async fn purge_expired_batch(&self, now: UnixTime, batch: i64) -> Result<PurgeCounts> {
        let mut counts = PurgeCounts::default();
        let mut tx = self.begin_write().await?;
        counts.refresh_tokens = sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_digest IN \
             (SELECT token_digest FROM refresh_tokens WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;

        let mut tx = self.begin_write().await?;
        // Tokens go first: no foreign-key cascade is relied upon.
        counts.refresh_tokens += sqlx::query(
            "DELETE FROM refresh_tokens WHERE family_id IN \
             (SELECT id FROM token_families WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        counts.sessions = sqlx::query(
            "DELETE FROM token_families WHERE id IN \
             (SELECT id FROM token_families WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A deleted session ends the access tokens that name it, as a
        // revocation does (cached checks must see it).
        if counts.sessions > 0 {
            self.commit_revocation(tx).await?;
        } else {
            tx.commit().await?;
        }

        let mut tx = self.begin_write().await?;
        counts.denied_jtis = sqlx::query(
            "DELETE FROM revoked_access_tokens WHERE jti IN \
             (SELECT jti FROM revoked_access_tokens WHERE expires_at < $1 LIMIT $2)",
        )
        .bind(now)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(counts)
    }

    /// Row counts of the tables cleanup works on (for operators and tests).
    pub async fn token_table_counts(&self) -> Result<PurgeCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM refresh_tokens) AS rt, \
             (SELECT COUNT(*) FROM token_families) AS fam, \
             (SELECT COUNT(*) FROM revoked_access_tokens) AS jti",
        )
        .fetch_one(&self.pool)
        .await?;
        let n =
            |c: &str| -> Result<u64> { Ok(u64::try_from(row.try_get::<i64, _>(c)?).unwrap_or(0)) };
        Ok(PurgeCounts {
            refresh_tokens: n("rt")?,
            sessions: n("fam")?,
            denied_jtis: n("jti")?,
        })
    }
}

/// [`Store::roles_of`] for `backend`.
fn roles_sql(backend: Backend, user_expr: &str) -> String {
    match backend {
        Backend::Sqlite => format!(
            "(SELECT group_concat(role, ' ') FROM (SELECT role FROM user_roles \
             WHERE user_id = {user_expr} ORDER BY role))"
        ),
        Backend::Postgres => format!(
            "(SELECT string_agg(role, ' ' ORDER BY role) FROM user_roles WHERE user_id = {user_expr})"
        ),
    }
}

/// The one query of [`Store::refresh_state`] on `backend`, built once (the
/// roles come along too, so the hot path makes one round trip).
pub(super) fn refresh_state_sql(backend: Backend) -> &'static str {
    fn build(backend: Backend) -> String {
        let roles = roles_sql(backend, "f.user_id");
        let user_columns = super::users::JOINED_USER_COLUMNS;
        format!(
            "SELECT {FAMILY_COLUMNS}, t.issued_at AS t_issued_at, t.expires_at AS t_expires_at, \
             t.used_at AS t_used_at, {user_columns}, {roles} AS u_roles \
             FROM refresh_tokens t JOIN token_families f ON f.id = t.family_id \
             LEFT JOIN users u ON u.id = f.user_id WHERE t.token_digest = $1"
        )
    }
    static SQLITE: LazyLock<String> = LazyLock::new(|| build(Backend::Sqlite));
    static POSTGRES: LazyLock<String> = LazyLock::new(|| build(Backend::Postgres));
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    }
}

/// A row selected by [`refresh_state_sql`].
pub(super) fn refresh_state_of(row: &impl Columns) -> Result<RefreshState> {
    Ok(RefreshState {
        roles: split_roles(row.opt_text("u_roles")?),
        token: TokenState {
            issued_at: row.int("t_issued_at")?,
            expires_at: row.int("t_expires_at")?,
            used_at: row.opt_int("t_used_at")?,
        },
        family: family(row)?,
        user: super::users::joined_user(row)?,
    })
}

/// The roles of a [`Store::roles_of`] column.
fn split_roles(joined: Option<String>) -> Vec<String> {
    joined
        .map(|r| {
            r.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Rows removed by one cleanup batch (or, from [`Store::token_table_counts`], present).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub refresh_tokens: u64,
    pub sessions: u64,
    pub denied_jtis: u64,
}

impl PurgeCounts {
    pub fn total(&self) -> u64 {
        self.refresh_tokens + self.sessions + self.denied_jtis
    }
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

pub(super) async fn revoke_user_sessions_in(
    tx: &mut Transaction<'static, Any>,
    user_id: &str,
    now: UnixTime,
    reason: &str,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE token_families SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

async fn deny_jti_in(
    tx: &mut Transaction<'static, Any>,
    jti: &str,
    expires_at: UnixTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
