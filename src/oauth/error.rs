//! OAuth 2.0 errors as values (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7009 §2.2.1).
//!
//! Domain code returns an [`Error`]; only `http::error` turns it into a status
//! code, headers and the `{"error", "error_description"}` body. Descriptions are
//! written for the client developer and must never help an attacker (they never
//! say which of username or password was wrong).

use std::borrow::Cow;

/// The registered error codes latchkey emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// "The request is missing a required parameter, includes an unsupported
    /// parameter value (other than grant type), repeats a parameter, includes
    /// multiple credentials, utilizes more than one mechanism for authenticating
    /// the client, or is otherwise malformed." (RFC 6749 §5.2)
    InvalidRequest,
    /// "Client authentication failed (e.g., unknown client, no client
    /// authentication included, or unsupported authentication method)." Answered
    /// with 401 and `WWW-Authenticate`. (RFC 6749 §5.2)
    InvalidClient,
    /// "The provided authorization grant (e.g., authorization code, resource owner
    /// credentials) or refresh token is invalid, expired, revoked, does not match
    /// the redirection URI used in the authorization request, or was issued to
    /// another client." (RFC 6749 §5.2)
    InvalidGrant,
    /// "The authenticated client is not authorized to use this authorization grant
    /// type." (RFC 6749 §5.2)
    UnauthorizedClient,
    /// "The authorization grant type is not supported by the authorization
    /// server." (RFC 6749 §5.2)
    UnsupportedGrantType,
    /// "The requested scope is invalid, unknown, malformed, or exceeds the scope
    /// granted by the resource owner." (RFC 6749 §5.2)
    InvalidScope,
    /// "The access token provided is expired, revoked, malformed, or invalid for
    /// other reasons." Answered with 401. (RFC 6750 §3.1)
    InvalidToken,
    /// "The request requires higher privileges than provided by the access
    /// token." Answered with 403. (RFC 6750 §3.1)
    InsufficientScope,
    /// Authenticated, but lacking the role an administrative operation needs.
    /// Answered with 403.
    AccessDenied,
    /// The request body exceeds the configured limit. Answered with 413.
    RequestTooLarge,
    /// The request body did not arrive within the body deadline. Answered
    /// with 408 and the connection closed.
    RequestTimeout,
    /// The named resource (a session, a user) does not exist, or is not the
    /// caller's to see. Answered with 404.
    NotFound,
    /// The server could not complete a valid request; details are logged only.
    /// (RFC 6749 §4.1.2.1 `server_error`)
    ServerError,
    /// The server is temporarily unable to handle the request (RFC 6749
    /// §4.1.2.1), e.g. no signing key is loaded yet.
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::RequestTooLarge | Self::RequestTimeout => {
                "invalid_request"
            }
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::AccessDenied => "access_denied",
            Self::NotFound => "not_found",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An OAuth error: a code and a human-readable description for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct Error {
    pub code: ErrorCode,
    pub description: Cow<'static, str>,
}

impl Error {
    pub fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    pub fn invalid_request(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }

    pub fn invalid_client(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }

    pub fn invalid_grant(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidGrant, d)
    }

    pub fn invalid_scope(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidScope, d)
    }

    pub fn invalid_token(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidToken, d)
    }

    /// The one description for every failed resource-owner login, whichever
    /// part was wrong.
    pub fn bad_credentials() -> Self {
        Self::invalid_grant("invalid username or password")
    }

    /// A failure whose cause is logged, never shown.
    pub fn server_error() -> Self {
        Self::new(
            ErrorCode::ServerError,
            "the server could not complete the request",
        )
    }
}
