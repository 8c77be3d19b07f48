//! The browser-facing endpoints: `GET /authorize`, the sign-in and consent
//! form posts, and RP-initiated logout (`GET`/`POST /logout`). Handlers read
//! the query, the cookies and bounded forms, call [`crate::authorize::Authorizer`]
//! and render its [`Step`] as a page (`http::pages`) or a redirect. The
//! decisions (which page, which redirect, sessions, consent, codes) are all
//! made there.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::status;
use super::extract::ClientMeta;
use super::extract::form_body;
use super::pages;
use crate::app::AppState;
use crate::authorize::{
    CSRF_COOKIE, LogoutRequest, Outcome, SESSION_COOKIE, Step, csrf_error, csrf_ok,
};
use crate::oauth::Error;
use crate::oauth::authorize::MAX_STATE_LEN;
use crate::oauth::request::{
    Form, MAX_PASSWORD_LEN, MAX_REDIRECT_URI_LEN, MAX_USERNAME_LEN, Password,
};

/// Longest query string accepted at the browser endpoints.
const MAX_QUERY_LEN: usize = 8 * 1024;

/// Pages are never cached, never framed (clickjacking), and leak no URL (the
/// query carries `state` and the redirect URI) through `Referer`. No script
/// may run; inline style only.
fn page_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn html(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    page_headers(&mut r);
    r
}

/// A named cookie's value from the `Cookie` header(s).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn set_cookie(r: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax")
}

/// The CSRF token for a form: the browser's existing one, or a new one to set.
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE).filter(|c| c.len() == 43) {
        Some(c) => (c.to_string(), false),
        None => (crate::authorize::new_csrf_token(), true),
    }
}

fn render(state: &AppState, headers: &HeaderMap, outcome: Outcome) -> Response {
    let issuer = &state.config.issuer;
    let (csrf, new_csrf) = csrf_token(headers);
    let mut r = match outcome.step {
        Step::ErrorPage(e) => html(status(e.code), pages::error(&e)),
        Step::Redirect(to) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            match HeaderValue::from_str(&to) {
                Ok(v) => {
                    r.headers_mut().insert(header::LOCATION, v);
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r.headers_mut().insert(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    );
                    r
                }
                Err(_) => html(
                    StatusCode::BAD_REQUEST,
                    pages::error(&Error::invalid_request("the redirect URI is not valid")),
                ),
            }
        }
        Step::Login(view) => html(StatusCode::OK, pages::login(issuer, &view, &csrf)),
        Step::Consent(view) => html(StatusCode::OK, pages::consent(issuer, &view, &csrf)),
        Step::ConfirmLogout => html(StatusCode::OK, pages::confirm_logout(issuer, &csrf, &[])),
        Step::SignedOut => html(StatusCode::OK, pages::signed_out()),
    };
    if new_csrf && !csrf.is_empty() {
        set_cookie(
            &mut r,
            format!("{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; Secure; SameSite=Lax"),
        );
    }
    if let Some(token) = outcome.new_session {
        set_cookie(
            &mut r,
            session_cookie(&token, state.authorizer.session_ttl_secs()),
        );
    } else if outcome.clear_session {
        set_cookie(&mut r, session_cookie("", 0));
    }
    r
}

fn error_page(e: Error) -> Response {
    html(status(e.code), pages::error(&e))
}

fn query_of(q: Option<String>) -> Result<String, Error> {
    let q = q.unwrap_or_default();
    if q.len() > MAX_QUERY_LEN {
        return Err(Error::invalid_request("the request is too long"));
    }
    Ok(q)
}

/// A bounded form with a valid CSRF token.
async fn checked_form(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Form, Error> {
    let body = form_body(headers, body, state.config.server.max_body_bytes).await?;
    let form = Form::parse(&body)?;
    if !csrf_ok(cookie(headers, CSRF_COOKIE), form.get("csrf")) {
        return Err(csrf_error());
    }
    Ok(form)
}

/// `GET /authorize` (OIDC Core §3.1.2.1).
pub async fn authorize(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = match query_of(query) {
        Ok(q) => q,
        Err(e) => return error_page(e),
    };
    let step = state
        .authorizer
        .authorize(&query, cookie(&headers, SESSION_COOKIE))
        .await;
    render(&state, &headers, step.into())
}

/// `POST /authorize/login?<the authorization request>`.
pub async fn login(
    State(state): State<AppState>,
    ClientMeta(ctx): ClientMeta,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = match query_of(query) {
        Ok(q) => q,
        Err(e) => return error_page(e),
    };
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(e) => return error_page(e),
    };
    let username = form.get("username").unwrap_or_default();
    let password = form.get("password").unwrap_or_default();
    if username.len() > MAX_USERNAME_LEN || password.len() > MAX_PASSWORD_LEN {
        return error_page(Error::invalid_request("username or password is too long"));
    }
    let outcome = state
        .authorizer
        .login(&query, username, Password::new(password.to_string()), &ctx)
        .await;
    render(&state, &headers, outcome)
}

/// `POST /authorize/consent?<the authorization request>`.
pub async fn consent(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = match query_of(query) {
        Ok(q) => q,
        Err(e) => return error_page(e),
    };
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(e) => return error_page(e),
    };
    let allow = match form.get("decision") {
        Some("allow") => true,
        Some("deny") => false,
        _ => return error_page(Error::invalid_request("decision must be allow or deny")),
    };
    let step = state
        .authorizer
        .consent(&query, cookie(&headers, SESSION_COOKIE), allow)
        .await;
    render(&state, &headers, step.into())
}

fn logout_request(form: &Form) -> Result<LogoutRequest, Error> {
    let bounded = |name: &str, max: usize| -> Result<Option<String>, Error> {
        match form.get(name) {
            Some(v) if v.len() > max => Err(Error::invalid_request(format!(
                "parameter {name} is too long"
            ))),
            other => Ok(other.map(str::to_string)),
        }
    };
    Ok(LogoutRequest {
        id_token_hint: bounded("id_token_hint", crate::token::verify::MAX_TOKEN_LEN)?,
        post_logout_redirect_uri: bounded("post_logout_redirect_uri", MAX_REDIRECT_URI_LEN)?,
        state: bounded("state", MAX_STATE_LEN)?,
        client_id: bounded("client_id", crate::oauth::request::MAX_CLIENT_ID_LEN)?,
    })
}

/// `GET /logout` (OIDC RP-Initiated Logout 1.0 §2).
pub async fn logout(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let parsed = query_of(query)
        .and_then(|q| Form::parse(q.as_bytes()))
        .and_then(|f| logout_request(&f).map(|r| (f, r)));
    let (form, req) = match parsed {
        Ok(v) => v,
        Err(e) => return error_page(e),
    };
    let outcome = state
        .authorizer
        .logout(req, cookie(&headers, SESSION_COOKIE), false)
        .await;
    if matches!(outcome.step, Step::ConfirmLogout) {
        // Carry the request through the confirmation form.
        let (csrf, new_csrf) = csrf_token(&headers);
        let hidden: Vec<(&str, &str)> = [
            "id_token_hint",
            "post_logout_redirect_uri",
            "state",
            "client_id",
        ]
        .into_iter()
        .filter_map(|k| form.get(k).map(|v| (k, v)))
        .collect();
        let mut r = html(
            StatusCode::OK,
            pages::confirm_logout(&state.config.issuer, &csrf, &hidden),
        );
        if new_csrf {
            set_cookie(
                &mut r,
                format!("{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; Secure; SameSite=Lax"),
            );
        }
        return r;
    }
    render(&state, &headers, outcome)
}

/// `POST /logout`: the confirmation form (CSRF-checked).
pub async fn logout_confirmed(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(e) => return error_page(e),
    };
    let req = match logout_request(&form) {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let outcome = state
        .authorizer
        .logout(req, cookie(&headers, SESSION_COOKIE), true)
        .await;
    render(&state, &headers, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-latchkey-session=abc; x__Host-latchkey-csrf=no"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), None);
    }
}
