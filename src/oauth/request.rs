//! The token request, parsed once at the edge (RFC 6749 §3.2, §4.3, §4.4, §6).
//!
//! [`parse_token_request`] turns the raw form body and `Authorization` header into
//! a typed [`TokenRequest`] and [`ClientAuth`]. Grants never see the raw form. All
//! length limits live here so that nothing downstream handles unbounded input.

use std::collections::HashMap;

use base64::Engine as _;

use super::{Error, ErrorCode, Scope};

pub const MAX_USERNAME_LEN: usize = 256;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const MAX_CLIENT_ID_LEN: usize = 128;
pub const MAX_CLIENT_SECRET_LEN: usize = 256;
/// Refresh tokens latchkey issues are 43 characters; anything longer than this
/// cannot be one and is answered `invalid_grant` without further work.
pub const MAX_REFRESH_TOKEN_LEN: usize = 512;
/// Longest `device_name` kept, in characters.
pub const MAX_DEVICE_NAME_LEN: usize = 64;
/// Longest `token` accepted at revocation and introspection (longer cannot be
/// a latchkey token and is treated as unknown).
pub const MAX_TOKEN_PARAM_LEN: usize = 8 * 1024;
/// Most form parameters accepted in one request.
const MAX_PARAMS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    Password,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub const ALL: [GrantType; 3] = [Self::Password, Self::RefreshToken, Self::ClientCredentials];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// A password that is never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// One grant's parameters, validated for shape (not yet for meaning).
#[derive(Debug)]
pub enum TokenRequest {
    Password {
        username: String,
        password: Password,
        scope: Option<Scope>,
        /// A label for the session chosen by the user (`device_name`).
        device_name: Option<String>,
    },
    RefreshToken {
        refresh_token: Password,
        scope: Option<Scope>,
        /// The token came from the refresh cookie, not the body.
        from_cookie: bool,
    },
    ClientCredentials {
        scope: Option<Scope>,
    },
}

impl TokenRequest {
    pub fn grant_type(&self) -> GrantType {
        match self {
            Self::Password { .. } => GrantType::Password,
            Self::RefreshToken { .. } => GrantType::RefreshToken,
            Self::ClientCredentials { .. } => GrantType::ClientCredentials,
        }
    }

    pub fn scope(&self) -> Option<&Scope> {
        match self {
            Self::Password { scope, .. }
            | Self::RefreshToken { scope, .. }
            | Self::ClientCredentials { scope } => scope.as_ref(),
        }
    }
}

/// How the client said who it is (RFC 6749 §2.3.1; OIDC Core §9 method names).
#[derive(Debug)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic { client_id: String, secret: Password },
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post { client_id: String, secret: Password },
    /// `none`: a public client naming itself with `client_id` only.
    None { client_id: String },
}

impl ClientAuth {
    pub fn client_id(&self) -> &str {
        match self {
            Self::Basic { client_id, .. }
            | Self::Post { client_id, .. }
            | Self::None { client_id } => client_id,
        }
    }
}

/// Who is asking, as far as the transport tells: the client address (the TCP
/// peer, or what a trusted proxy reported), a bounded `User-Agent` and the
/// `Origin` of a browser request. Domain code records and rate-limits by it;
/// it never decides anything from it alone.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
    pub origin: Option<String>,
}

/// Longest `User-Agent` kept, in characters.
pub const MAX_USER_AGENT_LEN: usize = 256;
/// Longest `Origin` accepted, in bytes.
pub const MAX_ORIGIN_LEN: usize = 512;

impl RequestContext {
    /// Build from raw header values, bounding and cleaning what is kept.
    pub fn new(
        ip: Option<std::net::IpAddr>,
        user_agent: Option<&str>,
        origin: Option<&str>,
    ) -> Self {
        let user_agent = user_agent
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_USER_AGENT_LEN)
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        let origin = origin
            .filter(|o| o.len() <= MAX_ORIGIN_LEN && o.is_ascii() && *o != "null")
            .map(str::to_string);
        Self {
            ip,
            user_agent,
            origin,
        }
    }
}

/// Decoded form parameters: each name at most once, empty values dropped
/// ("parameters sent without a value MUST be treated as if they were omitted").
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let malformed = || {
            Error::invalid_request("the body is not a valid application/x-www-form-urlencoded form")
        };
        // Strict decoding: invalid percent-escapes or UTF-8 are an error, never
        // silently replaced (a lossy decoder would turn them into other names).
        let text = std::str::from_utf8(body).map_err(|_| malformed())?;
        let mut pairs = Vec::new();
        for part in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let (k, v) = (
                form_decode(k).ok_or_else(malformed)?,
                form_decode(v).ok_or_else(malformed)?,
            );
            // No RFC 6749 parameter syntax (Appendix A) admits NUL, and databases reject it.
            if k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid_request(
                    "parameters must not contain NUL characters",
                ));
            }
            pairs.push((k, v));
            if pairs.len() > MAX_PARAMS {
                return Err(Error::invalid_request("too many parameters"));
            }
        }
        let mut map = HashMap::with_capacity(pairs.len());
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            if map.contains_key(&k) {
                return Err(Error::invalid_request(format!(
                    "parameter {} is repeated",
                    short(&k)
                )));
            }
            map.insert(k, v);
        }
        Ok(Self(map))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn take_bounded(&mut self, name: &str, max: usize) -> Result<Option<String>, Error> {
        match self.take(name) {
            Some(v) if v.len() > max => Err(Error::invalid_request(format!(
                "parameter {name} is too long"
            ))),
            other => Ok(other),
        }
    }

    fn require(&mut self, name: &'static str, max: usize) -> Result<String, Error> {
        self.take_bounded(name, max)?
            .ok_or_else(|| Error::invalid_request(format!("missing required parameter {name}")))
    }

    fn scope(&mut self) -> Result<Option<Scope>, Error> {
        self.take("scope").map(|s| Scope::parse(&s)).transpose()
    }
}

/// A user-chosen label: printable characters only, trimmed, bounded.
pub fn clean_label(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DEVICE_NAME_LEN)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A revocation (RFC 7009 §2.1) or introspection (RFC 7662 §2.1) request.
#[derive(Debug)]
pub struct TokenParam {
    /// `None` when the value cannot be a latchkey token (too long): revocation
    /// answers 200 and introspection `active: false`, as for any unknown token.
    pub token: Option<Password>,
    pub token_type_hint: Option<String>,
}

/// Parse `/revoke` and `/introspect` bodies: client authentication plus `token`.
pub fn parse_token_param(
    body: &[u8],
    authorization: Option<&str>,
) -> Result<(ClientAuth, TokenParam), Error> {
    let mut form = Form::parse(body)?;
    let client = client_auth(&mut form, authorization)?;
    let token = form
        .take("token")
        .ok_or_else(|| Error::invalid_request("missing required parameter token"))?;
    let token_type_hint = form.take_bounded("token_type_hint", 64)?;
    Ok((
        client,
        TokenParam {
            token: (token.len() <= MAX_TOKEN_PARAM_LEN).then(|| Password::new(token)),
            token_type_hint,
        },
    ))
}

/// The `access_token` of a form-encoded body (RFC 6750 §2.2).
pub fn parse_bearer_form(body: &[u8]) -> Result<Option<String>, Error> {
    let mut form = Form::parse(body)?;
    form.take_bounded("access_token", MAX_TOKEN_PARAM_LEN)
}

/// Echo at most a short, printable prefix of client-supplied text in errors.
fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(32).collect()
}

/// Parse a token-endpoint request. `refresh_cookie` is the refresh token from
/// the cookie of a browser client, used when the body names none.
pub fn parse_token_request(
    body: &[u8],
    authorization: Option<&str>,
    refresh_cookie: Option<&str>,
) -> Result<(ClientAuth, TokenRequest), Error> {
    let mut form = Form::parse(body)?;
    let client = client_auth(&mut form, authorization)?;
    let grant = form
        .take("grant_type")
        .ok_or_else(|| Error::invalid_request("missing required parameter grant_type"))?;
    let request = match GrantType::parse(&grant) {
        Some(GrantType::Password) => TokenRequest::Password {
            username: form.require("username", MAX_USERNAME_LEN)?,
            password: Password::new(form.require("password", MAX_PASSWORD_LEN)?),
            scope: form.scope()?,
            device_name: form.take("device_name").map(|d| clean_label(&d)),
        },
        Some(GrantType::RefreshToken) => {
            // Any length is accepted here (the body is bounded): a value that
            // cannot be a latchkey refresh token is `invalid_grant`, decided
            // by the grant, not a malformed request.
            let (token, from_cookie) = match (form.take("refresh_token"), refresh_cookie) {
                (Some(t), _) => (t, false),
                (None, Some(c)) if !c.is_empty() => (c.to_string(), true),
                (None, _) => {
                    return Err(Error::invalid_request(
                        "missing required parameter refresh_token",
                    ));
                }
            };
            TokenRequest::RefreshToken {
                refresh_token: Password::new(token),
                scope: form.scope()?,
                from_cookie,
            }
        }
        Some(GrantType::ClientCredentials) => TokenRequest::ClientCredentials {
            scope: form.scope()?,
        },
        None => {
            return Err(Error::new(
                ErrorCode::UnsupportedGrantType,
                format!("grant_type {} is not supported", short(&grant)),
            ));
        }
    };
    Ok((client, request))
}

/// Work out which client authentication method was used; more than one is an
/// error (RFC 6749 §2.3: "MUST NOT use more than one authentication method").
pub fn client_auth(form: &mut Form, authorization: Option<&str>) -> Result<ClientAuth, Error> {
    let form_id = form.take_bounded("client_id", MAX_CLIENT_ID_LEN)?;
    let form_secret = form.take_bounded("client_secret", MAX_CLIENT_SECRET_LEN)?;
    if let Some(header) = authorization {
        let (id, secret) = parse_basic(header)?;
        if form_secret.is_some() {
            return Err(Error::invalid_request(
                "use one client authentication method, not two",
            ));
        }
        if form_id.as_deref().is_some_and(|f| f != id) {
            return Err(Error::invalid_request(
                "client_id in the body differs from the Authorization header",
            ));
        }
        return Ok(ClientAuth::Basic {
            client_id: id,
            secret: Password::new(secret),
        });
    }
    match (form_id, form_secret) {
        (Some(client_id), Some(secret)) => Ok(ClientAuth::Post {
            client_id,
            secret: Password::new(secret),
        }),
        (Some(client_id), None) => Ok(ClientAuth::None { client_id }),
        (None, Some(_)) => Err(Error::invalid_request("client_secret without client_id")),
        (None, None) => Err(Error::invalid_client("client authentication is required")),
    }
}

/// Decode `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(header: &str) -> Result<(String, String), Error> {
    let bad = || Error::invalid_client("malformed Basic authorization header");
    let (scheme, value) = header.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Error::invalid_client(
            "unsupported authorization scheme; use Basic",
        ));
    }
    let value = value.trim();
    if value.len() > 4 * (MAX_CLIENT_ID_LEN + MAX_CLIENT_SECRET_LEN) {
        return Err(Error::invalid_request("Authorization header is too long"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let id = form_decode(id)
        .filter(|s| !s.contains('\0'))
        .ok_or_else(bad)?;
    let secret = form_decode(secret)
        .filter(|s| !s.contains('\0'))
        .ok_or_else(bad)?;
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || secret.len() > MAX_CLIENT_SECRET_LEN {
        return Err(bad());
    }
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one component.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn parse(body: &[u8], auth: Option<&str>) -> Result<(ClientAuth, TokenRequest), Error> {
        parse_token_request(body, auth, None)
    }

    fn basic(id: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    #[test]
    fn password_grant_with_basic_auth() {
        let (client, req) = parse(
            b"grant_type=password&username=alice&password=p%40ss+word&scope=openid+api%3Aread",
            Some(&basic("my%20app", "s%3Acret")),
        )
        .unwrap();
        assert!(
            matches!(client, ClientAuth::Basic { ref client_id, ref secret } if client_id == "my app" && secret.expose() == "s:cret")
        );
        match req {
            TokenRequest::Password {
                username,
                password,
                scope,
                ..
            } => {
                assert_eq!(username, "alice");
                assert_eq!(password.expose(), "p@ss word");
                assert_eq!(scope.unwrap().to_string(), "api:read openid");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn repeated_parameter_is_invalid_request() {
        let err = parse(b"grant_type=password&grant_type=password&client_id=a", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.description.contains("repeated"));
    }

    #[test]
    fn two_auth_methods_are_rejected() {
        let err = parse(
            b"grant_type=client_credentials&client_secret=x",
            Some(&basic("a", "b")),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn no_client_is_invalid_client() {
        let err = parse(b"grant_type=client_credentials", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient);
    }

    #[test]
    fn unknown_grant_is_unsupported() {
        let err = parse(b"grant_type=urn%3Afoo&client_id=a", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedGrantType);
    }

    #[test]
    fn missing_and_oversized_parameters() {
        let err = parse(b"grant_type=password&client_id=a&username=u", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.description.contains("password"));
        let long = format!(
            "grant_type=password&client_id=a&password=x&username={}",
            "u".repeat(MAX_USERNAME_LEN + 1)
        );
        let err = parse(long.as_bytes(), None).unwrap_err();
        assert!(err.description.contains("too long"));
    }

    #[test]
    fn empty_values_count_as_absent() {
        let (client, req) = parse(
            b"grant_type=client_credentials&client_id=a&client_secret=&scope=",
            None,
        )
        .unwrap();
        assert!(matches!(client, ClientAuth::None { .. }));
        assert!(req.scope().is_none());
    }

    #[test]
    fn malformed_basic_header() {
        for h in [
            "Basic !!!",
            "Bearer abc",
            "Basic",
            &basic("", "x"),
            "Basic Zm9v",
        ] {
            let err = parse(b"grant_type=client_credentials", Some(h)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidClient, "{h}");
        }
    }

    #[test]
    fn nul_bytes_are_invalid_request() {
        let err = parse(
            b"grant_type=password&client_id=a&username=a%00b&password=x",
            None,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        let err = parse(b"grant_type=client_credentials", Some(&basic("a%00", "b"))).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidClient);
    }

    #[test]
    fn refresh_token_from_body_or_cookie_and_any_length_is_a_grant_question() {
        let (_, req) = parse_token_request(
            b"grant_type=refresh_token&client_id=a",
            None,
            Some("cookie-token"),
        )
        .unwrap();
        assert!(
            matches!(req, TokenRequest::RefreshToken { ref refresh_token, from_cookie: true, .. } if refresh_token.expose() == "cookie-token")
        );
        let (_, req) = parse_token_request(
            b"grant_type=refresh_token&client_id=a&refresh_token=body",
            None,
            Some("cookie-token"),
        )
        .unwrap();
        assert!(
            matches!(req, TokenRequest::RefreshToken { ref refresh_token, from_cookie: false, .. } if refresh_token.expose() == "body")
        );
        let long = format!(
            "grant_type=refresh_token&client_id=a&refresh_token={}",
            "A".repeat(2048)
        );
        assert!(parse(long.as_bytes(), None).is_ok());
        let err = parse(b"grant_type=refresh_token&client_id=a", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn device_names_are_cleaned_and_bounded() {
        let (_, req) = parse(
            b"grant_type=password&client_id=a&username=u&password=p&device_name=%20Work%0Alaptop%20",
            None,
        )
        .unwrap();
        assert!(
            matches!(req, TokenRequest::Password { device_name: Some(ref d), .. } if d == "Worklaptop")
        );
        assert_eq!(clean_label(&"x".repeat(500)).len(), MAX_DEVICE_NAME_LEN);
    }

    #[test]
    fn token_params_for_revocation_and_introspection() {
        let (client, p) =
            parse_token_param(b"token=abc&token_type_hint=refresh_token&client_id=c", None)
                .unwrap();
        assert_eq!(client.client_id(), "c");
        assert_eq!(p.token.unwrap().expose(), "abc");
        assert_eq!(p.token_type_hint.as_deref(), Some("refresh_token"));
        let long = format!("client_id=c&token={}", "A".repeat(MAX_TOKEN_PARAM_LEN + 1));
        assert!(
            parse_token_param(long.as_bytes(), None)
                .unwrap()
                .1
                .token
                .is_none()
        );
        assert_eq!(
            parse_token_param(b"client_id=c", None).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn invalid_utf8_body_is_invalid_request() {
        let err = parse(b"grant_type=%FF%FE", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }
}
