//! The claims of a verified token.
//!
//! This module owns the typed [`Claims`] struct and its parsing from the
//! payload JSON. Parsing is hand-written rather than derived with
//! `#[serde(flatten)]`, because flatten buffers every unknown member through
//! serde's generic content tree first; here registered claims go straight into
//! typed fields and only the others are collected into `extra`. A claim that
//! appears twice is an error, so no two parsers can read different values
//! from one token. This module must not check signatures or time: it only
//! shapes data that has already been authenticated.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::Forbidden;

/// The claims of a verified token.
///
/// The registered claims are typed; everything else is in `extra`, exactly as
/// the issuer sent it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Claims {
    /// `iss`: equal to the configured issuer.
    pub iss: String,
    /// `sub`: the subject (the user, or the client for client-credentials
    /// tokens).
    pub sub: String,
    /// `aud`: every audience the token names (a JSON string becomes one entry).
    pub aud: Vec<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// `iat`, Unix seconds.
    pub iat: Option<u64>,
    /// `nbf`, Unix seconds.
    pub nbf: Option<u64>,
    /// `jti`: the token's unique id, for deny-lists and audit logs.
    pub jti: Option<String>,
    /// `client_id`: the OAuth client the token was issued to (RFC 9068).
    pub client_id: Option<String>,
    /// `scope`, split on spaces.
    pub scope: BTreeSet<String>,
    /// `roles`: empty when the claim is absent.
    pub roles: Vec<String>,
    /// Every other claim.
    pub extra: Map<String, Value>,
}

impl Claims {
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.contains(scope)
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// `Ok` if the token carries `scope`, else [`Forbidden::MissingScope`]
    /// (which renders as 403 `insufficient_scope` with the axum feature).
    pub fn require_scope(&self, scope: &str) -> Result<(), Forbidden> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Forbidden::MissingScope(scope.to_owned()))
        }
    }

    /// `Ok` if the token carries `role`, else [`Forbidden::MissingRole`].
    pub fn require_role(&self, role: &str) -> Result<(), Forbidden> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(Forbidden::MissingRole(role.to_owned()))
        }
    }
}

/// The payload as parsed, before required claims are enforced.
#[derive(Default)]
pub(crate) struct RawClaims {
    pub(crate) iss: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) aud: Option<Vec<String>>,
    pub(crate) exp: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) jti: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) scope: Option<BTreeSet<String>>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) extra: Map<String, Value>,
}

impl<'de> de::Deserialize<'de> for RawClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawClaimsVisitor)
    }
}

struct RawClaimsVisitor;

/// Sets a field once; a second occurrence of the same claim is an error.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

impl<'de> Visitor<'de> for RawClaimsVisitor {
    type Value = RawClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
        let mut c = RawClaims::default();
        while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
            match &*key {
                "iss" => once(&mut c.iss, map.next_value()?, "iss")?,
                "sub" => once(&mut c.sub, map.next_value()?, "sub")?,
                "aud" => once(&mut c.aud, map.next_value::<Audience>()?.0, "aud")?,
                "exp" => once(&mut c.exp, map.next_value::<NumericDate>()?.0, "exp")?,
                "iat" => once(&mut c.iat, map.next_value::<NumericDate>()?.0, "iat")?,
                "nbf" => once(&mut c.nbf, map.next_value::<NumericDate>()?.0, "nbf")?,
                "jti" => once(&mut c.jti, map.next_value()?, "jti")?,
                "client_id" => once(&mut c.client_id, map.next_value()?, "client_id")?,
                "scope" => once(&mut c.scope, map.next_value::<Scope>()?.0, "scope")?,
                "roles" => once(&mut c.roles, map.next_value()?, "roles")?,
                _ => {
                    let value = map.next_value::<Value>()?;
                    if c.extra.insert(key.into_owned(), value).is_some() {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                }
            }
        }
        Ok(c)
    }
}

/// A member name that borrows from the input when it has no escapes, so the
/// registered claims cost no allocation to recognise.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `aud`: a string or an array of strings (RFC 7519 section 4.1.3).
struct Audience(Vec<String>);

impl<'de> de::Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Audience(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `scope`: the space-separated string of RFC 8693 section 4.2 / RFC 9068.
/// An array of strings is accepted too, since some issuers send one.
struct Scope(BTreeSet<String>);

impl<'de> de::Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a space-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scope, E> {
                // Inserting one by one avoids the intermediate sort buffer
                // that collecting into a BTreeSet allocates.
                let mut set = BTreeSet::new();
                for scope in v.split(' ').filter(|s| !s.is_empty()) {
                    set.insert(scope.to_owned());
                }
                Ok(Scope(set))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scope, A::Error> {
                let mut out = BTreeSet::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.insert(s);
                }
                Ok(Scope(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A NumericDate (RFC 7519 section 2): seconds since the epoch, possibly
/// fractional. Fractions are truncated; negative values are refused.
struct NumericDate(u64);

impl<'de> de::Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("negative NumericDate"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                    // Truncation is intended: NumericDate is whole seconds for
                    // every comparison this crate makes.
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "range checked above"
                    )]
                    Ok(NumericDate(v as u64))
                } else {
                    Err(E::custom("invalid NumericDate"))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;

    fn parse(json: &str) -> Result<RawClaims, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn registered_claims_are_typed_and_the_rest_kept() {
        let c = parse(
            r#"{"iss":"i","sub":"s","aud":["a","b"],"exp":10,"iat":5.9,"nbf":4,
                "jti":"j","client_id":"c","scope":"api:read  openid","roles":["admin"],
                "email":"x@example.com","n":1}"#,
        )
        .unwrap();
        assert_eq!(c.iss.as_deref(), Some("i"));
        assert_eq!(c.aud, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!((c.exp, c.iat, c.nbf), (Some(10), Some(5), Some(4)));
        let scope: Vec<&str> = c
            .scope
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(scope, ["api:read", "openid"]);
        assert_eq!(c.roles, Some(vec!["admin".to_owned()]));
        assert_eq!(c.extra.len(), 2);
        assert_eq!(c.extra["email"], "x@example.com");
    }

    #[test]
    fn audience_may_be_a_single_string() {
        assert_eq!(
            parse(r#"{"aud":"a"}"#).unwrap().aud,
            Some(vec!["a".to_owned()])
        );
    }

    #[test]
    fn duplicate_and_mistyped_claims_are_errors() {
        assert!(parse(r#"{"exp":1,"exp":2}"#).is_err());
        assert!(parse(r#"{"x":1,"x":2}"#).is_err());
        assert!(parse(r#"{"exp":"1"}"#).is_err());
        assert!(parse(r#"{"exp":-1}"#).is_err());
        assert!(parse(r#"{"aud":5}"#).is_err());
        assert!(parse(r#"{"roles":"admin"}"#).is_err());
        assert!(parse(r#"[]"#).is_err());
    }

    #[test]
    fn escaped_claim_names_are_still_recognised() {
        assert_eq!(parse(r#"{"\u0065xp":7}"#).unwrap().exp, Some(7));
    }
}
