//! Scope values (RFC 6749 §3.3): a set of space-delimited tokens.

use std::collections::BTreeSet;
use std::fmt;

use super::Error;

/// Longest scope parameter accepted, in bytes.
/// The scope that lets a token drive `/admin/*`. Only clients registered with
/// `clients create --admin` may be granted it, only when a request names it,
/// and only for a user with the [`ADMIN_ROLE`].
pub const ADMIN_SCOPE: &str = "latchkey:admin";
/// The user role the admin API requires beside [`ADMIN_SCOPE`].
pub const ADMIN_ROLE: &str = "admin";

pub const MAX_SCOPE_LEN: usize = 1024;
/// Most scope tokens accepted in one request.
pub const MAX_SCOPE_TOKENS: usize = 32;

/// A set of scope tokens, ordered so that its string form is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope(BTreeSet<String>);

impl Scope {
    /// Parse a client-supplied scope string; malformed input is `invalid_scope`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_SCOPE_LEN {
            return Err(Error::invalid_scope("scope is too long"));
        }
        let mut set = BTreeSet::new();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            // scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let valid = token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
            if !valid {
                return Err(Error::invalid_scope(
                    "scope contains characters outside RFC 6749 §3.3",
                ));
            }
            set.insert(token.to_string());
        }
        if set.len() > MAX_SCOPE_TOKENS {
            return Err(Error::invalid_scope("too many scope values"));
        }
        Ok(Self(set))
    }

    /// Build from trusted stored text (space separated, already validated).
    pub fn from_stored(s: &str) -> Self {
        Self(
            s.split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    pub fn contains(&self, token: &str) -> bool {
        self.0.contains(token)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &Scope) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The members of `self` not in `other`, for error messages.
    pub fn difference<'a>(&'a self, other: &'a Scope) -> Vec<&'a str> {
        self.0.difference(&other.0).map(String::as_str).collect()
    }

    pub fn without(&self, token: &str) -> Scope {
        self.filtered(|t| t != token)
    }

    /// The members for which `keep` holds.
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> Scope {
        Self(self.0.iter().filter(|t| keep(t)).cloned().collect())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for t in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(t)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let s = Scope::parse("profile  openid api:read openid").unwrap();
        assert_eq!(s.to_string(), "api:read openid profile");
        assert!(s.contains("openid"));
    }

    #[test]
    fn rejects_quotes_backslash_and_control_bytes() {
        for bad in ["a\"b", "a\\b", "a\tb", "é"] {
            let err = Scope::parse(bad).unwrap_err();
            assert_eq!(err.code, crate::oauth::ErrorCode::InvalidScope, "{bad:?}");
        }
    }

    #[test]
    fn rejects_oversized_scope() {
        assert!(Scope::parse(&"a".repeat(MAX_SCOPE_LEN + 1)).is_err());
        let many: Vec<String> = (0..=MAX_SCOPE_TOKENS).map(|i| format!("s{i}")).collect();
        assert!(Scope::parse(&many.join(" ")).is_err());
    }

    #[test]
    fn subset_and_difference() {
        let a = Scope::parse("openid api:read").unwrap();
        let b = Scope::parse("openid api:read api:write").unwrap();
        assert!(a.is_subset(&b));
        assert!(!b.is_subset(&a));
        assert_eq!(b.difference(&a), vec!["api:write"]);
    }
}
