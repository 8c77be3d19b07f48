//! The resource owner password credentials grant (RFC 6749 §4.3).
//!
//! Unknown user, wrong password and disabled user all answer the same
//! `invalid_grant` after the same argon2 work, so neither the body nor the
//! timing tells an attacker which part was wrong. A locked account
//! (`limits::lockout`) answers the same too, even to the right password. A successful login starts a
//! session (one refresh-token family) when the client may refresh.

use super::issue::{UserIssue, issue_for_user};
use super::{AuthenticatedClient, SessionStart, TokenService, internal, scope_policy};
use crate::audit::EventType;
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, GrantType, RequestContext, Scope};
use crate::secret;
use crate::session::device_label;

/// Check a username and password: the one path every password sign-in takes
/// (this grant and the login page), so both answer the same generic error
/// after the same work, both count failures toward lockout, and both leave
/// the same audit events.
pub async fn verify_user(
    svc: &TokenService,
    username: &str,
    password: &Password,
    client_id: &str,
    ctx: &RequestContext,
) -> Result<crate::store::UserRow, Error> {
    let user = svc
        .store
        .find_user_by_username(username)
        .await
        .map_err(internal)?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let verified = svc
        .secrets
        .verify_password(password.expose().to_string(), stored)
        .await
        .map_err(internal)?;
    let now = svc.clock.now();
    let user = match user {
        Some(u) if svc.lockout.is_locked(&u, now) => {
            // Locked: refused whatever the password, and not counted, so the
            // lock cannot be extended by more failures.
            tracing::info!(client_id, user_id = %u.id, "password sign-in refused: account locked");
            return Err(Error::bad_credentials());
        }
        Some(u) if verified && !u.disabled => u,
        other => {
            if let Some(u) = other.as_ref().filter(|_| !verified) {
                svc.lockout
                    .record_failure(u, ctx, now)
                    .await
                    .map_err(internal)?;
            }
            svc.audit
                .record(
                    svc.audit
                        .event(EventType::LoginFailure)
                        .client(client_id)
                        .context(ctx)
                        .detail(crate::audit::login_failure_detail(
                            other
                                .as_ref()
                                .map(|u| (u.id.as_str(), u.username.as_str(), u.disabled)),
                            verified,
                        ))
                        .user(other.as_ref().map_or("", |u| u.id.as_str())),
                )
                .await;
            tracing::info!(client_id, "password sign-in refused");
            return Err(Error::bad_credentials());
        }
    };
    svc.lockout.record_success(&user).await.map_err(internal)?;
    Ok(user)
}

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    username: &str,
    password: Password,
    requested: Option<Scope>,
    device_name: Option<String>,
    ctx: &RequestContext,
) -> Result<TokenResponse, Error> {
    // Scope is checked before the password so that a malformed request costs
    // no hashing; the answer does not depend on the credentials.
    let scope = scope_policy(requested.clone(), &client.allowed_scopes)?;
    let user = verify_user(svc, username, &password, &client.row.client_id, ctx).await?;
    let now = svc.clock.now();
    let roles = svc.store.user_roles(&user.id).await.map_err(internal)?;
    let scope = super::admin_scope_policy(scope, requested.as_ref(), &roles)?;

    // A refresh token (and so a session) whenever the client may refresh;
    // offline_access is accepted but not required.
    let session = if client.may(GrantType::RefreshToken) {
        Some((
            secret::random_token().map_err(internal)?,
            secret::random_id().map_err(internal)?,
        ))
    } else {
        None
    };
    let response = issue_for_user(
        svc,
        client,
        UserIssue {
            user: &user,
            roles,
            scope: &scope,
            session_id: session.as_ref().map(|(_, id)| id.as_str()),
            auth_time: now,
            refresh_token: session.as_ref().map(|(t, _)| t.clone()),
        },
    )
    .await?;

    let login = svc
        .audit
        .event(EventType::LoginSuccess)
        .client(&client.row.client_id)
        .context(ctx)
        .user(&user.id)
        .session(session.as_ref().map_or("", |(_, id)| id.as_str()))
        .detail(serde_json::json!({ "grant": "password", "scope": response.scope }));
    // Stored last: if signing failed above, no orphan session exists. The
    // login's audit row goes in the session's transaction (one commit).
    if let Some((token, family_id)) = &session {
        let label = device_label(device_name.as_deref(), ctx.user_agent.as_deref());
        let ip = ctx.ip.map(|ip| ip.to_string());
        svc.start_session(SessionStart {
            family_id,
            refresh_token: token,
            user_id: &user.id,
            client_id: &client.row.client_id,
            scope: &response.scope,
            auth_time: now,
            device_label: label.as_deref(),
            client_ip: ip.as_deref(),
            event: Some(&login),
        })
        .await?;
    } else {
        svc.audit.record(login).await;
    }
    Ok(response)
}
