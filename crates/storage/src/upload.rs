//! Records of HTTP file uploads (XEP-0363): one per upload slot a local account was given,
//! kept for the owner's daily quota, for serving the file (its content type) and for
//! expiry. The files themselves are on disk, the upload module's business; a file whose
//! record is gone is deleted by the module.
//!
//! A record is written when the slot is issued, before any byte is uploaded: the quota
//! counts what users asked for, so a user cannot overrun it with many slots requested at
//! once and filled later.

/// One upload slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The slot's id: the random directory of the file's path; unique in the backend.
    pub id: String,
    /// The owner account's domain and username.
    pub domain: String,
    pub user: String,
    /// The cleaned file name (the last segment of the file's path).
    pub file_name: String,
    /// The announced (and only accepted) size in bytes.
    pub size: u64,
    pub content_type: String,
    /// When the slot was issued, Unix seconds.
    pub created: i64,
}

/// Upload records; see [`UploadRecord`]. Records belong to their owner account: adding one
/// for an unknown account is [`StorageError::NotFound`](crate::StorageError::NotFound), and
/// deleting the account deletes its records with everything else of it.
#[async_trait::async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Records a slot if the sizes of the owner's records created at or after `since`, plus
    /// this one's, stay within `quota` bytes: checked in the same atomic step as the insert
    /// ([`LimitReached`](crate::StorageError::LimitReached) otherwise, nothing written).
    /// AlreadyExists if the id is taken; NotFound if the owner doesn't exist.
    async fn add_upload(
        &self,
        record: &UploadRecord,
        since: i64,
        quota: u64,
    ) -> Result<(), crate::StorageError>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, crate::StorageError>;
    /// The owner's records created at or after `since`, oldest first, as `(created, size)`
    /// (to tell a user over quota when it frees up). An unknown account has none.
    async fn recent_uploads(
        &self,
        domain: &str,
        user: &str,
        since: i64,
    ) -> Result<Vec<(i64, u64)>, crate::StorageError>;
    /// Deletes one record; true if it existed.
    async fn delete_upload(&self, id: &str) -> Result<bool, crate::StorageError>;
    /// Deletes at most `limit` records (of any account) created before `before`, oldest
    /// first, and returns their ids. Callers repeat until fewer than `limit` come back, so
    /// no single call holds the database for long.
    async fn expire_uploads(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<String>, crate::StorageError>;
}
