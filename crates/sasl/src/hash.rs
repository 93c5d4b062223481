//! Hash algorithms usable with SCRAM and the primitives built on them.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::SaslError;

/// The hash function of a SCRAM mechanism (and of its stored credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlg {
    /// Every supported hash, weakest first.
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512];

    /// IANA hash name as used in the SCRAM mechanism name: `SHA-1`, `SHA-256`, `SHA-512`.
    pub fn name(&self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    /// Inverse of [`HashAlg::name`] (exact match).
    pub fn from_name(s: &str) -> Option<Self> {
        HashAlg::ALL.into_iter().find(|h| h.name() == s)
    }

    /// Digest (and HMAC) output length in bytes; the length of `StoredKey` and `ServerKey`.
    pub fn output_len(&self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// `H(data)`.
    pub(crate) fn digest(&self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `HMAC(key, data)`.
    pub(crate) fn hmac(&self, key: &[u8], data: &[u8]) -> Result<Vec<u8>, SaslError> {
        macro_rules! run {
            ($d:ty) => {{
                let mut mac = <Hmac<$d> as Mac>::new_from_slice(key)
                    .map_err(|e| SaslError::Internal(format!("hmac key: {e}")))?;
                mac.update(data);
                Ok(mac.finalize().into_bytes().to_vec())
            }};
        }
        match self {
            HashAlg::Sha1 => run!(Sha1),
            HashAlg::Sha256 => run!(Sha256),
            HashAlg::Sha512 => run!(Sha512),
        }
    }

    /// `Hi(password, salt, i)` = PBKDF2-HMAC-H with one output block.
    pub(crate) fn hi(&self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

impl std::fmt::Display for HashAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
