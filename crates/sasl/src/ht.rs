//! The Hashed Token mechanisms (`HT-SHA-256-*`, draft-schmaus-kitten-sasl-ht) used by FAST
//! (XEP-0484): one round trip, proof of possession of a server-issued token.
//!
//! The client's initial response is `authcid NUL HMAC(token, "Initiator" || cb-data)`; the
//! server answers with `HMAC(token, "Responder" || cb-data)` as additional data on success.
//! `cb-data` is empty for `-NONE`, the RFC 9266 exporter for `-EXPR`, the RFC 5929 end-point
//! hash for `-ENDP`. Written here because no maintained crate implements the draft; it is
//! a few lines over the `hmac` and `sha2` crates.

use subtle::ConstantTimeEq;

use crate::{ChannelBindingType, ChannelBindings, HashAlg, SaslError, MAX_MESSAGE_LEN};

/// One HT mechanism: SHA-256 with one channel-binding choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HtMechanism {
    /// `HT-SHA-256-NONE`: no channel binding (web clients).
    Sha256None,
    /// `HT-SHA-256-EXPR`: bound to the TLS 1.3 exporter.
    Sha256Expr,
    /// `HT-SHA-256-ENDP`: bound to the server certificate's hash.
    Sha256Endp,
}

impl HtMechanism {
    pub const ALL: [HtMechanism; 3] = [
        HtMechanism::Sha256Expr,
        HtMechanism::Sha256Endp,
        HtMechanism::Sha256None,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            HtMechanism::Sha256None => "HT-SHA-256-NONE",
            HtMechanism::Sha256Expr => "HT-SHA-256-EXPR",
            HtMechanism::Sha256Endp => "HT-SHA-256-ENDP",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn channel_binding(&self) -> Option<ChannelBindingType> {
        match self {
            HtMechanism::Sha256None => None,
            HtMechanism::Sha256Expr => Some(ChannelBindingType::TlsExporter),
            HtMechanism::Sha256Endp => Some(ChannelBindingType::TlsServerEndPoint),
        }
    }

    /// The mechanisms usable on a connection with these channel bindings.
    pub fn available(cb: &ChannelBindings) -> Vec<HtMechanism> {
        Self::ALL
            .into_iter()
            .filter(|m| m.channel_binding().map_or(true, |t| cb.get(t).is_some()))
            .collect()
    }

    fn cb_data<'a>(&self, cb: &'a ChannelBindings) -> Result<&'a [u8], SaslError> {
        match self.channel_binding() {
            None => Ok(&[]),
            Some(t) => cb
                .get(t)
                .ok_or_else(|| SaslError::UnsupportedChannelBinding(t.name().to_owned())),
        }
    }

    /// The proof a client holding `token` sends (also used by tests and clients).
    pub fn initiator_proof(
        &self,
        token: &[u8],
        cb: &ChannelBindings,
    ) -> Result<Vec<u8>, SaslError> {
        let mut data = b"Initiator".to_vec();
        data.extend_from_slice(self.cb_data(cb)?);
        HashAlg::Sha256.hmac(token, &data)
    }

    /// The server's answer proving it knows the token too.
    pub fn responder_proof(
        &self,
        token: &[u8],
        cb: &ChannelBindings,
    ) -> Result<Vec<u8>, SaslError> {
        let mut data = b"Responder".to_vec();
        data.extend_from_slice(self.cb_data(cb)?);
        HashAlg::Sha256.hmac(token, &data)
    }

    /// Checks a client's proof against a candidate token, in constant time.
    pub fn verify(
        &self,
        token: &[u8],
        cb: &ChannelBindings,
        proof: &[u8],
    ) -> Result<bool, SaslError> {
        let expected = self.initiator_proof(token, cb)?;
        Ok(expected.ct_eq(proof).into())
    }
}

/// The parsed initial response: the account name and the proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtInitial {
    pub username: String,
    pub proof: Vec<u8>,
}

/// Splits `authcid NUL proof`.
pub fn parse_initial(data: &[u8]) -> Result<HtInitial, SaslError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(SaslError::malformed("initial response too long"));
    }
    let nul = data
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| SaslError::malformed("no NUL after the username"))?;
    let username = std::str::from_utf8(&data[..nul])
        .map_err(|_| SaslError::malformed("username is not UTF-8"))?;
    if username.is_empty() {
        return Err(SaslError::malformed("empty username"));
    }
    let proof = data[nul + 1..].to_vec();
    if proof.len() != HashAlg::Sha256.output_len() {
        return Err(SaslError::malformed("the proof is not a SHA-256 HMAC"));
    }
    Ok(HtInitial {
        username: username.to_owned(),
        proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbs() -> ChannelBindings {
        ChannelBindings {
            tls_exporter: Some(vec![7; 32]),
            tls_server_end_point: Some(vec![9; 32]),
        }
    }

    #[test]
    fn names_round_trip_and_availability_follows_channel_bindings() {
        for m in HtMechanism::ALL {
            assert_eq!(HtMechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(
            HtMechanism::available(&ChannelBindings::none()),
            [HtMechanism::Sha256None]
        );
        assert_eq!(HtMechanism::available(&cbs()).len(), 3);
    }

    #[test]
    fn proofs_verify_only_with_the_same_token_and_binding() {
        let token = b"secret-token";
        for m in HtMechanism::ALL {
            let proof = m.initiator_proof(token, &cbs()).expect("proof");
            assert!(m.verify(token, &cbs(), &proof).expect("verify"));
            assert!(!m.verify(b"other", &cbs(), &proof).expect("verify"));
            let mut other_channel = cbs();
            other_channel.tls_exporter = Some(vec![8; 32]);
            other_channel.tls_server_end_point = Some(vec![8; 32]);
            assert_eq!(
                m.verify(token, &other_channel, &proof).expect("verify"),
                m == HtMechanism::Sha256None,
                "{m:?}"
            );
            assert_ne!(
                m.responder_proof(token, &cbs()).expect("responder"),
                proof,
                "the two directions differ"
            );
        }
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA-256(key = "token", "Initiator"), computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"token",b"Initiator",hashlib.sha256).hexdigest())'
        let proof = HtMechanism::Sha256None
            .initiator_proof(b"token", &ChannelBindings::none())
            .expect("proof");
        assert_eq!(
            hex::encode(proof),
            "d24d95482f0d6e035c56e787dac4ed832bdd84ee3ea242aaadd982270c330006"
        );
    }

    #[test]
    fn initial_response_parsing() {
        let mut data = b"alice\0".to_vec();
        data.extend_from_slice(&[1u8; 32]);
        let parsed = parse_initial(&data).expect("valid");
        assert_eq!(parsed.username, "alice");
        assert_eq!(parsed.proof, vec![1u8; 32]);
        assert!(parse_initial(b"alice").is_err());
        assert!(parse_initial(b"\0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").is_err());
        assert!(parse_initial(b"alice\0short").is_err());
        assert!(parse_initial(&[0xff, 0, 1]).is_err());
    }
}
