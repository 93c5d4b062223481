//! FAST tokens (XEP-0484): issued after a full authentication, used with the HT-*
//! mechanisms for one-round-trip logins, rotated before they expire, invalidated on request.
//!
//! Tokens are per client installation (the SASL2 `<user-agent id>`), stored per account in
//! the `fast` user-data store under the client id, so deleting the account deletes them.
//! Each client has two slots (XEP-0484 §6.1): `current` and `new`. A new token always goes
//! to `new` (replacing an unused one); the first successful use of `new` makes it `current`
//! and drops the old one, so a client that missed the rotated token can still log in with
//! the one it has. The HMAC proof needs the token itself as the key, so tokens are stored,
//! like session secrets; they are random, per client, short-lived and revocable.

use rookery_core::config::ConfigError;
use rookery_core::{Place, Section};
use rookery_sasl::ht::HtMechanism;
use rookery_sasl::ChannelBindings;
use rookery_storage::{Storage, StorageError};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NS: &str = "urn:xmpp:fast:0";

/// `[fast]`: tokens for one-round-trip logins over SASL2.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FastConfig {
    /// Offer FAST tokens to SASL2 clients.
    pub enabled: bool,
    /// How long a token is valid; it is rotated when less than half of this is left.
    pub token_lifetime_secs: u64,
}

impl Default for FastConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token_lifetime_secs: 14 * 24 * 3600,
        }
    }
}

impl Section for FastConfig {
    const KEY: &'static str = "fast";
    const PLACE: Place = Place::Server;
    // Read by the streams through `c2s::StreamContext`, refreshed on reload.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# FAST (XEP-0484): SASL2 clients may ask for a token to log in again in one round trip.
[fast]
enabled = true
# Token validity; a token with less than half of it left is rotated at its next use.
token_lifetime_secs = 1209600
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.token_lifetime_secs == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.token_lifetime_secs"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}
const STORE: &str = rookery_storage::FAST_TOKENS_STORE;
const MAX_RECORD_BYTES: usize = 4096;
/// Random bytes in a token (base64: 43 characters).
const TOKEN_BYTES: usize = 32;

/// A token handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    /// Unix seconds.
    pub expiry: u64,
}

impl Issued {
    /// XEP-0082 DateTime of the expiry.
    pub fn expiry_string(&self) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp(self.expiry as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// The outcome of a login with a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The proof matched this token (the responder proof is computed from it).
    Valid { token: String, expiry: u64 },
    /// A token matched but has expired: `credentials-expired` (XEP-0484 §6.2).
    Expired,
    /// No token of this client matched.
    Invalid,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    mechanism: Option<HtMechanism>,
    current: Option<Issued>,
    new: Option<Issued>,
}

impl Record {
    fn parse(text: &str) -> Record {
        let mut r = Record::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let slot = || {
                let (token, expiry) = v.split_once(' ')?;
                Some(Issued {
                    token: token.to_owned(),
                    expiry: expiry.parse().ok()?,
                })
            };
            match k {
                "mechanism" => r.mechanism = HtMechanism::from_name(v),
                "current" => r.current = slot(),
                "new" => r.new = slot(),
                _ => {}
            }
        }
        r
    }

    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.mechanism {
            s.push_str(&format!("mechanism={}\n", m.name()));
        }
        for (name, slot) in [("current", &self.current), ("new", &self.new)] {
            if let Some(t) = slot {
                s.push_str(&format!("{name}={} {}\n", t.token, t.expiry));
            }
        }
        s
    }
}

/// A client id fit to be a storage key: the SASL2 user-agent id is a UUID.
pub fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_token() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Token operations for one host's accounts.
pub struct FastTokens<'a> {
    pub storage: &'a Storage,
    pub domain: &'a str,
    pub lifetime: Duration,
}

impl FastTokens<'_> {
    async fn load(&self, user: &str, client: &str) -> Result<Record, StorageError> {
        Ok(self
            .storage
            .user_data
            .get_data(self.domain, user, STORE, client)
            .await?
            .map(|t| Record::parse(&t))
            .unwrap_or_default())
    }

    async fn save(&self, user: &str, client: &str, r: &Record) -> Result<(), StorageError> {
        let value = (r.current.is_some() || r.new.is_some()).then(|| r.render());
        self.storage
            .user_data
            .set_data(
                self.domain,
                user,
                STORE,
                client,
                value.as_deref(),
                MAX_RECORD_BYTES,
            )
            .await
    }

    /// A new token for `mechanism`, in the `new` slot (an unused earlier one is dropped).
    /// A different mechanism than before replaces every token of the client: tokens are
    /// bound to the mechanism they were requested for (§3.3).
    pub async fn issue(
        &self,
        user: &str,
        client: &str,
        mechanism: HtMechanism,
    ) -> Result<Issued, StorageError> {
        let mut r = self.load(user, client).await?;
        if r.mechanism != Some(mechanism) {
            r = Record {
                mechanism: Some(mechanism),
                ..Record::default()
            };
        }
        let issued = Issued {
            token: random_token(),
            expiry: now() + self.lifetime.as_secs(),
        };
        r.new = Some(issued.clone());
        self.save(user, client, &r).await?;
        Ok(issued)
    }

    /// Checks a proof made with `mechanism` against the client's tokens.
    pub async fn verify(
        &self,
        user: &str,
        client: &str,
        mechanism: HtMechanism,
        cb: &ChannelBindings,
        proof: &[u8],
    ) -> Result<Verified, StorageError> {
        let mut r = self.load(user, client).await?;
        if r.mechanism != Some(mechanism) {
            return Ok(Verified::Invalid);
        }
        let now = now();
        let matches = |t: &Issued| {
            mechanism
                .verify(t.token.as_bytes(), cb, proof)
                .unwrap_or(false)
        };
        if let Some(t) = r.new.clone().filter(|t| matches(t)) {
            if t.expiry <= now {
                return Ok(Verified::Expired);
            }
            // First use of the rotated token: it becomes current, the old one is gone.
            r.current = Some(t.clone());
            r.new = None;
            self.save(user, client, &r).await?;
            return Ok(Verified::Valid {
                token: t.token,
                expiry: t.expiry,
            });
        }
        if let Some(t) = r.current.clone().filter(|t| matches(t)) {
            if t.expiry <= now {
                return Ok(Verified::Expired);
            }
            return Ok(Verified::Valid {
                token: t.token,
                expiry: t.expiry,
            });
        }
        Ok(Verified::Invalid)
    }

    /// Whether a token used now is due for rotation (less than half its life left).
    pub fn due_for_rotation(&self, expiry: u64) -> bool {
        expiry.saturating_sub(now()) <= self.lifetime.as_secs() / 2
    }

    /// Invalidates one token (the client logs out, §3.5).
    pub async fn invalidate(
        &self,
        user: &str,
        client: &str,
        token: &str,
    ) -> Result<(), StorageError> {
        let mut r = self.load(user, client).await?;
        if r.current.as_ref().is_some_and(|t| t.token == token) {
            r.current = None;
        }
        if r.new.as_ref().is_some_and(|t| t.token == token) {
            r.new = None;
        }
        self.save(user, client, &r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_sasl::generate_all;

    async fn storage() -> Storage {
        let s = Storage::memory();
        let creds = generate_all("pw", 4096).expect("creds");
        s.accounts
            .create_account("x", "alice", &creds)
            .await
            .expect("account");
        s
    }

    fn proof(m: HtMechanism, token: &str) -> Vec<u8> {
        m.initiator_proof(token.as_bytes(), &ChannelBindings::none())
            .expect("proof")
    }

    #[tokio::test]
    async fn issue_verify_rotate_invalidate() {
        let s = storage().await;
        let f = FastTokens {
            storage: &s,
            domain: "x",
            lifetime: Duration::from_secs(3600),
        };
        let m = HtMechanism::Sha256None;
        let cb = ChannelBindings::none();
        let first = f.issue("alice", "client-1", m).await.expect("issue");
        assert!(matches!(
            f.verify("alice", "client-1", m, &cb, &proof(m, &first.token))
                .await,
            Ok(Verified::Valid { .. })
        ));
        // Another client's id, another mechanism, a wrong token: invalid.
        for (client, mech, token) in [
            ("client-2", m, first.token.as_str()),
            ("client-1", HtMechanism::Sha256Expr, first.token.as_str()),
            ("client-1", m, "guess"),
        ] {
            let p = proof(m, token);
            assert_eq!(
                f.verify("alice", client, mech, &cb, &p)
                    .await
                    .expect("verify"),
                Verified::Invalid
            );
        }
        // Rotation: the old token keeps working until the new one is used.
        let second = f.issue("alice", "client-1", m).await.expect("rotate");
        assert_ne!(first.token, second.token);
        assert!(matches!(
            f.verify("alice", "client-1", m, &cb, &proof(m, &first.token))
                .await,
            Ok(Verified::Valid { .. })
        ));
        assert!(matches!(
            f.verify("alice", "client-1", m, &cb, &proof(m, &second.token))
                .await,
            Ok(Verified::Valid { .. })
        ));
        assert_eq!(
            f.verify("alice", "client-1", m, &cb, &proof(m, &first.token))
                .await
                .expect("verify"),
            Verified::Invalid,
            "using the new token retired the old one"
        );
        f.invalidate("alice", "client-1", &second.token)
            .await
            .expect("invalidate");
        assert_eq!(
            f.verify("alice", "client-1", m, &cb, &proof(m, &second.token))
                .await
                .expect("verify"),
            Verified::Invalid
        );
    }

    #[tokio::test]
    async fn a_password_change_revokes_every_token() {
        let s = storage().await;
        let f = FastTokens {
            storage: &s,
            domain: "x",
            lifetime: Duration::from_secs(3600),
        };
        let m = HtMechanism::Sha256None;
        let a = f.issue("alice", "phone", m).await.expect("issue");
        let b = f.issue("alice", "laptop", m).await.expect("issue");
        let creds = generate_all("new password", 4096).expect("creds");
        s.change_password("x", "alice", &creds)
            .await
            .expect("change");
        for (client, t) in [("phone", &a), ("laptop", &b)] {
            assert_eq!(
                f.verify(
                    "alice",
                    client,
                    m,
                    &ChannelBindings::none(),
                    &proof(m, &t.token)
                )
                .await
                .expect("verify"),
                Verified::Invalid,
                "{client}"
            );
        }
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_as_expired() {
        let s = storage().await;
        let f = FastTokens {
            storage: &s,
            domain: "x",
            lifetime: Duration::ZERO,
        };
        let m = HtMechanism::Sha256None;
        let t = f.issue("alice", "c", m).await.expect("issue");
        assert_eq!(
            f.verify(
                "alice",
                "c",
                m,
                &ChannelBindings::none(),
                &proof(m, &t.token)
            )
            .await
            .expect("verify"),
            Verified::Expired
        );
        assert!(f.due_for_rotation(t.expiry));
    }

    #[test]
    fn records_round_trip_and_garbage_is_empty() {
        let r = Record {
            mechanism: Some(HtMechanism::Sha256Endp),
            current: Some(Issued {
                token: "a".into(),
                expiry: 5,
            }),
            new: None,
        };
        assert_eq!(Record::parse(&r.render()), r);
        assert_eq!(Record::parse("\u{0}garbage\nnew=zz"), Record::default());
        assert!(valid_client_id("d4565fa7-4d72-4749-b3d3-740edbf87770"));
        assert!(!valid_client_id("../x"));
        assert!(!valid_client_id(""));
    }
}
