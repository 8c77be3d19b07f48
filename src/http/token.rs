//! The token endpoint (RFC 6749 §3.2), revocation (RFC 7009) and
//! introspection (RFC 7662). Each reads a bounded form, authenticates the
//! client the same way, and hands typed values to the services.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{ClientMeta, form_body};
use crate::app::AppState;
use crate::grant::internal;
use crate::limits::Endpoint;
use crate::oauth::request::{Form, client_auth, parse_token_request};
use crate::oauth::wire::Introspection;
use crate::oauth::{ClientAuth, Error};
use crate::secret;
use crate::token::verify::verify_access;

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn authorization(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| Error::invalid_client("malformed Authorization header"))
        })
        .transpose()
}

pub async fn token(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = form_body(&headers, body, state.config.server.max_body_bytes).await?;
    let (auth, request) = parse_token_request(&body, authorization(&headers)?)?;
    let response = state.tokens.token(auth, request, &ctx).await?;
    Ok(no_store(Json(response).into_response()))
}

/// Read a form with client authentication and a `token` parameter.
async fn client_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(ClientAuth, String), ApiError> {
    let body = form_body(headers, body, state.config.server.max_body_bytes).await?;
    let mut form = Form::parse(&body)?;
    let auth = client_auth(&mut form, authorization(headers)?)?;
    let token = form
        .get("token")
        .ok_or_else(|| Error::invalid_request("missing required parameter token"))?;
    if token.len() > crate::token::verify::MAX_TOKEN_LEN {
        return Err(Error::invalid_request("parameter token is too long").into());
    }
    Ok((auth, token.to_string()))
}

/// RFC 7009: revoke a refresh token (its whole family) or an access token (by
/// `jti`). Unknown or foreign tokens get 200 too, so the endpoint reveals nothing.
pub async fn revoke(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (auth, token) = client_form(&state, &headers, body).await?;
    let client = state
        .tokens
        .authenticate_at(Endpoint::Revoke, &auth, &ctx)
        .await?;
    let now = state.clock.now();
    let digest = secret::refresh_token_digest(&token);
    if let Some((family, _, _)) = state
        .store
        .find_family_by_token(&digest)
        .await
        .map_err(internal)?
    {
        if family.client_id == client.row.client_id {
            state
                .store
                .revoke_family(&family.id, now, "revoked by client")
                .await
                .map_err(internal)?;
            tracing::info!(client_id = %client.row.client_id, family = %family.id, "refresh token revoked");
        }
    } else if let Ok(claims) =
        verify_access(&state.ring.current(), &state.config.issuer, &token, now)
        && claims.client_id == client.row.client_id
    {
        state
            .store
            .revoke_access_token(&claims.jti, claims.exp)
            .await
            .map_err(internal)?;
        tracing::info!(client_id = %client.row.client_id, jti = %claims.jti, "access token revoked");
    }
    Ok(no_store(StatusCode::OK.into_response()))
}

/// RFC 7662: is this token active, and what does it carry. Confidential
/// clients only (a public client could probe tokens).
pub async fn introspect(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (auth, token) = client_form(&state, &headers, body).await?;
    let client = state
        .tokens
        .authenticate_at(Endpoint::Introspect, &auth, &ctx)
        .await?;
    if client.row.is_public {
        return Err(Error::invalid_client("introspection requires a confidential client").into());
    }
    let now = state.clock.now();
    let mut out = Introspection::default();
    let digest = secret::refresh_token_digest(&token);
    if let Some((family, used_at, expires_at)) = state
        .store
        .find_family_by_token(&digest)
        .await
        .map_err(internal)?
    {
        if used_at.is_none()
            && family.revoked_at.is_none()
            && expires_at > now
            && family.expires_at > now
        {
            out = Introspection {
                active: true,
                scope: Some(family.scope),
                client_id: Some(family.client_id),
                token_type: Some("refresh_token"),
                exp: Some(expires_at),
                sub: Some(family.user_id),
                iss: Some(state.config.issuer.clone()),
                ..Default::default()
            };
        }
    } else if let Ok(claims) =
        verify_access(&state.ring.current(), &state.config.issuer, &token, now)
        && access_token_live(&state, &claims).await?
    {
        out = Introspection {
            active: true,
            scope: Some(claims.scope),
            client_id: Some(claims.client_id),
            token_type: Some("Bearer"),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            sub: Some(claims.sub),
            aud: Some(claims.aud),
            iss: Some(claims.iss),
            jti: Some(claims.jti),
            ..Default::default()
        };
    }
    Ok(no_store(Json(out).into_response()))
}

/// An access token that verifies is still dead if it was revoked by `jti` or
/// its login session (refresh family) was revoked.
pub async fn access_token_live(
    state: &AppState,
    claims: &crate::token::claims::VerifiedAccess,
) -> Result<bool, ApiError> {
    if state
        .store
        .is_access_token_revoked(&claims.jti)
        .await
        .map_err(internal)?
    {
        return Ok(false);
    }
    if let Some(sid) = &claims.sid {
        let family = state.store.find_family(sid).await.map_err(internal)?;
        if family.is_some_and(|f| f.revoked_at.is_some()) {
            return Ok(false);
        }
    }
    Ok(true)
}
