//! The server-rendered pages of the browser flow: sign-in, consent, errors and
//! logout. Plain HTML forms that work without JavaScript or CSS; every
//! interpolated value goes through [`escape`]. Labels are tied to their
//! inputs, the first field is focused, errors are announced (`role="alert"`)
//! and referenced by the fields they concern.

use crate::authorize::{ConsentView, LoginView};
use crate::oauth::{Error, ErrorCode};

/// HTML-escape text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1d21}\
main{max-width:24rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:8px;\
box-shadow:0 1px 4px rgba(0,0,0,.15)}h1{font-size:1.5rem;margin-top:0}\
label{display:block;margin-top:1rem;font-weight:600}\
input{display:block;width:100%;box-sizing:border-box;padding:.6rem;margin-top:.3rem;font-size:1rem;\
border:1px solid #767b85;border-radius:4px}\
button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem;border-radius:4px;border:1px solid #1a56c4;\
background:#1a56c4;color:#fff;cursor:pointer}button.secondary{background:#fff;color:#1a56c4}\
.error{color:#a4161a;font-weight:600}ul{padding-left:1.2rem}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} – latchkey</title><style>{STYLE}</style></head>\
<body><main>{body}</main></body></html>\n",
        title = escape(title),
    )
}

pub fn login(issuer: &str, view: &LoginView, csrf: &str) -> String {
    let (error, described) = match view.error {
        Some(msg) => (
            format!(
                "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
                escape(msg)
            ),
            " aria-describedby=\"error\" aria-invalid=\"true\"",
        ),
        None => (String::new(), ""),
    };
    let hint = view.login_hint.as_deref().unwrap_or("");
    // With a hint the password is what is missing, so it gets the focus.
    let (user_focus, pass_focus) = if hint.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    let body = format!(
        "<h1>Sign in</h1><p>to continue to <strong>{client}</strong></p>{error}\
<form method=\"post\" action=\"{issuer}/authorize/login?{query}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<label for=\"username\">Username</label>\
<input id=\"username\" name=\"username\" autocomplete=\"username\" required value=\"{hint}\"{described}{user_focus}>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{described}{pass_focus}>\
<button type=\"submit\">Sign in</button></form>",
        client = escape(&view.client_id),
        issuer = escape(issuer),
        query = escape(&view.query),
        csrf = escape(csrf),
        hint = escape(hint),
    );
    page("Sign in", &body)
}

fn scope_text(scope: &str) -> String {
    match scope {
        "openid" => "Know who you are (your user id)".into(),
        "profile" => "See your username".into(),
        "email" => "See your email address".into(),
        "offline_access" => "Stay signed in when you are away".into(),
        other => format!("Use the API permission “{}”", escape(other)),
    }
}

pub fn consent(issuer: &str, view: &ConsentView, csrf: &str) -> String {
    let items: String = view
        .scopes
        .iter()
        .map(|s| format!("<li>{}</li>", scope_text(s)))
        .collect();
    let body = format!(
        "<h1>Allow access?</h1><p><strong>{client}</strong> asks to act for <strong>{user}</strong>. It will be able to:</p>\
<ul>{items}</ul>\
<form method=\"post\" action=\"{issuer}/authorize/consent?{query}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\" name=\"decision\" value=\"allow\" autofocus>Allow</button> \
<button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button></form>",
        client = escape(&view.client_id),
        user = escape(&view.username),
        issuer = escape(issuer),
        query = escape(&view.query),
        csrf = escape(csrf),
    );
    page("Allow access", &body)
}

pub fn error(e: &Error) -> String {
    let description = match e.code {
        ErrorCode::ServerError => "Something went wrong on our side. Please try again later.",
        _ => &e.description,
    };
    let body = format!(
        "<h1>This request cannot continue</h1>\
<p class=\"error\" role=\"alert\">{description}</p><p>Error code: <code>{code}</code></p>\
<p>Return to the application you came from and try again.</p>",
        description = escape(description),
        code = escape(e.code.as_str()),
    );
    page("Error", &body)
}

pub fn confirm_logout(issuer: &str, csrf: &str, hidden: &[(&str, &str)]) -> String {
    let fields: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let body = format!(
        "<h1>Sign out?</h1><p>Do you want to sign out of latchkey?</p>\
<form method=\"post\" action=\"{issuer}/logout\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{fields}\
<button type=\"submit\" autofocus>Sign out</button></form>",
        issuer = escape(issuer),
        csrf = escape(csrf),
    );
    page("Sign out", &body)
}

pub fn signed_out() -> String {
    page(
        "Signed out",
        "<h1>You are signed out</h1><p>You can close this window.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_interpolated_is_escaped() {
        let view = LoginView {
            client_id: "<script>alert(1)</script>".into(),
            query: "a=1&b=\"><x".into(),
            login_hint: Some("\" autofocus onfocus=\"x".into()),
            error: None,
        };
        let html = login("https://id.example", &view, "tok");
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a=1&amp;b=&quot;&gt;&lt;x"));
        assert!(!html.contains("\" autofocus onfocus"));
    }
}
