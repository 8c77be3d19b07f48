//! axum integration: the [`Claims`] extractor and RFC 6750 error responses.
//!
//! This module owns everything HTTP-shaped: reading the bearer token from the
//! `Authorization` header (RFC 6750 section 2.1), turning verification and
//! authorisation failures into status codes, `WWW-Authenticate` challenges
//! and `{"error", "error_description"}` bodies (section 3), and two optional
//! route layers. It must not make verification decisions; it asks the
//! [`Verifier`] and renders the answer.
//!
//! ```no_run
//! use axum::{Router, extract::FromRef, routing::get};
//! use latchkey_verifier::{Claims, Verifier, axum::AuthError};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     verifier: Verifier,
//! }
//!
//! // How the `Claims` extractor finds the verifier in your state.
//! impl FromRef<AppState> for Verifier {
//!     fn from_ref(state: &AppState) -> Verifier {
//!         state.verifier.clone()
//!     }
//! }
//!
//! async fn read(claims: Claims) -> Result<String, AuthError> {
//!     claims.require_scope("api:read")?;
//!     Ok(format!("hello {}", claims.sub))
//! }
//!
//! # async fn run(verifier: Verifier) {
//! let app: Router = Router::new()
//!     .route("/read", get(read))
//!     .with_state(AppState { verifier });
//! # }
//! ```

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{Claims, Forbidden, Verifier, VerifyError};

/// Why a request was refused; renders as the matching RFC 6750 response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No bearer token at all: 401 with a bare `WWW-Authenticate: Bearer`.
    #[error("a bearer token is required")]
    MissingToken,
    /// A malformed `Authorization` header: 400 `invalid_request`.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token was rejected: 401 `invalid_token`.
    #[error(transparent)]
    InvalidToken(VerifyError),
    /// The issuer's keys are unavailable: 503, no challenge.
    #[error(transparent)]
    Unavailable(VerifyError),
    /// The token lacks a scope or role: 403 `insufficient_scope`.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
}

impl From<VerifyError> for AuthError {
    fn from(err: VerifyError) -> AuthError {
        if err.is_unavailable() {
            AuthError::Unavailable(err)
        } else {
            AuthError::InvalidToken(err)
        }
    }
}

impl AuthError {
    /// The HTTP status this error renders with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken | AuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AuthError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let description = quoted_safe(&self.to_string());
        let (challenge, error) = match &self {
            AuthError::MissingToken => (Some("Bearer".to_owned()), None),
            AuthError::InvalidRequest(_) => (
                Some(format!(
                    r#"Bearer error="invalid_request", error_description="{description}""#
                )),
                Some("invalid_request"),
            ),
            AuthError::InvalidToken(err) => {
                tracing::debug!(error = %err, "bearer token rejected");
                (
                    Some(format!(
                        r#"Bearer error="invalid_token", error_description="{description}""#
                    )),
                    Some("invalid_token"),
                )
            }
            AuthError::Unavailable(err) => {
                tracing::warn!(error = %err, source = ?std::error::Error::source(err), "cannot verify bearer tokens");
                (None, Some("temporarily_unavailable"))
            }
            AuthError::Forbidden(Forbidden::MissingScope(scope)) => (
                Some(format!(
                    r#"Bearer error="insufficient_scope", scope="{}""#,
                    quoted_safe(scope)
                )),
                Some("insufficient_scope"),
            ),
            AuthError::Forbidden(_) => (
                Some(format!(
                    r#"Bearer error="insufficient_scope", error_description="{description}""#
                )),
                Some("insufficient_scope"),
            ),
        };
        let mut body = serde_json::Map::new();
        if let Some(error) = error {
            body.insert("error".to_owned(), error.into());
        }
        body.insert("error_description".to_owned(), description.into());
        if let AuthError::Forbidden(Forbidden::MissingScope(scope)) = &self {
            body.insert("scope".to_owned(), scope.clone().into());
        }
        let mut response = (
            status,
            [(CONTENT_TYPE, "application/json")],
            serde_json::Value::Object(body).to_string(),
        )
            .into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        AuthError::from(self).into_response()
    }
}

impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        AuthError::from(self).into_response()
    }
}

/// Keeps a challenge parameter a valid quoted-string: RFC 6750 section 3
/// allows printable ASCII except `"` and `\` in `error_description` and
/// `scope`.
fn quoted_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The bearer token from the `Authorization` header: `Ok(None)` when there
/// is no header or it uses another scheme (RFC 6750 section 3: no error code
/// then), an error when it is ambiguous or malformed.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidRequest("Authorization header is not ASCII"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim_matches(' ');
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !valid {
        return Err(AuthError::InvalidRequest("malformed bearer token"));
    }
    Ok(Some(token))
}

/// Claims already verified by [`require_scope`] or [`authenticate`] for this
/// request. Private, so nothing else can plant claims in the extensions.
#[derive(Clone)]
struct VerifiedClaims(Claims);

/// Verifies the request's bearer token. Needs a [`Verifier`] reachable from
/// the router state through `FromRef`.
impl<S> FromRequestParts<S> for Claims
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Claims, AuthError> {
        if let Some(VerifiedClaims(claims)) = parts.extensions.get::<VerifiedClaims>() {
            return Ok(claims.clone());
        }
        let token = bearer_token(&parts.headers)?.ok_or(AuthError::MissingToken)?;
        let verifier = Verifier::from_ref(state);
        Ok(verifier.verify(token).await?)
    }
}

/// `Option<Claims>`: `None` when the request carries no bearer token; a token
/// that is present but invalid is still an error.
impl<S> OptionalFromRequestParts<S> for Claims
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Claims>, AuthError> {
        if let Some(VerifiedClaims(claims)) = parts.extensions.get::<VerifiedClaims>() {
            return Ok(Some(claims.clone()));
        }
        let Some(token) = bearer_token(&parts.headers)? else {
            return Ok(None);
        };
        let verifier = Verifier::from_ref(state);
        Ok(Some(verifier.verify(token).await?))
    }
}

/// State for the [`require_scope`] layer: the verifier and the scope.
#[derive(Clone, Debug)]
pub struct RequireScope {
    verifier: Verifier,
    scope: String,
}

impl RequireScope {
    /// Requires `scope` on every request through the layer.
    pub fn new(verifier: Verifier, scope: impl Into<String>) -> RequireScope {
        RequireScope {
            verifier,
            scope: scope.into(),
        }
    }
}

impl FromRef<RequireScope> for Verifier {
    fn from_ref(state: &RequireScope) -> Verifier {
        state.verifier.clone()
    }
}

/// A route layer that verifies the token and requires a scope, for use with
/// [`axum::middleware::from_fn_with_state`]:
///
/// ```no_run
/// # use axum::{Router, middleware, routing::post};
/// # use latchkey_verifier::{Verifier, axum::{RequireScope, require_scope}};
/// # fn app(verifier: Verifier) -> Router {
/// Router::new().route("/write", post(|| async { "ok" })).route_layer(
///     middleware::from_fn_with_state(RequireScope::new(verifier, "api:write"), require_scope),
/// )
/// # }
/// ```
///
/// Handlers behind it can still take `Claims`; they get the verified claims
/// without a second verification.
pub async fn require_scope(
    State(required): State<RequireScope>,
    claims: Claims,
    mut request: Request,
    next: Next,
) -> Result<Response, AuthError> {
    claims.require_scope(&required.scope)?;
    request.extensions_mut().insert(VerifiedClaims(claims));
    Ok(next.run(request).await)
}

/// A route layer that only verifies the token, for use with
/// `axum::middleware::from_fn_with_state(verifier, authenticate)`.
pub async fn authenticate(
    State(_verifier): State<Verifier>,
    claims: Claims,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(VerifiedClaims(claims));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;

    fn with_auth(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_token_parsing_follows_rfc_6750() {
        assert_eq!(bearer_token(&with_auth(&[])).unwrap(), None);
        assert_eq!(
            bearer_token(&with_auth(&["Basic dXNlcjpwdw=="])).unwrap(),
            None
        );
        assert_eq!(
            bearer_token(&with_auth(&["Bearer a.b.c"])).unwrap(),
            Some("a.b.c")
        );
        assert_eq!(
            bearer_token(&with_auth(&["bearer a.b.c"])).unwrap(),
            Some("a.b.c")
        );
        assert!(matches!(
            bearer_token(&with_auth(&["Bearer "])),
            Err(AuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&with_auth(&["Bearer a b"])),
            Err(AuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&with_auth(&["Bearer a", "Bearer b"])),
            Err(AuthError::InvalidRequest(_))
        ));
    }

    #[test]
    fn challenge_parameters_stay_quoted_strings() {
        assert_eq!(quoted_safe(r#"a "b" \c"#), "a ?b? ?c");
    }

    #[test]
    fn forbidden_scope_renders_403_with_the_scope() {
        let resp = AuthError::from(Forbidden::MissingScope("api:read".to_owned())).into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="api:read""#
        );
    }
}
