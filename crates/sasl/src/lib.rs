//! SASL server mechanisms for Rookery: SCRAM-SHA-1/256/512 (RFC 5802, RFC 7677),
//! their channel-binding `-PLUS` variants (RFC 5929 `tls-server-end-point`,
//! RFC 9266 `tls-exporter`) and PLAIN (RFC 4616), framed by RFC 4422.
//!
//! # Invariants
//!
//! * **Sans-I/O.** Nothing here reads or writes sockets, files or databases. A
//!   [`ServerSession`] consumes decoded client messages and returns a [`Step`]
//!   telling the caller what to send or to look up; the only outside resource used is
//!   the operating system's CSPRNG (salts, server nonces, the unknown-user secret).
//! * **Passwords are never stored.** What an account keeps is a [`ScramCredentials`]
//!   record per hash (salt, iteration count, `StoredKey`, `ServerKey`). PLAIN is
//!   checked by recomputing that record from the offered password
//!   ([`ScramCredentials::verify_password`]), compared in constant time.
//! * **No account enumeration.** For an unknown account SCRAM proceeds with a fake
//!   record derived deterministically from a secret and the username, and fails only
//!   at the final step with the same [`SaslError::NotAuthorized`] as a wrong password.
//! * **No panics on peer input.** All parsing returns [`SaslError`].
//! * Usernames are SASLprep'd (RFC 4013); further JID normalisation is the caller's.

mod channel_binding;
mod credentials;
mod error;
mod hash;
pub mod ht;
mod mechanism;
mod session;

pub use channel_binding::{tls_server_end_point, ChannelBindingType, ChannelBindings};
pub use credentials::{generate_all, ScramCredentials, SALT_LEN};
pub use error::SaslError;
pub use hash::HashAlg;
pub use mechanism::Mechanism;
pub use session::{
    downgrade_protection_hash, downgrade_protection_input, ServerSession, Step, MAX_MESSAGE_LEN,
};
