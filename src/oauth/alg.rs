//! The JWS algorithms latchkey signs with: protocol vocabulary (RFC 7518 names),
//! shared by configuration, the key ring and token minting without tying them
//! to one another.

/// The signing algorithms latchkey issues tokens with (RFC 7518).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub const ALL: [Alg; 2] = [Alg::Rs256, Alg::Es256];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    /// Exact JWA names only: an allow-list, not a guess.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }

    /// A dense index for per-algorithm arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Rs256 => 0,
            Self::Es256 => 1,
        }
    }
}
