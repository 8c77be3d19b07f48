//! The client credentials grant (RFC 6749 §4.4): a confidential client acting
//! for itself. No user, so no refresh token, no ID token and no user scopes.

use super::{AuthenticatedClient, TokenService, internal, scope_policy};
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, Scope};
use crate::token::Grant;

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    requested: Option<Scope>,
) -> Result<TokenResponse, Error> {
    if client.row.is_public {
        return Err(Error::new(
            crate::oauth::ErrorCode::UnauthorizedClient,
            "public clients cannot use client_credentials",
        ));
    }
    // The ceiling, the client's scopes without any user scope, was derived
    // once when its registration was read (`client_cache.rs`).
    let scope = scope_policy(requested, &client.own_scopes)?;
    let scope_text = scope.to_string();
    let grant = Grant {
        subject: &client.row.client_id,
        client_id: &client.row.client_id,
        scope: scope_text.clone(),
        roles: Vec::new(),
        session_id: None,
    };
    let access_token = svc
        .minter
        .access_token(&grant, client.alg)
        .await
        .map_err(internal)?;
    // Debug, not info: the request line already records every call, and a
    // second formatted line per token is a measurable share of this grant.
    tracing::debug!(client_id = %client.row.client_id, scope = %scope_text, "client_credentials grant");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: svc.minter.access_ttl(),
        refresh_token: None,
        id_token: None,
        scope: scope_text,
    })
}
