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

mod authorization_code;
mod chain_cache;
pub use authorization_code::code_digest;
mod client_cache;
mod client_credentials;
pub mod issue;
pub mod password;
mod refresh;

use std::sync::Arc;

use crate::audit::Audit;
use crate::clock::{SharedClock, UnixTime};
use crate::config::TokenConfig;
use crate::keyring::RingError;
use crate::limits::lockout::Lockout;
use crate::limits::{Endpoint, Limits};
use crate::metrics::Metrics;
use crate::oauth::Alg;
use crate::oauth::scope::{ADMIN_ROLE, ADMIN_SCOPE};
use crate::oauth::wire::TokenResponse;
use crate::oauth::{ClientAuth, Error, ErrorCode, GrantType, RequestContext, Scope, TokenRequest};
use crate::secret;
use crate::secret::{SecretError, Secrets};
use crate::store::{ClientRow, NewFamily, Store, StoreError};
use crate::token::Minter;

/// Scopes that only make sense with a user behind the token (the admin scope
/// too: the admin API also needs a user's admin role).
const USER_SCOPES: [&str; 5] = ["openid", "profile", "email", "offline_access", ADMIN_SCOPE];

#[derive(Clone)]
pub struct TokenService {
    pub(crate) store: Store,
    pub(crate) secrets: Secrets,
    pub(crate) minter: Minter,
    pub(crate) clock: SharedClock,
    pub(crate) cfg: Arc<TokenConfig>,
    /// Security events without a transaction of their own (failed logins).
    pub(crate) audit: Audit,
    pub(crate) metrics: Metrics,
    clients: Arc<client_cache::ClientCache>,
    /// The state of refresh tokens just issued (`chain_cache.rs`).
    pub(crate) chain: Arc<chain_cache::ChainCache>,
    pub(crate) limits: Limits,
    pub(crate) lockout: Lockout,
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
    /// The audit event of the login, written in the session's transaction.
    pub event: Option<&'a crate::audit::Event>,
}

/// A client that proved who it is.
pub struct AuthenticatedClient {
    pub row: Arc<ClientRow>,
    pub alg: Alg,
    pub allowed_scopes: Arc<Scope>,
    /// The ceiling of client_credentials ([`client_cache::Registration::own_scopes`]).
    pub own_scopes: Arc<Scope>,
}

impl AuthenticatedClient {
    pub fn may(&self, grant: GrantType) -> bool {
        self.row.grant_types.split(' ').any(|g| g == grant.as_str())
    }
}

impl TokenService {
    #[allow(
        clippy::too_many_arguments,
        reason = "assembly hands each service over once, in app.rs"
    )]
    pub fn new(
        store: Store,
        secrets: Secrets,
        minter: Minter,
        clock: SharedClock,
        cfg: TokenConfig,
        metrics: Metrics,
        limits: Limits,
        lockout: Lockout,
    ) -> Self {
        Self {
            audit: Audit::new(store.clone(), clock.clone()),
            store,
            secrets,
            minter,
            clock,
            clients: Arc::new(client_cache::ClientCache::new(
                std::time::Duration::from_millis(cfg.clients_cache_millis),
            )),
            // Trusted only while revocations by other processes are followed.
            chain: Arc::new(chain_cache::ChainCache::new(cfg.revocation_poll_millis > 0)),
            cfg: Arc::new(cfg),
            metrics,
            limits,
            lockout,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Phase 0 and 1 for the endpoints beside `/token` (revocation,
    /// introspection, account): the caller's address limit, client
    /// authentication, then the client's limit.
    pub async fn authenticate_at(
        &self,
        endpoint: Endpoint,
        auth: &ClientAuth,
        ctx: &RequestContext,
    ) -> Result<AuthenticatedClient, Error> {
        self.limits.check(endpoint, ctx, None, None).await?;
        let client = self.authenticate(auth).await?;
        let unaddressed = RequestContext::default();
        self.limits
            .check(endpoint, &unaddressed, Some(&client.row.client_id), None)
            .await?;
        Ok(client)
    }

    /// Handle one token request end to end.
    pub async fn token(
        &self,
        auth: ClientAuth,
        request: TokenRequest,
        ctx: &RequestContext,
    ) -> Result<Issued, Error> {
        // Phase 0: rate limits, before any expensive work. The address (and,
        // for the password grant, the username) before client authentication,
        // so failed authentications count too; the client after it, so that
        // nobody can spend a client's budget by naming it.
        let username = match &request {
            TokenRequest::Password { username, .. } => Some(username.as_str()),
            _ => None,
        };
        self.limits
            .check(Endpoint::Token, ctx, None, username)
            .await?;
        let client = self.authenticate(&auth).await?;
        self.limits
            .check(
                Endpoint::Token,
                &RequestContext::default(),
                Some(&client.row.client_id),
                None,
            )
            .await?;
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
            TokenRequest::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                authorization_code::grant(self, &client, code, &redirect_uri, code_verifier, ctx)
                    .await
            }
        }?;
        self.metrics.token_issued(grant.as_str(), client.alg);
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
        let absolute = now.saturating_add(self.cfg.refresh_absolute_ttl().get());
        let idle = now
            .saturating_add(self.cfg.refresh_idle_ttl().get())
            .min(absolute);
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
                s.event,
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
                match &r.row.secret_digest {
                    Some(digest) if !r.row.is_public => {
                        self.secrets.verify_client_secret(secret.expose(), digest)
                    }
                    _ => false,
                }
            }
            (ClientAuth::Basic { secret, .. } | ClientAuth::Post { secret, .. }, None) => {
                // Same work as for a known client, so timing does not reveal ids.
                let _ = self.secrets.client_secret_digest(secret.expose());
                false
            }
            (ClientAuth::None { .. }, Some(r)) => r.row.is_public,
            (ClientAuth::None { .. }, None) => false,
        };
        let client_cache::Registration {
            row,
            allowed_scopes,
            own_scopes,
        } = match (ok, row) {
            (true, Some(r)) => r,
            _ => return Err(failed()),
        };
        let alg = Alg::parse(&row.token_alg).unwrap_or(self.cfg.default_alg);
        Ok(AuthenticatedClient {
            row,
            alg,
            allowed_scopes,
            own_scopes,
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

/// The admin-scope rule of a login: [`ADMIN_SCOPE`] is granted only when the
/// request names it (a default scope never includes it) and only to a user
/// with the [`ADMIN_ROLE`]; asking for it without the role is `invalid_scope`.
/// That the client may have it at all is the ceiling's business (`--admin`).
pub fn admin_scope_policy(
    scope: Scope,
    requested: Option<&Scope>,
    roles: &[String],
) -> Result<Scope, Error> {
    if !scope.contains(ADMIN_SCOPE) {
        return Ok(scope);
    }
    if !requested.is_some_and(|r| r.contains(ADMIN_SCOPE)) {
        return Ok(scope.without(ADMIN_SCOPE));
    }
    if !roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(Error::invalid_scope(format!(
            "the {ADMIN_SCOPE} scope requires a user with the {ADMIN_ROLE} role"
        )));
    }
    Ok(scope)
}

/// A refresh keeps the admin scope only while the user still has the role.
pub fn keep_admin_scope(scope: Scope, roles: &[String]) -> Scope {
    if roles.iter().any(|r| r == ADMIN_ROLE) {
        scope
    } else {
        scope.without(ADMIN_SCOPE)
    }
}

/// Who may drive `/admin/*`: a verified latchkey access token that carries
/// [`ADMIN_SCOPE`] (so it was issued to an admin client, on request) and whose
/// user has the [`ADMIN_ROLE`]. Either missing is `insufficient_scope`.
pub fn authorize_admin(scope: &str, roles: &[String]) -> Result<(), Error> {
    if !scope.split(' ').any(|s| s == ADMIN_SCOPE) {
        return Err(Error::new(
            ErrorCode::InsufficientScope,
            format!("the {ADMIN_SCOPE} scope is required"),
        ));
    }
    if !roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(Error::new(
            ErrorCode::InsufficientScope,
            format!("the {ADMIN_ROLE} role is required"),
        ));
    }
    Ok(())
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
    if let InternalError::Ring(RingError::Refused(why)) = &e {
        tracing::error!(reason = %why, "this replica refuses to sign; token request turned away");
        return Error::new(
            ErrorCode::TemporarilyUnavailable,
            "signing is paused on this server; try again shortly",
        );
    }
    if let InternalError::Secret(SecretError::Busy { retry_after_secs }) = &e {
        tracing::warn!("password hashing saturated; refusing a login");
        return Error::new(
            ErrorCode::TemporarilyUnavailable,
            "the server is busy; try again shortly",
        )
        .with_retry_after(*retry_after_secs);
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

    #[test]
    fn the_admin_scope_needs_a_request_and_the_role() {
        let all = Scope::parse("openid latchkey:admin").unwrap();
        let admin = vec!["admin".to_string()];
        let asked = Scope::parse("latchkey:admin").unwrap();
        // Not asked for: never granted by default, even to an admin.
        let s = admin_scope_policy(all.clone(), None, &admin).unwrap();
        assert!(!s.contains(ADMIN_SCOPE));
        assert!(
            admin_scope_policy(asked.clone(), Some(&asked), &admin)
                .unwrap()
                .contains(ADMIN_SCOPE)
        );
        let e = admin_scope_policy(asked.clone(), Some(&asked), &["dev".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidScope);
        assert!(!keep_admin_scope(all, &[]).contains(ADMIN_SCOPE));
        assert!(authorize_admin("openid latchkey:admin", &admin).is_ok());
        assert_eq!(
            authorize_admin("openid", &admin).unwrap_err().code,
            ErrorCode::InsufficientScope
        );
        assert!(authorize_admin("latchkey:admin", &[]).is_err());
    }
}
