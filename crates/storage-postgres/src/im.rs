//! The instant-messaging stores on PostgreSQL: rosters, pending inbound subscriptions,
//! offline messages, per-user documents (schema: `migrations/0002_im.sql`), persistent MUC
//! rooms (`0003_archive.sql`, `muc_rooms`), upload records (`0005_uploads.sql`) and host
//! data (`0006_host_data.sql`).
//!
//! Every write of per-account data runs in one transaction that first locks the account
//! row ([`lock_account`], NotFound when absent), so a check and the write it guards (quota,
//! item limit, version bump) can't be interleaved with another writer of the account.

use rookery_storage::{
    check_data_size, dedup_groups, HostDataStore, OfflineStore, RoomStore, Roster, RosterItem,
    RosterStore, StorageError, Subscription, UploadRecord, UploadStore, UserDataStore,
};
use tokio_postgres::Row;

use crate::{
    count_from, db, execute, get, lock_account, now_unix, query, query_one, query_opt, to_i64, Db,
};

fn version_from(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("roster version {v}")))
}

/// An item from columns `contact, name, subscription, ask, approved, groups` starting at
/// `first`.
fn item_from_row(row: &Row, first: usize) -> Result<RosterItem, StorageError> {
    let jid: String = get(row, first)?;
    let sub: String = get(row, first + 2)?;
    let subscription = Subscription::from_name(&sub).ok_or_else(|| {
        StorageError::Corrupt(format!("roster item {jid}: unknown subscription {sub:?}"))
    })?;
    let groups: Vec<String> = get(row, first + 5)?;
    Ok(RosterItem {
        name: get(row, first + 1)?,
        subscription,
        ask: get(row, first + 3)?,
        approved: get(row, first + 4)?,
        groups,
        jid,
    })
}

/// [`RosterStore`] on PostgreSQL (tables `roster_items`, `roster_pending_in`, and the
/// `roster_version` column of `accounts`).
#[derive(Clone)]
pub struct PgRosterStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgRosterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRosterStore")
    }
}

/// Adds one to the account's roster version (in the transaction of the change it versions).
async fn bump_version<C: deadpool_postgres::GenericClient>(
    c: &C,
    account: i64,
) -> Result<u64, StorageError> {
    let row = query_one(
        c,
        "UPDATE accounts SET roster_version = roster_version + 1 WHERE id = $1
         RETURNING roster_version",
        &[&account],
    )
    .await?;
    version_from(get(&row, 0)?)
}

#[async_trait::async_trait]
impl RosterStore for PgRosterStore {
    async fn roster(&self, domain: &str, user: &str) -> Result<Roster, StorageError> {
        let conn = self.db.conn().await?;
        // One statement (one snapshot): the version on every row, the items in key order; an
        // account without items is one row of NULL item columns.
        let rows = query(
            &conn,
            "SELECT a.roster_version, r.contact, r.name, r.subscription, r.ask, r.approved,
                    r.groups
             FROM accounts a LEFT JOIN roster_items r ON r.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2
             ORDER BY r.contact",
            &[&domain, &user],
        )
        .await?;
        let mut roster = Roster::default();
        for row in &rows {
            roster.version = version_from(get(row, 0)?)?;
            if get::<Option<String>>(row, 1)?.is_some() {
                roster.items.push(item_from_row(row, 1)?);
            }
        }
        Ok(roster)
    }

    async fn roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT r.contact, r.name, r.subscription, r.ask, r.approved, r.groups
             FROM accounts a JOIN roster_items r ON r.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 AND r.contact = $3",
            &[&domain, &user, &contact],
        )
        .await?;
        row.map(|r| item_from_row(&r, 0)).transpose()
    }

    async fn set_roster_item(
        &self,
        domain: &str,
        user: &str,
        item: &RosterItem,
        max_items: usize,
    ) -> Result<u64, StorageError> {
        let groups = dedup_groups(&item.groups);
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        let exists = query_opt(
            &tx,
            "SELECT 1 FROM roster_items WHERE account_id = $1 AND contact = $2",
            &[&account, &item.jid],
        )
        .await?
        .is_some();
        if !exists {
            // Counting stops at the limit: the cost is bounded by it, not by the roster.
            let row = query_one(
                &tx,
                "SELECT COUNT(*) FROM (SELECT 1 FROM roster_items WHERE account_id = $1
                                       LIMIT $2) AS held",
                &[&account, &to_i64(max_items)],
            )
            .await?;
            let count: i64 = get(&row, 0)?;
            if count_from(count)? >= max_items {
                return Err(StorageError::LimitReached(format!(
                    "roster has {count} items (limit {max_items})"
                )));
            }
        }
        execute(
            &tx,
            "INSERT INTO roster_items
                 (account_id, contact, name, subscription, ask, approved, groups)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (account_id, contact) DO UPDATE SET
                 name = excluded.name, subscription = excluded.subscription,
                 ask = excluded.ask, approved = excluded.approved, groups = excluded.groups",
            &[
                &account,
                &item.jid,
                &item.name,
                &item.subscription.as_str(),
                &item.ask,
                &item.approved,
                &groups,
            ],
        )
        .await?;
        let version = bump_version(&tx, account).await?;
        tx.commit().await.map_err(db)?;
        Ok(version)
    }

    async fn remove_roster_item(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<Option<u64>, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        let removed = execute(
            &tx,
            "DELETE FROM roster_items WHERE account_id = $1 AND contact = $2",
            &[&account, &contact],
        )
        .await?;
        let version = if removed > 0 {
            Some(bump_version(&tx, account).await?)
        } else {
            None
        };
        tx.commit().await.map_err(db)?;
        Ok(version)
    }

    async fn add_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        execute(
            &tx,
            "INSERT INTO roster_pending_in (account_id, contact, stanza) VALUES ($1, $2, $3)
             ON CONFLICT (account_id, contact) DO UPDATE SET stanza = excluded.stanza",
            &[&account, &contact, &stanza],
        )
        .await?;
        tx.commit().await.map_err(db)
    }

    async fn remove_pending_in(
        &self,
        domain: &str,
        user: &str,
        contact: &str,
    ) -> Result<bool, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        let removed = execute(
            &tx,
            "DELETE FROM roster_pending_in WHERE account_id = $1 AND contact = $2",
            &[&account, &contact],
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(removed > 0)
    }

    async fn pending_in(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "SELECT p.contact, p.stanza
             FROM accounts a JOIN roster_pending_in p ON p.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 ORDER BY p.contact",
            &[&domain, &user],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }
}

/// [`OfflineStore`] on PostgreSQL (table `offline_messages`).
#[derive(Clone)]
pub struct PgOfflineStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgOfflineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgOfflineStore")
    }
}

#[async_trait::async_trait]
impl OfflineStore for PgOfflineStore {
    async fn push_offline(
        &self,
        domain: &str,
        user: &str,
        stanza: &str,
        max_messages: usize,
    ) -> Result<Option<i64>, StorageError> {
        let mut conn = self.db.conn().await?;
        // Quota check and insert under the account's lock: concurrent pushes can't both see
        // room for the last slot.
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        let row = query_one(
            &tx,
            "SELECT COUNT(*) FROM (SELECT 1 FROM offline_messages WHERE account_id = $1
                                   LIMIT $2) AS held",
            &[&account, &to_i64(max_messages)],
        )
        .await?;
        if count_from(get(&row, 0)?)? >= max_messages {
            return Ok(None);
        }
        let row = query_one(
            &tx,
            "INSERT INTO offline_messages (account_id, stanza, stored_at) VALUES ($1, $2, $3)
             RETURNING id",
            &[&account, &stanza, &now_unix()],
        )
        .await?;
        let id: i64 = get(&row, 0)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(id))
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
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "SELECT m.id, m.stanza
             FROM accounts a JOIN offline_messages m ON m.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 ORDER BY m.id LIMIT $3",
            &[&domain, &user, &to_i64(limit)],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }

    async fn remove_offline(
        &self,
        domain: &str,
        user: &str,
        ids: &[i64],
    ) -> Result<usize, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        // By primary key, and only the user's own messages.
        let removed = execute(
            &tx,
            "DELETE FROM offline_messages WHERE id = ANY($2) AND account_id = $1",
            &[&account, &ids],
        )
        .await?;
        tx.commit().await.map_err(db)?;
        usize::try_from(removed).map_err(|_| StorageError::Corrupt("removed count".into()))
    }

    async fn count_offline(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_one(
            &conn,
            "SELECT COUNT(*) FROM accounts a JOIN offline_messages m ON m.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2",
            &[&domain, &user],
        )
        .await?;
        count_from(get(&row, 0)?)
    }
}

/// [`UserDataStore`] on PostgreSQL (table `user_data`).
#[derive(Clone)]
pub struct PgUserDataStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgUserDataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgUserDataStore")
    }
}

#[async_trait::async_trait]
impl UserDataStore for PgUserDataStore {
    async fn get_data(
        &self,
        domain: &str,
        user: &str,
        store: &str,
        key: &str,
    ) -> Result<Option<String>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT d.value FROM accounts a JOIN user_data d ON d.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 AND d.store = $3 AND d.key = $4",
            &[&domain, &user, &store, &key],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
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
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, user).await?;
        match value {
            Some(v) => {
                execute(
                    &tx,
                    "INSERT INTO user_data (account_id, store, key, value) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (account_id, store, key) DO UPDATE SET value = excluded.value",
                    &[&account, &store, &key, &v],
                )
                .await?
            }
            None => {
                execute(
                    &tx,
                    "DELETE FROM user_data WHERE account_id = $1 AND store = $2 AND key = $3",
                    &[&account, &store, &key],
                )
                .await?
            }
        };
        tx.commit().await.map_err(db)
    }

    async fn data_keys(
        &self,
        domain: &str,
        user: &str,
        store: &str,
    ) -> Result<Vec<String>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "SELECT d.key FROM accounts a JOIN user_data d ON d.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 AND d.store = $3 ORDER BY d.key",
            &[&domain, &user, &store],
        )
        .await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }
}

/// [`RoomStore`] on PostgreSQL (table `muc_rooms`).
#[derive(Clone)]
pub struct PgRoomStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgRoomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgRoomStore")
    }
}

#[async_trait::async_trait]
impl RoomStore for PgRoomStore {
    async fn get_room(&self, service: &str, room: &str) -> Result<Option<String>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT state FROM muc_rooms WHERE service = $1 AND room = $2",
            &[&service, &room],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn set_room(
        &self,
        service: &str,
        room: &str,
        state: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(state, max_bytes)?;
        let conn = self.db.conn().await?;
        match state {
            Some(doc) => {
                execute(
                    &conn,
                    "INSERT INTO muc_rooms (service, room, state, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (service, room)
                         DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    &[&service, &room, &doc, &now_unix()],
                )
                .await?
            }
            None => {
                execute(
                    &conn,
                    "DELETE FROM muc_rooms WHERE service = $1 AND room = $2",
                    &[&service, &room],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "SELECT room, state FROM muc_rooms WHERE service = $1 ORDER BY room",
            &[&service],
        )
        .await?;
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }
}

/// [`UploadStore`] on PostgreSQL (table `uploads`).
#[derive(Clone)]
pub struct PgUploadStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgUploadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgUploadStore")
    }
}

fn size_of(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("upload size {v}")))
}

#[async_trait::async_trait]
impl UploadStore for PgUploadStore {
    async fn add_upload(
        &self,
        r: &UploadRecord,
        since: i64,
        quota: u64,
    ) -> Result<(), StorageError> {
        let size = i64::try_from(r.size)
            .map_err(|_| StorageError::LimitReached(format!("size {}", r.size)))?;
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, &r.domain, &r.user).await?;
        let row = query_one(
            &tx,
            "SELECT COALESCE(SUM(size), 0)::bigint FROM uploads
             WHERE account_id = $1 AND created_at >= $2",
            &[&account, &since],
        )
        .await?;
        let used = size_of(get(&row, 0)?)?;
        if used.saturating_add(r.size) > quota {
            return Err(StorageError::LimitReached(format!(
                "{used} of {quota} bytes used"
            )));
        }
        let inserted = execute(
            &tx,
            "INSERT INTO uploads (id, account_id, file_name, size, content_type, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &[
                &r.id,
                &account,
                &r.file_name,
                &size,
                &r.content_type,
                &r.created,
            ],
        )
        .await?;
        if inserted == 0 {
            return Err(StorageError::AlreadyExists);
        }
        tx.commit().await.map_err(db)
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT u.id, a.domain, a.username, u.file_name, u.size, u.content_type,
                    u.created_at
             FROM uploads u JOIN accounts a ON a.id = u.account_id WHERE u.id = $1",
            &[&id],
        )
        .await?;
        row.map(|r| {
            Ok(UploadRecord {
                id: get(&r, 0)?,
                domain: get(&r, 1)?,
                user: get(&r, 2)?,
                file_name: get(&r, 3)?,
                size: size_of(get(&r, 4)?)?,
                content_type: get(&r, 5)?,
                created: get(&r, 6)?,
            })
        })
        .transpose()
    }

    async fn recent_uploads(
        &self,
        domain: &str,
        user: &str,
        since: i64,
    ) -> Result<Vec<(i64, u64)>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "SELECT u.created_at, u.size FROM accounts a JOIN uploads u ON u.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 AND u.created_at >= $3
             ORDER BY u.created_at, u.size",
            &[&domain, &user, &since],
        )
        .await?;
        rows.iter()
            .map(|r| Ok((get(r, 0)?, size_of(get(r, 1)?)?)))
            .collect()
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError> {
        let conn = self.db.conn().await?;
        Ok(execute(&conn, "DELETE FROM uploads WHERE id = $1", &[&id]).await? > 0)
    }

    async fn expire_uploads(&self, before: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = query(
            &conn,
            "WITH gone AS (
                 DELETE FROM uploads WHERE id IN
                   (SELECT id FROM uploads WHERE created_at < $1 ORDER BY created_at LIMIT $2)
                 RETURNING id, created_at)
             SELECT id FROM gone ORDER BY created_at, id",
            &[&before, &to_i64(limit)],
        )
        .await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }
}

/// [`HostDataStore`] on PostgreSQL (table `host_data`).
#[derive(Clone)]
pub struct PgHostDataStore {
    pub(crate) db: Db,
}

impl std::fmt::Debug for PgHostDataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgHostDataStore")
    }
}

#[async_trait::async_trait]
impl HostDataStore for PgHostDataStore {
    async fn get_host_data(&self, domain: &str, key: &str) -> Result<Option<String>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT value FROM host_data WHERE domain = $1 AND key = $2",
            &[&domain, &key],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn set_host_data(
        &self,
        domain: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(value, max_bytes)?;
        let conn = self.db.conn().await?;
        match value {
            Some(v) => {
                execute(
                    &conn,
                    "INSERT INTO host_data (domain, key, value, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (domain, key)
                         DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    &[&domain, &key, &v, &now_unix()],
                )
                .await?
            }
            None => {
                execute(
                    &conn,
                    "DELETE FROM host_data WHERE domain = $1 AND key = $2",
                    &[&domain, &key],
                )
                .await?
            }
        };
        Ok(())
    }
}
