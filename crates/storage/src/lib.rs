//! Storage abstractions for Rookery: one trait per feature store, the [`Storage`]
//! bundle a server runs with, an in-memory backend ([`memory`]) and a conformance
//! suite ([`conformance`]) that every backend runs in its own tests.
//!
//! Stores: [`AccountStore`] (accounts and SCRAM credentials), [`RosterStore`] (RFC 6121
//! rosters, roster versions, pending inbound subscription requests), [`OfflineStore`]
//! (XEP-0160 offline messages) and [`UserDataStore`] (small per-user documents: vCard
//! XEP-0054, private XML XEP-0049, last activity XEP-0012, blocklist XEP-0191),
//! [`ArchiveStore`] (XEP-0313 message archives, see [`archive`]), [`RoomStore`]
//! (persistent XEP-0045 rooms of Multi-User Chat services) and [`PubSubStore`] (XEP-0060
//! nodes, items, affiliations and subscriptions of PEP and PubSub services, see [`pubsub`])
//! and [`UploadStore`] (records of XEP-0363 file uploads, see [`upload`]).
//!
//! # Invariants
//!
//! * **Only SCRAM records are stored, never passwords.** Accounts carry one
//!   [`ScramCredentials`] record (salt, iteration count, StoredKey, ServerKey) per hash;
//!   no API here accepts or returns a password.
//! * **Names are opaque bytes.** Usernames, domains, contact JIDs, group names and
//!   user-data store names and keys arrive already normalised by the caller (JID
//!   preparation); stores compare them byte-exactly and sort them by byte order.
//! * **Records are validated both ways.** A backend refuses to store a malformed record
//!   (wrong key length for its hash, two records for one hash) and reports a malformed
//!   record read back as [`StorageError::Corrupt`] rather than panicking.
//! * **Per-user data belongs to an account.** The roster, offline and user-data stores
//!   of a [`Storage`], the PEP services of its PubSub store ([`PubSubService::Account`])
//!   and its upload records ([`UploadStore::add_upload`]), share their backend with its account store. Every
//!   *write* method of those stores (including removals) fails with
//!   [`StorageError::NotFound`] when the owning account does not exist; *reads* of an
//!   unknown account return the empty value (roster version 0, no items, no messages, no
//!   data, no nodes). Only the owner must exist: a roster item's contact, a subscriber or
//!   an affiliated JID may be any JID, local or remote.
//! * **Deleting an account deletes everything of it**, atomically, in every store of the
//!   backend: credentials, roster items, roster version, pending inbound subscriptions,
//!   offline messages, user data, message archive, its PEP service (every node with its
//!   items, affiliations and subscriptions), its upload records, and the PubSub affiliations and subscriptions
//!   its JIDs (the bare JID `user@domain` and any full JID `user@domain/...`) hold on nodes
//!   of other services, PEP or domain. An account created again with the same name starts
//!   empty (roster version 0). Rooms belong to a service domain, not to an account: account
//!   deletion leaves the [`RoomStore`] alone, and a PubSub service domain's nodes stay (only
//!   the deleted account's affiliations and subscriptions on them go).
//! * **Roster versions** ([`Roster::version`]) start at 0 and increase by exactly one on
//!   every change of the items (each [`RosterStore::set_roster_item`], even with an equal
//!   item, and each removal of an existing item), in the same atomic step as the change;
//!   a removal of an absent item and any change to pending subscriptions leave it as is.
//! * **Quotas are exact under concurrency.** [`RosterStore::set_roster_item`]'s
//!   `max_items`, [`OfflineStore::push_offline`]'s `max_messages`, the PubSub quotas
//!   (`max_nodes`, `max_items`, `max_service_items`, `max_per_jid`) and
//!   [`UploadStore::add_upload`]'s `quota` are checked in the
//!   same atomic step as the write, so concurrent writers never exceed them.
//! * **Offline message ids** are positive, increase in arrival order across the whole
//!   backend and are never reused (not even after the messages or the account were
//!   deleted): a stale id can never remove a newer message.
//! * Store methods are async and must never block the async runtime.

use std::sync::Arc;

pub use rookery_sasl::{HashAlg, ScramCredentials};

pub mod archive;
pub mod conformance;
pub mod memory;
pub mod pubsub;
pub mod timed;
pub mod upload;

pub use archive::{
    id_time, id_time_prefix, ArchiveBound, ArchiveEntry, ArchiveFilter, ArchivePage, ArchiveQuery,
    PageRequest, WithFilter,
};
pub use pubsub::{
    ItemPage, ItemRecord, ItemSelection, NodeRecord, PubSubService, PubSubStore, Published,
    SubscriptionRecord,
};
pub use upload::{UploadRecord, UploadStore};

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
    /// A quota or size limit passed by the caller would be exceeded; nothing was written.
    #[error("limit reached: {0}")]
    LimitReached(String),
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

/// RFC 6121 §2.1.2.5 subscription states, as stored on the user's item for a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscription {
    None,
    To,
    From,
    Both,
}

impl Subscription {
    /// Every state, in the order above.
    pub const ALL: [Subscription; 4] = [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ];

    /// The value of the `subscription` attribute: `none`, `to`, `from`, `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Inverse of [`Subscription::as_str`] (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item of a user's roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID (already normalised by the caller); the item's key.
    pub jid: String,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// Pending-out: the user sent subscribe, no answer yet.
    pub ask: bool,
    /// Pre-approval (RFC 6121 §3.4) given by the user.
    pub approved: bool,
    /// Kept in the order given, duplicates removed (the first occurrence stays).
    pub groups: Vec<String>,
}

impl RosterItem {
    /// An item with no name, no groups, subscription `none`, no ask, no pre-approval.
    pub fn new(jid: impl Into<String>) -> Self {
        RosterItem {
            jid: jid.into(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        }
    }
}

/// A whole roster: its version and its items, sorted by `jid` (byte order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roster {
    pub version: u64,
    pub items: Vec<RosterItem>,
}

/// Rosters (RFC 6121 §2), their versions (RFC 6121 §2.6) and pending inbound
/// subscription requests (RFC 6121 §3.1.3).
#[async_trait::async_trait]
pub trait RosterStore: Send + Sync + 'static {
    /// Whole roster with its version (0 for an account that never had a change, and for
    /// an account that doesn't exist).
    async fn roster(&self, domain: &str, user: &str) -> Result<Roster, StorageError>;
    async fn roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError>;
    /// Insert or replace the item (keyed by `item.jid`; groups deduplicated); increments
    /// the roster version and returns the new version.
    /// `max_items`: refuse ([`StorageError::LimitReached`]) to ADD an item when the
    /// roster already has that many (replacing is always allowed).
    /// NotFound if the account doesn't exist.
    async fn set_roster_item(
        &self,
        domain: &str,
        user: &str,
        item: &RosterItem,
        max_items: usize,
    ) -> Result<u64, StorageError>;
    /// Remove; returns the new version if the item existed, None otherwise (version
    /// unchanged). NotFound if the account doesn't exist.
    async fn remove_roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<u64>, StorageError>;
    /// Pending inbound subscription requests (RFC 6121 §3.1.3: kept and delivered again
    /// at each login until answered); `stanza` is the serialized
    /// `<presence type='subscribe'/>` to redeliver. Adding again replaces it.
    /// Does not change the roster version. NotFound if the account doesn't exist.
    async fn add_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
        stanza: &str,
    ) -> Result<(), StorageError>;
    /// true if one existed. NotFound if the account doesn't exist.
    async fn remove_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<bool, StorageError>;
    /// `(contact, stanza)` pairs sorted by contact.
    async fn pending_in(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<(String, String)>, StorageError>;
}

/// Offline messages (XEP-0160): serialized stanzas kept for a user until a session of
/// theirs took them.
#[async_trait::async_trait]
pub trait OfflineStore: Send + Sync + 'static {
    /// Append a serialized message for an offline user. Returns Ok(None) without storing
    /// when the user already has `max_messages` stored (quota), else Ok(Some(id)). Ids
    /// increase in arrival order and are never reused. NotFound if the account doesn't
    /// exist.
    async fn push_offline(
        &self,
        domain: &str,
        user: &str,
        stanza: &str,
        max_messages: usize,
    ) -> Result<Option<i64>, StorageError>;
    /// Up to `limit` oldest messages, in arrival order: `(id, stanza)`. Does NOT remove
    /// them.
    async fn peek_offline(
        &self,
        domain: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StorageError>;
    /// Remove these ids (after they were written to a session); ids that are unknown or
    /// belong to another user are ignored. Returns how many were removed. NotFound if the
    /// account doesn't exist.
    async fn remove_offline(
        &self,
        domain: &str,
        user: &str,
        ids: &[i64],
    ) -> Result<usize, StorageError>;
    async fn count_offline(&self, domain: &str, user: &str) -> Result<usize, StorageError>;
}

/// Small per-user documents, keyed by `(store, key)`: e.g. `("vcard", "")`,
/// `("private", "<element name> <namespace>")`, `("last", "")`, `("blocklist", "")`.
#[async_trait::async_trait]
pub trait UserDataStore: Send + Sync + 'static {
    async fn get_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
    ) -> Result<Option<String>, StorageError>;
    /// Set (Some) or delete (None; deleting an absent key is not an error).
    /// `max_bytes`: refuse with [`StorageError::LimitReached`] if `value.len() > max_bytes`
    /// (checked first, nothing is written). NotFound if the account doesn't exist.
    async fn set_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError>;
    /// All keys of one store for a user, sorted (byte order).
    async fn data_keys(
        &self,
        domain: &str,
        user: &str,
        store: &str,
    ) -> Result<Vec<String>, StorageError>;
}

/// Persistent rooms of Multi-User Chat services (XEP-0045): one document per room (its
/// configuration, affiliations, registered nicks and subject, serialised by the MUC module),
/// keyed by the service's domain and the room's local part. Rooms are not accounts: a
/// service domain has no account, and deleting an account leaves rooms alone.
#[async_trait::async_trait]
pub trait RoomStore: Send + Sync + 'static {
    /// The stored document of one room.
    async fn get_room(&self, service: &str, room: &str) -> Result<Option<String>, StorageError>;
    /// Stores (Some) or deletes (None; deleting an absent room is not an error) a room.
    /// `max_bytes`: refuse with [`StorageError::LimitReached`] when the document is larger
    /// (nothing is written).
    async fn set_room(
        &self,
        service: &str,
        room: &str,
        state: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError>;
    /// Every room of a service with its document, sorted by room (byte order).
    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>, StorageError>;
}

/// Small values kept per served host (a domain of the configuration), not per account: the
/// message of the day, the welcome message, administrators added over XMPP. Keyed by
/// (domain, key); a host is not an account, so deleting accounts leaves these alone.
///
/// Keys are short names chosen by the server (see [`host_keys`]); values are text, limited
/// by the writer through `max_bytes`.
#[async_trait::async_trait]
pub trait HostDataStore: Send + Sync + 'static {
    /// The value stored under `key` for `domain`.
    async fn get_host_data(&self, domain: &str, key: &str) -> Result<Option<String>, StorageError>;
    /// Stores (Some) or deletes (None; deleting an absent key is not an error) a value.
    /// `max_bytes`: refuse with [`StorageError::LimitReached`] when the value is larger
    /// (checked first: nothing is written).
    async fn set_host_data(
        &self,
        domain: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError>;
}

/// The keys the server uses in [`HostDataStore`].
pub mod host_keys {
    /// The message of the day (XEP-0133 §4.23), as its text.
    pub const MOTD: &str = "motd";
    /// The message sent to a newly registered account (XEP-0133 §4.27).
    pub const WELCOME: &str = "welcome";
    /// Administrators added over XMPP (XEP-0133 §4.28), one bare JID per line.
    pub const ADMINS: &str = "admins";
}

/// Message archives (XEP-0313); see [`archive`] for the model. One trait serves two
/// kinds of owner, each its own store in [`Storage`]: accounts (`archive`: `domain` and
/// `user` name an account, which must exist) and MUC rooms (`room_archive`: `domain` is the
/// service's domain and `user` the room's local part; an archive is created by its first
/// entry, and deleting accounts leaves it alone).
#[async_trait::async_trait]
pub trait ArchiveStore: Send + Sync + 'static {
    /// Append an entry at the end of the account's archive. A `timestamp_us` older than
    /// the archive's newest entry is raised to it (archive order is time order); returns
    /// the timestamp stored. AlreadyExists if the archive has an entry with this id;
    /// NotFound if the account doesn't exist.
    ///
    /// Order: appends are committed in the order their futures were first polled (a
    /// backend queues an append to its writer on the first poll), so once an append has
    /// returned `Ok`, every append first polled before it is committed too. The message
    /// path relies on it (the sender's copy is not waited for; see the `mam` module).
    async fn append_archive(
        &self,
        domain: &str,
        user: &str,
        entry: &ArchiveEntry,
    ) -> Result<i64, StorageError>;
    /// Appends `entry` like [`append_archive`](Self::append_archive), but may return
    /// before the commit: once it returns `Ok`, the entry survives a crash or kill of the
    /// server process (as a commit does), every read of the archive sees it, and it is
    /// committed in the same order as every other append. A backend with a journal
    /// (SQLite's, `journal.rs`) returns once the entry is in it; the default waits for the
    /// commit. Errors only the commit can find (an unknown account) may then not be
    /// reported: the backend drops such an entry and logs it. The caller gives the entry an
    /// id it has just made, unique by construction (the `mam` module's: the time and 95
    /// random bits), and a backend need not look for it in the archive (SQLite's does not).
    async fn append_archive_journaled(
        &self,
        domain: &str,
        user: &str,
        entry: ArchiveEntry,
    ) -> Result<(), StorageError> {
        self.append_archive(domain, user, &entry).await.map(|_| ())
    }
    /// One page of the result set `query.filter` selects, in archive order. NotFound when
    /// an id the query names (after-id, before-id, ids, RSM after/before) is not in the
    /// archive. An unknown account has an empty archive.
    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError>;
    /// The first and last entries, or None for an empty archive.
    async fn archive_bounds(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Option<(ArchiveBound, ArchiveBound)>, StorageError>;
    /// Delete at most `limit` entries (of any account) older than `before_us`, oldest
    /// first; returns how many. Callers repeat until it returns less than `limit`, so no
    /// single call holds the database for long.
    async fn purge_archive(&self, before_us: i64, limit: usize) -> Result<usize, StorageError>;
    /// Replaces the stored stanza of one entry, keeping its id, time and `with` (a
    /// retraction's tombstone, XEP-0424 §5 and XEP-0425 §5). NotFound if the archive has no
    /// entry with this id.
    async fn replace_archived(
        &self,
        domain: &str,
        user: &str,
        id: &str,
        stanza: &str,
    ) -> Result<(), StorageError>;
    /// Deletes a whole archive (a destroyed room); returns how many entries it held.
    async fn delete_archive(&self, domain: &str, user: &str) -> Result<usize, StorageError>;
    /// How many entries the store holds across every archive, for the archive size metric;
    /// `None` when the backend cannot tell without reading every entry (the default, so a
    /// backend need not implement it). The server asks every few minutes, not per scrape.
    async fn count_archived(&self) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }
}

/// The bundle of per-feature stores a server runs with. All stores of one bundle share
/// one backend (so deleting an account through `accounts` wipes the per-account stores and
/// the account's PEP service; `rooms` and `room_archive` are keyed by service, not account,
/// and are left alone).
#[derive(Clone)]
pub struct Storage {
    pub accounts: Arc<dyn AccountStore>,
    pub roster: Arc<dyn RosterStore>,
    pub offline: Arc<dyn OfflineStore>,
    pub user_data: Arc<dyn UserDataStore>,
    pub archive: Arc<dyn ArchiveStore>,
    pub rooms: Arc<dyn RoomStore>,
    /// The archives of MUC rooms, keyed by service domain and room.
    pub room_archive: Arc<dyn ArchiveStore>,
    /// PubSub nodes (XEP-0060) of accounts' PEP services and of PubSub service domains.
    pub pubsub: Arc<dyn PubSubStore>,
    /// Records of HTTP file uploads (XEP-0363), owned by accounts.
    pub upload: Arc<dyn UploadStore>,
    /// Small per-host values (message of the day, added administrators).
    pub host_data: Arc<dyn HostDataStore>,
}

/// The user-data store of FAST tokens (XEP-0484), one key per client: credentials issued
/// under the current password, revoked when it changes.
pub const FAST_TOKENS_STORE: &str = "fast";

/// The user-data store of the server's own per-account state (whether the account is
/// disabled; which message of the day it has seen). Being user data, it goes with the account.
pub const ACCOUNT_STATE_STORE: &str = "urn:rookery:account";
/// The key of [`ACCOUNT_STATE_STORE`] present (value `1`) while the account is disabled.
pub const DISABLED_KEY: &str = "disabled";

impl Storage {
    /// Everything in memory (tests, ephemeral servers).
    pub fn memory() -> Self {
        memory::MemoryBackend::new().storage()
    }

    /// Replaces an account's credentials and revokes what was issued under the old password
    /// (FAST tokens), so changing a password also shuts out clients that log in with tokens.
    /// NotFound if the account doesn't exist.
    pub async fn change_password(
        &self,
        domain: &str,
        user: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        self.accounts.set_credentials(domain, user, creds).await?;
        for key in self
            .user_data
            .data_keys(domain, user, FAST_TOKENS_STORE)
            .await?
        {
            self.user_data
                .set_data(domain, user, FAST_TOKENS_STORE, &key, None, 0)
                .await?;
        }
        Ok(())
    }

    /// Whether the account is disabled (XEP-0133 §4.5): one keyed read, done at each login.
    pub async fn account_disabled(&self, domain: &str, user: &str) -> Result<bool, StorageError> {
        Ok(self
            .user_data
            .get_data(domain, user, ACCOUNT_STATE_STORE, DISABLED_KEY)
            .await?
            .is_some())
    }

    /// Disables or re-enables an account; its data is kept either way. NotFound if the
    /// account doesn't exist.
    pub async fn set_account_disabled(
        &self,
        domain: &str,
        user: &str,
        disabled: bool,
    ) -> Result<(), StorageError> {
        if !self.accounts.account_exists(domain, user).await? {
            return Err(StorageError::NotFound);
        }
        self.user_data
            .set_data(
                domain,
                user,
                ACCOUNT_STATE_STORE,
                DISABLED_KEY,
                disabled.then_some("1"),
                1,
            )
            .await
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

/// Roster groups as stored: in the order given, each name once (its first occurrence).
/// Backends call this on every roster write.
pub fn dedup_groups(groups: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(groups.len());
    groups
        .iter()
        .filter(|g| seen.insert(g.as_str()))
        .cloned()
        .collect()
}

/// The error [`UserDataStore::set_data`] returns for a value over `max_bytes`, if any.
pub fn check_data_size(value: Option<&str>, max_bytes: usize) -> Result<(), StorageError> {
    match value {
        Some(v) if v.len() > max_bytes => Err(StorageError::LimitReached(format!(
            "value of {} bytes exceeds the limit of {max_bytes} bytes",
            v.len()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names_round_trip() {
        for s in Subscription::ALL {
            assert_eq!(Subscription::from_name(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for bad in ["", "None", "BOTH", "remove", " to", "to "] {
            assert_eq!(Subscription::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn groups_keep_order_and_first_occurrence() {
        let g = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            dedup_groups(&g(&["b", "a", "b", "c", "a", "B"])),
            g(&["b", "a", "c", "B"])
        );
        assert!(dedup_groups(&[]).is_empty());
    }
}
