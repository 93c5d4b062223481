//! In-memory stores: fast, ephemeral, and the reference behaviour for the
//! conformance suite.
//!
//! One [`MemoryBackend`] holds every account together with all of its data (roster,
//! pending subscriptions, offline messages, user data) in one record behind one lock:
//! deleting the account drops the record, so everything of it goes at once, and a write
//! for an account without a record is refused with [`StorageError::NotFound`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{
    check_data_size, dedup_groups, validate_credentials, AccountStore, ArchiveBound, ArchiveEntry,
    ArchiveFilter, ArchivePage, ArchiveQuery, ArchiveStore, HashAlg, OfflineStore, PageRequest,
    RoomStore, Roster, RosterItem, RosterStore, ScramCredentials, Storage, StorageError,
    UserDataStore,
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
        // The record holds everything of the account: it all goes at once.
        Ok(self
            .state
            .write()
            .accounts
            .remove(&key(domain, username))
            .is_some())
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
