//! The instant-messaging stores on SQLite: rosters, pending inbound subscriptions,
//! offline messages and per-user documents (schema: `migrations/0002_im.sql`).
//!
//! Every write runs in one `BEGIN IMMEDIATE` transaction that first checks the owning
//! account exists (NotFound otherwise; the foreign keys back this up), so a check and the
//! write it guards (quota, item limit, version bump) can't be interleaved with another
//! writer, in this process or another one. Multi-statement reads run in one read
//! transaction so they see one snapshot. Every statement is prepared once per connection
//! (`prepare_cached`).

use rookery_storage::{
    check_data_size, dedup_groups, OfflineStore, Roster, RosterItem, RosterStore, StorageError,
    Subscription, UserDataStore,
};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::{backend, now_unix, read, run, Shared};

/// Errors of a read: a value of the wrong type or range is corrupt data.
pub(crate) fn read_err(e: rusqlite::Error) -> StorageError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StorageError::Corrupt(e.to_string()),
        other => backend(other),
    }
}

/// Errors of a write: a foreign-key violation means the owner doesn't exist.
pub(crate) fn write_err(e: rusqlite::Error) -> StorageError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StorageError::NotFound
        }
        _ => backend(e),
    }
}

/// A write transaction (takes the database write lock at once, waiting `busy_timeout`).
pub(crate) fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, StorageError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)
}

/// A read transaction: the statements in it see one snapshot.
pub(crate) fn read_tx(conn: &mut Connection) -> Result<Transaction<'_>, StorageError> {
    conn.transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(backend)
}

/// NotFound unless the account exists.
pub(crate) fn require_account(
    conn: &Connection,
    domain: &str,
    user: &str,
) -> Result<(), StorageError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM accounts WHERE domain = ?1 AND username = ?2")
        .and_then(|mut s| s.exists(params![domain, user]))
        .map_err(backend)?;
    if exists {
        Ok(())
    } else {
        Err(StorageError::NotFound)
    }
}

pub(crate) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn count_from(n: i64) -> Result<usize, StorageError> {
    usize::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}

// ---------------------------------------------------------------------------------
// Rosters

/// [`RosterStore`] on SQLite (tables `roster_items`, `roster_groups`, `roster_versions`,
/// `roster_pending_in`).
#[derive(Clone)]
pub struct SqliteRosterStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteRosterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRosterStore").finish_non_exhaustive()
    }
}

fn version_from(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("roster version {v}")))
}

fn flag(v: i64, what: &str) -> Result<bool, StorageError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(StorageError::Corrupt(format!("{what} is {v}, not 0 or 1"))),
    }
}

/// An item (without its groups) from columns `contact, name, subscription, ask, approved`
/// starting at `first`.
fn item_from_row(row: &Row<'_>, first: usize) -> Result<RosterItem, StorageError> {
    let jid: String = row.get(first).map_err(read_err)?;
    let name: Option<String> = row.get(first + 1).map_err(read_err)?;
    let sub: String = row.get(first + 2).map_err(read_err)?;
    let subscription = Subscription::from_name(&sub).ok_or_else(|| {
        StorageError::Corrupt(format!("roster item {jid}: unknown subscription {sub:?}"))
    })?;
    let ask = flag(row.get(first + 3).map_err(read_err)?, "ask")?;
    let approved = flag(row.get(first + 4).map_err(read_err)?, "approved")?;
    Ok(RosterItem {
        jid,
        name,
        subscription,
        ask,
        approved,
        groups: Vec::new(),
    })
}

/// Give `items` (sorted by jid, byte order) their groups: one query for all of them.
fn attach_groups(
    conn: &Connection,
    domain: &str,
    user: &str,
    contact: Option<&str>,
    items: &mut [RosterItem],
) -> Result<(), StorageError> {
    // Two statements rather than `?3 IS NULL OR contact = ?3`, which would keep the
    // planner from seeking to the one contact.
    let (mut stmt, mut rows);
    match contact {
        None => {
            stmt = conn
                .prepare_cached(
                    "SELECT contact, name FROM roster_groups
                     WHERE domain = ?1 AND username = ?2 ORDER BY contact, position",
                )
                .map_err(backend)?;
            rows = stmt.query(params![domain, user]).map_err(backend)?;
        }
        Some(contact) => {
            stmt = conn
                .prepare_cached(
                    "SELECT contact, name FROM roster_groups
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3 ORDER BY position",
                )
                .map_err(backend)?;
            rows = stmt
                .query(params![domain, user, contact])
                .map_err(backend)?;
        }
    }
    // Rows come grouped by contact: remember the last item found.
    let mut at: Option<usize> = None;
    while let Some(row) = rows.next().map_err(backend)? {
        let contact: String = row.get(0).map_err(read_err)?;
        let group: String = row.get(1).map_err(read_err)?;
        let i = match at {
            Some(i) if items[i].jid == contact => i,
            _ => items
                .binary_search_by(|it| it.jid.as_str().cmp(&contact))
                .map_err(|_| {
                    StorageError::Corrupt(format!(
                        "roster group {group:?} of a missing item {contact}"
                    ))
                })?,
        };
        at = Some(i);
        items[i].groups.push(group);
    }
    Ok(())
}

/// Add one to the user's roster version, returning the new one (same transaction as the
/// change it versions).
fn bump_version(tx: &Transaction<'_>, domain: &str, user: &str) -> Result<u64, StorageError> {
    let v: i64 = tx
        .prepare_cached(
            "INSERT INTO roster_versions (domain, username, version) VALUES (?1, ?2, 1)
             ON CONFLICT (domain, username) DO UPDATE SET version = version + 1
             RETURNING version",
        )
        .and_then(|mut s| s.query_row(params![domain, user], |r| r.get(0)))
        .map_err(write_err)?;
    version_from(v)
}

#[async_trait::async_trait]
impl RosterStore for SqliteRosterStore {
    async fn roster(&self, domain: &str, user: &str) -> Result<Roster, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        read(&self.conn, move |conn| {
            let tx = read_tx(conn)?;
            // Query 1: the items in key order, each row carrying the version (a constant
            // subquery, evaluated once).
            let mut version = None;
            let mut items = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT contact, name, subscription, ask, approved,
                                (SELECT version FROM roster_versions
                                 WHERE domain = ?1 AND username = ?2)
                         FROM roster_items WHERE domain = ?1 AND username = ?2
                         ORDER BY contact",
                    )
                    .map_err(backend)?;
                let mut rows = stmt.query(params![domain, user]).map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    items.push(item_from_row(row, 0)?);
                    version = row.get::<_, Option<i64>>(5).map_err(read_err)?;
                }
            }
            let version = if items.is_empty() {
                // Query 2 of an empty roster: just its version.
                tx.prepare_cached(
                    "SELECT version FROM roster_versions WHERE domain = ?1 AND username = ?2",
                )
                .map_err(backend)?
                .query_row(params![domain, user], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(read_err)?
            } else {
                // Query 2: every group of every item.
                attach_groups(&tx, &domain, &user, None, &mut items)?;
                version
            };
            let version = version.map_or(Ok(0), version_from)?;
            tx.commit().map_err(backend)?;
            Ok(Roster { version, items })
        })
        .await
    }

    async fn roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let (domain, user, contact) = (domain.to_owned(), user.to_owned(), contact.to_owned());
        run(&self.conn, move |conn| {
            let tx = read_tx(conn)?;
            let item = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT contact, name, subscription, ask, approved FROM roster_items
                         WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                    )
                    .map_err(backend)?;
                let mut rows = stmt
                    .query(params![domain, user, contact])
                    .map_err(backend)?;
                match rows.next().map_err(backend)? {
                    Some(row) => item_from_row(row, 0)?,
                    None => return Ok(None),
                }
            };
            let mut items = [item];
            attach_groups(&tx, &domain, &user, Some(&contact), &mut items)?;
            tx.commit().map_err(backend)?;
            let [item] = items;
            Ok(Some(item))
        })
        .await
    }

    async fn set_roster_item(
        &self,
        domain: &str,
        user: &str,
        item: &RosterItem,
        max_items: usize,
    ) -> Result<u64, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        let item = RosterItem {
            groups: dedup_groups(&item.groups),
            ..item.clone()
        };
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            let exists = tx
                .prepare_cached(
                    "SELECT 1 FROM roster_items
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                )
                .and_then(|mut s| s.exists(params![domain, user, item.jid]))
                .map_err(backend)?;
            if exists {
                tx.prepare_cached(
                    "DELETE FROM roster_groups
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                )
                .and_then(|mut s| s.execute(params![domain, user, item.jid]))
                .map_err(backend)?;
            } else {
                let count: i64 = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM roster_items WHERE domain = ?1 AND username = ?2",
                    )
                    .and_then(|mut s| s.query_row(params![domain, user], |r| r.get(0)))
                    .map_err(backend)?;
                if count_from(count)? >= max_items {
                    return Err(StorageError::LimitReached(format!(
                        "roster has {count} items (limit {max_items})"
                    )));
                }
            }
            tx.prepare_cached(
                "INSERT INTO roster_items
                     (domain, username, contact, name, subscription, ask, approved)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (domain, username, contact) DO UPDATE SET
                     name = excluded.name, subscription = excluded.subscription,
                     ask = excluded.ask, approved = excluded.approved",
            )
            .and_then(|mut s| {
                s.execute(params![
                    domain,
                    user,
                    item.jid,
                    item.name,
                    item.subscription.as_str(),
                    item.ask,
                    item.approved
                ])
            })
            .map_err(write_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO roster_groups (domain, username, contact, position, name)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(backend)?;
                for (pos, group) in item.groups.iter().enumerate() {
                    stmt.execute(params![domain, user, item.jid, to_i64(pos), group])
                        .map_err(write_err)?;
                }
            }
            let version = bump_version(&tx, &domain, &user)?;
            tx.commit().map_err(backend)?;
            Ok(version)
        })
        .await
    }

    async fn remove_roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<u64>, StorageError> {
        let (domain, user, contact) = (domain.to_owned(), user.to_owned(), contact.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            // Its groups go with it (ON DELETE CASCADE).
            let removed = tx
                .prepare_cached(
                    "DELETE FROM roster_items
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                )
                .and_then(|mut s| s.execute(params![domain, user, contact]))
                .map_err(backend)?;
            let version = if removed > 0 {
                Some(bump_version(&tx, &domain, &user)?)
            } else {
                None
            };
            tx.commit().map_err(backend)?;
            Ok(version)
        })
        .await
    }

    async fn add_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let (domain, user, contact, stanza) = (
            domain.to_owned(),
            user.to_owned(),
            contact.to_owned(),
            stanza.to_owned(),
        );
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            tx.prepare_cached(
                "INSERT INTO roster_pending_in (domain, username, contact, stanza)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (domain, username, contact) DO UPDATE SET stanza = excluded.stanza",
            )
            .and_then(|mut s| s.execute(params![domain, user, contact, stanza]))
            .map_err(write_err)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn remove_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<bool, StorageError> {
        let (domain, user, contact) = (domain.to_owned(), user.to_owned(), contact.to_owned());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            let removed = tx
                .prepare_cached(
                    "DELETE FROM roster_pending_in
                     WHERE domain = ?1 AND username = ?2 AND contact = ?3",
                )
                .and_then(|mut s| s.execute(params![domain, user, contact]))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn pending_in(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        read(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT contact, stanza FROM roster_pending_in
                     WHERE domain = ?1 AND username = ?2 ORDER BY contact",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![domain, user], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<(String, String)>, _>>()
                .map_err(read_err)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------
// Offline messages

/// [`OfflineStore`] on SQLite (table `offline_messages`).
#[derive(Clone)]
pub struct SqliteOfflineStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteOfflineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOfflineStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl OfflineStore for SqliteOfflineStore {
    async fn push_offline(
        &self,
        domain: &str,
        user: &str,
        stanza: &str,
        max_messages: usize,
    ) -> Result<Option<i64>, StorageError> {
        let (domain, user, stanza) = (domain.to_owned(), user.to_owned(), stanza.to_owned());
        run(&self.conn, move |conn| {
            // Quota check and insert under one write lock: concurrent pushes (from this
            // process or another) can't both see room for the last slot.
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            // Counting stops at the quota: the cost is bounded by it, not by the backlog.
            let stored: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM offline_messages
                                           WHERE domain = ?1 AND username = ?2 LIMIT ?3)",
                )
                .and_then(|mut s| {
                    s.query_row(params![domain, user, to_i64(max_messages)], |r| r.get(0))
                })
                .map_err(backend)?;
            if count_from(stored)? >= max_messages {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT INTO offline_messages (domain, username, stanza, stored_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![domain, user, stanza, now_unix()]))
            .map_err(write_err)?;
            let id = tx.last_insert_rowid();
            tx.commit().map_err(backend)?;
            Ok(Some(id))
        })
        .await
    }

    async fn peek_offline(
        &self,
        domain: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (domain, user) = (domain.to_owned(), user.to_owned());
        read(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, stanza FROM offline_messages
                     WHERE domain = ?1 AND username = ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![domain, user, to_i64(limit)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<(i64, String)>, _>>()
                .map_err(read_err)
        })
        .await
    }

    async fn remove_offline(
        &self,
        domain: &str,
        user: &str,
        ids: &[i64],
    ) -> Result<usize, StorageError> {
        let (domain, user, ids) = (domain.to_owned(), user.to_owned(), ids.to_vec());
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            let mut removed = 0;
            {
                // By primary key, and only the user's own messages.
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM offline_messages
                         WHERE id = ?1 AND domain = ?2 AND username = ?3",
                    )
                    .map_err(backend)?;
                for id in ids {
                    removed += stmt.execute(params![id, domain, user]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn count_offline(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        run(&self.conn, move |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM offline_messages WHERE domain = ?1 AND username = ?2",
                )
                .and_then(|mut s| s.query_row(params![domain, user], |r| r.get(0)))
                .map_err(backend)?;
            count_from(n)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------
// User data

/// [`UserDataStore`] on SQLite (table `user_data`).
#[derive(Clone)]
pub struct SqliteUserDataStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteUserDataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteUserDataStore")
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl UserDataStore for SqliteUserDataStore {
    async fn get_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
    ) -> Result<Option<String>, StorageError> {
        let (domain, user, store, key) = (
            domain.to_owned(),
            user.to_owned(),
            store.to_owned(),
            key.to_owned(),
        );
        read(&self.conn, move |conn| {
            conn.prepare_cached(
                "SELECT value FROM user_data
                 WHERE domain = ?1 AND username = ?2 AND store = ?3 AND key = ?4",
            )
            .map_err(backend)?
            .query_row(params![domain, user, store, key], |r| r.get(0))
            .optional()
            .map_err(read_err)
        })
        .await
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
        let (domain, user, store, key, value) = (
            domain.to_owned(),
            user.to_owned(),
            store.to_owned(),
            key.to_owned(),
            value.map(str::to_owned),
        );
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            require_account(&tx, &domain, &user)?;
            match value {
                Some(v) => tx
                    .prepare_cached(
                        "INSERT INTO user_data (domain, username, store, key, value)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (domain, username, store, key)
                             DO UPDATE SET value = excluded.value",
                    )
                    .and_then(|mut s| s.execute(params![domain, user, store, key, v]))
                    .map_err(write_err)?,
                None => tx
                    .prepare_cached(
                        "DELETE FROM user_data
                         WHERE domain = ?1 AND username = ?2 AND store = ?3 AND key = ?4",
                    )
                    .and_then(|mut s| s.execute(params![domain, user, store, key]))
                    .map_err(backend)?,
            };
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn data_keys(
        &self,
        domain: &str,
        user: &str,
        store: &str,
    ) -> Result<Vec<String>, StorageError> {
        let (domain, user, store) = (domain.to_owned(), user.to_owned(), store.to_owned());
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key FROM user_data
                     WHERE domain = ?1 AND username = ?2 AND store = ?3 ORDER BY key",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![domain, user, store], |r| r.get(0))
                .map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(read_err)
        })
        .await
    }
}
