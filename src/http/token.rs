//! The token endpoint (RFC 6749 §3.2), revocation (RFC 7009) and
//! introspection (RFC 7662): read a bounded form, parse it once, call one
//! service, render. Browser clients get their refresh token as an HttpOnly
//! cookie scoped to this endpoint instead of in the body. The handlers take
//! the whole request and read its headers in place: axum's `HeaderMap`
//! extractor would copy them on every call.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{ClientMeta, cookie, form_body};
use crate::app::AppState;
use crate::oauth::Error;
use crate::oauth::request::{parse_token_param, parse_token_request};

/// The refresh cookie of browser clients. `__Secure-` makes browsers refuse
/// it unless it is `Secure` and set over a secure connection.
pub const REFRESH_COOKIE: &str = "__Secure-latchkey-refresh";
/// The path the refresh cookie is scoped to: only the token endpoint sees it.
pub const REFRESH_COOKIE_PATH: &str = "/token";

pub fn no_store(mut r: Response) -> Response {
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

/// `Set-Cookie` for the refresh cookie: the token, or (with `None`) a
/// deletion.
pub fn refresh_cookie(token: Option<&str>, max_age: u64) -> Option<HeaderValue> {
    let value = match token {
        Some(t) => format!(
            "{REFRESH_COOKIE}={t}; Path={REFRESH_COOKIE_PATH}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        ),
        None => format!(
            "{REFRESH_COOKIE}=; Path={REFRESH_COOKIE_PATH}; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        ),
    };
    HeaderValue::from_str(&value).ok()
}

pub async fn token(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let body = form_body(headers, body, state.config.server.max_body_bytes).await?;
    let (auth, request) = parse_token_request(
        &body,
        authorization(headers)?,
        cookie(headers, REFRESH_COOKIE),
    )?;
    let mut issued = state.tokens.token(auth, request, &ctx).await?;
    let cookie = if issued.refresh_in_cookie {
        issued.response.refresh_token.take()
    } else {
        None
    };
    let mut response = no_store(Json(issued.response).into_response());
    if let Some(v) =
        cookie.and_then(|t| refresh_cookie(Some(&t), state.config.tokens.refresh_idle_ttl_secs))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// RFC 7009: 200 whether or not the token was known, so nothing is revealed.
pub async fn revoke(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let body = form_body(headers, body, state.config.server.max_body_bytes).await?;
    let (auth, param) = parse_token_param(&body, authorization(headers)?)?;
    state.sessions.revoke(&auth, param, &ctx).await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

/// RFC 7662: `{"active": false}` for anything not live or not the caller's.
pub async fn introspect(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let body = form_body(headers, body, state.config.server.max_body_bytes).await?;
    let (auth, param) = parse_token_param(&body, authorization(headers)?)?;
    let out = state.sessions.introspect(&auth, param, &ctx).await?;
    Ok(no_store(Json(out).into_response()))
}
