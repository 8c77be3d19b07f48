//! The authorization code grant (RFC 6749 §4.1.3) with PKCE (RFC 7636 §4.6).
//!
//! A code is spent by its first presentation, whatever happens next, so a
//! wrong verifier or redirect URI cannot be retried with the same code. A
//! code presented again after it was redeemed is a replay (RFC 6749 §4.1.2:
//! "the authorization server ... SHOULD revoke (when possible) all tokens
//! previously issued based on that authorization code"): the session it opened
//! is revoked, which kills its refresh family and, through `sid`, its access
//! tokens at userinfo and introspection.
//!
//! The session is created before any token is signed, and its id is bound to
//! the code in the same statement that spends it, so a replay that races the
//! first redemption either finds the session to revoke or is noticed by the
//! first redemption itself (which then refuses to hand out tokens).

use super::{AuthenticatedClient, SessionStart, TokenService, internal};
use crate::oauth::request::Password;
use crate::oauth::wire::TokenResponse;
use crate::oauth::{Error, GrantType, RequestContext, Scope};
use crate::secret;
use crate::session::device_label;
use crate::store::CodeRedemption;
use crate::token::{Grant, IdentityInfo};

/// RFC 8176: a password was checked.
const AMR_PASSWORD: &[&str] = &["pwd"];

/// Digest under which a code is stored (codes are bearer secrets).
pub fn code_digest(code: &str) -> Vec<u8> {
    secret::sha256(format!("latchkey authorization code\0{code}").as_bytes())
}

/// RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    use base64::Engine as _;
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(secret::sha256(verifier.as_bytes()));
    secret::ct_eq(computed.as_bytes(), challenge.as_bytes())
}

pub async fn grant(
    svc: &TokenService,
    client: &AuthenticatedClient,
    code: Password,
    redirect_uri: &str,
    verifier: Password,
    ctx: &RequestContext,
) -> Result<TokenResponse, Error> {
    let refused =
        || Error::invalid_grant("the authorization code is invalid, expired or already used");
    let digest = code_digest(code.expose());
    let now = svc.clock.now();
    let family_id = secret::random_id().map_err(internal)?;
    let row = match svc
        .store
        .redeem_code(&digest, &family_id, now)
        .await
        .map_err(internal)?
    {
        CodeRedemption::Redeemed(row) => row,
        CodeRedemption::Replayed { family_id } => {
            if let Some(fid) = family_id {
                let revoked = svc
                    .store
                    .revoke_family(&fid, now, "authorization code replay")
                    .await
                    .map_err(internal)?;
                tracing::warn!(client_id = %client.row.client_id, revoked, "authorization code replayed; its session is revoked");
            }
            return Err(refused());
        }
        CodeRedemption::Unknown => return Err(refused()),
    };
    // A code issued to another client is refused (and stays spent: its
    // rightful client can start again, a thief gets nothing).
    if row.client_id != client.row.client_id {
        tracing::info!(client_id = %client.row.client_id, "authorization code of another client presented");
        return Err(refused());
    }
    if row.expires_at <= now {
        return Err(refused());
    }
    if row.redirect_uri != redirect_uri {
        return Err(Error::invalid_grant(
            "redirect_uri differs from the authorization request",
        ));
    }
    if !pkce_matches(verifier.expose(), &row.code_challenge) {
        return Err(Error::invalid_grant(
            "the code_verifier does not match the code_challenge",
        ));
    }
    let user = svc
        .store
        .find_user(&row.user_id)
        .await
        .map_err(internal)?
        .filter(|u| !u.disabled)
        .ok_or_else(refused)?;
    let roles = svc.store.user_roles(&user.id).await.map_err(internal)?;
    // The scope was checked against the client when the code was issued; it is
    // checked again in case the client's registration narrowed since.
    let scope = Scope::from_stored(&row.scope);
    if !scope.is_subset(&client.allowed_scopes) {
        return Err(Error::invalid_scope(
            "the client may no longer request this scope",
        ));
    }
    let scope_text = scope.to_string();

    // Every code login is a session, so that a replay can revoke it. The
    // refresh token is handed out only to clients allowed to refresh.
    let refresh_token = secret::random_token().map_err(internal)?;
    let label = device_label(None, ctx.user_agent.as_deref());
    let ip = ctx.ip.map(|ip| ip.to_string());
    svc.start_session(SessionStart {
        family_id: &family_id,
        refresh_token: &refresh_token,
        user_id: &user.id,
        client_id: &client.row.client_id,
        scope: &scope_text,
        auth_time: row.auth_time,
        device_label: label.as_deref(),
        client_ip: ip.as_deref(),
        event: None,
    })
    .await?;
    if svc.store.code_replayed(&digest).await.map_err(internal)? {
        svc.store
            .revoke_family(&family_id, now, "authorization code replay")
            .await
            .map_err(internal)?;
        return Err(refused());
    }

    let grant = Grant {
        subject: &user.id,
        client_id: &client.row.client_id,
        scope: scope_text.clone(),
        roles,
        session_id: Some(&family_id),
    };
    let access_token = svc
        .minter
        .access_token(&grant, client.alg)
        .await
        .map_err(internal)?;
    let id_token = if scope.contains("openid") {
        let info = IdentityInfo {
            username: &user.username,
            email: user.email.as_deref(),
            auth_time: row.auth_time,
            include_profile: scope.contains("profile"),
            include_email: scope.contains("email"),
            nonce: row.nonce.as_deref(),
            access_token: Some(&access_token),
            amr: Some(AMR_PASSWORD),
            session_id: Some(&family_id),
        };
        Some(
            svc.minter
                .id_token(&user.id, &client.row.client_id, &info, client.alg)
                .await
                .map_err(internal)?,
        )
    } else {
        None
    };
    tracing::info!(client_id = %client.row.client_id, user_id = %user.id, scope = %scope_text, "authorization code grant");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: svc.minter.access_ttl(),
        refresh_token: client.may(GrantType::RefreshToken).then_some(refresh_token),
        id_token,
        scope: scope_text,
    })
}

#[cfg(test)]
mod tests {
    use super::pkce_matches;

    #[test]
    fn pkce_s256_appendix_b() {
        // Expected value computed independently (Python hashlib + base64).
        assert!(pkce_matches(
            "dBjftJeZ4CK-nL_Uu8XoqE3rBPhKqj2a8m1Tc9SZ4Xr",
            "VCpBemxM8f-0qLmRGlsUVW1pP-XDPAhq4I2STy1VcrQ"
        ));
        assert!(!pkce_matches(
            "dBjftJeZ4CK-nL_Uu8XoqE3rBPhKqj2a8m1Tc9SZ4Xs",
            "VCpBemxM8f-0qLmRGlsUVW1pP-XDPAhq4I2STy1VcrQ"
        ));
    }
}
