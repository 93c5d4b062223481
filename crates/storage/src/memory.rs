//! In-memory stores: fast, ephemeral, and the reference behaviour for the
//! conformance suite.

use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;

use crate::{validate_credentials, AccountStore, HashAlg, ScramCredentials, StorageError};

type Key = (String, String); // (domain, username): BTreeMap order = list order

/// [`AccountStore`] kept in a map behind a lock (never held across an await).
#[derive(Debug, Default)]
pub struct MemoryAccountStore {
    accounts: RwLock<BTreeMap<Key, HashMap<HashAlg, ScramCredentials>>>,
}

impl MemoryAccountStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn key(domain: &str, username: &str) -> Key {
    (domain.to_owned(), username.to_owned())
}

fn to_map(creds: &[ScramCredentials]) -> HashMap<HashAlg, ScramCredentials> {
    creds.iter().map(|c| (c.hash, c.clone())).collect()
}

#[async_trait::async_trait]
impl AccountStore for MemoryAccountStore {
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let mut map = self.accounts.write();
        match map.entry(key(domain, username)) {
            std::collections::btree_map::Entry::Occupied(_) => Err(StorageError::AlreadyExists),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(to_map(creds));
                Ok(())
            }
        }
    }

    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let mut map = self.accounts.write();
        let entry = map
            .get_mut(&key(domain, username))
            .ok_or(StorageError::NotFound)?;
        *entry = to_map(creds);
        Ok(())
    }

    async fn get_credentials(
        &self,
        domain: &str,
        username: &str,
        hash: HashAlg,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        let map = self.accounts.read();
        Ok(map
            .get(&key(domain, username))
            .and_then(|creds| creds.get(&hash))
            .cloned())
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        Ok(self.accounts.read().contains_key(&key(domain, username)))
    }

    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        Ok(self
            .accounts
            .write()
            .remove(&key(domain, username))
            .is_some())
    }

    async fn list_accounts(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let map = self.accounts.read();
        Ok(map
            .keys()
            .filter(|(d, _)| match domain {
                Some(want) => want == d,
                None => true,
            })
            .map(|(d, u)| (u.clone(), d.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        let store = super::MemoryAccountStore::new();
        crate::conformance::account_store(&store).await;
    }

    #[tokio::test]
    async fn storage_bundle() {
        let s = crate::Storage::memory();
        crate::conformance::account_store(s.accounts.as_ref()).await;
    }
}
