//! OAuth clients. Secrets are stored only as keyed digests.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError};
use crate::clock::UnixTime;

#[derive(Debug, Clone)]
pub struct ClientRow {
    pub client_id: String,
    /// HMAC-SHA-256 of the secret; `None` for public clients.
    pub secret_digest: Option<Vec<u8>>,
    pub is_public: bool,
    /// Space-separated grant type names.
    pub grant_types: String,
    /// Space-separated scopes the client may request.
    pub scopes: String,
    pub token_alg: String,
    pub created_at: UnixTime,
    /// The refresh token travels only in an HttpOnly cookie, never in a body.
    pub refresh_cookie: bool,
    /// Space-separated browser origins (`scheme://host[:port]`) allowed to
    /// call latchkey with credentials for this client (CORS, cookie refresh).
    pub origins: String,
    /// A resource server allowed to introspect tokens issued to other clients.
    pub may_introspect: bool,
}

impl ClientRow {
    pub fn origin_list(&self) -> impl Iterator<Item = &str> {
        self.origins.split(' ').filter(|o| !o.is_empty())
    }
}

fn client(row: &AnyRow) -> Result<ClientRow> {
    Ok(ClientRow {
        client_id: row.try_get("client_id")?,
        secret_digest: row.try_get("secret_digest")?,
        is_public: row.try_get::<i64, _>("is_public")? != 0,
        grant_types: row.try_get("grant_types")?,
        scopes: row.try_get("scopes")?,
        token_alg: row.try_get("token_alg")?,
        created_at: row.try_get("created_at")?,
        refresh_cookie: row.try_get::<i64, _>("refresh_cookie")? != 0,
        origins: row.try_get("origins")?,
        may_introspect: row.try_get::<i64, _>("may_introspect")? != 0,
    })
}

const CLIENT_COLUMNS: &str = "client_id, secret_digest, is_public, grant_types, scopes, token_alg, \
     created_at, refresh_cookie, origins, may_introspect";

impl Store {
    pub async fn create_client(&self, c: &ClientRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO clients (client_id, secret_digest, is_public, grant_types, scopes, token_alg, \
             created_at, refresh_cookie, origins, may_introspect) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.client_id)
        .bind(c.secret_digest.clone())
        .bind(super::flag(c.is_public))
        .bind(&c.grant_types)
        .bind(&c.scopes)
        .bind(&c.token_alg)
        .bind(c.created_at)
        .bind(super::flag(c.refresh_cookie))
        .bind(&c.origins)
        .bind(super::flag(c.may_introspect))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_or(e, format!("client {}", c.client_id)))?;
        Ok(())
    }

    pub async fn find_client(&self, client_id: &str) -> Result<Option<ClientRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1"
        )))
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(client).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client).collect()
    }
}

impl Store {
    /// Every origin registered by any client (for CORS decisions).
    pub async fn all_client_origins(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT origins FROM clients WHERE origins <> ''")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let origins: String = r.try_get("origins")?;
            out.extend(
                origins
                    .split(' ')
                    .filter(|o| !o.is_empty())
                    .map(str::to_string),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}
