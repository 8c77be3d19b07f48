//! Sessions and access-token policy: who is behind a bearer token and whether
//! it is still live, a user's sessions (list, end one, logout, logout-all),
//! the admin's view of them, RFC 7009 revocation and RFC 7662 introspection.
//!
//! A session is one refresh-token family: started by a login
//! ([`crate::grant::TokenService::start_session`]), extended by every refresh,
//! ended by logout, revocation, reuse detection, a password change or
//! disabling the user. Access tokens carry the session id as `sid`.
//!
//! Offline verifiers only see signatures and `exp`; these checks are what
//! latchkey's own endpoints (userinfo, introspection, account, admin) add:
//! the `jti` denylist, the session, the user's disabled flag and their
//! logout-all instant. Nothing here knows HTTP.

pub mod cleanup;
mod device;
mod live;
mod revocation;

use std::sync::Arc;

use serde::Serialize;

pub use device::device_label;

use crate::audit::{Event, EventType};
use crate::clock::{SharedClock, UnixTime};
use crate::grant::{TokenService, internal};
use crate::keyring::KeyRing;
use crate::oauth::{Error, ErrorCode};
use crate::store::{FamilyRow, Store};
use crate::token::claims::VerifiedAccess;
use crate::token::verify::verify_access;

#[derive(Clone)]
pub struct Sessions {
    store: Store,
    ring: Arc<KeyRing>,
    clock: SharedClock,
    issuer: Arc<str>,
    tokens: TokenService,
    origins: Arc<OriginCache>,
    live: Arc<live::LiveCache>,
}

/// A session as its user and admins see it.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub client_id: String,
    /// The `device_name` given at login, else a summary of the User-Agent.
    pub device: Option<String>,
    pub ip: Option<String>,
    pub created_at: UnixTime,
    pub last_used_at: UnixTime,
    pub expires_at: UnixTime,
    /// The session of the access token that asked (account endpoints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
}

impl SessionInfo {
    fn from_row(f: FamilyRow, current: Option<&str>) -> Self {
        Self {
            current: current.map(|c| c == f.id),
            id: f.id,
            client_id: f.client_id,
            device: f.device_label,
            ip: f.client_ip,
            created_at: f.created_at,
            last_used_at: f.last_used_at,
            expires_at: f.expires_at,
        }
    }
}

fn no_session() -> Error {
    Error::new(ErrorCode::NotFound, "no such session")
}

impl Sessions {
    pub fn new(
        store: Store,
        ring: Arc<KeyRing>,
        clock: SharedClock,
        issuer: &str,
        tokens: TokenService,
        cache_checks: bool,
    ) -> Self {
        Self {
            store,
            ring,
            clock,
            issuer: issuer.into(),
            tokens,
            origins: Arc::default(),
            live: Arc::new(live::LiveCache::new(cache_checks)),
        }
    }

    /// Verify a bearer token as a live latchkey access token (RFC 6750): a
    /// signature by a published key, this issuer, unexpired, and not ended
    /// by any revocation.
    pub async fn authenticate(&self, token: &str) -> Result<VerifiedAccess, Error> {
        let claims = verify_access(&self.ring.current(), &self.issuer, token, self.clock.now())
            .map_err(|e| Error::invalid_token(e.to_string()))?;
        if !self.is_live(&claims).await? {
            return Err(Error::invalid_token("the token has been revoked"));
        }
        Ok(claims)
    }

    /// Whether a verified access token survives every revocation.
    /// Positive answers are cached until the next revocation (`live.rs`).
    pub async fn is_live(&self, claims: &VerifiedAccess) -> Result<bool, Error> {
        let generation = self.store.revocation_generation();
        let now = self.clock.now();
        if self.live.get(&claims.jti, generation, now).is_some() {
            return Ok(true);
        }
        let state = self
            .store
            .access_state(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await
            .map_err(internal)?;
        let ok = live(claims, &state);
        if ok {
            self.live
                .put(&claims.jti, generation, claims.exp, now, None);
        }
        Ok(ok)
    }

    /// The account endpoints' rate limit, per address and per client.
    pub async fn admit(
        &self,
        ctx: &crate::oauth::RequestContext,
        claims: &VerifiedAccess,
    ) -> Result<(), Error> {
        self.tokens
            .limits()
            .check(
                crate::limits::Endpoint::Account,
                ctx,
                Some(&claims.client_id),
                None,
            )
            .await
    }

    /// A security event about the caller's own sessions.
    async fn record(&self, kind: EventType, claims: &VerifiedAccess, sid: Option<&str>, msg: &str) {
        let event = self
            .tokens
            .audit
            .event(kind)
            .actor(format!("user:{}", claims.sub))
            .user(&claims.sub)
            .client(&claims.client_id)
            .session(sid.unwrap_or(""))
            .message(msg);
        self.tokens.audit.record(event).await;
    }

    /// The caller must be a user's token with a session (account endpoints).
    fn user_session(claims: &VerifiedAccess) -> Result<&str, Error> {
        claims.sid.as_deref().ok_or_else(|| {
            Error::new(
                ErrorCode::InsufficientScope,
                "this endpoint needs an access token issued to a user's session",
            )
        })
    }

    /// The caller's own live sessions, the current one marked.
    pub async fn list_own(&self, claims: &VerifiedAccess) -> Result<Vec<SessionInfo>, Error> {
        let sid = Self::user_session(claims)?;
        let rows = self
            .store
            .list_sessions(&claims.sub, self.clock.now())
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|f| SessionInfo::from_row(f, Some(sid)))
            .collect())
    }

    /// End one of the caller's own sessions; another user's id is "not found".
    pub async fn end_own(&self, claims: &VerifiedAccess, id: &str) -> Result<(), Error> {
        Self::user_session(claims)?;
        let family = self.store.find_family(id).await.map_err(internal)?;
        match family {
            Some(f) if f.user_id == claims.sub && f.revoked_at.is_none() => {
                self.store
                    .revoke_family(id, self.clock.now(), "ended by its user")
                    .await
                    .map_err(internal)?;
                tracing::info!(user_id = %claims.sub, session = %id, "session ended by its user");
                self.record(
                    EventType::FamilyRevoked,
                    claims,
                    Some(id),
                    "session ended by its user",
                )
                .await;
                Ok(())
            }
            _ => Err(no_session()),
        }
    }

    /// Logout: end the caller's session and deny the presented access token
    /// until its `exp`.
    pub async fn logout(&self, claims: &VerifiedAccess) -> Result<(), Error> {
        let sid = Self::user_session(claims)?;
        self.store
            .logout(Some(sid), &claims.jti, claims.exp, self.clock.now())
            .await
            .map_err(internal)?;
        tracing::info!(user_id = %claims.sub, session = %sid, "logout");
        self.record(EventType::Logout, claims, Some(sid), "logout")
            .await;
        Ok(())
    }

    /// Logout everywhere: end every session of the user, and refuse every
    /// access token issued to the user before now.
    pub async fn logout_all(&self, claims: &VerifiedAccess) -> Result<u64, Error> {
        Self::user_session(claims)?;
        let now = self.clock.now();
        let n = self
            .store
            .revoke_user_sessions(&claims.sub, now, "logout-all", Some(now))
            .await
            .map_err(internal)?;
        tracing::info!(user_id = %claims.sub, sessions = n, "logout from every device");
        self.record(
            EventType::LogoutAll,
            claims,
            None,
            &format!("{n} sessions ended"),
        )
        .await;
        Ok(n)
    }

    /// Admin: a user's live sessions by username.
    pub async fn list_for_user(&self, username: &str) -> Result<Vec<SessionInfo>, Error> {
        list_for_user(&self.store, self.clock.now(), username).await
    }

    /// Admin: end one session by id.
    pub async fn revoke_by_id(&self, id: &str, actor: &str) -> Result<(), Error> {
        revoke_by_id(&self.store, self.clock.now(), id, actor).await
    }

    /// Admin: end every session of a user. Returns how many ended.
    pub async fn revoke_for_user(&self, username: &str, actor: &str) -> Result<u64, Error> {
        revoke_for_user(&self.store, self.clock.now(), username, actor).await
    }
}

// The admin operations need only the store, so the CLI calls them directly
// (it has no key ring); the HTTP admin API reaches them through [`Sessions`].

/// A user's live sessions by username.
pub async fn list_for_user(
    store: &Store,
    now: UnixTime,
    username: &str,
) -> Result<Vec<SessionInfo>, Error> {
    let user = find_user(store, username).await?;
    let rows = store.list_sessions(&user, now).await.map_err(internal)?;
    Ok(rows
        .into_iter()
        .map(|f| SessionInfo::from_row(f, None))
        .collect())
}

/// End one session by id; "not found" if it is unknown or already ended.
pub async fn revoke_by_id(
    store: &Store,
    now: UnixTime,
    id: &str,
    actor: &str,
) -> Result<(), Error> {
    let ended = store
        .revoke_family(id, now, "revoked by an admin")
        .await
        .map_err(internal)?;
    if !ended {
        return Err(no_session());
    }
    tracing::info!(actor, session = %id, "session revoked by an admin");
    let event = Event::new(EventType::FamilyRevoked, now)
        .actor(actor)
        .session(id)
        .subject(id)
        .message("revoked by an admin");
    event.emit();
    if let Err(e) = store.append_event(&event).await {
        tracing::error!(error = %e, "cannot record the revocation");
    }
    Ok(())
}

/// End every session of a user; returns how many ended.
pub async fn revoke_for_user(
    store: &Store,
    now: UnixTime,
    username: &str,
    actor: &str,
) -> Result<u64, Error> {
    let user = find_user(store, username).await?;
    let n = store
        .revoke_user_sessions(&user, now, "revoked by an admin", None)
        .await
        .map_err(internal)?;
    tracing::info!(actor, user_id = %user, sessions = n, "sessions revoked by an admin");
    let event = Event::new(EventType::FamilyRevoked, now)
        .actor(actor)
        .user(&user)
        .subject(username)
        .message(format!("{n} sessions revoked by an admin"));
    event.emit();
    if let Err(e) = store.append_event(&event).await {
        tracing::error!(error = %e, "cannot record the revocation");
    }
    Ok(n)
}

async fn find_user(store: &Store, username: &str) -> Result<String, Error> {
    store
        .find_user_by_username(username)
        .await
        .map_err(internal)?
        .map(|u| u.id)
        .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such user"))
}

/// OIDC Core §5.3.2: the claims userinfo returns for the granted scope.
#[derive(Debug, Clone, Serialize)]
pub struct UserInfo {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Sessions {
    /// Userinfo for a bearer token: verification, every revocation check,
    /// the profile and the roles, with one database round trip.
    ///
    /// The answer is cached per `jti` until the next revocation (`live.rs`);
    /// the signature and `exp` are checked on every call.
    pub async fn userinfo(&self, token: &str) -> Result<UserInfo, Error> {
        let now = self.clock.now();
        let claims = verify_access(&self.ring.current(), &self.issuer, token, now)
            .map_err(|e| Error::invalid_token(e.to_string()))?;
        let generation = self.store.revocation_generation();
        if let Some(live::Hit::Info(info)) = self.live.get(&claims.jti, generation, now) {
            return Ok(UserInfo::clone(&info));
        }
        let info = self.userinfo_uncached(&claims).await?;
        self.live.put(
            &claims.jti,
            generation,
            claims.exp,
            now,
            Some(Arc::new(info.clone())),
        );
        Ok(info)
    }

    async fn userinfo_uncached(&self, claims: &VerifiedAccess) -> Result<UserInfo, Error> {
        let (state, user) = self
            .store
            .access_state_with_user(&claims.jti, claims.sid.as_deref(), &claims.sub)
            .await
            .map_err(internal)?;
        if !live(claims, &state) {
            return Err(Error::invalid_token("the token has been revoked"));
        }
        let scope = crate::oauth::Scope::from_stored(&claims.scope);
        if !scope.contains("openid") {
            return Err(Error::new(
                ErrorCode::InsufficientScope,
                "userinfo requires the openid scope",
            ));
        }
        let (user, roles) = user
            .filter(|(u, _)| !u.disabled)
            .ok_or_else(|| Error::invalid_token("the token's user no longer exists"))?;
        Ok(UserInfo {
            sub: user.id,
            preferred_username: scope.contains("profile").then_some(user.username),
            email: if scope.contains("email") {
                user.email
            } else {
                None
            },
            roles,
        })
    }
}

/// Whether a verified access token survives every revocation in `state`.
fn live(claims: &VerifiedAccess, state: &crate::store::AccessState) -> bool {
    !state.jti_denied
        && !state.session_dead
        && !state.user_disabled
        && claims.iat >= state.not_before
}

/// Registered client origins, re-read from the database at most every
/// [`ORIGINS_TTL`], so that clients registered by the CLI are honoured
/// within seconds.
#[derive(Default)]
pub(crate) struct OriginCache {
    inner: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<String>)>>,
}

const ORIGINS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Sessions {
    /// Whether some client registered `origin` (for CORS).
    pub async fn origin_allowed(&self, origin: &str) -> bool {
        let mut guard = self.origins.inner.lock().await;
        if let Some((at, list)) = guard.as_ref()
            && at.elapsed() < ORIGINS_TTL
        {
            return list.binary_search_by(|o| o.as_str().cmp(origin)).is_ok();
        }
        match self.store.all_client_origins().await {
            Ok(list) => {
                let ok = list.binary_search_by(|o| o.as_str().cmp(origin)).is_ok();
                *guard = Some((tokio::time::Instant::now(), list));
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read client origins");
                false
            }
        }
    }
}
