//! Storage abstractions for Rookery: one trait per feature store, the [`Storage`]
//! bundle a server runs with, an in-memory backend ([`memory`]) and a conformance
//! suite ([`conformance`]) that every backend runs in its own tests.
//!
//! # Invariants
//!
//! * **Only SCRAM records are stored, never passwords.** Accounts carry one
//!   [`ScramCredentials`] record (salt, iteration count, StoredKey, ServerKey) per hash;
//!   no API here accepts or returns a password.
//! * **Names are opaque bytes.** Usernames and domains arrive already normalised by the
//!   caller (JID localpart / domainpart preparation); stores compare them byte-exactly
//!   and sort them by byte order.
//! * **Records are validated both ways.** A backend refuses to store a malformed record
//!   (wrong key length for its hash, two records for one hash) and reports a malformed
//!   record read back as [`StorageError::Corrupt`] rather than panicking.
//! * Store methods are async and must never block the async runtime.

use std::sync::Arc;

pub use rookery_sasl::{HashAlg, ScramCredentials};

pub mod conformance;
pub mod memory;

/// Errors of every store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Accounts and their SCRAM credentials.
#[async_trait::async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Create an account with one credential record per hash. AlreadyExists if it exists.
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError>;
    /// Replace all credential records. NotFound if the account doesn't exist.
    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError>;
    /// The account's record for `hash`; `None` if the account or that record doesn't exist.
    async fn get_credentials(
        &self,
        domain: &str,
        username: &str,
        hash: HashAlg,
    ) -> Result<Option<ScramCredentials>, StorageError>;
    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError>;
    /// true if it existed.
    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError>;
    /// `(username, domain)` pairs sorted by (domain, username). domain None = all domains.
    async fn list_accounts(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError>;
}

/// The bundle of per-feature stores a server runs with; later features add fields (roster, offline, ...).
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
}

impl Storage {
    /// Everything in memory (tests, ephemeral servers).
    pub fn memory() -> Self {
        Storage {
            accounts: Arc::new(memory::MemoryAccountStore::new()),
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// Check a set of records before storing it: each well-formed, at most one per hash.
/// Backends call this on every write.
pub fn validate_credentials(creds: &[ScramCredentials]) -> Result<(), StorageError> {
    for (i, c) in creds.iter().enumerate() {
        c.validate()
            .map_err(|e| StorageError::Backend(format!("invalid credential record: {e}")))?;
        if creds[..i].iter().any(|o| o.hash == c.hash) {
            return Err(StorageError::Backend(format!(
                "invalid credential records: two records for {}",
                c.hash
            )));
        }
    }
    Ok(())
}
