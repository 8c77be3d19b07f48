//! The audit log: typed security events, written durably and emitted as
//! structured `tracing` events (target `audit`).
//!
//! An [`Event`] says what happened ([`EventType`], with a stable dotted wire
//! name), how much it matters ([`Severity`]), when, who did it (`actor`), to
//! whom (`user`, `client`, `session`, `subject`), from where (client IP and
//! user agent) and a JSON `detail`. Two ways to write one:
//!
//! - inside the transaction of the change it records:
//!   `audit::append(&mut tx, &event).await?` — the event commits or rolls back
//!   with the change, and costs no second write transaction (the refresh path
//!   must use this);
//! - on its own, for facts with no transaction of their own (a failed login, an
//!   inactive introspection): `state.audit.record(event).await`.
//!
//! This module never sees a secret: events carry identifiers (user id, client
//! id, family id, kid, jti), never passwords, tokens, digests or key material.
//! It knows no HTTP and no SQL; the rows live in `store::audit`.

mod query;
pub mod retention;

use std::net::IpAddr;

use serde_json::Value;
use sqlx::AnyConnection;

pub use query::{AuditPage, AuditQuery, Cursor, QueryError, RawAuditQuery};

use crate::clock::{SharedClock, UnixTime};
use crate::oauth::RequestContext;
use crate::store::{Store, StoreError};

/// How much an event matters to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Normal operation worth a record (logins, refreshes, admin changes).
    Info,
    /// Possibly hostile or degraded (failed logins, rate limits, KMS errors).
    Warning,
    /// Needs a human now (refresh reuse, lockout, emergency retirement).
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Self::Info, Self::Warning, Self::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

macro_rules! event_types {
    ($($variant:ident = $wire:literal, $sev:ident, $doc:literal;)*) => {
        /// Every kind of security event, with its stable wire name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $(#[doc = $doc] $variant,)*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(Self::$variant,)*];

            /// The dotted name stored in `events.action` and shown on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire,)* }
            }

            /// The severity an event of this type gets unless the caller says otherwise.
            pub fn default_severity(self) -> Severity {
                match self { $(Self::$variant => Severity::$sev,)* }
            }
        }
    };
}

// Key events keep the names `events list` has always written (rows already
// stored under them stay queryable); the rest follow `<noun>.<past tense>`.
event_types! {
    LoginSuccess = "login.success", Info, "A password (or other interactive) login succeeded.";
    LoginFailure = "login.failure", Warning, "A login was refused (unknown user, wrong password, disabled).";
    Lockout = "account.locked", Critical, "An account was locked after repeated failures.";
    Unlock = "account.unlocked", Info, "A locked account was unlocked.";
    TokenRefresh = "token.refreshed", Info, "A refresh token was rotated.";
    RefreshReuse = "token.reuse_detected", Critical, "A consumed refresh token was presented again.";
    FamilyRevoked = "session.revoked", Warning, "A refresh-token family (login session) was revoked.";
    Logout = "session.logout", Info, "A user ended one session.";
    LogoutAll = "session.logout_all", Info, "A user (or admin) ended every session of a user.";
    TokenRevoked = "token.revoked", Info, "A client revoked a token (RFC 7009).";
    IntrospectInactive = "token.introspected_inactive", Info, "Introspection answered active=false (RFC 7662).";
    ClientCreated = "client.created", Info, "A client was registered.";
    ClientChanged = "client.changed", Info, "A client's settings or secret changed.";
    UserCreated = "user.created", Info, "A user was created.";
    UserDisabled = "user.disable", Warning, "A user was disabled.";
    UserEnabled = "user.enable", Info, "A user was enabled.";
    PasswordChanged = "user.password_changed", Info, "A user's password changed.";
    RoleChanged = "user.roles_changed", Warning, "A user's roles changed.";
    KeyBootstrap = "key.bootstrap", Info, "A first key for an algorithm was created active.";
    KeyCreated = "key.prepublish", Info, "A scheduled key was created and published (pending).";
    KeyRotated = "key.rotate", Info, "An operator created a pending key.";
    KeyRotatedNow = "key.rotate_now", Warning, "An operator created a key that signs at once.";
    KeyActivated = "key.activate", Info, "A pending key started signing.";
    KeyRetiring = "key.retiring", Info, "A key stopped signing and stays published.";
    KeyRetired = "key.retire", Info, "A key was unpublished and its private half erased.";
    KeyEmergencyRetired = "key.retire_emergency", Critical, "A key was retired at once (compromise).";
    KeyTransitionFailed = "key.transition_failed", Warning, "A scheduled key transition failed.";
    KmsFailure = "kms.failure", Warning, "A KMS call failed.";
    RateLimited = "rate_limit.triggered", Warning, "A client or address was rate-limited.";
}

impl EventType {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// The detail of a refused login: why, for the operator (the client is only
/// ever told `invalid_grant`). The attempted username is recorded only when it
/// names an existing user: an unknown "username" is often a password typed
/// into the wrong field.
pub fn login_failure_detail(user: Option<(&str, &str, bool)>, verified: bool) -> Value {
    match user {
        None => serde_json::json!({ "reason": "unknown_user" }),
        Some((_, username, disabled)) => serde_json::json!({
            "reason": if disabled && verified { "disabled" } else { "bad_password" },
            "username": username,
        }),
    }
}

/// The event type of a key-ring action name (`"key.activate"`, ...), as the
/// lifecycle names its changes. Every name the lifecycle uses is a wire name
/// above (a unit test holds that); an unknown one is recorded as a manual rotation
/// rather than lost.
pub fn key_event(action: &str) -> EventType {
    EventType::parse(action).unwrap_or(EventType::KeyRotated)
}

/// One security event. Build with [`Event::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventType,
    pub severity: Severity,
    pub at: UnixTime,
    /// Who did it: `cli:<os user>`, `admin-api:<user id>`, `client:<client id>`,
    /// `user:<user id>`, `scheduler`, `anonymous`.
    pub actor: String,
    pub user: Option<String>,
    pub client: Option<String>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The refresh-token family (login session) concerned.
    pub session: Option<String>,
    /// What else the event is about: a kid, a jti, a username.
    pub subject: Option<String>,
    /// A one-line human summary (the `detail` column `events list` has always shown).
    pub message: String,
    /// Structured detail; a JSON object.
    pub detail: Value,
}

impl Event {
    pub fn new(kind: EventType, at: UnixTime) -> Self {
        Self {
            kind,
            severity: kind.default_severity(),
            at,
            actor: "anonymous".into(),
            user: None,
            client: None,
            ip: None,
            user_agent: None,
            session: None,
            subject: None,
            message: String::new(),
            detail: Value::Object(Default::default()),
        }
    }

    pub fn severity(mut self, s: Severity) -> Self {
        self.severity = s;
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The user concerned (an empty id means none, so callers with an
    /// `Option` can pass `map_or("", ..)` in one line).
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user = Some(user_id.into()).filter(|u| !u.is_empty());
        self
    }

    /// The client concerned; the actor too unless one was already set.
    pub fn client(mut self, client_id: impl Into<String>) -> Self {
        let id = client_id.into();
        if self.actor == "anonymous" {
            self.actor = format!("client:{id}");
        }
        self.client = Some(id);
        self
    }

    /// The session (refresh family) concerned; empty means none.
    pub fn session(mut self, family_id: impl Into<String>) -> Self {
        self.session = Some(family_id.into()).filter(|s| !s.is_empty());
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Where the request came from (client IP and user agent).
    pub fn context(mut self, ctx: &RequestContext) -> Self {
        self.ip = ctx.ip;
        self.user_agent.clone_from(&ctx.user_agent);
        self
    }

    /// Structured detail (`serde_json::json!({...})`); a non-object is wrapped as `{"value": ..}`.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = match detail {
            Value::Object(_) => detail,
            other => serde_json::json!({ "value": other }),
        };
        self
    }

    /// Emit the structured log line (target `audit`); fields, never interpolation.
    pub fn emit(&self) {
        macro_rules! at_level {
            ($level:expr) => {
                tracing::event!(
                    target: "audit",
                    $level,
                    event_type = self.kind.as_str(),
                    severity = self.severity.as_str(),
                    at = self.at,
                    actor = %self.actor,
                    user = self.user.as_deref(),
                    client = self.client.as_deref(),
                    ip = self.ip.map(|ip| ip.to_string()).as_deref(),
                    user_agent = self.user_agent.as_deref(),
                    session = self.session.as_deref(),
                    subject = self.subject.as_deref(),
                    detail = %self.detail,
                    "audit event"
                )
            };
        }
        match self.severity {
            Severity::Info => at_level!(tracing::Level::INFO),
            Severity::Warning => at_level!(tracing::Level::WARN),
            Severity::Critical => at_level!(tracing::Level::ERROR),
        }
    }
}

/// Write `event` on an open connection or transaction (the one making the
/// change it records) and emit its log line. The log line is written when the
/// row is, before the caller commits: if the transaction then rolls back the
/// log shows an event the table does not, never the reverse.
pub async fn append(conn: &mut AnyConnection, event: &Event) -> Result<(), StoreError> {
    crate::store::audit::insert(conn, event).await?;
    event.emit();
    Ok(())
}

/// The handle handlers and services keep (cheap to clone): records events that
/// have no transaction of their own, and answers queries.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    clock: SharedClock,
}

impl Audit {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// A new event stamped with this instance's clock.
    pub fn event(&self, kind: EventType) -> Event {
        Event::new(kind, self.clock.now())
    }

    /// Write `event` in its own short transaction. The action it records has
    /// already happened, so a failed write is logged (with the event's fields,
    /// so the log still holds the record) and does not fail the request.
    pub async fn record(&self, event: Event) {
        event.emit();
        if let Err(e) = self.store.append_event(&event).await {
            tracing::error!(
                target: "audit",
                event_type = event.kind.as_str(),
                error = %e,
                "cannot write an audit event to the database"
            );
        }
    }

    /// One page of events, newest first.
    pub async fn query(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let mut q = q.clone();
        // Operators think in usernames; rows hold user ids.
        if let Some(u) = &q.user
            && let Some(row) = self.store.find_user_by_username(u).await?
        {
            q.user = Some(row.id);
        }
        let limit = q.limit;
        let mut rows = self.store.query_audit(&q, limit + 1).await?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| Cursor(r.id).encode())
        } else {
            None
        };
        Ok(AuditPage { events: rows, next })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unique_dotted_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for t in EventType::ALL {
            let name = t.as_str();
            assert!(name.contains('.'), "{name}");
            assert!(seen.insert(name), "duplicate {name}");
            assert_eq!(EventType::parse(name), Some(*t));
        }
        assert_eq!(EventType::parse("login.nope"), None);
    }

    #[test]
    fn every_lifecycle_action_is_a_key_event() {
        let src = include_str!("../keyring/lifecycle.rs");
        let mut n = 0;
        for part in src.split('"').skip(1).step_by(2) {
            if part.starts_with("key.") && !part.contains(' ') {
                n += 1;
                assert!(EventType::parse(part).is_some(), "{part}");
            }
        }
        assert!(n >= 8, "found {n} actions");
    }

    #[test]
    fn builder_sets_client_as_actor_and_wraps_non_objects() {
        let e = Event::new(EventType::LoginFailure, 5)
            .client("app")
            .detail(serde_json::json!("x"));
        assert_eq!(e.actor, "client:app");
        assert_eq!(e.detail, serde_json::json!({"value": "x"}));
        assert_eq!(e.severity, Severity::Warning);
    }
}
