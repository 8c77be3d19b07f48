//! The admin API: the key-ring operations of the CLI over HTTP. Every route
//! needs a live latchkey access token whose `roles` include `admin`; others get
//! 403 `insufficient_scope` per RFC 6750.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::authenticate;
use crate::app::AppState;
use crate::grant::internal;
use crate::keyring::Alg;
use crate::keyring::lifecycle::{
    self, KeyInfo, LifecycleError, RetireOutcome, RotateOutcome, Upcoming,
};
use crate::oauth::{Error, ErrorCode};
use crate::store::EventRow;

pub const ADMIN_ROLE: &str = "admin";
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// The actor name recorded in events for an authorised admin.
async fn admin(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let claims = authenticate(state, headers).await?;
    if !claims.roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(Error::new(ErrorCode::InsufficientScope, "the admin role is required").into());
    }
    Ok(format!("admin-api:{}", claims.sub))
}

fn json_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, Error> {
    if body.len() > MAX_ADMIN_BODY {
        return Err(Error::new(
            ErrorCode::RequestTooLarge,
            "the request body is too large",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid_request(format!("malformed JSON body: {e}")))
}

fn lifecycle_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::UnknownKid(_)
        | LifecycleError::AlreadyRetired(_)
        | LifecycleError::ActiveNeedsEmergency(_)
        | LifecycleError::Conflict(_) => Error::invalid_request(e.to_string()).into(),
        LifecycleError::Ring(r) => internal(r).into(),
    }
}

pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    admin(&state, &headers).await?;
    let rows = state.store.list_keys(true).await.map_err(internal)?;
    Ok(Json(rows.iter().map(KeyInfo::from).collect()))
}

pub async fn schedule(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Upcoming>>, ApiError> {
    admin(&state, &headers).await?;
    let rows = state.store.list_keys(false).await.map_err(internal)?;
    Ok(Json(lifecycle::upcoming(
        state.clock.now(),
        &rows,
        &state.config.keys,
    )))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    pub alg: Option<String>,
    #[serde(default)]
    pub now: bool,
}

pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<RotateOutcome>>, ApiError> {
    let actor = admin(&state, &headers).await?;
    let body: RotateBody = json_body(&body)?;
    // Without `alg` every algorithm rotates, as with the CLI.
    let algs = match body.alg.as_deref() {
        None => Alg::ALL.to_vec(),
        Some(a) => vec![
            Alg::parse(a).ok_or_else(|| Error::invalid_request("alg must be RS256 or ES256"))?,
        ],
    };
    let mut out = Vec::new();
    for alg in algs {
        out.push(
            state
                .lifecycle
                .rotate(alg, body.now, &actor)
                .await
                .map_err(lifecycle_error)?,
        );
    }
    state.ring.reload().await.map_err(internal)?;
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    #[serde(default)]
    pub emergency: bool,
}

pub async fn retire(
    State(state): State<AppState>,
    Path(kid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RetireOutcome>, ApiError> {
    let actor = admin(&state, &headers).await?;
    let body: RetireBody = json_body(&body)?;
    if kid.len() > 128 {
        return Err(Error::invalid_request("no such key").into());
    }
    let out = state
        .lifecycle
        .retire(&kid, body.emergency, &actor)
        .await
        .map_err(lifecycle_error)?;
    state.ring.reload().await.map_err(internal)?;
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub action: Option<String>,
    pub limit: Option<i64>,
}

pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventRow>>, ApiError> {
    admin(&state, &headers).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state
        .store
        .list_events(q.action.as_deref(), limit)
        .await
        .map_err(internal)?;
    Ok(Json(rows))
}

#[derive(Debug, Deserialize)]
pub struct SessionsQuery {
    pub user: String,
}

/// `GET /admin/sessions?user=NAME`: a user's live sessions.
pub async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<Vec<crate::session::SessionInfo>>, ApiError> {
    admin(&state, &headers).await?;
    Ok(Json(state.sessions.list_for_user(&q.user).await?))
}

/// `DELETE /admin/sessions/{id}`: end one session.
pub async fn revoke_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::http::StatusCode, ApiError> {
    let actor = admin(&state, &headers).await?;
    state.sessions.revoke_by_id(&id, &actor).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `DELETE /admin/users/{username}/sessions`: end every session of a user.
pub async fn revoke_user_sessions(
    State(state): State<AppState>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let actor = admin(&state, &headers).await?;
    let n = state.sessions.revoke_for_user(&username, &actor).await?;
    Ok(Json(serde_json::json!({ "sessions_ended": n })))
}
