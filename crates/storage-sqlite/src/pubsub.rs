//! [`PubSubStore`] on SQLite. Not implemented yet: every call fails with
//! [`StorageError::Backend`], so a server on SQLite refuses PubSub rather than losing data.

use rookery_storage::{
    ItemPage, ItemRecord, ItemSelection, NodeRecord, PubSubService, PubSubStore, Published,
    StorageError, SubscriptionRecord,
};

use crate::Shared;

/// [`PubSubStore`] of a [`SqliteBackend`](crate::SqliteBackend).
pub struct SqlitePubSubStore {
    #[allow(dead_code)]
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqlitePubSubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlitePubSubStore")
    }
}

fn unsupported<T>() -> Result<T, StorageError> {
    Err(StorageError::Backend(
        "the SQLite backend does not store PubSub nodes yet".into(),
    ))
}

#[async_trait::async_trait]
impl PubSubStore for SqlitePubSubStore {
    async fn get_node(
        &self,
        _: PubSubService<'_>,
        _: &str,
    ) -> Result<Option<NodeRecord>, StorageError> {
        unsupported()
    }
    async fn list_nodes(&self, _: PubSubService<'_>) -> Result<Vec<NodeRecord>, StorageError> {
        unsupported()
    }
    async fn create_node(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &str,
        _: &str,
        _: usize,
    ) -> Result<(), StorageError> {
        unsupported()
    }
    async fn set_node_config(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &str,
    ) -> Result<(), StorageError> {
        unsupported()
    }
    async fn delete_node(&self, _: PubSubService<'_>, _: &str) -> Result<bool, StorageError> {
        unsupported()
    }
    async fn publish_item(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &ItemRecord,
        _: usize,
        _: usize,
    ) -> Result<Published, StorageError> {
        unsupported()
    }
    async fn get_items(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: ItemSelection<'_>,
    ) -> Result<ItemPage, StorageError> {
        unsupported()
    }
    async fn retract_item(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &str,
    ) -> Result<bool, StorageError> {
        unsupported()
    }
    async fn purge_node(&self, _: PubSubService<'_>, _: &str) -> Result<usize, StorageError> {
        unsupported()
    }
    async fn set_affiliation(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &str,
        _: Option<&str>,
    ) -> Result<(), StorageError> {
        unsupported()
    }
    async fn affiliations(
        &self,
        _: PubSubService<'_>,
        _: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        unsupported()
    }
    async fn affiliations_of(
        &self,
        _: PubSubService<'_>,
        _: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        unsupported()
    }
    async fn set_subscription(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &SubscriptionRecord,
        _: usize,
    ) -> Result<(), StorageError> {
        unsupported()
    }
    async fn remove_subscription(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: &str,
        _: Option<&str>,
    ) -> Result<usize, StorageError> {
        unsupported()
    }
    async fn subscriptions(
        &self,
        _: PubSubService<'_>,
        _: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        unsupported()
    }
    async fn subscriptions_of(
        &self,
        _: PubSubService<'_>,
        _: &str,
        _: bool,
    ) -> Result<Vec<(String, SubscriptionRecord)>, StorageError> {
        unsupported()
    }
}
