//! A user's own sessions, with their access token: list, end one, logout,
//! logout everywhere. Answers are never cached (`no-store`); logout also
//! clears the refresh cookie of browser clients.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{Bearer, ClientMeta};
use super::token::{no_store, refresh_cookie};
use crate::app::AppState;
use crate::oauth::{Error, ErrorCode};

/// Session ids are 22 characters; anything much longer is not one.
const MAX_SESSION_ID_LEN: usize = 64;

pub async fn list(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    Bearer(claims): Bearer,
) -> Result<Response, ApiError> {
    state.sessions.admit(&ctx, &claims).await?;
    let sessions = state.sessions.list_own(&claims).await?;
    Ok(no_store(Json(sessions).into_response()))
}

pub async fn end(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    Bearer(claims): Bearer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id.len() > MAX_SESSION_ID_LEN {
        return Err(Error::new(ErrorCode::NotFound, "no such session").into());
    }
    state.sessions.admit(&ctx, &claims).await?;
    state.sessions.end_own(&claims, &id).await?;
    Ok(no_store(StatusCode::NO_CONTENT.into_response()))
}

fn clearing_cookie(mut r: Response) -> Response {
    if let Some(v) = refresh_cookie(None, 0) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(r)
}

pub async fn logout(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    Bearer(claims): Bearer,
) -> Result<Response, ApiError> {
    state.sessions.admit(&ctx, &claims).await?;
    state.sessions.logout(&claims).await?;
    Ok(clearing_cookie(StatusCode::NO_CONTENT.into_response()))
}

pub async fn logout_all(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    Bearer(claims): Bearer,
) -> Result<Response, ApiError> {
    state.sessions.admit(&ctx, &claims).await?;
    let ended = state.sessions.logout_all(&claims).await?;
    Ok(clearing_cookie(
        Json(serde_json::json!({ "sessions_ended": ended })).into_response(),
    ))
}
