//! JWS algorithm names (RFC 7518) and the allow-list.
//!
//! This module owns the mapping between the `alg` strings found in token
//! headers and JWKs and the asymmetric algorithms the verifier implements. It
//! must not know about keys or signatures: it only names things. Symmetric
//! algorithms (`HS*`) and `none` deliberately have no [`Algorithm`] value, so no
//! configuration can ever allow them.

use std::fmt;

/// An asymmetric JWS algorithm this crate can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256 and MGF1-SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384 and MGF1-SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512 and MGF1-SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// EdDSA on Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every algorithm this crate implements.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The JWA name, as it appears in a header or a JWK.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JWA name; `None` for anything this crate does not implement,
    /// including `none` and every HMAC algorithm.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of algorithms as a bit mask, so the allow-list check on the hot path
/// is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlgSet(u16);

impl AlgSet {
    /// RS256 and ES256: what latchkey signs with, and what RFC 9068 and OIDC
    /// issuers use in practice.
    pub(crate) const DEFAULT: AlgSet =
        AlgSet((1 << Algorithm::RS256 as u16) | (1 << Algorithm::ES256 as u16));

    pub(crate) fn from_iter(algs: impl IntoIterator<Item = Algorithm>) -> AlgSet {
        AlgSet(algs.into_iter().fold(0, |acc, a| acc | a.bit()))
    }

    pub(crate) fn contains(self, alg: Algorithm) -> bool {
        self.0 & alg.bit() != 0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Classifies a header `alg` for error reporting without echoing attacker
/// input: known names come back as static strings, anything else as
/// `"unrecognised"`.
pub(crate) fn static_name(name: &str) -> &'static str {
    const OTHERS: [&str; 7] = [
        "none", "HS256", "HS384", "HS512", "ES512", "ES256K", "Ed25519",
    ];
    if let Some(alg) = Algorithm::from_name(name) {
        return alg.as_str();
    }
    OTHERS
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .unwrap_or("unrecognised")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_forbidden_names_do_not_parse() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.as_str()), Some(alg));
        }
        for bad in ["none", "None", "HS256", "HS384", "HS512", "rs256", ""] {
            assert_eq!(Algorithm::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn default_set_is_rs256_and_es256_only() {
        let set = AlgSet::DEFAULT;
        assert!(set.contains(Algorithm::RS256));
        assert!(set.contains(Algorithm::ES256));
        let others = Algorithm::ALL
            .into_iter()
            .filter(|a| set.contains(*a))
            .count();
        assert_eq!(others, 2);
    }

    #[test]
    fn static_name_never_echoes_unknown_input() {
        assert_eq!(static_name("none"), "none");
        assert_eq!(static_name("NONE"), "none");
        assert_eq!(static_name("HS256"), "HS256");
        assert_eq!(static_name("../../etc/passwd"), "unrecognised");
    }
}
