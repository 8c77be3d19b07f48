//! Token-endpoint decisions. [`TokenService::token`] runs the phases every grant
//! shares, in order, before dispatching to one file per grant:
//!
//! 1. client authentication (`client_secret_basic`, `client_secret_post`, or
//!    `none` for clients registered public);
//! 2. the client must be allowed the grant type (`unauthorized_client`);
//! 3. the grant itself (`password.rs`, `refresh.rs`, `client_credentials.rs`),
//!    which applies the scope policy in [`scope_policy`].
//!
//! Grants return [`oauth::Error`] values; internal failures are logged here and
//! surface only as `server_error`. Nothing here knows HTTP.

mod client_cache;
mod client_credentials;
pub mod issue;
mod password;
mod refresh;

use std::sync::Arc;

use crate::clock::{SharedClock, UnixTime};
use crate::config::TokenConfig;
use crate::keyring::{Alg, RingError};
use crate::oauth::wire::TokenResponse;
use crate::oauth::{ClientAuth, Error, ErrorCode, GrantType, RequestContext, Scope, TokenRequest};
use crate::secret;
use crate::secret::{SecretError, Secrets};
use crate::store::{ClientRow, NewFamily, Store, StoreError};
use crate::token::Minter;

/// Scopes that only make sense with a user behind the token.
const USER_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

#[derive(Clone)]
pub struct TokenService {
    pub(crate) store: Store,
    pub(crate) secrets: Secrets,
    pub(crate) minter: Minter,
    pub(crate) clock: SharedClock,
    pub(crate) cfg: Arc<TokenConfig>,
    clients: Arc<client_cache::ClientCache>,
}

/// A token response and how to deliver it.
#[derive(Debug)]
pub struct Issued {
    pub response: TokenResponse,
    /// The client is a browser client: its refresh token goes into the
    /// HttpOnly cookie, and never into the JSON body.
    pub refresh_in_cookie: bool,
}

/// A new session, as a grant that logged a user in describes it.
pub struct SessionStart<'a> {
    pub family_id: &'a str,
    pub refresh_token: &'a str,
    pub user_id: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub auth_time: UnixTime,
    pub device_label: Option<&'a str>,
    pub client_ip: Option<&'a str>,
}

/// A client that proved who it is.
pub struct AuthenticatedClient {
    pub row: ClientRow,
    pub alg: Alg,
    pub allowed_scopes: Scope,
}

impl AuthenticatedClient {
    pub fn may(&self, grant: GrantType) -> bool {
        self.row.grant_types.split(' ').any(|g| g == grant.as_str())
    }
}

impl TokenService {
    pub fn new(
        store: Store,
        secrets: Secrets,
        minter: Minter,
        clock: SharedClock,
        cfg: TokenConfig,
    ) -> Self {
        Self {
            store,
            secrets,
            minter,
            clock,
            clients: Arc::new(client_cache::ClientCache::new(
                std::time::Duration::from_millis(cfg.clients_cache_millis),
            )),
            cfg: Arc::new(cfg),
        }
    }

    /// Handle one token request end to end.
    pub async fn token(
        &self,
        auth: ClientAuth,
        request: TokenRequest,
        ctx: &RequestContext,
    ) -> Result<Issued, Error> {
        let client = self.authenticate(&auth).await?;
        let grant = request.grant_type();
        if !client.may(grant) {
            return Err(Error::new(
                ErrorCode::UnauthorizedClient,
                format!("this client may not use the {} grant", grant.as_str()),
            ));
        }
        let response = match request {
            TokenRequest::Password {
                username,
                password,
                scope,
                device_name,
            } => password::grant(self, &client, &username, password, scope, device_name, ctx).await,
            TokenRequest::RefreshToken {
                refresh_token,
                scope,
                from_cookie,
            } => refresh::grant(self, &client, refresh_token, scope, from_cookie, ctx).await,
            TokenRequest::ClientCredentials { scope } => {
                client_credentials::grant(self, &client, scope).await
            }
        }?;
        Ok(Issued {
            refresh_in_cookie: client.row.refresh_cookie && response.refresh_token.is_some(),
            response,
        })
    }

    /// Start a session: one refresh-token family with its first token. Every
    /// grant that logs a user in calls this, so sessions look the same
    /// whatever the grant.
    pub async fn start_session(&self, s: SessionStart<'_>) -> Result<(), Error> {
        let now = self.clock.now();
        let ttl = |secs: u64| now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
        let absolute = ttl(self.cfg.refresh_absolute_ttl_secs);
        let idle = ttl(self.cfg.refresh_idle_ttl_secs).min(absolute);
        self.store
            .create_family(
                NewFamily {
                    id: s.family_id,
                    user_id: s.user_id,
                    client_id: s.client_id,
                    scope: s.scope,
                    auth_time: s.auth_time,
                    now,
                    expires_at: absolute,
                    device_label: s.device_label,
                    client_ip: s.client_ip,
                },
                &secret::refresh_token_digest(s.refresh_token),
                idle,
            )
            .await
            .map_err(internal)
    }

    /// Phase 1: who is the client. Every failure is the same `invalid_client`.
    pub async fn authenticate(&self, auth: &ClientAuth) -> Result<AuthenticatedClient, Error> {
        let failed = || Error::invalid_client("client authentication failed");
        let row = self
            .clients
            .get(&self.store, auth.client_id())
            .await
            .map_err(internal)?;
        let ok = match (auth, &row) {
            (ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. }, Some(r)) => {
                match &r.secret_digest {
                    Some(digest) if !r.is_public => self
                        .secrets
                        .verify_client_secret(secret.expose(), digest)
                        .map_err(internal)?,
                    _ => false,
                }
            }
            (ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. }, None) => {
                // Same work as for a known client, so timing does not reveal ids.
                let _ = self
                    .secrets
                    .client_secret_digest(secret.expose())
                    .map_err(internal)?;
                false
            }
            (ClientAuth::None { .. }, Some(r)) => r.is_public,
            (ClientAuth::None { .. }, None) => false,
        };
        let row = match (ok, row) {
            (true, Some(r)) => r,
            _ => return Err(failed()),
        };
        let alg = Alg::parse(&row.token_alg).unwrap_or(self.cfg.default_alg);
        let allowed_scopes = Scope::from_stored(&row.scopes);
        Ok(AuthenticatedClient {
            row,
            alg,
            allowed_scopes,
        })
    }
}

/// The scope a grant issues: the request (which must lie within `ceiling`), or
/// the whole ceiling when the request names none.
pub fn scope_policy(requested: Option<Scope>, ceiling: &Scope) -> Result<Scope, Error> {
    match requested {
        None => Ok(ceiling.clone()),
        Some(s) if s.is_subset(ceiling) => Ok(s),
        Some(s) => Err(Error::invalid_scope(format!(
            "scope not allowed here: {}",
            s.difference(ceiling).join(" ")
        ))),
    }
}

/// Log an internal failure with its cause; the client sees only `server_error`
/// (or `temporarily_unavailable` when no signing key is loaded).
pub fn internal<E: Into<InternalError>>(e: E) -> Error {
    let e = e.into();
    if let InternalError::Ring(RingError::NoActiveKey(alg)) = &e {
        tracing::error!(
            alg,
            "no active signing key loaded; refusing to issue tokens"
        );
        return Error::new(
            ErrorCode::TemporarilyUnavailable,
            "no signing key is available; try again shortly",
        );
    }
    tracing::error!(error = %e, "token request failed");
    Error::server_error()
}

#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn scope_policy_defaults_narrows_and_refuses_widening() {
        let ceiling = Scope::parse("openid api:read").unwrap();
        assert_eq!(scope_policy(None, &ceiling).unwrap(), ceiling);
        let narrow = Scope::parse("api:read").unwrap();
        assert_eq!(
            scope_policy(Some(narrow.clone()), &ceiling).unwrap(),
            narrow
        );
        let err =
            scope_policy(Some(Scope::parse("api:write openid").unwrap()), &ceiling).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidScope);
        assert!(err.description.contains("api:write"));
    }
}
