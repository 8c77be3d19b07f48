//! Signing-key rows and the ring transaction.
//!
//! Every change to the key ring happens in a [`RingTx`]: its first statement
//! bumps `keyring_state.version`, which both takes the lock that serialises ring
//! changes across processes and replicas (a row lock in PostgreSQL, the write
//! lock in SQLite) and tells every replica polling the version to reload.

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use super::{Backend, Result, Store};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub public_der: Vec<u8>,
    pub wrapped_private: Option<Vec<u8>>,
    pub kms_provider: String,
    pub kms_key_ref: Option<String>,
    pub created_at: UnixTime,
    pub activate_at: UnixTime,
    pub activated_at: Option<UnixTime>,
    pub retiring_at: Option<UnixTime>,
    pub retire_at: Option<UnixTime>,
    pub retired_at: Option<UnixTime>,
    pub retired_reason: Option<String>,
}

fn key(row: &AnyRow) -> Result<KeyRow> {
    Ok(KeyRow {
        kid: row.try_get("kid")?,
        alg: row.try_get("alg")?,
        state: row.try_get("state")?,
        public_der: row.try_get("public_der")?,
        wrapped_private: row.try_get("wrapped_private")?,
        kms_provider: row.try_get("kms_provider")?,
        kms_key_ref: row.try_get("kms_key_ref")?,
        created_at: row.try_get("created_at")?,
        activate_at: row.try_get("activate_at")?,
        activated_at: row.try_get("activated_at")?,
        retiring_at: row.try_get("retiring_at")?,
        retire_at: row.try_get("retire_at")?,
        retired_at: row.try_get("retired_at")?,
        retired_reason: row.try_get("retired_reason")?,
    })
}

const KEY_SELECT: &str = "SELECT kid, alg, state, public_der, wrapped_private, kms_provider, kms_key_ref, \
     created_at, activate_at, activated_at, retiring_at, retire_at, retired_at, retired_reason FROM signing_keys";

/// A key to insert: material already made and wrapped by the KMS.
#[derive(Debug, Clone)]
pub struct NewKeyRow {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub public_der: Vec<u8>,
    pub wrapped_private: Option<Vec<u8>>,
    pub kms_provider: String,
    pub kms_key_ref: Option<String>,
    pub created_at: UnixTime,
    pub activate_at: UnixTime,
}

/// The database's clock, in Unix seconds: the one clock every replica shares.
async fn database_now_on(conn: &mut AnyConnection, backend: Backend) -> Result<UnixTime> {
    let sql = match backend {
        Backend::Sqlite => "SELECT CAST(strftime('%s', 'now') AS INTEGER) AS now",
        // clock_timestamp(), not now(): the time of this statement, not of the
        // transaction's start (the ring lock may have been waited for).
        Backend::Postgres => {
            "SELECT CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT) AS now"
        }
    };
    let row = sqlx::query(sql).fetch_one(conn).await?;
    Ok(row.try_get("now")?)
}

async fn list_keys_on(conn: &mut AnyConnection, include_retired: bool) -> Result<Vec<KeyRow>> {
    let sql = if include_retired {
        sqlx::AssertSqlSafe(format!("{KEY_SELECT} ORDER BY created_at, kid"))
    } else {
        sqlx::AssertSqlSafe(format!(
            "{KEY_SELECT} WHERE state <> 'retired' ORDER BY created_at, kid"
        ))
    };
    let rows = sqlx::query(sql).fetch_all(conn).await?;
    rows.iter().map(key).collect()
}

impl Store {
    /// The ring's change counter; replicas poll it to know when to reload.
    pub async fn ring_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT version FROM keyring_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    pub async fn list_keys(&self, include_retired: bool) -> Result<Vec<KeyRow>> {
        let mut conn = self.pool.acquire().await?;
        list_keys_on(&mut conn, include_retired).await
    }

    /// The database server's clock (Unix seconds).
    pub async fn database_now(&self) -> Result<UnixTime> {
        let mut conn = self.pool.acquire().await?;
        database_now_on(&mut conn, self.backend).await
    }

    /// Start a ring change: lock the ring and bump its version.
    pub async fn begin_ring(&self) -> Result<RingTx> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE keyring_state SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *tx)
        .await?;
        let version = row.try_get("version")?;
        Ok(RingTx {
            tx,
            version,
            backend: self.backend,
        })
    }
}

/// An open, locked key-ring transaction. Dropping it rolls back.
pub struct RingTx {
    tx: Transaction<'static, Any>,
    pub version: i64,
    backend: Backend,
}

impl RingTx {
    pub async fn list_keys(&mut self, include_retired: bool) -> Result<Vec<KeyRow>> {
        list_keys_on(&mut self.tx, include_retired).await
    }

    /// The database's clock, read inside the locked transaction.
    pub async fn database_now(&mut self) -> Result<UnixTime> {
        database_now_on(&mut self.tx, self.backend).await
    }

    pub async fn insert_key(&mut self, k: &NewKeyRow) -> Result<()> {
        let activated_at = (k.state == "active").then_some(k.created_at);
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, state, public_der, wrapped_private, kms_provider, kms_key_ref, \
             created_at, activate_at, activated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.state)
        .bind(k.public_der.clone())
        .bind(k.wrapped_private.clone())
        .bind(&k.kms_provider)
        .bind(k.kms_key_ref.clone())
        .bind(k.created_at)
        .bind(k.activate_at)
        .bind(activated_at)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| super::StoreError::conflict_or(e, format!("key {}", k.kid)))?;
        Ok(())
    }

    /// pending → active.
    pub async fn activate(&mut self, kid: &str, now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signing_keys SET state = 'active', activated_at = $1 WHERE kid = $2 AND state = 'pending'",
        )
        .bind(now)
        .bind(kid)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// active → retiring, published until `retire_at`.
    pub async fn start_retiring(
        &mut self,
        kid: &str,
        now: UnixTime,
        retire_at: UnixTime,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signing_keys SET state = 'retiring', retiring_at = $1, retire_at = $2 \
             WHERE kid = $3 AND state = 'active'",
        )
        .bind(now)
        .bind(retire_at)
        .bind(kid)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Any state → retired: unpublished, and the wrapped private key destroyed.
    pub async fn retire(&mut self, kid: &str, now: UnixTime, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signing_keys SET state = 'retired', retired_at = $1, retired_reason = $2, \
             wrapped_private = NULL, retiring_at = COALESCE(retiring_at, $1), retire_at = COALESCE(retire_at, $1) \
             WHERE kid = $3 AND state <> 'retired'",
        )
        .bind(now)
        .bind(reason)
        .bind(kid)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Append an audit event to this ring transaction.
    pub async fn append_event(&mut self, event: &crate::audit::Event) -> Result<()> {
        crate::audit::append(&mut self.tx, event).await
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
