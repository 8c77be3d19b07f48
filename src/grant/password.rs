//! The resource owner password credentials grant (RFC 6749 §4.3).
//!
//! Unknown user, wrong password and disabled user all answer the same
//! `invalid_grant` after the same argon2 work, so neither the body nor the
//! timing tells an attacker which part was wrong. A successful login starts a
//! session (one refresh-token family) when the client may refresh.

use super::issue::{UserIssue, issue_for_user};
use super::{AuthenticatedClient, SessionStart, TokenService, internal, scope_policy};
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, GrantType, RequestContext, Scope};
use crate::secret;
use crate::session::device_label;

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
    let scope = scope_policy(requested, &client.allowed_scopes)?;
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
    let user = match user {
        Some(u) if verified && !u.disabled => u,
        _ => {
            tracing::info!(client_id = %client.row.client_id, "password grant refused");
            return Err(Error::bad_credentials());
        }
    };
    let roles = svc.store.user_roles(&user.id).await.map_err(internal)?;
    let now = svc.clock.now();

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

    // Stored last: if signing failed above, no orphan session exists.
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
        })
        .await?;
    }

    tracing::info!(client_id = %client.row.client_id, user_id = %user.id, scope = %response.scope, "password grant");
    Ok(response)
}
