//! Remembered consent: the scopes a user granted a (third-party) client.

use sqlx::Row;

use super::{Result, Store};
use crate::clock::UnixTime;

impl Store {
    /// The space-separated scopes `user_id` granted `client_id`, if any.
    pub async fn find_consent(&self, user_id: &str, client_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("scope"))
            .transpose()
            .map_err(Into::into)
    }

    /// Record (or replace) the scopes granted; callers pass the union of what
    /// was granted before and now.
    pub async fn save_consent(
        &self,
        user_id: &str,
        client_id: &str,
        scope: &str,
        now: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, scope, granted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, client_id) DO UPDATE SET scope = excluded.scope, granted_at = excluded.granted_at",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(scope)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
