//! Audit queries: raw filter strings (from a query string or CLI flags) parsed
//! once into a typed [`AuditQuery`], and the opaque pagination cursor.
//!
//! Pages run newest first by the monotonic event id, and a cursor is the id of
//! the last event returned: the next page is `id < cursor`. Events inserted
//! while a client pages get higher ids, so they never shift or repeat the rows
//! of later pages.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{EventType, Severity};
use crate::clock::UnixTime;
use crate::store::AuditRow;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
/// Longest filter value accepted (user, client): longer cannot match anything.
const MAX_FILTER_LEN: usize = 256;

/// Filters as given, before validation.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditQuery {
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub client: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// A validated query: `since <= at < until`, exact matches on the rest.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since: Option<UnixTime>,
    pub until: Option<UnixTime>,
    /// A user id (or a username, resolved by [`super::Audit::query`]).
    pub user: Option<String>,
    pub client: Option<String>,
    pub kind: Option<EventType>,
    pub severity: Option<Severity>,
    /// Only events with a smaller id (the next page).
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("{0} must be Unix seconds or an RFC 3339 time")]
    Time(&'static str),
    #[error("unknown event type {0:?}")]
    Type(String),
    #[error("severity must be info, warning or critical")]
    Severity,
    #[error("malformed cursor")]
    Cursor,
    #[error("limit must be an integer from 1 to {MAX_LIMIT}")]
    Limit,
    #[error("{0} is too long")]
    TooLong(&'static str),
    #[error("since must be before until")]
    EmptyRange,
}

/// One page of events and the cursor of the next one, if any.
#[derive(Debug, serde::Serialize)]
pub struct AuditPage {
    pub events: Vec<AuditRow>,
    pub next: Option<String>,
}

/// The position after the last event of a page; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("ev1:{}", self.0))
    }

    pub fn decode(s: &str) -> Result<Self, QueryError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| QueryError::Cursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| QueryError::Cursor)?;
        let id = text
            .strip_prefix("ev1:")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .ok_or(QueryError::Cursor)?;
        Ok(Self(id))
    }
}

/// Unix seconds, or an RFC 3339 timestamp (`2026-12-01T20:00:00Z`).
pub fn parse_time(s: &str, what: &'static str) -> Result<UnixTime, QueryError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| QueryError::Time(what))
}

fn bounded(v: Option<String>, what: &'static str) -> Result<Option<String>, QueryError> {
    match v.filter(|s| !s.is_empty()) {
        Some(s) if s.len() > MAX_FILTER_LEN => Err(QueryError::TooLong(what)),
        other => Ok(other),
    }
}

impl RawAuditQuery {
    pub fn validate(self) -> Result<AuditQuery, QueryError> {
        let time = |v: Option<String>, what| {
            v.filter(|s| !s.is_empty())
                .map(|s| parse_time(&s, what))
                .transpose()
        };
        let since = time(self.since, "since")?;
        let until = time(self.until, "until")?;
        if let (Some(a), Some(b)) = (since, until)
            && a >= b
        {
            return Err(QueryError::EmptyRange);
        }
        let kind = self
            .kind
            .filter(|s| !s.is_empty())
            .map(|s| EventType::parse(&s).ok_or(QueryError::Type(s.chars().take(64).collect())))
            .transpose()?;
        let severity = self
            .severity
            .filter(|s| !s.is_empty())
            .map(|s| Severity::parse(&s).ok_or(QueryError::Severity))
            .transpose()?;
        let before = self
            .cursor
            .filter(|s| !s.is_empty())
            .map(|c| Cursor::decode(&c).map(|c| c.0))
            .transpose()?;
        let limit = match self.limit.filter(|s| !s.is_empty()) {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or(QueryError::Limit)?,
        };
        Ok(AuditQuery {
            since,
            until,
            user: bounded(self.user, "user")?,
            client: bounded(self.client, "client")?,
            kind,
            severity,
            before,
            limit,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        assert_eq!(Cursor::decode(&Cursor(42).encode()), Ok(Cursor(42)));
        for bad in ["", "!!", "ZXYx", &URL_SAFE_NO_PAD.encode("ev1:-3")] {
            assert_eq!(Cursor::decode(bad), Err(QueryError::Cursor), "{bad}");
        }
    }

    #[test]
    fn times_are_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000", "since"), Ok(1_700_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", "since"),
            Ok(1_700_000_000)
        );
        assert!(parse_time("yesterday", "since").is_err());
    }

    #[test]
    fn validation_refuses_bad_filters() {
        let q = |f: fn(&mut RawAuditQuery)| {
            let mut r = RawAuditQuery::default();
            f(&mut r);
            r.validate()
        };
        assert_eq!(q(|_| {}).unwrap().limit, DEFAULT_LIMIT);
        assert!(matches!(
            q(|r| r.kind = Some("login.nope".into())),
            Err(QueryError::Type(_))
        ));
        assert_eq!(
            q(|r| r.severity = Some("loud".into())).unwrap_err(),
            QueryError::Severity
        );
        assert_eq!(
            q(|r| r.limit = Some("0".into())).unwrap_err(),
            QueryError::Limit
        );
        assert_eq!(
            q(|r| {
                r.since = Some("10".into());
                r.until = Some("10".into());
            })
            .unwrap_err(),
            QueryError::EmptyRange
        );
        let ok = q(|r| {
            r.kind = Some("login.failure".into());
            r.severity = Some("warning".into());
        })
        .unwrap();
        assert_eq!(ok.kind, Some(EventType::LoginFailure));
        assert_eq!(ok.severity, Some(Severity::Warning));
    }
}
