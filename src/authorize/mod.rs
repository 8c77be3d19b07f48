//! The authorization endpoint's decisions (RFC 6749 §4.1, OIDC Core §3.1.2,
//! RFC 7636, RFC 9207) and RP-initiated logout (OIDC RP-Initiated Logout 1.0).
//!
//! [`Authorizer`] decides, for one browser request, what happens next — show an
//! error page, show the login or consent page, or redirect — and returns that
//! as a [`Step`]. It owns the browser (single sign-on) session, remembered
//! consent and the issuing of authorization codes. It never renders HTML and
//! knows no status codes or headers: `http::authorize` does that.
//!
//! The rule that decides between a page and a redirect: an error is sent to
//! the client only after the client exists and the redirect URI is one it
//! registered (exactly, or a loopback URI differing only in port, RFC 8252
//! §7.3). Before that, it is shown on a page, so latchkey is never an open
//! redirector.

pub mod redirect;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::AuthorizeConfig;
use crate::grant::{TokenService, internal, password::verify_user};
use crate::keyring::KeyRing;
use crate::oauth::authorize::{AuthorizeRequest, Prompt, ValidAuthorize};
use crate::oauth::request::Password;
use crate::oauth::{Error, ErrorCode, GrantType, Scope};
use crate::secret;
use crate::store::{BrowserSessionRow, ClientRow, NewCode, Store};
use crate::token::verify::verify_id_token_hint;

pub use redirect::{redirect_uri_matches, validate_registered_uri, with_params};

/// The browser session cookie (single sign-on). `__Host-` forces `Secure`,
/// `Path=/` and no `Domain`, so no sibling host can set or read it.
pub const SESSION_COOKIE: &str = "__Host-latchkey-session";
/// The CSRF double-submit cookie of the login, consent and logout forms.
pub const CSRF_COOKIE: &str = "__Host-latchkey-csrf";

/// What the browser sees next.
#[derive(Debug)]
pub enum Step {
    /// An error that must not be redirected (unknown client, unregistered
    /// redirect URI, forged form): shown on a page.
    ErrorPage(Error),
    /// Send the browser to this URL (a client's redirect URI with the result).
    Redirect(String),
    Login(LoginView),
    Consent(ConsentView),
    /// RP-initiated logout without a usable hint: ask before signing out.
    ConfirmLogout,
    /// Signed out, and nowhere (registered) to send the browser.
    SignedOut,
}

#[derive(Debug)]
pub struct LoginView {
    pub client_id: String,
    /// The authorization request, carried through the form unchanged.
    pub query: String,
    pub login_hint: Option<String>,
    /// The one generic failure message, when a sign-in failed.
    pub error: Option<&'static str>,
}

#[derive(Debug)]
pub struct ConsentView {
    pub client_id: String,
    pub query: String,
    pub username: String,
    pub scopes: Vec<String>,
}

/// A step, and what to do with the browser session cookie.
#[derive(Debug)]
pub struct Outcome {
    pub step: Step,
    /// A new session cookie value (set it) after a successful sign-in.
    pub new_session: Option<String>,
    /// Clear the session cookie (logout).
    pub clear_session: bool,
}

impl From<Step> for Outcome {
    fn from(step: Step) -> Self {
        Self {
            step,
            new_session: None,
            clear_session: false,
        }
    }
}

/// RP-initiated logout parameters (bounded at the edge).
#[derive(Debug, Default)]
pub struct LogoutRequest {
    pub id_token_hint: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
    pub client_id: Option<String>,
}

/// The generic sign-in failure: it never says which part was wrong.
pub const BAD_CREDENTIALS: &str = "Invalid username or password.";

#[derive(Clone)]
pub struct Authorizer {
    store: Store,
    tokens: TokenService,
    ring: Arc<KeyRing>,
    clock: SharedClock,
    cfg: AuthorizeConfig,
    issuer: Arc<str>,
}

/// A request whose client and redirect URI are verified: from here on, errors
/// go back to the client.
struct Verified {
    client: ClientRow,
    redirect_uri: String,
    state: Option<String>,
    query: String,
}

/// Double-submit CSRF check: the form's token must equal the cookie's.
pub fn csrf_ok(cookie: Option<&str>, field: Option<&str>) -> bool {
    match (cookie, field) {
        (Some(c), Some(f)) if c.len() >= 32 => secret::ct_eq(c.as_bytes(), f.as_bytes()),
        _ => false,
    }
}

/// A fresh CSRF token (43 base64url characters), or an empty string if the
/// system's randomness failed — which no check accepts, so forms then fail
/// closed.
pub fn new_csrf_token() -> String {
    secret::random_token().unwrap_or_default()
}

/// The forged-form error (no or wrong CSRF token).
pub fn csrf_error() -> Error {
    Error::new(
        ErrorCode::AccessDenied,
        "this form was not sent from latchkey's page or has expired; go back and try again",
    )
}

fn session_digest(token: &str) -> Vec<u8> {
    secret::sha256(format!("latchkey browser session\0{token}").as_bytes())
}

impl Authorizer {
    pub fn new(
        store: Store,
        tokens: TokenService,
        ring: Arc<KeyRing>,
        clock: SharedClock,
        cfg: AuthorizeConfig,
        issuer: &str,
    ) -> Self {
        Self {
            store,
            tokens,
            ring,
            clock,
            cfg,
            issuer: issuer.into(),
        }
    }

    pub fn session_ttl_secs(&self) -> u64 {
        self.cfg.session_ttl_secs
    }

    /// `GET /authorize`.
    pub async fn authorize(&self, query: &str, session_cookie: Option<&str>) -> Step {
        let (verified, req) = match self.verify(query).await {
            Ok(v) => v,
            Err(step) => return step,
        };
        let valid = match self.validate(&verified, &req) {
            Ok(v) => v,
            Err(step) => return step,
        };
        let session = match self.session(session_cookie).await {
            Ok(s) => s,
            Err(e) => return Step::ErrorPage(e),
        };
        let now = self.clock.now();
        let session = session.filter(|s| {
            valid.prompt != Prompt::Login
                && valid.max_age.is_none_or(|max| now - s.auth_time <= max)
        });
        match session {
            Some(s) => self.after_login(&verified, &valid, &s).await,
            None if valid.prompt == Prompt::None => self.error_redirect(
                &verified,
                Error::new(ErrorCode::LoginRequired, "the user is not signed in"),
            ),
            None => Step::Login(LoginView {
                client_id: verified.client.client_id,
                query: verified.query,
                login_hint: valid.login_hint,
                error: None,
            }),
        }
    }

    /// `POST /authorize/login`: the form's username and password (the CSRF
    /// token was checked by the caller with [`csrf_ok`]).
    pub async fn login(
        &self,
        query: &str,
        username: &str,
        password: Password,
        ctx: &crate::oauth::RequestContext,
    ) -> Outcome {
        let (verified, req) = match self.verify(query).await {
            Ok(v) => v,
            Err(step) => return step.into(),
        };
        let valid = match self.validate(&verified, &req) {
            Ok(v) => v,
            Err(step) => return step.into(),
        };
        // The sign-in form is a password login like the password grant: the
        // same per-address, per-client and per-username limits, the same
        // lockout (inside `verify_user`).
        if let Err(e) = self
            .tokens
            .limits()
            .check(
                crate::limits::Endpoint::Token,
                ctx,
                Some(&verified.client.client_id),
                Some(username),
            )
            .await
        {
            return Step::ErrorPage(e).into();
        }
        let user = match verify_user(
            &self.tokens,
            username,
            &password,
            &verified.client.client_id,
            ctx,
        )
        .await
        {
            Ok(u) => u,
            Err(e) if e.code == ErrorCode::InvalidGrant => {
                tracing::info!(client_id = %verified.client.client_id, "sign-in refused");
                return Step::Login(LoginView {
                    client_id: verified.client.client_id,
                    query: verified.query,
                    login_hint: Some(username.to_string()),
                    error: Some(BAD_CREDENTIALS),
                })
                .into();
            }
            Err(e) => return Step::ErrorPage(e).into(),
        };
        let now = self.clock.now();
        let created = async {
            let token = secret::random_token().map_err(internal)?;
            let row = BrowserSessionRow {
                id: secret::random_id().map_err(internal)?,
                user_id: user.id.clone(),
                auth_time: now,
                expires_at: now + i64::try_from(self.cfg.session_ttl_secs).unwrap_or(3600),
            };
            self.store
                .create_browser_session(&row, &session_digest(&token), now)
                .await
                .map_err(internal)?;
            Ok::<_, Error>((token, row))
        }
        .await;
        let (token, row) = match created {
            Ok(v) => v,
            Err(e) => return Step::ErrorPage(e).into(),
        };
        tracing::info!(user_id = %user.id, client_id = %verified.client.client_id, "signed in");
        Outcome {
            step: self.after_login(&verified, &valid, &row).await,
            new_session: Some(token),
            clear_session: false,
        }
    }

    /// `POST /authorize/consent`: the user allowed or denied the client.
    pub async fn consent(&self, query: &str, session_cookie: Option<&str>, allow: bool) -> Step {
        let (verified, req) = match self.verify(query).await {
            Ok(v) => v,
            Err(step) => return step,
        };
        let valid = match self.validate(&verified, &req) {
            Ok(v) => v,
            Err(step) => return step,
        };
        let session = match self.session(session_cookie).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Step::Login(LoginView {
                    client_id: verified.client.client_id,
                    query: verified.query,
                    login_hint: None,
                    error: None,
                });
            }
            Err(e) => return Step::ErrorPage(e),
        };
        if !allow {
            return self.error_redirect(
                &verified,
                Error::new(ErrorCode::AccessDenied, "the user denied the request"),
            );
        }
        let remembered = match self
            .store
            .find_consent(&session.user_id, &verified.client.client_id)
            .await
        {
            Ok(r) => r,
            Err(e) => return Step::ErrorPage(internal(e)),
        };
        let mut granted: Vec<String> = remembered
            .as_deref()
            .map(Scope::from_stored)
            .map(|s| s.iter().map(str::to_string).collect())
            .unwrap_or_default();
        for s in valid.scope.iter() {
            if !granted.iter().any(|g| g == s) {
                granted.push(s.to_string());
            }
        }
        let union = Scope::from_stored(&granted.join(" "));
        if let Err(e) = self
            .store
            .save_consent(
                &session.user_id,
                &verified.client.client_id,
                &union.to_string(),
                self.clock.now(),
            )
            .await
        {
            return Step::ErrorPage(internal(e));
        }
        self.issue_code(&verified, &valid, &session).await
    }

    /// RP-initiated logout (`GET /logout`, and `POST /logout` once confirmed,
    /// with `confirmed = true`).
    pub async fn logout(
        &self,
        req: LogoutRequest,
        session_cookie: Option<&str>,
        confirmed: bool,
    ) -> Outcome {
        let now = self.clock.now();
        let hint = match req.id_token_hint.as_deref() {
            Some(t) => match verify_id_token_hint(&self.ring.current(), &self.issuer, t) {
                Ok(h) => Some(h),
                Err(e) => {
                    return Step::ErrorPage(Error::invalid_request(format!(
                        "id_token_hint is not a valid latchkey ID token: {e}"
                    )))
                    .into();
                }
            },
            None => None,
        };
        if let (Some(h), Some(c)) = (&hint, &req.client_id)
            && &h.aud != c
        {
            return Step::ErrorPage(Error::invalid_request(
                "client_id differs from the id_token_hint's audience",
            ))
            .into();
        }
        // Where to go afterwards: only a URI the hinted client registered.
        let client_id = hint.as_ref().map(|h| h.aud.clone()).or(req.client_id);
        let target = match req.post_logout_redirect_uri.as_deref() {
            None => None,
            Some(uri) => {
                let client = match &client_id {
                    Some(id) => match self.store.find_client(id).await {
                        Ok(c) => c,
                        Err(e) => return Step::ErrorPage(internal(e)).into(),
                    },
                    None => None,
                };
                match client {
                    Some(c) if c.post_logout_redirect_uri_list().any(|r| r == uri) => {
                        Some(uri.to_string())
                    }
                    _ => {
                        return Step::ErrorPage(Error::invalid_request(
                            "post_logout_redirect_uri is not registered for this client",
                        ))
                        .into();
                    }
                }
            }
        };
        let session = match self.session(session_cookie).await {
            Ok(s) => s,
            Err(e) => return Step::ErrorPage(e).into(),
        };
        // Without proof that the request comes from the signed-in user's own
        // relying party, a cross-site link could sign anyone out: ask first.
        let vouched = match (&hint, &session) {
            (Some(h), Some(s)) => h.sub == s.user_id,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !vouched && !confirmed {
            return Step::ConfirmLogout.into();
        }
        if let Some(token) = session_cookie
            && let Err(e) = self
                .store
                .end_browser_session(&session_digest(token), now)
                .await
        {
            return Step::ErrorPage(internal(e)).into();
        }
        if let Some(sid) = hint.as_ref().and_then(|h| h.sid.as_deref())
            && let Err(e) = self.store.revoke_family(sid, now, "logout").await
        {
            return Step::ErrorPage(internal(e)).into();
        }
        tracing::info!(
            client_id = client_id.as_deref().unwrap_or("-"),
            "signed out"
        );
        let step = match target {
            Some(uri) => {
                let mut params = Vec::new();
                if let Some(s) = &req.state {
                    params.push(("state", s.as_str()));
                }
                match with_params(&uri, &params) {
                    Some(u) => Step::Redirect(u),
                    None => Step::SignedOut,
                }
            }
            None => Step::SignedOut,
        };
        Outcome {
            step,
            new_session: None,
            clear_session: true,
        }
    }

    /// Parse the query, find the client, verify the redirect URI.
    async fn verify(&self, query: &str) -> Result<(Verified, AuthorizeRequest), Step> {
        let req = AuthorizeRequest::parse(query).map_err(Step::ErrorPage)?;
        let client = self
            .store
            .find_client(&req.client_id)
            .await
            .map_err(|e| Step::ErrorPage(internal(e)))?
            .ok_or_else(|| Step::ErrorPage(Error::invalid_request("unknown client_id")))?;
        let redirect_uri = req.redirect_uri.clone().ok_or_else(|| {
            Step::ErrorPage(Error::invalid_request(
                "missing required parameter redirect_uri",
            ))
        })?;
        if !client
            .redirect_uri_list()
            .any(|r| redirect_uri_matches(r, &redirect_uri))
        {
            return Err(Step::ErrorPage(Error::invalid_request(
                "redirect_uri is not registered for this client",
            )));
        }
        Ok((
            Verified {
                client,
                redirect_uri,
                state: req.state.clone(),
                query: query.to_string(),
            },
            req,
        ))
    }

    /// Everything that can be answered at the redirect URI.
    fn validate(&self, v: &Verified, req: &AuthorizeRequest) -> Result<ValidAuthorize, Step> {
        let grants = v.client.grant_types.split(' ');
        if !grants
            .clone()
            .any(|g| g == GrantType::AuthorizationCode.as_str())
        {
            return Err(self.error_redirect(
                v,
                Error::new(
                    ErrorCode::UnauthorizedClient,
                    "this client may not use the authorization code flow",
                ),
            ));
        }
        let valid = req.validate().map_err(|e| self.error_redirect(v, e))?;
        let allowed = Scope::from_stored(&v.client.scopes);
        if !valid.scope.is_subset(&allowed) {
            return Err(self.error_redirect(
                v,
                Error::invalid_scope(format!(
                    "scope not allowed for this client: {}",
                    valid.scope.difference(&allowed).join(" ")
                )),
            ));
        }
        Ok(valid)
    }

    /// The live browser session a cookie names.
    async fn session(&self, cookie: Option<&str>) -> Result<Option<BrowserSessionRow>, Error> {
        let Some(token) = cookie.filter(|t| t.len() <= 64) else {
            return Ok(None);
        };
        self.store
            .find_browser_session(&session_digest(token), self.clock.now())
            .await
            .map_err(internal)
    }

    /// Signed in: ask for consent if needed, otherwise issue the code.
    async fn after_login(
        &self,
        v: &Verified,
        valid: &ValidAuthorize,
        session: &BrowserSessionRow,
    ) -> Step {
        if !v.client.first_party {
            let remembered = match self
                .store
                .find_consent(&session.user_id, &v.client.client_id)
                .await
            {
                Ok(r) => r,
                Err(e) => return Step::ErrorPage(internal(e)),
            };
            let covered = remembered
                .as_deref()
                .is_some_and(|r| valid.scope.is_subset(&Scope::from_stored(r)));
            if !covered {
                if valid.prompt == Prompt::None {
                    return self.error_redirect(
                        v,
                        Error::new(
                            ErrorCode::ConsentRequired,
                            "the user has not granted this client these scopes",
                        ),
                    );
                }
                let username = match self.store.find_user(&session.user_id).await {
                    Ok(Some(u)) => u.username,
                    Ok(None) => return Step::ErrorPage(Error::invalid_request("unknown user")),
                    Err(e) => return Step::ErrorPage(internal(e)),
                };
                return Step::Consent(ConsentView {
                    client_id: v.client.client_id.clone(),
                    query: v.query.clone(),
                    username,
                    scopes: valid.scope.iter().map(str::to_string).collect(),
                });
            }
        }
        self.issue_code(v, valid, session).await
    }

    async fn issue_code(
        &self,
        v: &Verified,
        valid: &ValidAuthorize,
        session: &BrowserSessionRow,
    ) -> Step {
        let now = self.clock.now();
        let code = match secret::random_token() {
            Ok(c) => c,
            Err(e) => return Step::ErrorPage(internal(e)),
        };
        let scope = valid.scope.to_string();
        let stored = self
            .store
            .create_code(NewCode {
                digest: &crate::grant::code_digest(&code),
                client_id: &v.client.client_id,
                user_id: &session.user_id,
                redirect_uri: &v.redirect_uri,
                scope: &scope,
                nonce: valid.nonce.as_deref(),
                code_challenge: &valid.code_challenge,
                auth_time: session.auth_time,
                now,
                expires_at: now + i64::try_from(self.cfg.code_ttl_secs).unwrap_or(60),
            })
            .await;
        if let Err(e) = stored {
            return Step::ErrorPage(internal(e));
        }
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = &v.state {
            params.push(("state", s));
        }
        params.push(("iss", &self.issuer));
        match with_params(&v.redirect_uri, &params) {
            Some(u) => Step::Redirect(u),
            None => Step::ErrorPage(Error::invalid_request("the redirect_uri is not a URL")),
        }
    }

    /// An error sent to the verified redirect URI with `state` and `iss`.
    fn error_redirect(&self, v: &Verified, e: Error) -> Step {
        // Internal failures are never described to the client.
        let mut params = vec![
            ("error", e.code.as_str()),
            ("error_description", &e.description),
        ];
        if let Some(s) = &v.state {
            params.push(("state", s));
        }
        params.push(("iss", &self.issuer));
        match with_params(&v.redirect_uri, &params) {
            Some(u) => Step::Redirect(u),
            None => Step::ErrorPage(e),
        }
    }
}
