//! The server side of an authentication exchange, as a sans-I/O state machine.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::credentials::keys_from_salted;
use crate::{ChannelBindingType, ChannelBindings, HashAlg, Mechanism, SaslError, ScramCredentials};

/// Longest client message accepted (initial response or SCRAM client-final), in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Random bytes in a server nonce (base64-encoded to 32 printable characters).
const SERVER_NONCE_BYTES: usize = 24;

/// What the server must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The server must look up the account and call `ServerSession::credentials`.
    NeedCredentials {
        username: String,
        authzid: Option<String>,
    },
    /// Send this challenge to the client and feed its response to `step`.
    Challenge(Vec<u8>),
    /// Authentication succeeded; send `additional_data` (SCRAM server-final) with <success/>.
    Success {
        username: String,
        authzid: Option<String>,
        additional_data: Option<Vec<u8>>,
    },
}

/// Parsed SCRAM client-first message, waiting for the account's record.
struct ScramFirst {
    /// The GS2 header exactly as received, including its trailing ','.
    gs2_header: String,
    /// Channel-binding data selected by `p=` (empty for `n`/`y`).
    cb_data: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
    username: String,
    authzid: Option<String>,
}

/// Server-first sent, waiting for client-final.
struct ScramSent {
    first: ScramFirst,
    server_first: String,
    nonce: String,
    creds: ScramCredentials,
    /// The account does not exist: the exchange must fail at the end.
    fake: bool,
}

struct PlainPending {
    username: String,
    authzid: Option<String>,
    password: String,
}

enum State {
    Initial,
    AwaitingInitialResponse,
    ScramNeedCredentials(Box<ScramFirst>),
    ScramAwaitFinal(Box<ScramSent>),
    PlainNeedCredentials(PlainPending),
    Done,
}

/// One SASL exchange on the server side. Does no I/O: the caller moves bytes (already
/// base64-decoded) between this and the stream, and looks the account up when asked.
///
/// Any error ends the exchange: later calls fail.
pub struct ServerSession {
    mech: Mechanism,
    cb: ChannelBindings,
    plus_advertised: bool,
    tls_active: bool,
    state: State,
    fixed_nonce: Option<String>,
    secret: Option<Vec<u8>>,
    unknown_user_iterations: u32,
    /// XEP-0474: the advertised mechanisms and channel-binding types, hashed into the
    /// server-first message so a client can detect a stripped list.
    downgrade: Option<String>,
    /// The password a successful PLAIN exchange proved, until the caller takes it
    /// ([`ServerSession::take_verified_password`]).
    verified_password: Option<String>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Initial => "initial",
            State::AwaitingInitialResponse => "awaiting-initial-response",
            State::ScramNeedCredentials(_) => "scram-need-credentials",
            State::ScramAwaitFinal(_) => "scram-await-final",
            State::PlainNeedCredentials(_) => "plain-need-credentials",
            State::Done => "done",
        };
        f.debug_struct("ServerSession")
            .field("mech", &self.mech)
            .field("plus_advertised", &self.plus_advertised)
            .field("tls_active", &self.tls_active)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl ServerSession {
    /// `plus_advertised`: whether the server offered any -PLUS mechanism on this connection
    /// (for the RFC 5802 "y" downgrade check). `tls_active`: PLAIN is refused (EncryptionRequired) without TLS.
    /// After a successful PLAIN exchange, the password it proved, once: so that the server
    /// can make the SCRAM records an account lacks (one imported with SCRAM-SHA-1 records
    /// only). `None` for SCRAM, which never reveals the password, and after the first call.
    pub fn take_verified_password(&mut self) -> Option<String> {
        self.verified_password.take()
    }

    pub fn new(
        mech: Mechanism,
        cb: ChannelBindings,
        plus_advertised: bool,
        tls_active: bool,
    ) -> Self {
        ServerSession {
            mech,
            cb,
            plus_advertised,
            tls_active,
            state: State::Initial,
            fixed_nonce: None,
            secret: None,
            unknown_user_iterations: ScramCredentials::MIN_ITERATIONS,
            downgrade: None,
            verified_password: None,
        }
    }

    /// XEP-0474 SCRAM downgrade protection: `mechanisms` are the SASL mechanisms advertised
    /// on this stream (for the SASL profile in use) and `channel_bindings` the XEP-0440
    /// types, if advertised. SCRAM's server-first message then carries `h=`.
    pub fn with_downgrade_protection(
        mut self,
        mechanisms: &[&str],
        channel_bindings: Option<&[&str]>,
    ) -> Self {
        self.downgrade = Some(downgrade_protection_input(mechanisms, channel_bindings));
        self
    }

    /// Secret from which the fake records for unknown accounts are derived. Defaults to
    /// a random per-process secret; set a persistent one so that the fake salt an
    /// attacker sees for an unknown name stays the same across restarts.
    pub fn with_unknown_user_secret(mut self, secret: &[u8]) -> Self {
        self.secret = Some(secret.to_vec());
        self
    }

    /// Iteration count announced for unknown accounts (default
    /// [`ScramCredentials::MIN_ITERATIONS`]); set it to what new accounts get, so
    /// unknown accounts look like real ones.
    pub fn with_unknown_user_iterations(mut self, iterations: u32) -> Self {
        self.unknown_user_iterations = iterations.max(1);
        self
    }

    /// Test hook: use `server_nonce` (printable, no ',') instead of a random server nonce,
    /// to reproduce the RFC 5802 / RFC 7677 examples. Never use outside tests.
    #[doc(hidden)]
    pub fn with_nonce_for_test(mut self, server_nonce: &str) -> Self {
        self.fixed_nonce = Some(server_nonce.to_owned());
        self
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mech
    }

    /// Feed the client's initial response (may be empty; then return Challenge(vec![]) for PLAIN/SCRAM asking for it).
    pub fn start(&mut self, initial: &[u8]) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Initial => {}
            _ => return Err(SaslError::Internal("start() called twice".into())),
        }
        if self.mech == Mechanism::Plain && !self.tls_active {
            return Err(SaslError::EncryptionRequired);
        }
        if initial.is_empty() {
            self.state = State::AwaitingInitialResponse;
            return Ok(Step::Challenge(Vec::new()));
        }
        self.process_initial(initial)
    }

    /// After NeedCredentials. `None` = unknown account: SCRAM continues with a
    /// deterministic fake record and fails only at the end with NotAuthorized.
    /// PLAIN: the password is checked here -> Success or Err(NotAuthorized); any of the
    /// account's records (whatever its hash) can be given.
    pub fn credentials(&mut self, creds: Option<ScramCredentials>) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::ScramNeedCredentials(first) => self.scram_server_first(*first, creds),
            State::PlainNeedCredentials(p) => self.plain_check(p, creds),
            _ => Err(SaslError::Internal(
                "credentials() called when no credentials were requested".into(),
            )),
        }
    }

    /// The client's response to a challenge (SCRAM client-final).
    pub fn step(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitingInitialResponse => {
                if response.is_empty() {
                    return Err(SaslError::malformed("empty initial response"));
                }
                self.process_initial(response)
            }
            State::ScramAwaitFinal(sent) => self.scram_final(*sent, response),
            State::Done => Err(SaslError::malformed("exchange already finished")),
            _ => Err(SaslError::malformed("unexpected response")),
        }
    }

    fn process_initial(&mut self, initial: &[u8]) -> Result<Step, SaslError> {
        if initial.len() > MAX_MESSAGE_LEN {
            return Err(SaslError::malformed("message too long"));
        }
        match self.mech.hash() {
            None => {
                let p = parse_plain(initial)?;
                let step = Step::NeedCredentials {
                    username: p.username.clone(),
                    authzid: p.authzid.clone(),
                };
                self.state = State::PlainNeedCredentials(p);
                Ok(step)
            }
            Some(_) => {
                let first = self.parse_client_first(initial)?;
                let step = Step::NeedCredentials {
                    username: first.username.clone(),
                    authzid: first.authzid.clone(),
                };
                self.state = State::ScramNeedCredentials(Box::new(first));
                Ok(step)
            }
        }
    }

    fn hash(&self) -> Result<HashAlg, SaslError> {
        self.mech
            .hash()
            .ok_or_else(|| SaslError::Internal("not a SCRAM mechanism".into()))
    }

    fn parse_client_first(&self, msg: &[u8]) -> Result<ScramFirst, SaslError> {
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::malformed("not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or_else(|| SaslError::malformed("missing GS2 header"))?;
        let (authz, bare) = rest
            .split_once(',')
            .ok_or_else(|| SaslError::malformed("missing GS2 header"))?;
        let gs2_header = &msg[..flag.len() + authz.len() + 2];

        let cb_data = match flag {
            "n" | "y" => {
                if self.mech.is_plus() {
                    return Err(SaslError::malformed(
                        "-PLUS mechanism requires channel binding (gs2 flag p=)",
                    ));
                }
                if flag == "y" && self.plus_advertised {
                    return Err(SaslError::Downgrade);
                }
                Vec::new()
            }
            _ => {
                let name = flag
                    .strip_prefix("p=")
                    .ok_or_else(|| SaslError::malformed("bad gs2-cbind-flag"))?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    return Err(SaslError::malformed("bad channel-binding name"));
                }
                if !self.mech.is_plus() {
                    return Err(SaslError::malformed(
                        "channel binding requested with a non-PLUS mechanism",
                    ));
                }
                let ty = ChannelBindingType::from_name(name)
                    .ok_or_else(|| SaslError::UnsupportedChannelBinding(name.to_owned()))?;
                self.cb
                    .get(ty)
                    .ok_or_else(|| SaslError::UnsupportedChannelBinding(name.to_owned()))?
                    .to_vec()
            }
        };

        let authzid = if authz.is_empty() {
            None
        } else {
            let v = authz
                .strip_prefix("a=")
                .ok_or_else(|| SaslError::malformed("bad authzid in GS2 header"))?;
            Some(decode_saslname(v)?)
        };

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        let user_attr = attrs.next().unwrap_or("");
        if user_attr.starts_with("m=") {
            return Err(SaslError::malformed(
                "mandatory extension (m=) not supported",
            ));
        }
        let raw_user = user_attr
            .strip_prefix("n=")
            .ok_or_else(|| SaslError::malformed("expected n=username"))?;
        let decoded = decode_saslname(raw_user)?;
        let username = stringprep::saslprep(&decoded)
            .map_err(|e| SaslError::malformed(format!("username fails SASLprep: {e}")))?
            .into_owned();
        if username.is_empty() {
            return Err(SaslError::malformed("empty username"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| SaslError::malformed("expected r=nonce"))?;
        if nonce.is_empty() || !nonce.bytes().all(is_printable) {
            return Err(SaslError::malformed("bad client nonce"));
        }
        check_extensions(attrs)?;

        Ok(ScramFirst {
            gs2_header: gs2_header.to_owned(),
            cb_data,
            client_first_bare: bare.to_owned(),
            client_nonce: nonce.to_owned(),
            username,
            authzid,
        })
    }

    fn scram_server_first(
        &mut self,
        first: ScramFirst,
        creds: Option<ScramCredentials>,
    ) -> Result<Step, SaslError> {
        let hash = self.hash()?;
        let (creds, fake) = match creds {
            Some(c) => {
                if c.hash != hash {
                    return Err(SaslError::Internal(format!(
                        "credential record is {} but the mechanism is {}",
                        c.hash,
                        self.mech.name()
                    )));
                }
                c.validate()?;
                (c, false)
            }
            None => (self.fake_record(hash, &first.username)?, true),
        };
        let server_nonce = match &self.fixed_nonce {
            Some(n) => n.clone(),
            None => random_nonce()?,
        };
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let mut server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&creds.salt),
            creds.iterations
        );
        if let Some(s) = &self.downgrade {
            // RFC 5802 §7 allows extensions after the iteration count.
            server_first.push_str(",h=");
            server_first.push_str(&B64.encode(hash.digest(s.as_bytes())));
        }
        let challenge = server_first.as_bytes().to_vec();
        self.state = State::ScramAwaitFinal(Box::new(ScramSent {
            first,
            server_first,
            nonce,
            creds,
            fake,
        }));
        Ok(Step::Challenge(challenge))
    }

    /// Deterministic stand-in record for an unknown account, so that probing a name
    /// reveals nothing: the same salt every time for the same name.
    fn fake_record(&self, hash: HashAlg, username: &str) -> Result<ScramCredentials, SaslError> {
        let secret: &[u8] = match &self.secret {
            Some(s) => s,
            None => process_secret()?,
        };
        let label = |what: &str| {
            let mut v = Vec::new();
            v.extend_from_slice(b"rookery-sasl unknown-user ");
            v.extend_from_slice(what.as_bytes());
            v.push(0);
            v.extend_from_slice(hash.name().as_bytes());
            v.push(0);
            v.extend_from_slice(username.as_bytes());
            v
        };
        let mut salt = HashAlg::Sha256.hmac(secret, &label("salt"))?;
        salt.truncate(crate::credentials::SALT_LEN);
        let salted = hash.hmac(secret, &label("salted-password"))?;
        let (stored_key, server_key) = keys_from_salted(hash, &salted)?;
        Ok(ScramCredentials {
            hash,
            salt,
            iterations: self.unknown_user_iterations,
            stored_key,
            server_key,
        })
    }

    fn scram_final(&mut self, sent: ScramSent, msg: &[u8]) -> Result<Step, SaslError> {
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(SaslError::malformed("message too long"));
        }
        let hash = self.hash()?;
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::malformed("not UTF-8"))?;
        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof_attr) = msg
            .rsplit_once(',')
            .ok_or_else(|| SaslError::malformed("client-final too short"))?;
        let proof_b64 = proof_attr
            .strip_prefix("p=")
            .ok_or_else(|| SaslError::malformed("expected p=proof last"))?;
        let mut attrs = without_proof.split(',');
        let c = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| SaslError::malformed("expected c=channel-binding"))?;
        let r = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| SaslError::malformed("expected r=nonce"))?;
        check_extensions(attrs)?;
        let cbind = B64
            .decode(c)
            .map_err(|_| SaslError::malformed("bad base64 in c="))?;
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| SaslError::malformed("bad base64 in p="))?;

        let mut expected_cbind = sent.first.gs2_header.as_bytes().to_vec();
        expected_cbind.extend_from_slice(&sent.first.cb_data);
        if !bool::from(cbind.ct_eq(&expected_cbind)) {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if r != sent.nonce {
            return Err(SaslError::NotAuthorized);
        }
        if proof.len() != hash.output_len() {
            return Err(SaslError::NotAuthorized);
        }

        let auth_message = format!(
            "{},{},{}",
            sent.first.client_first_bare, sent.server_first, without_proof
        );
        let client_signature = hash.hmac(&sent.creds.stored_key, auth_message.as_bytes())?;
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let computed = hash.digest(&client_key);
        let ok = bool::from(computed.ct_eq(&sent.creds.stored_key));
        if !ok || sent.fake {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = hash.hmac(&sent.creds.server_key, auth_message.as_bytes())?;
        let server_final = format!("v={}", B64.encode(server_signature));
        Ok(Step::Success {
            username: sent.first.username,
            authzid: sent.first.authzid,
            additional_data: Some(server_final.into_bytes()),
        })
    }

    fn plain_check(
        &mut self,
        p: PlainPending,
        creds: Option<ScramCredentials>,
    ) -> Result<Step, SaslError> {
        let ok = match creds {
            Some(c) => c.verify_password(&p.password),
            None => {
                // Spend the same PBKDF2 time as for a real account.
                let fake = self.fake_record(HashAlg::Sha256, &p.username)?;
                let _ = fake.verify_password(&p.password);
                false
            }
        };
        if !ok {
            return Err(SaslError::NotAuthorized);
        }
        self.verified_password = Some(p.password);
        Ok(Step::Success {
            username: p.username,
            authzid: p.authzid,
            additional_data: None,
        })
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(msg: &[u8]) -> Result<PlainPending, SaslError> {
    let mut parts = msg.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::malformed(
            "PLAIN message must have exactly two NULs",
        ));
    };
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslError::malformed("PLAIN field is not UTF-8"))
    };
    let authzid = utf8(authzid)?;
    let authcid = utf8(authcid)?;
    let password = utf8(passwd)?;
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::malformed("empty PLAIN authcid or password"));
    }
    let username = stringprep::saslprep(&authcid)
        .map_err(|e| SaslError::malformed(format!("username fails SASLprep: {e}")))?
        .into_owned();
    if username.is_empty() {
        return Err(SaslError::malformed("empty username"));
    }
    Ok(PlainPending {
        username,
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(authzid)
        },
        password,
    })
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802 §7).
fn is_printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// Decode a `saslname` (`=2C` -> ',', `=3D` -> '='); any other '=' is an error.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() {
        return Err(SaslError::malformed("empty saslname"));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslError::malformed("bad '=' escape in saslname")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.contains('\0') {
        return Err(SaslError::malformed("NUL in saslname"));
    }
    Ok(out)
}

/// Optional trailing `attr=value` extensions: syntax-checked and ignored, except the
/// reserved mandatory-extension attribute `m`, which must make authentication fail.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), SaslError> {
    for a in attrs {
        let b = a.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
            return Err(SaslError::malformed("bad SCRAM attribute"));
        }
        if b[0] == b'm' {
            return Err(SaslError::malformed(
                "mandatory extension (m=) not supported",
            ));
        }
    }
    Ok(())
}

fn random_nonce() -> Result<String, SaslError> {
    let mut bytes = [0u8; SERVER_NONCE_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| SaslError::Internal(format!("CSPRNG failure: {e}")))?;
    Ok(B64.encode(bytes))
}

static PROCESS_SECRET: OnceLock<[u8; 32]> = OnceLock::new();

fn process_secret() -> Result<&'static [u8; 32], SaslError> {
    if let Some(s) = PROCESS_SECRET.get() {
        return Ok(s);
    }
    let mut s = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut s)
        .map_err(|e| SaslError::Internal(format!("CSPRNG failure: {e}")))?;
    Ok(PROCESS_SECRET.get_or_init(|| s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Ok("a,b=c"));
        assert!(decode_saslname("a=2").is_err());
        assert!(decode_saslname("a=41").is_err());
        assert!(decode_saslname("").is_err());
        assert!(decode_saslname("=").is_err());
    }

    #[test]
    fn server_nonce_is_printable_and_long() {
        let n = random_nonce().expect("rng");
        assert!(n.len() >= 24);
        assert!(n.bytes().all(is_printable));
        assert_ne!(n, random_nonce().expect("rng"));
    }
}

/// XEP-0474 §2.1: the string hashed for downgrade protection: the sorted mechanisms joined
/// by U+001E, then (if channel-binding types were advertised) U+001F and the sorted types
/// joined by U+001E. Sorting is by octets.
pub fn downgrade_protection_input(
    mechanisms: &[&str],
    channel_bindings: Option<&[&str]>,
) -> String {
    let mut mechs: Vec<&str> = mechanisms.to_vec();
    mechs.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut s = mechs.join("\u{1e}");
    if let Some(cbs) = channel_bindings {
        let mut cbs: Vec<&str> = cbs.to_vec();
        cbs.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        s.push('\u{1f}');
        s.push_str(&cbs.join("\u{1e}"));
    }
    s
}

/// The base64 value of `h=` a client expects for what it saw advertised (XEP-0474 §2.2).
pub fn downgrade_protection_hash(
    hash: HashAlg,
    mechanisms: &[&str],
    channel_bindings: Option<&[&str]>,
) -> String {
    B64.encode(hash.digest(downgrade_protection_input(mechanisms, channel_bindings).as_bytes()))
}

#[cfg(test)]
mod downgrade_tests {
    use super::*;

    #[test]
    fn input_is_sorted_and_delimited_as_xep_0474_says() {
        let s = downgrade_protection_input(
            &["SCRAM-SHA-256", "PLAIN", "SCRAM-SHA-1-PLUS"],
            Some(&["tls-server-end-point", "tls-exporter"]),
        );
        assert_eq!(
            s,
            "PLAIN\u{1e}SCRAM-SHA-1-PLUS\u{1e}SCRAM-SHA-256\u{1f}tls-exporter\u{1e}tls-server-end-point"
        );
        assert_eq!(
            downgrade_protection_input(&["SCRAM-SHA-1"], None),
            "SCRAM-SHA-1"
        );
    }

    #[test]
    fn server_first_carries_the_hash() {
        let mechs = ["SCRAM-SHA-1", "PLAIN"];
        let mut s = ServerSession::new(Mechanism::ScramSha1, ChannelBindings::none(), false, true)
            .with_downgrade_protection(&mechs, None);
        let step = s.start(b"n,,n=user,r=abc").expect("first");
        assert!(matches!(step, Step::NeedCredentials { .. }));
        let creds = crate::generate_all("pw", 4096)
            .expect("creds")
            .into_iter()
            .find(|c| c.hash == HashAlg::Sha1)
            .expect("sha1");
        let Ok(Step::Challenge(first)) = s.credentials(Some(creds)) else {
            panic!("expected server-first");
        };
        let first = String::from_utf8(first).expect("utf8");
        let expected = downgrade_protection_hash(HashAlg::Sha1, &mechs, None);
        assert!(first.ends_with(&format!(",h={expected}")), "{first}");
    }
}
