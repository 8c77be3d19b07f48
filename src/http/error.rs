//! The one writer of error responses: OAuth error values become a status code,
//! `WWW-Authenticate` where the RFCs ask for it, `Cache-Control: no-store`, and
//! a `{"error", "error_description"}` body. Only this module maps error codes to
//! HTTP statuses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::oauth::wire::ErrorBody;
use crate::oauth::{Error, ErrorCode};

/// An error as the HTTP layer sends it.
#[derive(Debug)]
pub enum ApiError {
    OAuth(Error),
    /// A protected resource was requested with no token at all: RFC 6750 §3.1
    /// says to answer with the challenge alone, without an error code.
    MissingBearer,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::OAuth(e)
    }
}

pub const REALM: &str = "latchkey";

fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidClient | ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
        ErrorCode::InsufficientScope | ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
        ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::InvalidRequest
        | ErrorCode::InvalidGrant
        | ErrorCode::UnauthorizedClient
        | ErrorCode::UnsupportedGrantType
        | ErrorCode::InvalidScope => StatusCode::BAD_REQUEST,
    }
}

/// Quote a value for an auth-param (RFC 9110 §11.2): drop anything that is
/// not printable ASCII, escape `"` and `\`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| c.is_ascii_graphic() || *c == ' ') {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = match self {
            Self::MissingBearer => {
                let mut r = StatusCode::UNAUTHORIZED.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer realm={}", quoted(REALM))) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return r;
            }
            Self::OAuth(e) => e,
        };
        let challenge = match e.code {
            // RFC 6749 §5.2: 401 for invalid_client, with the scheme the client
            // can use. Basic is the one latchkey offers.
            ErrorCode::InvalidClient => Some(format!("Basic realm={}", quoted(REALM))),
            ErrorCode::InvalidToken | ErrorCode::InsufficientScope => Some(format!(
                "Bearer realm={}, error={}, error_description={}",
                quoted(REALM),
                quoted(e.code.as_str()),
                quoted(&e.description)
            )),
            _ => None,
        };
        let mut response = (status(e.code), Json(ErrorBody::from(&e))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, c);
        }
        if e.code == ErrorCode::RequestTimeout {
            // The rest of the body may still trickle in: do not read it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_neutralises_header_injection() {
        assert_eq!(quoted("a\"b\\c\r\nd"), "\"a\\\"b\\\\cd\"");
    }

    #[test]
    fn statuses_follow_the_rfcs() {
        assert_eq!(status(ErrorCode::InvalidClient), StatusCode::UNAUTHORIZED);
        assert_eq!(status(ErrorCode::InvalidGrant), StatusCode::BAD_REQUEST);
        assert_eq!(status(ErrorCode::InsufficientScope), StatusCode::FORBIDDEN);
        assert_eq!(
            status(ErrorCode::RequestTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
