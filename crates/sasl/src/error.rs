//! The error type of every SASL operation.

/// Why an authentication exchange failed.
///
/// Every variant maps to an RFC 6120 §6.5 failure condition via
/// [`SaslError::condition`]. The string payloads are diagnostics for logs;
/// they are never meant to be sent to the peer verbatim.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// Wrong credentials, unknown account, nonce mismatch, ...
    #[error("not authorized")]
    NotAuthorized,
    /// The client's message does not follow the mechanism's syntax.
    #[error("malformed request: {0}")]
    MalformedRequest(String),
    /// The mechanism (PLAIN) is not allowed on an unencrypted stream.
    #[error("encryption required")]
    EncryptionRequired,
    /// The authorization identity is not acceptable (raised by the server's policy).
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    /// The outer base64 of an XMPP SASL element was invalid (raised by the server).
    #[error("incorrect base64 encoding")]
    IncorrectEncoding,
    /// SCRAM `c=` did not match the GS2 header and this connection's channel binding.
    #[error("channel binding mismatch")]
    ChannelBindingMismatch,
    /// The client sent gs2 flag `y` although the server advertised a -PLUS mechanism.
    #[error("channel binding downgrade detected")]
    Downgrade,
    /// The client asked for a channel-binding type that is unknown or unavailable.
    #[error("unsupported channel binding type: {0}")]
    UnsupportedChannelBinding(String),
    /// The credentials (a FAST token) were right but are no longer valid.
    #[error("credentials expired")]
    CredentialsExpired,
    /// The credentials were right but the account is disabled (RFC 6120 §6.5.1; raised by the
    /// server's policy after the proof, so a wrong password never learns it).
    #[error("account disabled")]
    AccountDisabled,
    /// The client aborted the exchange (raised by the server on `<abort/>`).
    #[error("aborted")]
    Aborted,
    /// A server-side problem (bad stored record, RNG failure, API misuse).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SaslError {
    /// RFC 6120 §6.5 defined-condition element name for a `<failure/>`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::NotAuthorized | SaslError::ChannelBindingMismatch | SaslError::Downgrade => {
                "not-authorized"
            }
            SaslError::MalformedRequest(_) | SaslError::UnsupportedChannelBinding(_) => {
                "malformed-request"
            }
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::Aborted => "aborted",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::Internal(_) => "temporary-auth-failure",
        }
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> Self {
        SaslError::MalformedRequest(msg.into())
    }
}
