//! RFC 7009 revocation and RFC 7662 introspection.
//!
//! Both authenticate the client first. A client acts only on tokens issued to
//! it: revoking another client's token is a silent no-op (200, so the endpoint
//! reveals nothing), and introspecting one answers `active: false` — unless the
//! client is registered as a resource server allowed to introspect
//! (`clients create --introspect`).

use super::Sessions;
use crate::audit::EventType;
use crate::grant::{AuthenticatedClient, internal};
use crate::limits::Endpoint;
use crate::oauth::request::TokenParam;
use crate::oauth::wire::Introspection;
use crate::oauth::{ClientAuth, Error, RequestContext};
use crate::secret;
use crate::token::verify::verify_access;

impl Sessions {
    /// Revoke a refresh token (its whole session) or an access token (by `jti`).
    pub async fn revoke(
        &self,
        auth: &ClientAuth,
        param: TokenParam,
        ctx: &RequestContext,
    ) -> Result<(), Error> {
        let client = self
            .tokens
            .authenticate_at(Endpoint::Revoke, auth, ctx)
            .await?;
        let Some(token) = param.token else {
            return Ok(());
        };
        let token = token.expose();
        let now = self.clock.now();
        if let Some(state) = self
            .store
            .refresh_state(&secret::refresh_token_digest(token))
            .await
            .map_err(internal)?
        {
            if state.family.client_id == client.row.client_id {
                self.store
                    .revoke_family(&state.family.id, now, "revoked by client")
                    .await
                    .map_err(internal)?;
                tracing::info!(client_id = %client.row.client_id, family = %state.family.id, "refresh token revoked");
                let event = self
                    .tokens
                    .audit
                    .event(EventType::TokenRevoked)
                    .client(&client.row.client_id)
                    .user(&state.family.user_id)
                    .session(&state.family.id)
                    .message("refresh token revoked: session ended")
                    .detail(serde_json::json!({ "token_type": "refresh_token" }));
                self.tokens.audit.record(event).await;
            }
            return Ok(());
        }
        if let Ok(claims) = verify_access(&self.ring.current(), &self.issuer, token, now)
            && claims.client_id == client.row.client_id
        {
            self.store
                .revoke_access_token(&claims.jti, claims.exp)
                .await
                .map_err(internal)?;
            tracing::info!(client_id = %client.row.client_id, jti = %claims.jti, "access token revoked");
            let event = self
                .tokens
                .audit
                .event(EventType::TokenRevoked)
                .client(&client.row.client_id)
                .user(&claims.sub)
                .session(claims.sid.as_deref().unwrap_or(""))
                .subject(&claims.jti)
                .message("access token denied until it expires")
                .detail(serde_json::json!({ "token_type": "access_token", "jti": claims.jti }));
            self.tokens.audit.record(event).await;
        }
        Ok(())
    }

    /// Is this token active, and what does it carry. Confidential clients only.
    pub async fn introspect(
        &self,
        auth: &ClientAuth,
        param: TokenParam,
        ctx: &RequestContext,
    ) -> Result<Introspection, Error> {
        let client = self
            .tokens
            .authenticate_at(Endpoint::Introspect, auth, ctx)
            .await?;
        if client.row.is_public {
            return Err(Error::invalid_client(
                "introspection requires a confidential client",
            ));
        }
        let Some(token) = param.token else {
            return Ok(self.inactive(&client, ctx).await);
        };
        let token = token.expose();
        let now = self.clock.now();
        let may_see = |owner: &str| owner == client.row.client_id || client.row.may_introspect;
        if let Some(state) = self
            .store
            .refresh_state(&secret::refresh_token_digest(token))
            .await
            .map_err(internal)?
        {
            let f = &state.family;
            let user_ok = state.user.as_ref().is_some_and(|u| !u.disabled);
            let active = state.token.used_at.is_none()
                && state.token.expires_at > now
                && f.revoked_at.is_none()
                && f.expires_at > now
                && user_ok;
            if !active || !may_see(&f.client_id) {
                return Ok(self.inactive(&client, ctx).await);
            }
            return Ok(Introspection {
                active: true,
                scope: Some(f.scope.clone()),
                client_id: Some(f.client_id.clone()),
                username: state.user.as_ref().map(|u| u.username.clone()),
                token_type: Some("refresh_token"),
                exp: Some(state.token.expires_at),
                iat: Some(state.token.issued_at),
                sub: Some(f.user_id.clone()),
                iss: Some(self.issuer.to_string()),
                ..Default::default()
            });
        }
        let Ok(claims) = verify_access(&self.ring.current(), &self.issuer, token, now) else {
            return Ok(self.inactive(&client, ctx).await);
        };
        if !may_see(&claims.client_id) || !self.is_live(&claims).await? {
            return Ok(self.inactive(&client, ctx).await);
        }
        Ok(Introspection {
            active: true,
            scope: Some(claims.scope),
            client_id: Some(claims.client_id),
            token_type: Some("Bearer"),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            sub: Some(claims.sub),
            aud: Some(claims.aud),
            iss: Some(claims.iss),
            jti: Some(claims.jti),
            ..Default::default()
        })
    }
}

impl Sessions {
    /// RFC 7662 §2.2: an inactive token is only `{"active": false}`; the
    /// answer is recorded (a client probing tokens shows up in the audit log).
    async fn inactive(&self, client: &AuthenticatedClient, ctx: &RequestContext) -> Introspection {
        tracing::debug!(client_id = %client.row.client_id, "introspection: inactive token");
        let event = self
            .tokens
            .audit
            .event(EventType::IntrospectInactive)
            .client(&client.row.client_id)
            .context(ctx);
        self.tokens.audit.record(event).await;
        Introspection::default()
    }
}
