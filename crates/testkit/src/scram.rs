//! A minimal SCRAM client (RFC 5802) written apart from the server's `sasl` crate, so
//! end-to-end tests check the server against an independent implementation.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest;

#[derive(Clone, Copy, Debug)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

fn hmac(h: Hash, key: &[u8], data: &[u8]) -> Vec<u8> {
    macro_rules! run {
        ($d:ty) => {{
            let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match h {
        Hash::Sha1 => run!(sha1::Sha1),
        Hash::Sha256 => run!(sha2::Sha256),
        Hash::Sha512 => run!(sha2::Sha512),
    }
}

fn digest(h: Hash, data: &[u8]) -> Vec<u8> {
    match h {
        Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

fn salted_password(h: Hash, password: &str, salt: &[u8], i: u32) -> Vec<u8> {
    macro_rules! run {
        ($d:ty, $n:expr) => {{
            let mut out = vec![0u8; $n];
            pbkdf2::pbkdf2_hmac::<$d>(password.as_bytes(), salt, i, &mut out);
            out
        }};
    }
    match h {
        Hash::Sha1 => run!(sha1::Sha1, 20),
        Hash::Sha256 => run!(sha2::Sha256, 32),
        Hash::Sha512 => run!(sha2::Sha512, 64),
    }
}

pub struct ScramClient {
    hash: Hash,
    password: String,
    nonce: String,
    gs2_header: String,
    cb_data: Vec<u8>,
    client_first_bare: String,
    server_signature: Vec<u8>,
}

impl ScramClient {
    /// `cb`: the channel-binding type name and data for a -PLUS mechanism.
    pub fn new(hash: Hash, user: &str, password: &str, cb: Option<(&str, Vec<u8>)>) -> Self {
        use rand::Rng;
        let nonce: String = (0..24)
            .map(|_| rand::thread_rng().gen_range(b'a'..=b'z') as char)
            .collect();
        let (gs2_header, cb_data) = match cb {
            Some((name, data)) => (format!("p={name},,"), data),
            None => ("n,,".to_owned(), Vec::new()),
        };
        ScramClient {
            hash,
            password: password.to_owned(),
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            gs2_header,
            cb_data,
            server_signature: Vec::new(),
        }
    }

    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// The client-final message for the server-first message.
    pub fn client_final(&mut self, server_first: &str) -> String {
        let mut r = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for part in server_first.split(',') {
            match part.split_at(2.min(part.len())) {
                ("r=", v) => r = v,
                ("s=", v) => salt = B64.decode(v).expect("salt base64"),
                ("i=", v) => iterations = v.parse().expect("iteration count"),
                _ => {}
            }
        }
        assert!(r.starts_with(&self.nonce), "server nonce extends ours");
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={r}", B64.encode(cbind));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let salted = salted_password(self.hash, &self.password, &salt, iterations);
        let client_key = hmac(self.hash, &salted, b"Client Key");
        let stored_key = digest(self.hash, &client_key);
        let signature = hmac(self.hash, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(self.hash, &salted, b"Server Key");
        self.server_signature = hmac(self.hash, &server_key, auth_message.as_bytes());
        format!("{without_proof},p={}", B64.encode(proof))
    }

    /// Checks the server-final message proves the server knew the credentials.
    pub fn verify_server_final(&self, server_final: &str) -> bool {
        server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .is_some_and(|v| v == self.server_signature)
    }
}

/// XEP-0474 as a client computes it: the base64 hash of the advertised mechanisms (sorted,
/// joined by U+001E), then U+001F and the sorted channel-binding types, if any.
pub fn downgrade_hash(hash: Hash, mechanisms: &[&str], channel_bindings: &[&str]) -> String {
    let mut m = mechanisms.to_vec();
    m.sort();
    let mut s = m.join("\u{1e}");
    if !channel_bindings.is_empty() {
        let mut c = channel_bindings.to_vec();
        c.sort();
        s.push('\u{1f}');
        s.push_str(&c.join("\u{1e}"));
    }
    B64.encode(digest(hash, s.as_bytes()))
}

/// The `h=` attribute of a server-first message, if present.
pub fn server_first_downgrade_attr(server_first: &str) -> Option<&str> {
    server_first.split(',').find_map(|p| p.strip_prefix("h="))
}

/// The HT-SHA-256 (FAST) initial response: `user NUL HMAC-SHA-256(token, "Initiator" || cb)`.
pub fn ht_sha256_initial(user: &str, token: &str, cb_data: &[u8]) -> Vec<u8> {
    let mut data = b"Initiator".to_vec();
    data.extend_from_slice(cb_data);
    let mut out = user.as_bytes().to_vec();
    out.push(0);
    out.extend(hmac(Hash::Sha256, token.as_bytes(), &data));
    out
}

/// The server's HT-SHA-256 answer a client expects.
pub fn ht_sha256_responder(token: &str, cb_data: &[u8]) -> Vec<u8> {
    let mut data = b"Responder".to_vec();
    data.extend_from_slice(cb_data);
    hmac(Hash::Sha256, token.as_bytes(), &data)
}
