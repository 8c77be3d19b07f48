//! Request edges shared by handlers: bounded form bodies and bearer tokens,
//! each failing in latchkey's OAuth error format rather than a framework's
//! plain-text rejection.

use axum::body::Body;
use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::oauth::{Error, ErrorCode};
use crate::token::verify::MAX_TOKEN_LEN;

/// Read an `application/x-www-form-urlencoded` body of at most `limit` bytes.
pub async fn form_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Error::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let too_large = || {
        Error::new(
            ErrorCode::RequestTooLarge,
            format!("the request body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Past the limit the read stops; a failed read of a body this small is
    // either that or a client that went away.
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    Ok(bytes.to_vec())
}

/// The bearer token from `Authorization` (RFC 6750 §2.1).
pub fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::MissingBearer);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::invalid_request("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingBearer);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::invalid_token("malformed bearer token").into());
    }
    Ok(token.to_string())
}
