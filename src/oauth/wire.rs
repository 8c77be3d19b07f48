//! Wire shapes of what latchkey sends: token responses (RFC 6749 §5.1), the
//! discovery document (OIDC Discovery 1.0 §3), introspection responses (RFC 7662
//! §2.2) and error bodies (RFC 6749 §5.2). Serialization only; no I/O.

use serde::Serialize;

use super::{Error, GrantType};

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    pub scope: String,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'static str,
    pub error_description: &'a str,
}

impl<'a> From<&'a Error> for ErrorBody<'a> {
    fn from(e: &'a Error) -> Self {
        Self {
            error: e.code.as_str(),
            error_description: &e.description,
        }
    }
}

/// Scopes latchkey understands itself; clients may be granted others (API scopes).
pub const STANDARD_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// Claims that can appear in ID tokens, access tokens and userinfo responses.
pub const CLAIMS_SUPPORTED: [&str; 17] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "jti",
    "client_id",
    "scope",
    "roles",
    "preferred_username",
    "email",
    "azp",
    "nonce",
    "at_hash",
    "amr",
    "sid",
];

pub const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

#[derive(Debug, Serialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    /// OIDC RP-Initiated Logout 1.0 §2.1.
    pub end_session_endpoint: String,
    pub grant_types_supported: Vec<&'static str>,
    /// Only the authorization-code flow (`code`); no implicit or hybrid flow.
    pub response_types_supported: Vec<&'static str>,
    /// Results are returned in the redirect URI's query only.
    pub response_modes_supported: Vec<&'static str>,
    /// RFC 7636: S256 only, and required for every client.
    pub code_challenge_methods_supported: Vec<&'static str>,
    /// RFC 9207: every authorization response carries `iss`.
    pub authorization_response_iss_parameter_supported: bool,
    pub subject_types_supported: Vec<&'static str>,
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
    pub userinfo_signing_alg_values_supported: Vec<&'static str>,
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    pub scopes_supported: Vec<String>,
    pub claims_supported: Vec<&'static str>,
    pub claims_parameter_supported: bool,
    pub request_parameter_supported: bool,
    pub request_uri_parameter_supported: bool,
}

impl Discovery {
    /// Only the standard scopes are advertised: API scopes belong to each
    /// client's registration (OIDC Discovery lets a server list a subset).
    pub fn new(issuer: &str, signing_algs: Vec<&'static str>) -> Self {
        let at = |path: &str| format!("{issuer}{path}");
        let scopes: Vec<String> = STANDARD_SCOPES.iter().map(|s| s.to_string()).collect();
        Self {
            issuer: issuer.to_string(),
            authorization_endpoint: at("/authorize"),
            jwks_uri: at("/.well-known/jwks.json"),
            token_endpoint: at("/token"),
            userinfo_endpoint: at("/userinfo"),
            revocation_endpoint: at("/revoke"),
            introspection_endpoint: at("/introspect"),
            end_session_endpoint: at("/logout"),
            grant_types_supported: GrantType::ALL.iter().map(|g| g.as_str()).collect(),
            response_types_supported: vec!["code"],
            response_modes_supported: vec!["query"],
            code_challenge_methods_supported: vec!["S256"],
            authorization_response_iss_parameter_supported: true,
            subject_types_supported: vec!["public"],
            id_token_signing_alg_values_supported: signing_algs.clone(),
            userinfo_signing_alg_values_supported: Vec::new(),
            token_endpoint_auth_methods_supported: AUTH_METHODS.to_vec(),
            revocation_endpoint_auth_methods_supported: AUTH_METHODS.to_vec(),
            introspection_endpoint_auth_methods_supported: AUTH_METHODS[..2].to_vec(),
            scopes_supported: scopes,
            claims_supported: CLAIMS_SUPPORTED.to_vec(),
            claims_parameter_supported: false,
            request_parameter_supported: false,
            request_uri_parameter_supported: false,
        }
    }
}

/// RFC 7662 §2.2. An inactive token is only `{"active": false}`.
#[derive(Debug, Default, Serialize)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}
