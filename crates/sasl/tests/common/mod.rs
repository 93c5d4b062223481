//! An independent, test-only SCRAM client (RFC 5802) built directly on the RustCrypto
//! crates, used to drive full exchanges against `ServerSession`.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rookery_sasl::{HashAlg, Mechanism, ServerSession, Step};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

pub fn hmac(h: HashAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    macro_rules! run {
        ($d:ty) => {{
            let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("hmac accepts any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match h {
        HashAlg::Sha1 => run!(Sha1),
        HashAlg::Sha256 => run!(Sha256),
        HashAlg::Sha512 => run!(Sha512),
    }
}

pub fn digest(h: HashAlg, data: &[u8]) -> Vec<u8> {
    match h {
        HashAlg::Sha1 => Sha1::digest(data).to_vec(),
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

pub fn hi(h: HashAlg, password: &[u8], salt: &[u8], i: u32) -> Vec<u8> {
    let len = match h {
        HashAlg::Sha1 => 20,
        HashAlg::Sha256 => 32,
        HashAlg::Sha512 => 64,
    };
    let mut out = vec![0; len];
    match h {
        HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, i, &mut out),
        HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, i, &mut out),
        HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, i, &mut out),
    }
    out
}

/// Escape a username as a SCRAM saslname.
pub fn saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

#[derive(Debug, Clone)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

pub fn parse_server_first(msg: &[u8]) -> ServerFirst {
    let s = std::str::from_utf8(msg).expect("server-first is UTF-8");
    let mut nonce = None;
    let mut salt = None;
    let mut iterations = None;
    for attr in s.split(',') {
        let (k, v) = attr.split_at(2);
        match k {
            "r=" => nonce = Some(v.to_owned()),
            "s=" => salt = Some(B64.decode(v).expect("salt base64")),
            "i=" => iterations = Some(v.parse().expect("iteration count")),
            other => panic!("unexpected server-first attribute {other}"),
        }
    }
    ServerFirst {
        nonce: nonce.expect("r="),
        salt: salt.expect("s="),
        iterations: iterations.expect("i="),
    }
}

pub struct Client {
    pub hash: HashAlg,
    pub username: String,
    pub password: String,
    pub gs2_header: String,
    pub cb_data: Vec<u8>,
    pub client_nonce: String,
    /// Override of the `c=` payload (raw bytes before base64) for negative tests.
    pub cbind_override: Option<Vec<u8>>,
    /// Override of the `r=` nonce in client-final for negative tests.
    pub nonce_override: Option<String>,
    server_signature: Option<Vec<u8>>,
}

impl Client {
    pub fn new(hash: HashAlg, username: &str, password: &str) -> Self {
        Client {
            hash,
            username: username.to_owned(),
            password: password.to_owned(),
            gs2_header: "n,,".to_owned(),
            cb_data: Vec::new(),
            client_nonce: "rOprNGfwEbeRWgbNEkqO-test".to_owned(),
            cbind_override: None,
            nonce_override: None,
            server_signature: None,
        }
    }

    pub fn with_gs2(mut self, header: &str, cb_data: &[u8]) -> Self {
        self.gs2_header = header.to_owned();
        self.cb_data = cb_data.to_vec();
        self
    }

    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.client_nonce = nonce.to_owned();
        self
    }

    pub fn bare(&self) -> String {
        format!("n={},r={}", saslname(&self.username), self.client_nonce)
    }

    pub fn first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.bare()).into_bytes()
    }

    pub fn final_message(&mut self, server_first: &[u8]) -> Vec<u8> {
        let sf = parse_server_first(server_first);
        assert!(
            sf.nonce.starts_with(&self.client_nonce),
            "server nonce must extend the client nonce"
        );
        assert!(sf.nonce.len() > self.client_nonce.len());
        let h = self.hash;
        let salted = hi(h, self.password.as_bytes(), &sf.salt, sf.iterations);
        let client_key = hmac(h, &salted, b"Client Key");
        let stored_key = digest(h, &client_key);
        let server_key = hmac(h, &salted, b"Server Key");
        let cbind = self.cbind_override.clone().unwrap_or_else(|| {
            let mut v = self.gs2_header.as_bytes().to_vec();
            v.extend_from_slice(&self.cb_data);
            v
        });
        let nonce = self.nonce_override.clone().unwrap_or(sf.nonce);
        let without_proof = format!("c={},r={}", B64.encode(cbind), nonce);
        let auth_message = format!(
            "{},{},{}",
            self.bare(),
            std::str::from_utf8(server_first).expect("utf8"),
            without_proof
        );
        let client_signature = hmac(h, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_signature = Some(hmac(h, &server_key, auth_message.as_bytes()));
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    pub fn verify_server_final(&self, data: &[u8]) -> bool {
        let expected = format!(
            "v={}",
            B64.encode(self.server_signature.as_ref().expect("final sent"))
        );
        data == expected.as_bytes()
    }
}

/// Outcome of a full exchange.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Step, rookery_sasl::SaslError>,
    /// The server-first message, if the exchange got that far.
    pub server_first: Option<Vec<u8>>,
}

/// Drive a full SCRAM exchange. `lookup` plays the account store.
pub fn exchange(
    mut server: ServerSession,
    client: &mut Client,
    lookup: impl FnOnce(&str) -> Option<rookery_sasl::ScramCredentials>,
) -> Outcome {
    let mech: Mechanism = server.mechanism();
    assert!(mech.hash().is_some());
    let step = match server.start(&client.first()) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                result: Err(e),
                server_first: None,
            }
        }
    };
    let Step::NeedCredentials { username, .. } = step else {
        panic!("expected NeedCredentials, got {step:?}");
    };
    let creds = lookup(&username);
    let server_first = match server.credentials(creds) {
        Ok(Step::Challenge(c)) => c,
        Ok(other) => panic!("expected Challenge, got {other:?}"),
        Err(e) => {
            return Outcome {
                result: Err(e),
                server_first: None,
            }
        }
    };
    let fin = client.final_message(&server_first);
    let result = server.step(&fin);
    if let Ok(Step::Success {
        additional_data: Some(d),
        ..
    }) = &result
    {
        assert!(
            client.verify_server_final(d),
            "server signature must verify"
        );
    }
    Outcome {
        result,
        server_first: Some(server_first),
    }
}
