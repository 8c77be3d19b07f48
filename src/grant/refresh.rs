//! The refresh token grant (RFC 6749 §6) with rotation, reuse detection
//! (RFC 9700 §4.14.2) and retry-safe replay.
//!
//! The path never holds a write lock while it signs:
//! 1. read the token, its session and user without a lock (unknown or
//!    garbage tokens stop here and never touch the write lock), or take the
//!    state this process kept when it issued the token (`chain_cache.rs`:
//!    the rotation re-checks in the database what could have changed);
//! 2. decide, derive the successor (`Secrets::successor_token`, a keyed
//!    function of the presented token) and sign the new tokens;
//! 3. hand the rotation to the group-commit writer: a conditional consume of
//!    the presented token plus the insert of its successor, applied atomically.
//!
//! Retry-safe replay: presenting the *immediately previous* token again —
//! same client, within `refresh_retry_window_secs` of its first use, while
//! its successor is still unused — answers the same successor (it is derived,
//! not stored) with a fresh access token. Any other second presentation is
//! reuse: the session is revoked, as RFC 9700 asks. Concurrent presentations
//! of one token therefore all receive the one successor, never two.

use super::issue::{UserIssue, issue_for_user};
use super::{AuthenticatedClient, TokenService, internal, scope_policy};
use crate::audit::EventType;
use crate::oauth::request::{MAX_REFRESH_TOKEN_LEN, Password};
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, RequestContext, Scope};
use crate::secret;
use crate::store::{RefreshState, RotateOutcome, Rotation};

fn invalid() -> Error {
    Error::invalid_grant("the refresh token is invalid, expired or revoked")
}

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    token: Password,
    requested: Option<Scope>,
    from_cookie: bool,
    ctx: &RequestContext,
) -> Result<TokenResponse, Error> {
    // Browser clients: the token travels only in the cookie, and a
    // cookie-borne refresh must come from one of the client's origins.
    if client.row.refresh_cookie {
        if !from_cookie {
            return Err(Error::invalid_request(
                "this client's refresh token travels in its cookie, not in the body",
            ));
        }
        let allowed = ctx
            .origin
            .as_deref()
            .is_some_and(|o| client.row.origin_list().any(|r| r == o));
        if !allowed {
            return Err(Error::invalid_request(
                "a cookie refresh needs an Origin registered for this client",
            ));
        }
    } else if from_cookie {
        return Err(Error::invalid_request(
            "missing required parameter refresh_token",
        ));
    }

    let presented = token.expose();
    // Latchkey's refresh tokens are 43 characters; longer input cannot be one.
    if presented.len() > MAX_REFRESH_TOKEN_LEN {
        return Err(invalid());
    }
    let now = svc.clock.now();
    let digest = secret::refresh_token_digest(presented);
    // Announced before the state is read, so that the writer can wait for
    // this rotation and commit it with the others in flight.
    let intent = svc.store.announce_rotation();
    // Read before the state: what it says holds while the generation does.
    let generation = svc.store.revocation_generation();
    let kept = svc.chain.take(&digest, generation, now);
    svc.metrics.refresh_state_lookup(kept.is_some());
    let state = match kept {
        Some(kept) => kept,
        None => match svc.store.refresh_state(&digest).await.map_err(internal)? {
            Some(read) => read,
            None => return Err(invalid()),
        },
    };
    let family = &state.family;
    // Checked before anything is revoked: a client presenting another
    // client's token (used or not) must not be able to end that session.
    if family.client_id != client.row.client_id {
        tracing::warn!(family = %family.id, client_id = %client.row.client_id, "refresh token presented by another client");
        return Err(invalid());
    }
    if family.revoked_at.is_some() || family.expires_at <= now {
        return Err(invalid());
    }
    let successor = svc.secrets.successor_token(presented);
    if let Some(used_at) = state.token.used_at {
        // Already used: a retry of a lost response, or theft.
        return replay(svc, client, &state, used_at, successor, requested).await;
    }
    if state.token.expires_at <= now {
        return Err(invalid());
    }
    let response = mint(svc, client, &state, successor.clone(), requested).await?;
    let successor_expires_at = now
        .saturating_add(svc.cfg.refresh_idle_ttl().get())
        .min(family.expires_at);
    let successor_digest = secret::refresh_token_digest(&successor);
    let outcome = svc
        .store
        .rotate(
            Rotation {
                presented: digest.clone(),
                successor: successor_digest.clone(),
                family_id: family.id.clone(),
                now,
                successor_expires_at,
                // Written in the rotation's own transaction: no second write.
                event: Some(
                    svc.audit
                        .event(EventType::TokenRefresh)
                        .client(&client.row.client_id)
                        .user(&family.user_id)
                        .session(&family.id)
                        .context(ctx)
                        .message("refresh token rotated"),
                ),
            },
            intent,
        )
        .await
        .map_err(internal)?;
    match outcome {
        RotateOutcome::Rotated => {
            // Debug: the rotation's audit row and the request line record it.
            tracing::debug!(client_id = %client.row.client_id, family = %family.id, "refresh token rotated");
            svc.chain.put_successor(
                successor_digest,
                generation,
                state,
                now,
                successor_expires_at,
            );
            Ok(response)
        }
        RotateOutcome::NotApplied => {
            // Another presentation of this token won the race (or the session
            // ended meanwhile). Read again and decide as for a replay; the
            // winner's successor is ours too, so what was signed stands.
            let Some(fresh) = svc.store.refresh_state(&digest).await.map_err(internal)? else {
                return Err(invalid());
            };
            match fresh.token.used_at {
                Some(used_at) if replay_allowed(svc, &fresh, used_at, &successor).await? => {
                    Ok(response)
                }
                Some(_) => Err(reuse(svc, client, &fresh).await),
                None => Err(invalid()),
            }
        }
    }
}

/// A second presentation of a used token: the same successor within the
/// retry window, otherwise reuse.
async fn replay(
    svc: &TokenService,
    client: &AuthenticatedClient,
    state: &RefreshState,
    used_at: i64,
    successor: String,
    requested: Option<Scope>,
) -> Result<TokenResponse, Error> {
    if !replay_allowed(svc, state, used_at, &successor).await? {
        return Err(reuse(svc, client, state).await);
    }
    tracing::info!(client_id = %client.row.client_id, family = %state.family.id, "refresh retried within the window: same successor");
    mint(svc, client, state, successor, requested).await
}

/// Whether a used token may be answered with its successor again: the window
/// is on, it has not passed since the first use, and the successor exists
/// and is still unused (so this was the family's newest rotation).
async fn replay_allowed(
    svc: &TokenService,
    state: &RefreshState,
    used_at: i64,
    successor: &str,
) -> Result<bool, Error> {
    let window = svc.cfg.refresh_retry_window().get();
    let now = svc.clock.now();
    if window == 0 || now > used_at.saturating_add(window) || state.family.revoked_at.is_some() {
        return Ok(false);
    }
    let next = svc
        .store
        .refresh_token(&secret::refresh_token_digest(successor))
        .await
        .map_err(internal)?;
    Ok(
        matches!(next, Some((family, t)) if family == state.family.id && t.used_at.is_none() && t.expires_at > now),
    )
}

/// Reuse of a consumed token: revoke the session (every token of it, and via
/// `sid` its access tokens at latchkey's own endpoints).
async fn reuse(svc: &TokenService, client: &AuthenticatedClient, state: &RefreshState) -> Error {
    svc.metrics.refresh_reuse_detected();
    let now = svc.clock.now();
    match svc
        .store
        .revoke_family(&state.family.id, now, "refresh token reuse")
        .await
    {
        Ok(_) => tracing::warn!(
            family = %state.family.id,
            client_id = %client.row.client_id,
            "refresh token reuse: session revoked"
        ),
        Err(e) => return internal(e),
    }
    let event = svc
        .audit
        .event(EventType::RefreshReuse)
        .client(&client.row.client_id)
        .user(&state.family.user_id)
        .session(&state.family.id)
        .message("a consumed refresh token was presented again: session revoked");
    svc.audit.record(event).await;
    invalid()
}

/// Check the user and scope, then sign the new access (and ID) token.
async fn mint(
    svc: &TokenService,
    client: &AuthenticatedClient,
    state: &RefreshState,
    successor: String,
    requested: Option<Scope>,
) -> Result<TokenResponse, Error> {
    let family = &state.family;
    let Some(user) = state.user.as_ref().filter(|u| !u.disabled) else {
        return Err(invalid());
    };
    // Narrowing is allowed, widening never: the ceiling is what the login was
    // granted, less anything the client has lost since.
    let granted = Scope::from_stored(&family.scope);
    let ceiling = Scope::from_stored(
        &granted
            .iter()
            .filter(|s| client.allowed_scopes.contains(s))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let roles = state.roles.clone();
    // The admin scope survives a refresh only while the user keeps the role.
    let scope = super::keep_admin_scope(scope_policy(requested, &ceiling)?, &roles);
    issue_for_user(
        svc,
        client,
        UserIssue {
            user,
            roles,
            scope: &scope,
            session_id: Some(&family.id),
            auth_time: family.auth_time,
            refresh_token: Some(successor),
        },
    )
    .await
}
