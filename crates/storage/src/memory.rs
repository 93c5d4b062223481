//! In-memory stores: fast, ephemeral, and the reference behaviour for the
//! conformance suite.
//!
//! One [`MemoryBackend`] holds every account together with all of its data (roster,
//! pending subscriptions, offline messages, user data, archive, PEP service) in one record
//! behind one lock: deleting the account drops the record, so everything of it goes at
//! once, and a write for an account without a record is refused with
//! [`StorageError::NotFound`]. The PubSub affiliations and subscriptions the account's JIDs
//! hold on other services are removed under the same lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{
    check_data_size, dedup_groups, validate_credentials, AccountStore, ArchiveBound, ArchiveEntry,
    ArchiveFilter, ArchivePage, ArchiveQuery, ArchiveStore, HashAlg, HostDataStore, ItemPage,
    ItemRecord, ItemSelection, NodeRecord, OfflineStore, PageRequest, PubSubService, PubSubStore,
    Published, RoomStore, Roster, RosterItem, RosterStore, ScramCredentials, Storage, StorageError,
    SubscriptionRecord, UploadRecord, UploadStore, UserDataStore,
};

type Key = (String, String); // (domain, username): BTreeMap order = list order

/// Everything of one account.
#[derive(Debug, Default)]
struct Account {
    creds: HashMap<HashAlg, ScramCredentials>,
    roster_version: u64,
    roster: BTreeMap<String, RosterItem>,
    pending_in: BTreeMap<String, String>,
    offline: BTreeMap<i64, String>,
    /// (store, key) -> value
    data: BTreeMap<(String, String), String>,
    /// The message archive, in archive order.
    archive: Vec<ArchiveEntry>,
    /// The account's PEP service.
    pep: PubSub,
}

/// The nodes of one PubSub service.
#[derive(Debug, Default)]
struct PubSub {
    nodes: BTreeMap<String, Node>,
    /// Items held across all nodes, kept with every change (`max_service_items`).
    items: usize,
}

impl PubSub {
    /// How many subscriptions `jid` holds on the nodes of this service (`max_per_jid`).
    fn subscriptions_of(&self, jid: &str) -> usize {
        self.nodes
            .values()
            .map(|n| n.subscriptions.keys().filter(|(j, _)| j == jid).count())
            .sum()
    }

    /// Removes every affiliation and subscription held by `bare` or a full JID of it.
    fn forget(&mut self, bare: &str) {
        for n in self.nodes.values_mut() {
            n.affiliations.retain(|j, _| !is_jid_of(j, bare));
            n.subscriptions.retain(|(j, _), _| !is_jid_of(j, bare));
        }
    }
}

/// `jid` is `bare` or one of its full JIDs (`bare/...`).
fn is_jid_of(jid: &str, bare: &str) -> bool {
    jid.strip_prefix(bare)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One PubSub node.
#[derive(Debug, Default)]
struct Node {
    config: String,
    /// Items by publication sequence number: iterated backwards, newest first.
    items: BTreeMap<u64, ItemRecord>,
    /// Item id -> its sequence number in `items`.
    ids: HashMap<String, u64>,
    /// JID -> affiliation (`none` is absence).
    affiliations: BTreeMap<String, String>,
    /// (jid, subid) -> subscription: BTreeMap order = list order.
    subscriptions: BTreeMap<(String, String), SubscriptionRecord>,
}

impl Node {
    /// The position of an item in the newest-first list, or NotFound.
    fn position(&self, id: &str) -> Result<usize, StorageError> {
        let seq = self.ids.get(id).ok_or(StorageError::NotFound)?;
        Ok(self.items.range(seq + 1..).count())
    }
}

#[derive(Debug, Default)]
struct State {
    accounts: BTreeMap<Key, Account>,
    /// The last offline message id handed out (ids are never reused).
    last_offline_id: i64,
    /// MUC rooms: (service, room) -> document. Not an account's: kept apart.
    rooms: BTreeMap<(String, String), String>,
    /// MUC room archives: (service, room) -> entries in archive order.
    room_archives: BTreeMap<(String, String), Vec<ArchiveEntry>>,
    /// PubSub service domains (not accounts': those are in [`Account::pep`]). A service is
    /// created with its first node and dropped with its last.
    pubsub: BTreeMap<String, PubSub>,
    /// The last PubSub item sequence number handed out (publication order, all services).
    last_pubsub_seq: u64,
    /// Upload records by id; an account's go with it (under the same lock).
    uploads: BTreeMap<String, UploadRecord>,
    /// Per-host values: (domain, key) -> value. Not an account's: kept apart.
    host_data: BTreeMap<(String, String), String>,
}

impl State {
    /// The archive of an owner to write to: an account's must exist; a room's is created.
    fn archive_mut(
        &mut self,
        rooms: bool,
        domain: &str,
        user: &str,
    ) -> Result<&mut Vec<ArchiveEntry>, StorageError> {
        if rooms {
            Ok(self.room_archives.entry(key(domain, user)).or_default())
        } else {
            Ok(&mut self.get_mut(domain, user)?.archive)
        }
    }

    /// The archive of an owner to read; none is empty.
    fn archive_of(&self, rooms: bool, domain: &str, user: &str) -> &[ArchiveEntry] {
        if rooms {
            self.room_archives
                .get(&key(domain, user))
                .map_or(&[][..], |a| &a[..])
        } else {
            self.get(domain, user).map_or(&[][..], |a| &a.archive[..])
        }
    }
}

/// The lock is never held across an await (no store method awaits while holding it).
type Shared = Arc<RwLock<State>>;

/// One in-memory database; its stores share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    state: Shared,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The trait objects backed by this database.
    pub fn storage(&self) -> Storage {
        Storage {
            accounts: Arc::new(self.account_store()),
            roster: Arc::new(self.roster_store()),
            offline: Arc::new(self.offline_store()),
            user_data: Arc::new(self.user_data_store()),
            archive: Arc::new(self.archive_store()),
            rooms: Arc::new(self.room_store()),
            room_archive: Arc::new(self.room_archive_store()),
            pubsub: Arc::new(self.pubsub_store()),
            upload: Arc::new(MemoryUploadStore {
                state: self.state.clone(),
            }),
            host_data: Arc::new(MemoryHostDataStore {
                state: self.state.clone(),
            }),
        }
    }

    /// The PubSub store (also available as `storage().pubsub`).
    pub fn pubsub_store(&self) -> MemoryPubSubStore {
        MemoryPubSubStore {
            state: self.state.clone(),
        }
    }

    /// The archives of MUC rooms (also available as `storage().room_archive`).
    pub fn room_archive_store(&self) -> MemoryArchiveStore {
        MemoryArchiveStore {
            state: self.state.clone(),
            rooms: true,
        }
    }

    pub fn room_store(&self) -> MemoryRoomStore {
        MemoryRoomStore {
            state: self.state.clone(),
        }
    }

    pub fn archive_store(&self) -> MemoryArchiveStore {
        MemoryArchiveStore {
            state: self.state.clone(),
            rooms: false,
        }
    }

    pub fn account_store(&self) -> MemoryAccountStore {
        MemoryAccountStore {
            state: self.state.clone(),
        }
    }

    pub fn roster_store(&self) -> MemoryRosterStore {
        MemoryRosterStore {
            state: self.state.clone(),
        }
    }

    pub fn offline_store(&self) -> MemoryOfflineStore {
        MemoryOfflineStore {
            state: self.state.clone(),
        }
    }

    pub fn user_data_store(&self) -> MemoryUserDataStore {
        MemoryUserDataStore {
            state: self.state.clone(),
        }
    }
}

/// [`AccountStore`] kept in a map behind a lock (never held across an await).
#[derive(Debug, Default)]
pub struct MemoryAccountStore {
    state: Shared,
}

impl MemoryAccountStore {
    /// A store with its own, fresh database (use [`MemoryBackend`] to share one).
    pub fn new() -> Self {
        Self::default()
    }
}

/// [`RosterStore`] of a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryRosterStore {
    state: Shared,
}

/// [`OfflineStore`] of a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryOfflineStore {
    state: Shared,
}

/// [`UserDataStore`] of a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryUserDataStore {
    state: Shared,
}

/// [`HostDataStore`] of a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryHostDataStore {
    state: Shared,
}

#[async_trait::async_trait]
impl HostDataStore for MemoryHostDataStore {
    async fn get_host_data(&self, domain: &str, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .state
            .read()
            .host_data
            .get(&(domain.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn set_host_data(
        &self,
        domain: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(value, max_bytes)?;
        let k = (domain.to_owned(), key.to_owned());
        let mut s = self.state.write();
        match value {
            Some(v) => {
                s.host_data.insert(k, v.to_owned());
            }
            None => {
                s.host_data.remove(&k);
            }
        }
        Ok(())
    }
}

/// [`RoomStore`] of a [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryRoomStore {
    state: Shared,
}

#[async_trait::async_trait]
impl RoomStore for MemoryRoomStore {
    async fn get_room(&self, service: &str, room: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .state
            .read()
            .rooms
            .get(&(service.to_owned(), room.to_owned()))
            .cloned())
    }

    async fn set_room(
        &self,
        service: &str,
        room: &str,
        state: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(state, max_bytes)?;
        let k = (service.to_owned(), room.to_owned());
        let mut s = self.state.write();
        match state {
            Some(v) => {
                s.rooms.insert(k, v.to_owned());
            }
            None => {
                s.rooms.remove(&k);
            }
        }
        Ok(())
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>, StorageError> {
        Ok(self
            .state
            .read()
            .rooms
            .range((service.to_owned(), String::new())..)
            .take_while(|((s, _), _)| s == service)
            .map(|((_, r), v)| (r.clone(), v.clone()))
            .collect())
    }
}

/// [`ArchiveStore`] of a [`MemoryBackend`]. Queries scan the archive (fine for tests and
/// small ephemeral servers; the SQLite backend uses indexes).
#[derive(Debug)]
pub struct MemoryArchiveStore {
    state: Shared,
    /// The archives of rooms rather than of accounts.
    rooms: bool,
}

fn key(domain: &str, username: &str) -> Key {
    (domain.to_owned(), username.to_owned())
}

fn to_map(creds: &[ScramCredentials]) -> HashMap<HashAlg, ScramCredentials> {
    creds.iter().map(|c| (c.hash, c.clone())).collect()
}

impl State {
    fn get(&self, domain: &str, user: &str) -> Option<&Account> {
        self.accounts.get(&key(domain, user))
    }

    /// The account to write to, or NotFound.
    fn get_mut(&mut self, domain: &str, user: &str) -> Result<&mut Account, StorageError> {
        self.accounts
            .get_mut(&key(domain, user))
            .ok_or(StorageError::NotFound)
    }
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
        let mut state = self.state.write();
        match state.accounts.entry(key(domain, username)) {
            std::collections::btree_map::Entry::Occupied(_) => Err(StorageError::AlreadyExists),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Account {
                    creds: to_map(creds),
                    ..Account::default()
                });
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
        self.state.write().get_mut(domain, username)?.creds = to_map(creds);
        Ok(())
    }

    async fn get_credentials(
        &self,
        domain: &str,
        username: &str,
        hash: HashAlg,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, username)
            .and_then(|a| a.creds.get(&hash))
            .cloned())
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        Ok(self.state.read().get(domain, username).is_some())
    }

    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        // The record holds everything of the account (its PEP service too): it all goes at
        // once. What its JIDs hold on other PubSub services goes under the same lock.
        let mut state = self.state.write();
        if state.accounts.remove(&key(domain, username)).is_none() {
            return Ok(false);
        }
        let bare = format!("{username}@{domain}");
        for a in state.accounts.values_mut() {
            a.pep.forget(&bare);
        }
        for p in state.pubsub.values_mut() {
            p.forget(&bare);
        }
        state
            .uploads
            .retain(|_, r| !(r.domain == domain && r.user == username));
        Ok(true)
    }

    async fn list_accounts(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let state = self.state.read();
        Ok(state
            .accounts
            .keys()
            .filter(|(d, _)| match domain {
                Some(want) => want == d,
                None => true,
            })
            .map(|(d, u)| (u.clone(), d.clone()))
            .collect())
    }
}

/// [`UploadStore`] in memory.
#[derive(Debug, Clone)]
pub struct MemoryUploadStore {
    state: Shared,
}

#[async_trait::async_trait]
impl UploadStore for MemoryUploadStore {
    async fn add_upload(
        &self,
        record: &UploadRecord,
        since: i64,
        quota: u64,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        state
            .get(&record.domain, &record.user)
            .ok_or(StorageError::NotFound)?;
        if state.uploads.contains_key(&record.id) {
            return Err(StorageError::AlreadyExists);
        }
        let used: u64 = state
            .uploads
            .values()
            .filter(|r| r.domain == record.domain && r.user == record.user && r.created >= since)
            .map(|r| r.size)
            .sum();
        if used.saturating_add(record.size) > quota {
            return Err(StorageError::LimitReached(format!(
                "{used} of {quota} bytes used"
            )));
        }
        state.uploads.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError> {
        Ok(self.state.read().uploads.get(id).cloned())
    }

    async fn recent_uploads(
        &self,
        domain: &str,
        user: &str,
        since: i64,
    ) -> Result<Vec<(i64, u64)>, StorageError> {
        let state = self.state.read();
        let mut v: Vec<(i64, u64)> = state
            .uploads
            .values()
            .filter(|r| r.domain == domain && r.user == user && r.created >= since)
            .map(|r| (r.created, r.size))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError> {
        Ok(self.state.write().uploads.remove(id).is_some())
    }

    async fn expire_uploads(&self, before: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        let mut state = self.state.write();
        let mut old: Vec<(i64, String)> = state
            .uploads
            .values()
            .filter(|r| r.created < before)
            .map(|r| (r.created, r.id.clone()))
            .collect();
        old.sort_unstable();
        old.truncate(limit);
        for (_, id) in &old {
            state.uploads.remove(id);
        }
        Ok(old.into_iter().map(|(_, id)| id).collect())
    }
}

#[async_trait::async_trait]
impl RosterStore for MemoryRosterStore {
    async fn roster(&self, domain: &str, user: &str) -> Result<Roster, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .map(|a| Roster {
                version: a.roster_version,
                items: a.roster.values().cloned().collect(),
            })
            .unwrap_or_default())
    }

    async fn roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .and_then(|a| a.roster.get(contact))
            .cloned())
    }

    async fn set_roster_item(
        &self,
        domain: &str,
        user: &str,
        item: &RosterItem,
        max_items: usize,
    ) -> Result<u64, StorageError> {
        let item = RosterItem {
            groups: dedup_groups(&item.groups),
            ..item.clone()
        };
        let mut state = self.state.write();
        let account = state.get_mut(domain, user)?;
        if !account.roster.contains_key(&item.jid) && account.roster.len() >= max_items {
            return Err(StorageError::LimitReached(format!(
                "roster has {} items (limit {max_items})",
                account.roster.len()
            )));
        }
        account.roster.insert(item.jid.clone(), item);
        account.roster_version += 1;
        Ok(account.roster_version)
    }

    async fn remove_roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<u64>, StorageError> {
        let mut state = self.state.write();
        let account = state.get_mut(domain, user)?;
        if account.roster.remove(contact).is_none() {
            return Ok(None);
        }
        account.roster_version += 1;
        Ok(Some(account.roster_version))
    }

    async fn add_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        self.state
            .write()
            .get_mut(domain, user)?
            .pending_in
            .insert(contact.to_owned(), stanza.to_owned());
        Ok(())
    }

    async fn remove_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<bool, StorageError> {
        Ok(self
            .state
            .write()
            .get_mut(domain, user)?
            .pending_in
            .remove(contact)
            .is_some())
    }

    async fn pending_in(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .map(|a| {
                a.pending_in
                    .iter()
                    .map(|(c, s)| (c.clone(), s.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait::async_trait]
impl OfflineStore for MemoryOfflineStore {
    async fn push_offline(
        &self,
        domain: &str,
        user: &str,
        stanza: &str,
        max_messages: usize,
    ) -> Result<Option<i64>, StorageError> {
        let mut state = self.state.write();
        let next = state
            .last_offline_id
            .checked_add(1)
            .ok_or_else(|| StorageError::Backend("offline message ids exhausted".into()))?;
        let account = state.get_mut(domain, user)?;
        if account.offline.len() >= max_messages {
            return Ok(None);
        }
        account.offline.insert(next, stanza.to_owned());
        state.last_offline_id = next;
        Ok(Some(next))
    }

    async fn peek_offline(
        &self,
        domain: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .map(|a| {
                a.offline
                    .iter()
                    .take(limit)
                    .map(|(id, s)| (*id, s.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn remove_offline(
        &self,
        domain: &str,
        user: &str,
        ids: &[i64],
    ) -> Result<usize, StorageError> {
        let mut state = self.state.write();
        let account = state.get_mut(domain, user)?;
        Ok(ids
            .iter()
            .filter(|id| account.offline.remove(id).is_some())
            .count())
    }

    async fn count_offline(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        Ok(self
            .state
            .read()
            .get(domain, user)
            .map_or(0, |a| a.offline.len()))
    }
}

#[async_trait::async_trait]
impl UserDataStore for MemoryUserDataStore {
    async fn get_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
    ) -> Result<Option<String>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .and_then(|a| a.data.get(&(store.to_owned(), key.to_owned())))
            .cloned())
    }

    async fn set_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(value, max_bytes)?;
        let mut state = self.state.write();
        let data = &mut state.get_mut(domain, user)?.data;
        let k = (store.to_owned(), key.to_owned());
        match value {
            Some(v) => {
                data.insert(k, v.to_owned());
            }
            None => {
                data.remove(&k);
            }
        }
        Ok(())
    }

    async fn data_keys(
        &self,
        domain: &str,
        user: &str,
        store: &str,
    ) -> Result<Vec<String>, StorageError> {
        let state = self.state.read();
        Ok(state
            .get(domain, user)
            .map(|a| {
                a.data
                    .range((store.to_owned(), String::new())..)
                    .take_while(|((s, _), _)| s == store)
                    .map(|((_, k), _)| k.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Position of the entry with `id`, or NotFound.
fn position(archive: &[ArchiveEntry], id: &str) -> Result<usize, StorageError> {
    archive
        .iter()
        .position(|e| e.id == id)
        .ok_or(StorageError::NotFound)
}

/// Positions (in archive order) of the entries `filter` selects.
fn select(archive: &[ArchiveEntry], filter: &ArchiveFilter) -> Result<Vec<usize>, StorageError> {
    let after = filter
        .after_id
        .as_deref()
        .map(|id| position(archive, id))
        .transpose()?;
    let before = filter
        .before_id
        .as_deref()
        .map(|id| position(archive, id))
        .transpose()?;
    let ids = match &filter.ids {
        Some(ids) => {
            let mut set = std::collections::HashSet::with_capacity(ids.len());
            for id in ids {
                set.insert(position(archive, id)?);
            }
            Some(set)
        }
        None => None,
    };
    Ok(archive
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            after.map_or(true, |a| *i > a)
                && before.map_or(true, |b| *i < b)
                && ids.as_ref().map_or(true, |s| s.contains(i))
                && filter.start_us.map_or(true, |t| e.timestamp_us >= t)
                && filter.end_us.map_or(true, |t| e.timestamp_us <= t)
                && filter.with.as_ref().map_or(true, |w| {
                    e.with_bare == w.bare
                        && w.resource.as_ref().map_or(true, |r| *r == e.with_resource)
                })
        })
        .map(|(i, _)| i)
        .collect())
}

#[async_trait::async_trait]
impl ArchiveStore for MemoryArchiveStore {
    async fn append_archive(
        &self,
        domain: &str,
        user: &str,
        entry: &ArchiveEntry,
    ) -> Result<i64, StorageError> {
        let mut state = self.state.write();
        let archive = state.archive_mut(self.rooms, domain, user)?;
        if archive.iter().any(|e| e.id == entry.id) {
            return Err(StorageError::AlreadyExists);
        }
        let timestamp_us = archive.last().map_or(entry.timestamp_us, |l| {
            l.timestamp_us.max(entry.timestamp_us)
        });
        archive.push(ArchiveEntry {
            timestamp_us,
            ..entry.clone()
        });
        Ok(timestamp_us)
    }

    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        query: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        let state = self.state.read();
        let archive = state.archive_of(self.rooms, domain, user);
        let set = select(archive, &query.filter)?;
        // The page's bounds as indexes into `set`.
        let (from, to) = match &query.page {
            PageRequest::First => (0, set.len().min(query.max)),
            PageRequest::Last => (set.len().saturating_sub(query.max), set.len()),
            PageRequest::After(id) => {
                let p = position(archive, id)?;
                let from = set.partition_point(|i| *i <= p);
                (from, set.len().min(from + query.max))
            }
            PageRequest::Before(id) => {
                let p = position(archive, id)?;
                let to = set.partition_point(|i| *i < p);
                (to.saturating_sub(query.max), to)
            }
        };
        let complete = if query.page.is_backwards() {
            from == 0
        } else {
            to == set.len()
        };
        Ok(ArchivePage {
            entries: set[from..to].iter().map(|i| archive[*i].clone()).collect(),
            count: set.len(),
            first_index: (from < to).then_some(from),
            complete,
        })
    }

    async fn archive_bounds(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Option<(ArchiveBound, ArchiveBound)>, StorageError> {
        let state = self.state.read();
        let bound = |e: &ArchiveEntry| ArchiveBound {
            id: e.id.clone(),
            timestamp_us: e.timestamp_us,
        };
        let archive = state.archive_of(self.rooms, domain, user);
        Ok(archive
            .first()
            .zip(archive.last())
            .map(|(f, l)| (bound(f), bound(l))))
    }

    async fn purge_archive(&self, before_us: i64, limit: usize) -> Result<usize, StorageError> {
        let mut state = self.state.write();
        let state = &mut *state;
        let archives: Vec<&mut Vec<ArchiveEntry>> = if self.rooms {
            state.room_archives.values_mut().collect()
        } else {
            state
                .accounts
                .values_mut()
                .map(|a| &mut a.archive)
                .collect()
        };
        let mut purged = 0;
        for archive in archives {
            if purged == limit {
                break;
            }
            // Timestamps never decrease within an archive: the old entries are a prefix.
            let old = archive
                .partition_point(|e| e.timestamp_us < before_us)
                .min(limit - purged);
            archive.drain(..old);
            purged += old;
        }
        if self.rooms {
            state.room_archives.retain(|_, a| !a.is_empty());
        }
        Ok(purged)
    }

    async fn replace_archived(
        &self,
        domain: &str,
        user: &str,
        id: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        let archive = if self.rooms {
            state
                .room_archives
                .get_mut(&key(domain, user))
                .ok_or(StorageError::NotFound)?
        } else {
            &mut state.get_mut(domain, user)?.archive
        };
        let p = position(archive, id)?;
        archive[p].stanza = stanza.to_owned();
        Ok(())
    }

    async fn delete_archive(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        let mut state = self.state.write();
        if self.rooms {
            Ok(state
                .room_archives
                .remove(&key(domain, user))
                .map_or(0, |a| a.len()))
        } else {
            Ok(state
                .get_mut(domain, user)
                .map(|a| std::mem::take(&mut a.archive).len())
                .unwrap_or(0))
        }
    }

    async fn count_archived(&self) -> Result<Option<u64>, StorageError> {
        let state = self.state.read();
        let n: usize = if self.rooms {
            state.room_archives.values().map(Vec::len).sum()
        } else {
            state.accounts.values().map(|a| a.archive.len()).sum()
        };
        Ok(Some(n as u64))
    }
}

/// [`PubSubStore`] of a [`MemoryBackend`]: an account's PEP service lives in its record,
/// service domains in [`State::pubsub`].
#[derive(Debug)]
pub struct MemoryPubSubStore {
    state: Shared,
}

impl State {
    /// A service to read; None for an account that doesn't exist or a domain without nodes.
    fn pubsub(&self, service: PubSubService<'_>) -> Option<&PubSub> {
        match service {
            PubSubService::Account { domain, user } => self.get(domain, user).map(|a| &a.pep),
            PubSubService::Domain(d) => self.pubsub.get(d),
        }
    }

    fn pubsub_node(&self, service: PubSubService<'_>, node: &str) -> Option<&Node> {
        self.pubsub(service).and_then(|p| p.nodes.get(node))
    }

    /// A service to write to: NotFound for an account that doesn't exist, None for a domain
    /// without nodes.
    fn pubsub_write(
        &mut self,
        service: PubSubService<'_>,
    ) -> Result<Option<&mut PubSub>, StorageError> {
        match service {
            PubSubService::Account { domain, user } => {
                Ok(Some(&mut self.get_mut(domain, user)?.pep))
            }
            PubSubService::Domain(d) => Ok(self.pubsub.get_mut(d)),
        }
    }

    /// A node to write to: NotFound for a missing account or node.
    fn pubsub_node_mut(
        &mut self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<&mut Node, StorageError> {
        self.pubsub_write(service)?
            .and_then(|p| p.nodes.get_mut(node))
            .ok_or(StorageError::NotFound)
    }

    /// Creates a node (with a domain service on its first node).
    fn create_pubsub_node(
        &mut self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
        owner: &str,
        max_nodes: usize,
    ) -> Result<(), StorageError> {
        let p = match service {
            PubSubService::Account { domain, user } => &mut self.get_mut(domain, user)?.pep,
            PubSubService::Domain(d) => self.pubsub.entry(d.to_owned()).or_default(),
        };
        if p.nodes.contains_key(node) {
            return Err(StorageError::AlreadyExists);
        }
        if p.nodes.len() >= max_nodes {
            return Err(StorageError::LimitReached(format!(
                "service has {} nodes (limit {max_nodes})",
                p.nodes.len()
            )));
        }
        p.nodes.insert(
            node.to_owned(),
            Node {
                config: config.to_owned(),
                affiliations: BTreeMap::from([(owner.to_owned(), "owner".to_owned())]),
                ..Node::default()
            },
        );
        Ok(())
    }

    /// Drops a domain service without nodes, so services don't pile up as nodes come and go.
    fn drop_empty_pubsub(&mut self, service: PubSubService<'_>) {
        if let PubSubService::Domain(d) = service {
            if self.pubsub.get(d).is_some_and(|p| p.nodes.is_empty()) {
                self.pubsub.remove(d);
            }
        }
    }
}

/// A page of a node's items (`node` None: an unknown node, which has none).
fn select_items(
    node: Option<&Node>,
    selection: ItemSelection<'_>,
) -> Result<ItemPage, StorageError> {
    let Some(n) = node else {
        return match selection {
            ItemSelection::Page { after: Some(_), .. }
            | ItemSelection::Page {
                before: Some(_), ..
            } => Err(StorageError::NotFound),
            _ => Ok(ItemPage::default()),
        };
    };
    let count = n.items.len();
    match selection {
        ItemSelection::Ids(ids) => {
            let mut first_index = None;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(seq) = n.ids.get(id) else { continue };
                if first_index.is_none() {
                    first_index = Some(n.position(id)?);
                }
                if let Some(item) = n.items.get(seq) {
                    items.push(item.clone());
                }
            }
            Ok(ItemPage {
                items,
                count,
                first_index: first_index.unwrap_or(0),
            })
        }
        ItemSelection::Page { after, before, max } => {
            // Bounds in the newest-first list: the page lies in lo..hi.
            let lo = after
                .map(|a| n.position(a))
                .transpose()?
                .map_or(0, |p| p + 1);
            let hi = before.map(|b| n.position(b)).transpose()?;
            let (from, len) = match hi {
                // The `max` items just newer than `before` (and older than `after`).
                Some(hi) => {
                    let len = hi.saturating_sub(hi.saturating_sub(max).max(lo));
                    (hi - len, len)
                }
                None => (lo, max.min(count.saturating_sub(lo))),
            };
            Ok(ItemPage {
                items: n
                    .items
                    .values()
                    .rev()
                    .skip(from)
                    .take(len)
                    .cloned()
                    .collect(),
                count,
                first_index: from,
            })
        }
        ItemSelection::Oldest { max } => {
            let from = count.saturating_sub(max);
            Ok(ItemPage {
                items: n.items.values().rev().skip(from).cloned().collect(),
                count,
                first_index: from,
            })
        }
    }
}

#[async_trait::async_trait]
impl PubSubStore for MemoryPubSubStore {
    async fn get_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Option<NodeRecord>, StorageError> {
        Ok(self
            .state
            .read()
            .pubsub_node(service, node)
            .map(|n| NodeRecord {
                node: node.to_owned(),
                config: n.config.clone(),
            }))
    }

    async fn list_nodes(
        &self,
        service: PubSubService<'_>,
    ) -> Result<Vec<NodeRecord>, StorageError> {
        let state = self.state.read();
        Ok(state
            .pubsub(service)
            .map(|p| {
                p.nodes
                    .iter()
                    .map(|(name, n)| NodeRecord {
                        node: name.clone(),
                        config: n.config.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn create_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
        owner: &str,
        max_nodes: usize,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        let created = state.create_pubsub_node(service, node, config, owner, max_nodes);
        if created.is_err() {
            state.drop_empty_pubsub(service);
        }
        created
    }

    async fn set_node_config(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
    ) -> Result<(), StorageError> {
        self.state.write().pubsub_node_mut(service, node)?.config = config.to_owned();
        Ok(())
    }

    async fn delete_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<bool, StorageError> {
        let mut state = self.state.write();
        let Some(p) = state.pubsub_write(service)? else {
            return Ok(false);
        };
        let Some(n) = p.nodes.remove(node) else {
            return Ok(false);
        };
        p.items -= n.items.len();
        state.drop_empty_pubsub(service);
        Ok(true)
    }

    async fn publish_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        item: &ItemRecord,
        max_items: usize,
        max_service_items: usize,
    ) -> Result<Published, StorageError> {
        let mut state = self.state.write();
        let seq = state
            .last_pubsub_seq
            .checked_add(1)
            .ok_or_else(|| StorageError::Backend("PubSub item sequence exhausted".into()))?;
        let p = state.pubsub_write(service)?.ok_or(StorageError::NotFound)?;
        let n = p.nodes.get_mut(node).ok_or(StorageError::NotFound)?;
        let replaced = n.ids.contains_key(&item.id);
        // What the node and the service hold once the item is in and the oldest are out.
        let held = n.items.len() - usize::from(replaced) + 1;
        let evict = held.saturating_sub(max_items.max(1));
        let service_items = p.items + 1 - usize::from(replaced) - evict;
        if service_items > max_service_items {
            return Err(StorageError::LimitReached(format!(
                "service would hold {service_items} items (limit {max_service_items})"
            )));
        }
        if let Some(old) = n.ids.remove(&item.id) {
            n.items.remove(&old);
        }
        n.items.insert(seq, item.clone());
        n.ids.insert(item.id.clone(), seq);
        let mut evicted = Vec::with_capacity(evict);
        for _ in 0..evict {
            if let Some((_, old)) = n.items.pop_first() {
                n.ids.remove(&old.id);
                evicted.push(old.id);
            }
        }
        p.items = service_items;
        state.last_pubsub_seq = seq;
        Ok(Published { replaced, evicted })
    }

    async fn get_items(
        &self,
        service: PubSubService<'_>,
        node: &str,
        selection: ItemSelection<'_>,
    ) -> Result<ItemPage, StorageError> {
        select_items(self.state.read().pubsub_node(service, node), selection)
    }

    async fn retract_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageError> {
        let mut state = self.state.write();
        let Some(p) = state.pubsub_write(service)? else {
            return Ok(false);
        };
        let Some(n) = p.nodes.get_mut(node) else {
            return Ok(false);
        };
        let Some(seq) = n.ids.remove(id) else {
            return Ok(false);
        };
        n.items.remove(&seq);
        p.items -= 1;
        Ok(true)
    }

    async fn purge_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<usize, StorageError> {
        let mut state = self.state.write();
        let Some(p) = state.pubsub_write(service)? else {
            return Ok(0);
        };
        let Some(n) = p.nodes.get_mut(node) else {
            return Ok(0);
        };
        let purged = std::mem::take(&mut n.items).len();
        n.ids.clear();
        p.items -= purged;
        Ok(purged)
    }

    async fn set_affiliation(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        let affiliations = &mut state.pubsub_node_mut(service, node)?.affiliations;
        match affiliation {
            Some(a) => {
                affiliations.insert(jid.to_owned(), a.to_owned());
            }
            None => {
                affiliations.remove(jid);
            }
        }
        Ok(())
    }

    async fn affiliations(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        Ok(self
            .state
            .read()
            .pubsub_node(service, node)
            .map(|n| {
                n.affiliations
                    .iter()
                    .map(|(j, a)| (j.clone(), a.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn affiliations_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let state = self.state.read();
        Ok(state
            .pubsub(service)
            .map(|p| {
                p.nodes
                    .iter()
                    .filter_map(|(name, n)| {
                        n.affiliations.get(jid).map(|a| (name.clone(), a.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        sub: &SubscriptionRecord,
        max_per_jid: usize,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        let p = state.pubsub_write(service)?.ok_or(StorageError::NotFound)?;
        let key = (sub.jid.clone(), sub.subid.clone());
        let exists = p
            .nodes
            .get(node)
            .ok_or(StorageError::NotFound)?
            .subscriptions
            .contains_key(&key);
        if !exists {
            let held = p.subscriptions_of(&sub.jid);
            if held >= max_per_jid {
                return Err(StorageError::LimitReached(format!(
                    "{} holds {held} subscriptions on the service (limit {max_per_jid})",
                    sub.jid
                )));
            }
        }
        if let Some(n) = p.nodes.get_mut(node) {
            n.subscriptions.insert(key, sub.clone());
        }
        Ok(())
    }

    async fn remove_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize, StorageError> {
        let mut state = self.state.write();
        let Some(n) = state
            .pubsub_write(service)?
            .and_then(|p| p.nodes.get_mut(node))
        else {
            return Ok(0);
        };
        let before = n.subscriptions.len();
        match subid {
            Some(subid) => {
                n.subscriptions.remove(&(jid.to_owned(), subid.to_owned()));
            }
            None => n.subscriptions.retain(|(j, _), _| j != jid),
        }
        Ok(before - n.subscriptions.len())
    }

    async fn subscriptions(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageError> {
        Ok(self
            .state
            .read()
            .pubsub_node(service, node)
            .map(|n| n.subscriptions.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn subscriptions_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
        include_full: bool,
    ) -> Result<Vec<(String, SubscriptionRecord)>, StorageError> {
        let state = self.state.read();
        let Some(p) = state.pubsub(service) else {
            return Ok(Vec::new());
        };
        let mut subs: Vec<(String, SubscriptionRecord)> = p
            .nodes
            .iter()
            .flat_map(|(name, n)| {
                n.subscriptions
                    .values()
                    .filter(|s| {
                        if include_full {
                            is_jid_of(&s.jid, jid)
                        } else {
                            s.jid == jid
                        }
                    })
                    .map(|s| (name.clone(), s.clone()))
            })
            .collect();
        // (node, subid), then jid: a bare JID and a full one may share a subid.
        subs.sort_by(|(an, a), (bn, b)| (an, &a.subid, &a.jid).cmp(&(bn, &b.subid, &b.jid)));
        Ok(subs)
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
        crate::conformance::all(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn storage_bundle_multi_thread() {
        let s = super::MemoryBackend::new().storage();
        crate::conformance::all(&s).await;
    }
}
