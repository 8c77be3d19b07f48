//! The refresh token grant (RFC 6749 §6) with rotation and reuse detection
//! (RFC 9700 §4.14.2).
//!
//! The presented token is consumed inside a write transaction; the new tokens
//! are minted, and only then is the successor stored and the transaction
//! committed. So a refresh either rotates completely or changes nothing, and of
//! concurrent presentations of one token exactly one can win. A token presented
//! again after it was consumed is treated as stolen: its whole family (the
//! login) is revoked, and the successor issued earlier stops working too.

use super::{AuthenticatedClient, TokenService, internal, scope_policy};
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, Scope};
use crate::secret;
use crate::store::RefreshLookup;
use crate::token::{Grant, IdentityInfo};

fn invalid() -> Error {
    Error::invalid_grant("the refresh token is invalid, expired or revoked")
}

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    token: Password,
    requested: Option<Scope>,
) -> Result<TokenResponse, Error> {
    let now = svc.clock.now();
    let digest = secret::refresh_token_digest(token.expose());
    let mut pending = match svc
        .store
        .begin_refresh(&digest, now)
        .await
        .map_err(internal)?
    {
        RefreshLookup::Fresh(p) => p,
        RefreshLookup::Reused { family } => {
            tracing::warn!(
                family = %family.id,
                client_id = %client.row.client_id,
                "refresh token reuse: family revoked"
            );
            return Err(invalid());
        }
        RefreshLookup::Unknown => return Err(invalid()),
    };
    let family = pending.family.clone();
    // Every early return below drops `pending`, which rolls the consumption back.
    if family.client_id != client.row.client_id {
        tracing::warn!(family = %family.id, client_id = %client.row.client_id, "refresh token presented by another client");
        return Err(invalid());
    }
    if family.revoked_at.is_some() || pending.token_expires_at <= now || family.expires_at <= now {
        return Err(invalid());
    }
    let Some((user, roles)) = pending.load_user().await.map_err(internal)? else {
        return Err(invalid());
    };
    if user.disabled {
        return Err(invalid());
    }
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
    let scope = scope_policy(requested, &ceiling)?;
    let scope_text = scope.to_string();

    let successor = secret::random_token().map_err(internal)?;
    let grant = Grant {
        subject: &user.id,
        client_id: &client.row.client_id,
        scope: scope_text.clone(),
        roles,
        session_id: Some(&family.id),
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
            auth_time: family.auth_time,
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
    let idle = (now + i64::try_from(svc.cfg.refresh_idle_ttl_secs).unwrap_or(i64::MAX / 4))
        .min(family.expires_at);
    pending
        .commit(&secret::refresh_token_digest(&successor), now, idle)
        .await
        .map_err(internal)?;
    tracing::info!(client_id = %client.row.client_id, family = %family.id, "refresh token rotated");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: svc.minter.access_ttl(),
        refresh_token: Some(successor),
        id_token,
        scope: scope_text,
    })
}
