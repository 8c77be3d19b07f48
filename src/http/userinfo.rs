//! The OIDC UserInfo endpoint (OIDC Core §5.3), protected per RFC 6750: the
//! token comes in `Authorization: Bearer` (§2.1) or, for POST, as a
//! form-encoded `access_token` (§2.2) — never both.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::{bearer, form_body};
use super::token::no_store;
use crate::app::AppState;
use crate::oauth::Error;
use crate::oauth::request::parse_bearer_form;

pub async fn userinfo(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let has_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let token = if method == Method::POST && has_form {
        let body = form_body(&headers, body, state.config.server.max_body_bytes).await?;
        let from_body = parse_bearer_form(&body)?;
        match (headers.contains_key(header::AUTHORIZATION), from_body) {
            (true, Some(_)) => {
                return Err(Error::invalid_request(
                    "send the access token in the Authorization header or the body, not both",
                )
                .into());
            }
            (false, Some(t)) => t,
            (_, None) => bearer(&headers)?,
        }
    } else {
        bearer(&headers)?
    };
    let info = state.sessions.userinfo(&token).await?;
    Ok(no_store(Json(info).into_response()))
}
