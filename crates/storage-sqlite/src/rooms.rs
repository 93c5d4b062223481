//! [`RoomStore`] on SQLite: the `muc_rooms` table, one row per persistent room.

use rookery_storage::{check_data_size, HostDataStore, RoomStore, StorageError};
use rusqlite::{params, OptionalExtension};

use crate::im::{read_err, write_tx};
use crate::{backend, now_unix, read, run, Shared};

/// [`RoomStore`] of a [`SqliteBackend`](crate::SqliteBackend).
pub struct SqliteRoomStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteRoomStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteRoomStore")
    }
}

#[async_trait::async_trait]
impl RoomStore for SqliteRoomStore {
    async fn get_room(&self, service: &str, room: &str) -> Result<Option<String>, StorageError> {
        let (service, room) = (service.to_owned(), room.to_owned());
        run(&self.conn, move |conn| {
            conn.prepare_cached("SELECT state FROM muc_rooms WHERE service = ?1 AND room = ?2")
                .map_err(backend)?
                .query_row(params![service, room], |r| r.get(0))
                .optional()
                .map_err(read_err)
        })
        .await
    }

    async fn set_room(
        &self,
        service: &str,
        room: &str,
        state: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(state, max_bytes)?;
        let (service, room, state) = (
            service.to_owned(),
            room.to_owned(),
            state.map(str::to_owned),
        );
        // An IMMEDIATE transaction like every other write: it takes the write lock up front,
        // so another process holding it makes this wait (busy_timeout) instead of failing.
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            match state {
                Some(doc) => tx
                    .prepare_cached(
                        "INSERT INTO muc_rooms (service, room, state, updated_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (service, room)
                             DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut s| s.execute(params![service, room, doc, now_unix()]))
                    .map_err(backend)?,
                None => tx
                    .prepare_cached("DELETE FROM muc_rooms WHERE service = ?1 AND room = ?2")
                    .and_then(|mut s| s.execute(params![service, room]))
                    .map_err(backend)?,
            };
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn list_rooms(&self, service: &str) -> Result<Vec<(String, String)>, StorageError> {
        let service = service.to_owned();
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room, state FROM muc_rooms WHERE service = ?1 ORDER BY room",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![service], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<(String, String)>, _>>()
                .map_err(read_err)
        })
        .await
    }
}

/// [`HostDataStore`] of a [`SqliteBackend`](crate::SqliteBackend): the `host_data` table
/// (`migrations/0008_host_data.sql`).
pub struct SqliteHostDataStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteHostDataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteHostDataStore")
    }
}

#[async_trait::async_trait]
impl HostDataStore for SqliteHostDataStore {
    async fn get_host_data(&self, domain: &str, key: &str) -> Result<Option<String>, StorageError> {
        let (domain, key) = (domain.to_owned(), key.to_owned());
        read(&self.conn, move |conn| {
            conn.prepare_cached("SELECT value FROM host_data WHERE domain = ?1 AND key = ?2")
                .map_err(backend)?
                .query_row(params![domain, key], |r| r.get(0))
                .optional()
                .map_err(read_err)
        })
        .await
    }

    async fn set_host_data(
        &self,
        domain: &str,
        key: &str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<(), StorageError> {
        check_data_size(value, max_bytes)?;
        let (domain, key, value) = (domain.to_owned(), key.to_owned(), value.map(str::to_owned));
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            match value {
                Some(v) => tx
                    .prepare_cached(
                        "INSERT INTO host_data (domain, key, value, updated_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (domain, key)
                             DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    )
                    .and_then(|mut s| s.execute(params![domain, key, v, now_unix()]))
                    .map_err(backend)?,
                None => tx
                    .prepare_cached("DELETE FROM host_data WHERE domain = ?1 AND key = ?2")
                    .and_then(|mut s| s.execute(params![domain, key]))
                    .map_err(backend)?,
            };
            tx.commit().map_err(backend)
        })
        .await
    }
}
