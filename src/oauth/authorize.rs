//! The authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2.1, RFC 7636
//! §4.3), parsed once from the query string into a typed [`AuthorizeRequest`].
//!
//! Parsing happens in two steps because the two kinds of error go to different
//! places: [`AuthorizeRequest::parse`] fails only on input that names no
//! trustworthy client or redirect URI yet (malformed query, repeated or
//! oversized parameters, missing `client_id`); the domain then verifies the
//! client and its redirect URI, and only after that does
//! [`AuthorizeRequest::validate`] produce the errors that may be redirected.

use super::request::{Form, MAX_CLIENT_ID_LEN, MAX_REDIRECT_URI_LEN, is_unreserved, short};
use super::{Error, ErrorCode, Scope};

pub const MAX_STATE_LEN: usize = 512;
pub const MAX_NONCE_LEN: usize = 256;
pub const MAX_LOGIN_HINT_LEN: usize = 256;
const MAX_SCOPE_LEN: usize = 1024;
const MAX_SHORT_PARAM_LEN: usize = 64;

/// What the query said, bounded but not yet judged.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
}

/// OIDC Core §3.1.2.1 `prompt`, the values latchkey honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Sign in or ask for consent only when needed.
    Default,
    /// Never show a page: answer `login_required` / `consent_required` instead.
    None,
    /// Ask for the password again even with a live browser session.
    Login,
}

/// An authorization request whose every parameter has been checked.
#[derive(Debug, Clone)]
pub struct ValidAuthorize {
    pub scope: Scope,
    pub nonce: Option<String>,
    /// The S256 challenge: base64url of SHA-256 of the verifier.
    pub code_challenge: String,
    pub prompt: Prompt,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
}

impl AuthorizeRequest {
    /// Parse a raw query string (without the `?`).
    pub fn parse(query: &str) -> Result<Self, Error> {
        let mut form = Form::parse(query.as_bytes())?;
        let client_id = form
            .take_bounded("client_id", MAX_CLIENT_ID_LEN)?
            .ok_or_else(|| Error::invalid_request("missing required parameter client_id"))?;
        Ok(Self {
            client_id,
            redirect_uri: form.take_bounded("redirect_uri", MAX_REDIRECT_URI_LEN)?,
            response_type: form.take_bounded("response_type", MAX_SHORT_PARAM_LEN)?,
            scope: form.take_bounded("scope", MAX_SCOPE_LEN)?,
            state: form.take_bounded("state", MAX_STATE_LEN)?,
            nonce: form.take_bounded("nonce", MAX_NONCE_LEN)?,
            code_challenge: form.take_bounded("code_challenge", MAX_SHORT_PARAM_LEN)?,
            code_challenge_method: form
                .take_bounded("code_challenge_method", MAX_SHORT_PARAM_LEN)?,
            prompt: form.take_bounded("prompt", MAX_SHORT_PARAM_LEN)?,
            max_age: form.take_bounded("max_age", MAX_SHORT_PARAM_LEN)?,
            login_hint: form.take_bounded("login_hint", MAX_LOGIN_HINT_LEN)?,
        })
    }

    /// Check everything but the client and redirect URI (already verified by
    /// the caller), so that every error here may be redirected to the client.
    pub fn validate(&self) -> Result<ValidAuthorize, Error> {
        match self.response_type.as_deref() {
            Some("code") => {}
            None => {
                return Err(Error::invalid_request(
                    "missing required parameter response_type",
                ));
            }
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedResponseType,
                    format!("response_type {} is not supported; use code", short(other)),
                ));
            }
        }
        let scope = self
            .scope
            .as_deref()
            .ok_or_else(|| Error::invalid_request("missing required parameter scope"))
            .and_then(Scope::parse)?;
        let code_challenge = self.code_challenge.clone().ok_or_else(|| {
            Error::invalid_request("PKCE is required: send code_challenge with method S256")
        })?;
        match self.code_challenge_method.as_deref() {
            Some("S256") => {}
            // RFC 7636 §4.3 defaults a missing method to plain, which latchkey refuses.
            None | Some("plain") => {
                return Err(Error::invalid_request(
                    "code_challenge_method must be S256; plain is not accepted",
                ));
            }
            Some(_) => {
                return Err(Error::invalid_request("code_challenge_method must be S256"));
            }
        }
        // base64url(SHA-256) without padding is exactly 43 characters.
        if code_challenge.len() != 43 || !is_unreserved(&code_challenge) {
            return Err(Error::invalid_request(
                "code_challenge must be the 43-character base64url SHA-256 of the verifier",
            ));
        }
        let prompt = match self.prompt.as_deref() {
            None => Prompt::Default,
            Some("none") => Prompt::None,
            Some("login") => Prompt::Login,
            Some(p) if p.split(' ').any(|v| v == "none") => {
                return Err(Error::invalid_request(
                    "prompt=none cannot be combined with other values",
                ));
            }
            Some(p) => {
                return Err(Error::invalid_request(format!(
                    "prompt {} is not supported; use none or login",
                    short(p)
                )));
            }
        };
        let max_age = self
            .max_age
            .as_deref()
            .map(|m| {
                m.parse::<u32>()
                    .map(i64::from)
                    .map_err(|_| Error::invalid_request("max_age must be a number of seconds"))
            })
            .transpose()?;
        Ok(ValidAuthorize {
            scope,
            nonce: self.nonce.clone(),
            code_challenge,
            prompt,
            max_age,
            login_hint: self.login_hint.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const OK: &str = "client_id=app&redirect_uri=https%3A%2F%2Fa.example%2Fcb&response_type=code\
        &scope=openid&state=s&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
        &code_challenge_method=S256";

    #[test]
    fn parses_and_validates_a_good_request() {
        let r = AuthorizeRequest::parse(OK).unwrap();
        assert_eq!(r.client_id, "app");
        assert_eq!(r.redirect_uri.as_deref(), Some("https://a.example/cb"));
        let v = r.validate().unwrap();
        assert!(v.scope.contains("openid"));
        assert_eq!(v.prompt, Prompt::Default);
    }

    #[test]
    fn page_errors_and_redirect_errors() {
        assert!(AuthorizeRequest::parse("redirect_uri=x").is_err());
        assert!(AuthorizeRequest::parse("client_id=a&client_id=b").is_err());
        let err = AuthorizeRequest::parse(&OK.replace("response_type=code", "response_type=token"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedResponseType);
        let plain = OK.replace("code_challenge_method=S256", "code_challenge_method=plain");
        let err = AuthorizeRequest::parse(&plain)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.description.contains("S256"));
        let none = OK.replace("&code_challenge_method=S256", "");
        assert!(AuthorizeRequest::parse(&none).unwrap().validate().is_err());
        let bad_age = format!("{OK}&max_age=-1");
        assert!(
            AuthorizeRequest::parse(&bad_age)
                .unwrap()
                .validate()
                .is_err()
        );
    }
}
