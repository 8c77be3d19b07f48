//! The one place where a user's token response is assembled: an access token,
//! an ID token when `openid` was granted, and the refresh token the grant
//! decided on. The password and refresh grants (and any later user grant) call
//! [`issue_for_user`], so claims and response shape cannot drift apart.

use super::{AuthenticatedClient, TokenService, internal};
use crate::clock::UnixTime;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, Scope};
use crate::store::UserRow;
use crate::token::{Grant, IdentityInfo};

/// What a user grant decided to issue.
pub struct UserIssue<'a> {
    pub user: &'a UserRow,
    pub roles: Vec<String>,
    pub scope: &'a Scope,
    /// The session (refresh family) the tokens belong to, if any.
    pub session_id: Option<&'a str>,
    /// When the user last authenticated (OIDC `auth_time`).
    pub auth_time: UnixTime,
    pub refresh_token: Option<String>,
}

/// Sign the access token (and ID token) for `issue`; nothing is stored here.
pub async fn issue_for_user(
    svc: &TokenService,
    client: &AuthenticatedClient,
    issue: UserIssue<'_>,
) -> Result<TokenResponse, Error> {
    let scope_text = issue.scope.to_string();
    let grant = Grant {
        subject: &issue.user.id,
        client_id: &client.row.client_id,
        scope: scope_text.clone(),
        roles: issue.roles,
        session_id: issue.session_id,
    };
    let access_token = svc
        .minter
        .access_token(&grant, client.alg)
        .await
        .map_err(internal)?;
    let id_token = if issue.scope.contains("openid") {
        let info = IdentityInfo {
            username: &issue.user.username,
            email: issue.user.email.as_deref(),
            auth_time: issue.auth_time,
            include_profile: issue.scope.contains("profile"),
            include_email: issue.scope.contains("email"),
        };
        Some(
            svc.minter
                .id_token(&issue.user.id, &client.row.client_id, &info, client.alg)
                .await
                .map_err(internal)?,
        )
    } else {
        None
    };
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: svc.minter.access_ttl(),
        refresh_token: issue.refresh_token,
        id_token,
        scope: scope_text,
    })
}
