//! Message archives (XEP-0313) on PostgreSQL (schema: `migrations/0003_archive.sql`).
//!
//! A query becomes bounds on `id`, the archive order: stanza ids (RSM after/before,
//! after-id, before-id, ids) are looked up through the unique (owner, stanza_id) index,
//! and `start`/`end` through (owner, ts, id) (timestamps never decrease within an archive,
//! so a time bound is an id bound). The page is then one range seek on the primary key
//! (owner, id) or on (owner, with_bare, id), whose entries are in archive order, reading at
//! most `max + 1` rows (the extra one tells whether the page is the last); the size of the
//! result set is one `COUNT` over the same index range. A query runs in one `REPEATABLE
//! READ READ ONLY` transaction, so its statements see one snapshot.
//!
//! Appends go through one writer task per backend that commits every append waiting at
//! that moment in one transaction (group commit, [`start_writer`]); each caller is answered
//! after the commit.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use rookery_storage::{
    ArchiveBound, ArchiveEntry, ArchivePage, ArchiveQuery, ArchiveStore, PageRequest, StorageError,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use crate::{count_from, db, execute, get, lock_account, query, query_opt, to_i64, Db};

/// One archive table and how its owners are found.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) name: &'static str,
    /// The owner column.
    pub(crate) owner: &'static str,
    /// The owner's id from `$1` (domain) and `$2` (user or room), no lock.
    owner_id_sql: &'static str,
    /// Owners are accounts, which must exist to be written to; room owners are created by
    /// the first append.
    of_accounts: bool,
}

pub(crate) const ACCOUNTS: Table = Table {
    name: "archive",
    owner: "account_id",
    owner_id_sql: "SELECT id FROM accounts WHERE domain = $1 AND username = $2",
    of_accounts: true,
};

pub(crate) const ROOMS: Table = Table {
    name: "muc_archive",
    owner: "owner_id",
    owner_id_sql: "SELECT id FROM muc_archive_owners WHERE service = $1 AND room = $2",
    of_accounts: false,
};

/// Most appends in one transaction: every message is archived twice (sender, recipient)
/// on the message path, and a commit per append would cost a WAL flush each.
pub(crate) const MAX_BATCH: usize = 256;

/// An append waiting for the writer.
pub(crate) struct PendingAppend {
    table: &'static Table,
    domain: String,
    user: String,
    entry: ArchiveEntry,
    reply: tokio::sync::oneshot::Sender<Result<i64, StorageError>>,
}

/// The queue of the archive writer (see [`start_writer`]).
pub(crate) type ArchiveWriter = tokio::sync::mpsc::UnboundedSender<PendingAppend>;

/// Starts the writer task: it takes every append waiting when it gets to them and writes
/// them in one transaction (group commit). Each caller gets its own answer after the
/// commit, so an append that returned `Ok` is durable; a failed append (unknown account,
/// duplicate id) does not fail the others of its batch, and a database failure fails the
/// whole batch (nothing of it was committed). The task ends when every sender is gone.
pub(crate) fn start_writer(db: Db, max_batch: usize) -> ArchiveWriter {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PendingAppend>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let results = match write_batch(&db, &batch).await {
                Ok(results) => results,
                Err(e) => batch
                    .iter()
                    .map(|_| Err(StorageError::Backend(e.to_string())))
                    .collect(),
            };
            for (job, result) in batch.drain(..).zip(results) {
                // The caller may have gone (its task ended): nothing to tell.
                let _ = job.reply.send(result);
            }
        }
    });
    tx
}

/// Writes a batch in one transaction; one result per job, in order. Err when the
/// transaction itself failed (nothing was written).
async fn write_batch(
    db: &Db,
    jobs: &[PendingAppend],
) -> Result<Vec<Result<i64, StorageError>>, StorageError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(db_err)?;
    // Lock every owner of the batch first, in one order (table, domain, user), so batches
    // and other writers never wait for each other in a cycle.
    let mut owners: BTreeMap<(&str, &str, &str), Result<i64, StorageError>> = BTreeMap::new();
    for job in jobs {
        owners
            .entry((job.table.name, &job.domain, &job.user))
            .or_insert(Err(StorageError::NotFound));
    }
    for ((name, domain, user), owner) in owners.iter_mut() {
        // The same names may own an account archive and a room archive: match the table.
        let table = jobs
            .iter()
            .find(|j| j.table.name == *name && j.domain == *domain && j.user == *user)
            .map(|j| j.table)
            .unwrap_or(&ACCOUNTS);
        *owner = lock_owner(&tx, table, domain, user).await;
        if let Err(e @ StorageError::Backend(_)) = owner {
            return Err(StorageError::Backend(e.to_string()));
        }
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let owner = match &owners[&(job.table.name, job.domain.as_str(), job.user.as_str())] {
            Ok(id) => *id,
            Err(_) => {
                results.push(Err(StorageError::NotFound));
                continue;
            }
        };
        match append_one(&tx, job.table, owner, &job.entry).await {
            Err(e @ StorageError::Backend(_)) => return Err(e),
            other => results.push(other),
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(results)
}

fn db_err(e: tokio_postgres::Error) -> StorageError {
    db(e)
}

/// Locks an archive's owner row for the transaction and returns its id: appends to one
/// archive are serialised, so ids increase in append order and the timestamp check sees
/// the newest entry. A room's owner row is created by its first append.
async fn lock_owner<C: GenericClient>(
    c: &C,
    table: &Table,
    domain: &str,
    user: &str,
) -> Result<i64, StorageError> {
    if table.of_accounts {
        return lock_account(c, domain, user).await;
    }
    execute(
        c,
        "INSERT INTO muc_archive_owners (service, room) VALUES ($1, $2)
         ON CONFLICT (service, room) DO NOTHING",
        &[&domain, &user],
    )
    .await?;
    let row = query_opt(
        c,
        "SELECT id FROM muc_archive_owners WHERE service = $1 AND room = $2
         FOR NO KEY UPDATE",
        &[&domain, &user],
    )
    .await?
    .ok_or(StorageError::NotFound)?;
    get(&row, 0)
}

async fn append_one<C: GenericClient>(
    c: &C,
    table: &Table,
    owner: i64,
    entry: &ArchiveEntry,
) -> Result<i64, StorageError> {
    let newest = query_opt(
        c,
        &format!(
            "SELECT ts FROM {} WHERE {} = $1 ORDER BY id DESC LIMIT 1",
            table.name, table.owner
        ),
        &[&owner],
    )
    .await?;
    let ts = match newest {
        Some(row) => get::<i64>(&row, 0)?.max(entry.timestamp_us),
        None => entry.timestamp_us,
    };
    let inserted = query_opt(
        c,
        &format!(
            "INSERT INTO {} ({}, stanza_id, ts, with_bare, with_resource, stanza)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ({}, stanza_id) DO NOTHING RETURNING id",
            table.name, table.owner, table.owner
        ),
        &[
            &owner,
            &entry.id,
            &ts,
            &entry.with_bare,
            &entry.with_resource,
            &entry.stanza,
        ],
    )
    .await?;
    match inserted {
        Some(_) => Ok(ts),
        None => Err(StorageError::AlreadyExists),
    }
}

/// [`ArchiveStore`] on PostgreSQL: account archives (table `archive`) or room archives
/// (table `muc_archive`).
#[derive(Clone)]
pub struct PgArchiveStore {
    pub(crate) db: Db,
    pub(crate) writer: Option<ArchiveWriter>,
    pub(crate) table: &'static Table,
}

impl std::fmt::Debug for PgArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgArchiveStore")
            .field("table", &self.table.name)
            .finish_non_exhaustive()
    }
}

type Value = Box<dyn ToSql + Sync + Send>;

/// A `WHERE` clause and its parameters, built condition by condition.
struct Conditions {
    sql: String,
    values: Vec<Value>,
}

impl Conditions {
    fn new(table: &Table, owner: i64) -> Self {
        Conditions {
            sql: format!("{} = $1", table.owner),
            values: vec![Box::new(owner)],
        }
    }

    /// Adds `column op $n`.
    fn and(&mut self, column_op: &str, value: Value) {
        self.values.push(value);
        self.sql
            .push_str(&format!(" AND {column_op} ${}", self.values.len()));
    }

    /// Adds `column = ANY($n)` (an array parameter: one statement shape for any count).
    fn and_any(&mut self, column: &str, values: Vec<i64>) {
        self.values.push(Box::new(values));
        self.sql
            .push_str(&format!(" AND {column} = ANY(${})", self.values.len()));
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The id of the entry with this stanza id in the owner's archive, or NotFound.
async fn id_of<C: GenericClient>(
    c: &C,
    table: &Table,
    owner: i64,
    stanza_id: &str,
) -> Result<i64, StorageError> {
    let row = query_opt(
        c,
        &format!(
            "SELECT id FROM {} WHERE {} = $1 AND stanza_id = $2",
            table.name, table.owner
        ),
        &[&owner, &stanza_id],
    )
    .await?
    .ok_or(StorageError::NotFound)?;
    get(&row, 0)
}

/// The rows of the result set as conditions; None when it is certainly empty (a time range
/// with no entry).
async fn result_set<C: GenericClient>(
    c: &C,
    table: &Table,
    owner: i64,
    q: &ArchiveQuery,
) -> Result<Option<Conditions>, StorageError> {
    let f = &q.filter;
    let mut set = Conditions::new(table, owner);
    if let Some(w) = &f.with {
        set.and("with_bare =", Box::new(w.bare.clone()));
        if let Some(r) = &w.resource {
            set.and("with_resource =", Box::new(r.clone()));
        }
    }
    if let Some(id) = &f.after_id {
        set.and("id >", Box::new(id_of(c, table, owner, id).await?));
    }
    if let Some(id) = &f.before_id {
        set.and("id <", Box::new(id_of(c, table, owner, id).await?));
    }
    if let Some(ids) = &f.ids {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.push(id_of(c, table, owner, id).await?);
        }
        set.and_any("id", found);
    }
    if let Some(start) = f.start_us {
        let row = query_opt(
            c,
            &format!(
                "SELECT id FROM {t} WHERE {o} = $1 AND ts >= $2 ORDER BY ts, id LIMIT 1",
                t = table.name,
                o = table.owner
            ),
            &[&owner, &start],
        )
        .await?;
        match row {
            Some(row) => set.and("id >=", Box::new(get::<i64>(&row, 0)?)),
            None => return Ok(None),
        }
    }
    if let Some(end) = f.end_us {
        let row = query_opt(
            c,
            &format!(
                "SELECT id FROM {t} WHERE {o} = $1 AND ts <= $2
                 ORDER BY ts DESC, id DESC LIMIT 1",
                t = table.name,
                o = table.owner
            ),
            &[&owner, &end],
        )
        .await?;
        match row {
            Some(row) => set.and("id <=", Box::new(get::<i64>(&row, 0)?)),
            None => return Ok(None),
        }
    }
    Ok(Some(set))
}

async fn count_rows<C: GenericClient>(
    c: &C,
    table: &Table,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<usize, StorageError> {
    let rows = query(
        c,
        &format!("SELECT COUNT(*) FROM {} WHERE {sql}", table.name),
        params,
    )
    .await?;
    let n: i64 = rows
        .first()
        .map(|r| get(r, 0))
        .transpose()?
        .unwrap_or_default();
    count_from(n)
}

/// The page-query SQL of a result set (also used by the plan check in the tests).
pub fn page_sql(table_name: &str, where_sql: &str, backwards: bool, limit_param: usize) -> String {
    format!(
        "SELECT id, stanza_id, ts, with_bare, with_resource, stanza FROM {table_name}
         WHERE {where_sql} ORDER BY id {} LIMIT ${limit_param}",
        if backwards { "DESC" } else { "ASC" }
    )
}

async fn run_query<C: GenericClient>(
    c: &C,
    table: &Table,
    owner: i64,
    q: &ArchiveQuery,
) -> Result<ArchivePage, StorageError> {
    // Ids named by the page are checked even when the set turns out empty.
    let page_id = match &q.page {
        PageRequest::After(id) | PageRequest::Before(id) => Some(id_of(c, table, owner, id).await?),
        PageRequest::First | PageRequest::Last => None,
    };
    let Some(set) = result_set(c, table, owner, q).await? else {
        return Ok(ArchivePage {
            complete: true,
            ..ArchivePage::default()
        });
    };
    let total = count_rows(c, table, &set.sql, &set.params()).await?;
    let backwards = q.page.is_backwards();
    let mut page = Conditions {
        sql: set.sql.clone(),
        values: Vec::new(),
    };
    let mut params = set.params();
    let page_bound;
    match (&q.page, page_id) {
        (PageRequest::After(_), Some(id)) => {
            page_bound = id;
            params.push(&page_bound);
            page.sql.push_str(&format!(" AND id > ${}", params.len()));
        }
        (PageRequest::Before(_), Some(id)) => {
            page_bound = id;
            params.push(&page_bound);
            page.sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        _ => {}
    }
    // One row more than the page: whether it exists says whether the page is the last.
    let limit = to_i64(q.max).saturating_add(1);
    params.push(&limit);
    let sql = page_sql(table.name, &page.sql, backwards, params.len());
    let rows = query(c, &sql, &params).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        entries.push((
            get::<i64>(row, 0)?,
            ArchiveEntry {
                id: get(row, 1)?,
                timestamp_us: get(row, 2)?,
                with_bare: get(row, 3)?,
                with_resource: get(row, 4)?,
                stanza: get(row, 5)?,
            },
        ));
    }
    let complete = entries.len() <= q.max;
    entries.truncate(q.max);
    if backwards {
        entries.reverse();
    }
    let first_index = match (entries.first(), &q.page) {
        (None, _) => None,
        (Some(_), PageRequest::First) => Some(0),
        (Some(_), PageRequest::Last) => Some(total.saturating_sub(entries.len())),
        (Some((first_id, _)), _) => {
            let mut params = set.params();
            params.push(first_id);
            let sql = format!("{} AND id < ${}", set.sql, params.len());
            Some(count_rows(c, table, &sql, &params).await?)
        }
    };
    Ok(ArchivePage {
        entries: entries.into_iter().map(|(_, e)| e).collect(),
        count: total,
        first_index,
        complete,
    })
}

/// The owner's id, or 0 (no identity is 0) for an archive that has no owner row: an
/// unknown account or room has an empty archive, and ids named in a query are NotFound.
async fn owner_or_none<C: GenericClient>(
    c: &C,
    table: &Table,
    domain: &str,
    user: &str,
) -> Result<i64, StorageError> {
    match query_opt(c, table.owner_id_sql, &[&domain, &user]).await? {
        Some(row) => get(&row, 0),
        None => Ok(0),
    }
}

#[async_trait::async_trait]
impl ArchiveStore for PgArchiveStore {
    async fn append_archive(
        &self,
        domain: &str,
        user: &str,
        entry: &ArchiveEntry,
    ) -> Result<i64, StorageError> {
        let Some(writer) = &self.writer else {
            // No group commit: this append alone, in its own transaction.
            let mut conn = self.db.conn().await?;
            let tx = conn.transaction().await.map_err(db)?;
            let owner = lock_owner(&tx, self.table, domain, user).await?;
            let ts = append_one(&tx, self.table, owner, entry).await?;
            tx.commit().await.map_err(db)?;
            return Ok(ts);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = PendingAppend {
            table: self.table,
            domain: domain.to_owned(),
            user: user.to_owned(),
            entry: entry.clone(),
            reply,
        };
        writer
            .send(job)
            .map_err(|_| StorageError::Backend("the archive writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StorageError::Backend("the archive writer has stopped".into()))?
    }

    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let owner = owner_or_none(&tx, self.table, domain, user).await?;
        let page = run_query(&tx, self.table, owner, q).await?;
        tx.commit().await.map_err(db)?;
        Ok(page)
    }

    async fn archive_bounds(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Option<(ArchiveBound, ArchiveBound)>, StorageError> {
        let conn = self.db.conn().await?;
        // One statement: both ends through the primary key, one snapshot.
        let row = query_opt(
            &conn,
            &format!(
                "WITH o AS ({owner_sql}),
                      f AS (SELECT stanza_id, ts FROM {t} WHERE {c} = (SELECT id FROM o)
                            ORDER BY id ASC LIMIT 1),
                      l AS (SELECT stanza_id, ts FROM {t} WHERE {c} = (SELECT id FROM o)
                            ORDER BY id DESC LIMIT 1)
                 SELECT f.stanza_id, f.ts, l.stanza_id, l.ts FROM f, l",
                owner_sql = self.table.owner_id_sql,
                t = self.table.name,
                c = self.table.owner
            ),
            &[&domain, &user],
        )
        .await?;
        row.map(|r| {
            Ok((
                ArchiveBound {
                    id: get(&r, 0)?,
                    timestamp_us: get(&r, 1)?,
                },
                ArchiveBound {
                    id: get(&r, 2)?,
                    timestamp_us: get(&r, 3)?,
                },
            ))
        })
        .transpose()
    }

    async fn purge_archive(&self, before_us: i64, limit: usize) -> Result<usize, StorageError> {
        let conn = self.db.conn().await?;
        // One bounded statement per call: at most `limit` rows, oldest first (the ts index).
        let n = execute(
            &conn,
            &format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {t} WHERE ts < $1 ORDER BY ts LIMIT $2))",
                t = self.table.name
            ),
            &[&before_us, &to_i64(limit)],
        )
        .await?;
        usize::try_from(n).map_err(|_| StorageError::Corrupt("purged count".into()))
    }

    async fn replace_archived(
        &self,
        domain: &str,
        user: &str,
        id: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let conn = self.db.conn().await?;
        let n = execute(
            &conn,
            &format!(
                "UPDATE {t} SET stanza = $4 WHERE {c} = ({owner_sql}) AND stanza_id = $3",
                t = self.table.name,
                c = self.table.owner,
                owner_sql = self.table.owner_id_sql
            ),
            &[&domain, &user, &id, &stanza],
        )
        .await?;
        if n == 0 {
            Err(StorageError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn delete_archive(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let n = execute(
            &tx,
            &format!(
                "DELETE FROM {t} WHERE {c} = ({owner_sql})",
                t = self.table.name,
                c = self.table.owner,
                owner_sql = self.table.owner_id_sql
            ),
            &[&domain, &user],
        )
        .await?;
        if !self.table.of_accounts {
            // A destroyed room's owner row goes too.
            execute(
                &tx,
                "DELETE FROM muc_archive_owners WHERE service = $1 AND room = $2",
                &[&domain, &user],
            )
            .await?;
        }
        tx.commit().await.map_err(db)?;
        usize::try_from(n).map_err(|_| StorageError::Corrupt("deleted count".into()))
    }
}
