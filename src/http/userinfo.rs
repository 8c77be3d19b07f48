//! The OIDC UserInfo endpoint (OIDC Core §5.3), protected per RFC 6750.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::extract::bearer;
use super::token::access_token_live;
use crate::app::AppState;
use crate::grant::internal;
use crate::oauth::{Error, ErrorCode, Scope};
use crate::token::claims::VerifiedAccess;
use crate::token::verify::verify_access;

#[derive(Serialize)]
struct UserInfo {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
}

/// Verify the request's bearer token as a live latchkey access token.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<VerifiedAccess, ApiError> {
    let token = bearer(headers)?;
    let claims = verify_access(
        &state.ring.current(),
        &state.config.issuer,
        &token,
        state.clock.now(),
    )
    .map_err(|e| Error::invalid_token(e.to_string()))?;
    if !access_token_live(state, &claims).await? {
        return Err(Error::invalid_token("the token has been revoked").into());
    }
    Ok(claims)
}

pub async fn userinfo(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let scope = Scope::from_stored(&claims.scope);
    if !scope.contains("openid") {
        return Err(Error::new(
            ErrorCode::InsufficientScope,
            "userinfo requires the openid scope",
        )
        .into());
    }
    let user = state
        .store
        .find_user(&claims.sub)
        .await
        .map_err(internal)?
        .filter(|u| !u.disabled)
        .ok_or_else(|| Error::invalid_token("the token's user no longer exists"))?;
    let roles = state.store.user_roles(&user.id).await.map_err(internal)?;
    let info = UserInfo {
        sub: user.id,
        preferred_username: scope.contains("profile").then_some(user.username),
        email: if scope.contains("email") {
            user.email
        } else {
            None
        },
        roles,
    };
    let mut r = Json(info).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
