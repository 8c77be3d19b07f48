//! The resource owner password credentials grant (RFC 6749 §4.3).
//!
//! Unknown user, wrong password and disabled user all answer the same
//! `invalid_grant` after the same argon2 work, so neither the body nor the
//! timing tells an attacker which part was wrong. A locked account
//! (`limits::lockout`) answers the same too, even to the right password.

use super::{AuthenticatedClient, TokenService, internal, scope_policy};
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, GrantType, RequestContext, Scope};
use crate::secret;
use crate::store::NewFamily;
use crate::token::{Grant, IdentityInfo};

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    username: &str,
    password: Password,
    requested: Option<Scope>,
    ctx: &RequestContext,
) -> Result<TokenResponse, Error> {
    // Scope is checked before the password so that a malformed request costs
    // no hashing; the answer does not depend on the credentials.
    let scope = scope_policy(requested.clone(), &client.allowed_scopes)?;
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
            tracing::info!(client_id = %client.row.client_id, user_id = %u.id, "password grant refused: account locked");
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
            tracing::info!(client_id = %client.row.client_id, "password grant refused");
            return Err(Error::bad_credentials());
        }
    };
    svc.lockout.record_success(&user).await.map_err(internal)?;
    let roles = svc.store.user_roles(&user.id).await.map_err(internal)?;
    let scope = super::admin_scope_policy(scope, requested.as_ref(), &roles)?;
    let scope_text = scope.to_string();

    // A refresh token whenever the client may refresh; offline_access is accepted
    // but not required.
    let (refresh_token, family_id) = if client.may(GrantType::RefreshToken) {
        let token = secret::random_token().map_err(internal)?;
        let family_id = secret::random_id().map_err(internal)?;
        (Some(token), Some(family_id))
    } else {
        (None, None)
    };

    let grant = Grant {
        subject: &user.id,
        client_id: &client.row.client_id,
        scope: scope_text.clone(),
        roles,
        session_id: family_id.as_deref(),
    };
    let access_token = svc
        .minter
        .access_token(&grant, client.alg)
        .await
        .map_err(internal)?;
    let id_token = if scope.contains("openid") {
        let info = IdentityInfo {
            username: &user.username,
            email: user.email.as_deref(),
            auth_time: now,
            include_profile: scope.contains("profile"),
            include_email: scope.contains("email"),
        };
        Some(
            svc.minter
                .id_token(&user.id, &client.row.client_id, &info, client.alg)
                .await
                .map_err(internal)?,
        )
    } else {
        None
    };

    // Stored last: if signing failed above, no orphan session exists.
    if let (Some(token), Some(family_id)) = (&refresh_token, &family_id) {
        let absolute =
            now + i64::try_from(svc.cfg.refresh_absolute_ttl_secs).unwrap_or(i64::MAX / 4);
        let idle = (now + i64::try_from(svc.cfg.refresh_idle_ttl_secs).unwrap_or(i64::MAX / 4))
            .min(absolute);
        svc.store
            .create_family(
                NewFamily {
                    id: family_id,
                    user_id: &user.id,
                    client_id: &client.row.client_id,
                    scope: &scope_text,
                    now,
                    expires_at: absolute,
                },
                &secret::refresh_token_digest(token),
                idle,
            )
            .await
            .map_err(internal)?;
    }

    tracing::info!(client_id = %client.row.client_id, user_id = %user.id, scope = %scope_text, "password grant");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: svc.minter.access_ttl(),
        refresh_token,
        id_token,
        scope: scope_text,
    })
}
