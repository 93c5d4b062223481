//! [`UploadStore`] on SQLite: the `uploads` table, one row per slot, referencing its owner.

use rookery_storage::{StorageError, UploadRecord, UploadStore};
use rusqlite::{params, OptionalExtension, Row};

use crate::im::{read_err, require_account, write_err, write_tx};
use crate::{backend, run, Shared};

/// [`UploadStore`] of a [`SqliteBackend`](crate::SqliteBackend).
pub struct SqliteUploadStore {
    pub(crate) conn: Shared,
}

impl std::fmt::Debug for SqliteUploadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteUploadStore")
    }
}

fn size_of(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(format!("upload size {v}")))
}

fn record(r: &Row<'_>) -> rusqlite::Result<(UploadRecord, i64)> {
    Ok((
        UploadRecord {
            id: r.get(0)?,
            domain: r.get(1)?,
            user: r.get(2)?,
            file_name: r.get(3)?,
            size: 0,
            content_type: r.get(5)?,
            created: r.get(6)?,
        },
        r.get(4)?,
    ))
}

#[async_trait::async_trait]
impl UploadStore for SqliteUploadStore {
    async fn add_upload(
        &self,
        record: &UploadRecord,
        since: i64,
        quota: u64,
    ) -> Result<(), StorageError> {
        let r = record.clone();
        let size = i64::try_from(r.size)
            .map_err(|_| StorageError::LimitReached(format!("size {}", r.size)))?;
        run(&self.conn, move |conn| {
            // The quota is read and the row inserted under one write lock: concurrent
            // requests (tasks or processes) never exceed it.
            let tx = write_tx(conn)?;
            require_account(&tx, &r.domain, &r.user)?;
            let used: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(SUM(size), 0) FROM uploads
                     WHERE domain = ?1 AND username = ?2 AND created_at >= ?3",
                )
                .and_then(|mut s| s.query_row(params![r.domain, r.user, since], |row| row.get(0)))
                .map_err(read_err)?;
            let used = size_of(used)?;
            if used.saturating_add(r.size) > quota {
                return Err(StorageError::LimitReached(format!(
                    "{used} of {quota} bytes used"
                )));
            }
            let taken = tx
                .prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")
                .and_then(|mut s| s.exists(params![r.id]))
                .map_err(backend)?;
            if taken {
                return Err(StorageError::AlreadyExists);
            }
            tx.prepare_cached(
                "INSERT INTO uploads (id, domain, username, file_name, size, content_type, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.id,
                    r.domain,
                    r.user,
                    r.file_name,
                    size,
                    r.content_type,
                    r.created
                ])
            })
            .map_err(write_err)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError> {
        let id = id.to_owned();
        run(&self.conn, move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT id, domain, username, file_name, size, content_type, created_at
                     FROM uploads WHERE id = ?1",
                )
                .map_err(backend)?
                .query_row(params![id], record)
                .optional()
                .map_err(read_err)?;
            row.map(|(mut r, size)| {
                r.size = size_of(size)?;
                Ok(r)
            })
            .transpose()
        })
        .await
    }

    async fn recent_uploads(
        &self,
        domain: &str,
        user: &str,
        since: i64,
    ) -> Result<Vec<(i64, u64)>, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        run(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT created_at, size FROM uploads
                     WHERE domain = ?1 AND username = ?2 AND created_at >= ?3
                     ORDER BY created_at, size",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![domain, user, since], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (t, size) = row.map_err(read_err)?;
                Ok((t, size_of(size)?))
            })
            .collect()
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_owned();
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let n = tx
                .prepare_cached("DELETE FROM uploads WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn expire_uploads(&self, before: i64, limit: usize) -> Result<Vec<String>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let ids = {
                let mut stmt = tx
                    .prepare_cached(
                        "DELETE FROM uploads WHERE id IN
                           (SELECT id FROM uploads WHERE created_at < ?1
                            ORDER BY created_at LIMIT ?2)
                         RETURNING id",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![before, limit], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(read_err)?
            };
            tx.commit().map_err(backend)?;
            Ok(ids)
        })
        .await
    }
}
