//! The resource owner password credentials grant (RFC 6749 §4.3).
//!
//! Unknown user, wrong password and disabled user all answer the same
//! `invalid_grant` after the same argon2 work, so neither the body nor the
//! timing tells an attacker which part was wrong.

use super::{AuthenticatedClient, TokenService, internal, scope_policy};
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, GrantType, Scope};
use crate::secret;
use crate::token::{Grant, IdentityInfo};

/// Check a username and password: the one path every password sign-in takes
/// (this grant and the login page), so both answer the same generic error
/// after the same work.
pub async fn verify_user(
    svc: &TokenService,
    username: &str,
    password: &Password,
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
    match user {
        Some(u) if verified && !u.disabled => Ok(u),
        _ => Err(Error::bad_credentials()),
    }
}

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    username: &str,
    password: Password,
    requested: Option<Scope>,
) -> Result<TokenResponse, Error> {
    // Scope is checked before the password so that a malformed request costs
    // no hashing; the answer does not depend on the credentials.
    let scope = scope_policy(requested, &client.allowed_scopes)?;
    let user = match verify_user(svc, username, &password).await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(client_id = %client.row.client_id, "password grant refused");
            return Err(e);
        }
    };
    let roles = svc.store.user_roles(&user.id).await.map_err(internal)?;
    let now = svc.clock.now();
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
            ..Default::default()
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
        svc.start_session(
            family_id,
            token,
            &user.id,
            &client.row.client_id,
            &scope_text,
            now,
        )
        .await?;
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
