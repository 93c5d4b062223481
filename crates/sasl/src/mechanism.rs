//! SASL mechanism names.

use crate::HashAlg;

/// A SASL mechanism this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    ScramSha1,
    ScramSha1Plus,
    ScramSha256,
    ScramSha256Plus,
    ScramSha512,
    ScramSha512Plus,
    Plain,
}

impl Mechanism {
    /// All mechanisms, strongest first (the order to advertise them in).
    pub const ALL: [Mechanism; 7] = [
        Mechanism::ScramSha512Plus,
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// IANA SASL mechanism name, e.g. `SCRAM-SHA-256-PLUS`.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::ScramSha512Plus => "SCRAM-SHA-512-PLUS",
            Mechanism::Plain => "PLAIN",
        }
    }

    /// Inverse of [`Mechanism::name`]; mechanism names are case-sensitive (RFC 4422 §3.1).
    pub fn from_name(s: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The SCRAM hash, `None` for PLAIN.
    pub fn hash(&self) -> Option<HashAlg> {
        match self {
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(HashAlg::Sha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(HashAlg::Sha256),
            Mechanism::ScramSha512 | Mechanism::ScramSha512Plus => Some(HashAlg::Sha512),
            Mechanism::Plain => None,
        }
    }

    /// Whether this is a channel-binding (-PLUS) variant.
    pub fn is_plus(&self) -> bool {
        matches!(
            self,
            Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus | Mechanism::ScramSha512Plus
        )
    }

    /// The SCRAM mechanism for `hash`, with or without channel binding.
    pub fn scram(hash: HashAlg, plus: bool) -> Self {
        match (hash, plus) {
            (HashAlg::Sha1, false) => Mechanism::ScramSha1,
            (HashAlg::Sha1, true) => Mechanism::ScramSha1Plus,
            (HashAlg::Sha256, false) => Mechanism::ScramSha256,
            (HashAlg::Sha256, true) => Mechanism::ScramSha256Plus,
            (HashAlg::Sha512, false) => Mechanism::ScramSha512,
            (HashAlg::Sha512, true) => Mechanism::ScramSha512Plus,
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
