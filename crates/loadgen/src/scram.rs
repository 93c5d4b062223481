//! The generator's own SASL client: SCRAM-SHA-1/256/512 (RFC 5802, RFC 7677) without channel
//! binding, and PLAIN (RFC 4616). Independent of the server's SASL code on purpose.
//!
//! SaltedPassword (PBKDF2, 4096+ iterations) is by far the client's largest cost. Like real
//! clients, which keep it after the first login, the generator caches it per account and
//! salt ([`KeyCache`]), so a login storm measures the server rather than the client's PBKDF2.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha1,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-1" => Some(Mechanism::ScramSha1),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError(pub String);

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SCRAM: {}", self.0)
    }
}

impl std::error::Error for ScramError {}

fn err(s: impl Into<String>) -> ScramError {
    ScramError(s.into())
}

/// The initial response of PLAIN: `\0user\0password` (no authorization identity).
pub fn plain_initial(user: &str, password: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(user.len() + password.len() + 2);
    v.push(0);
    v.extend_from_slice(user.as_bytes());
    v.push(0);
    v.extend_from_slice(password.as_bytes());
    v
}

/// (mechanism, password, salt, iterations).
type CacheKey = (Mechanism, String, Vec<u8>, u32);

/// SaltedPassword values already derived, keyed by (mechanism, password, salt, iterations).
#[derive(Default)]
pub struct KeyCache {
    map: Mutex<HashMap<CacheKey, Vec<u8>>>,
}

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// RFC 5802 §5.1 `saslname`: `=` and `,` escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn attr(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.len() == 1 && k.starts_with(key)).then_some(v)
    })
}

macro_rules! hmac_with {
    ($d:ty, $key:expr, $data:expr) => {{
        let mut m = <Hmac<$d> as Mac>::new_from_slice($key).expect("HMAC takes any key length");
        m.update($data);
        m.finalize().into_bytes().to_vec()
    }};
}

fn hmac(mech: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mech {
        Mechanism::ScramSha1 => hmac_with!(Sha1, key, data),
        Mechanism::ScramSha256 => hmac_with!(Sha256, key, data),
        Mechanism::ScramSha512 | Mechanism::Plain => hmac_with!(Sha512, key, data),
    }
}

fn hash(mech: Mechanism, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match mech {
        Mechanism::ScramSha1 => Sha1::digest(data).to_vec(),
        Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
        Mechanism::ScramSha512 | Mechanism::Plain => Sha512::digest(data).to_vec(),
    }
}

fn salted_password(mech: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let p = password.as_bytes();
    match mech {
        Mechanism::ScramSha1 => pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(p, salt, iterations).to_vec(),
        Mechanism::ScramSha256 => {
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(p, salt, iterations).to_vec()
        }
        Mechanism::ScramSha512 | Mechanism::Plain => {
            pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(p, salt, iterations).to_vec()
        }
    }
}

/// One SCRAM exchange from the client's side.
pub struct ScramClient {
    mech: Mechanism,
    password: String,
    client_first_bare: String,
    client_nonce: String,
    /// ServerSignature expected in server-final.
    expected_server_sig: Option<Vec<u8>>,
}

/// Iteration counts accepted from a server (a hostile or broken target must not make the
/// generator spin).
const MAX_ITERATIONS: u32 = 1_000_000;

impl ScramClient {
    /// Starts an exchange; `nonce` must be printable ASCII without `,`.
    pub fn new(mech: Mechanism, user: &str, password: &str, nonce: &str) -> Self {
        Self {
            mech,
            password: password.to_owned(),
            client_first_bare: format!("n={},r={}", saslname(user), nonce),
            client_nonce: nonce.to_owned(),
            expected_server_sig: None,
        }
    }

    /// A fresh random nonce.
    pub fn random_nonce() -> String {
        use rand::distributions::{Alphanumeric, DistString};
        Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
    }

    /// client-first-message: GS2 header `n,,` (this client does not support channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers server-first with client-final.
    pub fn client_final(
        &mut self,
        server_first: &str,
        cache: Option<&KeyCache>,
    ) -> Result<String, ScramError> {
        if server_first.starts_with("m=") {
            return Err(err("mandatory extension not supported"));
        }
        let nonce = attr(server_first, 'r').ok_or_else(|| err("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(err("server nonce does not extend the client's"));
        }
        let salt = B64
            .decode(attr(server_first, 's').ok_or_else(|| err("no salt"))?)
            .map_err(|_| err("salt is not base64"))?;
        let iterations: u32 = attr(server_first, 'i')
            .ok_or_else(|| err("no iteration count"))?
            .parse()
            .map_err(|_| err("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(err(format!("iteration count {iterations} out of range")));
        }
        let salted = match cache {
            Some(c) => {
                let key = (self.mech, self.password.clone(), salt.clone(), iterations);
                let hit = c.map.lock().ok().and_then(|m| m.get(&key).cloned());
                match hit {
                    Some(v) => v,
                    None => {
                        let v = salted_password(self.mech, &self.password, &salt, iterations);
                        if let Ok(mut m) = c.map.lock() {
                            m.insert(key, v.clone());
                        }
                        v
                    }
                }
            }
            None => salted_password(self.mech, &self.password, &salt, iterations),
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_key = hmac(self.mech, &salted, b"Client Key");
        let stored_key = hash(self.mech, &client_key);
        let client_sig = hmac(self.mech, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_sig)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(self.mech, &salted, b"Server Key");
        self.expected_server_sig = Some(hmac(self.mech, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final (`v=...`), which proves the server knew the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), ScramError> {
        if let Some(e) = attr(server_final, 'e') {
            return Err(err(format!("server error {e}")));
        }
        let v = attr(server_final, 'v').ok_or_else(|| err("no server signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| err("server signature is not base64"))?;
        match &self.expected_server_sig {
            Some(exp) if *exp == got => Ok(()),
            Some(_) => Err(err("server signature mismatch")),
            None => Err(err("server-final before client-final")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5.
    #[test]
    fn rfc5802_sha1_vector() {
        let mut c = ScramClient::new(
            Mechanism::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let cache = KeyCache::new();
        let fin = c.client_final(server_first, Some(&cache)).expect("final");
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify_server_final("v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .expect("server signature");
        assert!(c
            .verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .is_err());
        assert!(c.verify_server_final("e=invalid-proof").is_err());

        // Second run through the cache gives the same proof.
        assert_eq!(cache.len(), 1);
        let mut again = ScramClient::new(
            Mechanism::ScramSha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(
            again
                .client_final(server_first, Some(&cache))
                .expect("final"),
            fin
        );
    }

    /// RFC 7677 §3.
    #[test]
    fn rfc7677_sha256_vector() {
        let mut c = ScramClient::new(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first, None).expect("final");
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server signature");
    }

    #[test]
    fn refuses_bad_server_first() {
        let mut c = ScramClient::new(Mechanism::ScramSha1, "user", "pencil", "abc");
        assert!(c
            .client_final("r=xyz123,s=QSXCR+Q6sek8bf92,i=4096", None)
            .is_err());
        assert!(c
            .client_final("r=abc,s=QSXCR+Q6sek8bf92,i=4096", None)
            .is_err());
        assert!(c
            .client_final("r=abcd,s=QSXCR+Q6sek8bf92,i=0", None)
            .is_err());
        assert!(c
            .client_final("r=abcd,s=QSXCR+Q6sek8bf92,i=99999999", None)
            .is_err());
        assert!(c.client_final("r=abcd,s=@@,i=4096", None).is_err());
        assert!(c
            .client_final("m=ext,r=abcd,s=QSXCR+Q6sek8bf92,i=1", None)
            .is_err());
    }

    #[test]
    fn escapes_usernames_and_builds_plain() {
        let c = ScramClient::new(Mechanism::ScramSha1, "a=b,c", "pw", "n0nce");
        assert_eq!(c.client_first(), "n,,n=a=3Db=2Cc,r=n0nce");
        assert_eq!(plain_initial("u", "p"), b"\0u\0p");
        assert_eq!(
            Mechanism::parse("scram-sha-256"),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(Mechanism::parse("x"), None);
    }
}
