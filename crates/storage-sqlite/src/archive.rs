//! Message archives (XEP-0313) on SQLite (schema: `migrations/0003_archive.sql`).
//!
//! A query becomes bounds on `seq`, the archive order: ids (RSM after/before, after-id,
//! before-id) are looked up through the unique `(domain, username, stanza_id)` index, and
//! `start`/`end` through `(domain, username, ts)` (timestamps never decrease within an
//! archive, so a time bound is a `seq` bound). The page is then one range seek on the
//! owner or `with` index, whose entries are in `seq` order, reading at most `max + 1`
//! rows (the extra one tells whether the page is the last); the result set's size is one
//! `COUNT` over the same index range. All statements of a query run in one read
//! transaction, so they see one snapshot.
//!
//! Appends go through one writer thread per database that commits every append waiting
//! at that moment in one transaction (group commit, [`start_writer`]).

use rookery_storage::{
    ArchiveBound, ArchiveEntry, ArchivePage, ArchiveQuery, ArchiveStore, PageRequest, StorageError,
};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use crate::im::{count_from, read_err, read_tx, require_account, to_i64, write_err, write_tx};
use crate::{backend, run, Shared};

/// [`ArchiveStore`] on SQLite: account archives (table `archive`) or room archives
/// (table `muc_archive`, the same shape without the foreign key to `accounts`).
#[derive(Clone)]
pub struct SqliteArchiveStore {
    pub(crate) conn: Shared,
    pub(crate) writer: ArchiveWriter,
    pub(crate) table: &'static Table,
}

/// One archive table and its indexes.
#[derive(Debug)]
pub(crate) struct Table {
    name: &'static str,
    /// The table read through its owner index, named (see [`Conditions`]).
    by_owner: &'static str,
    by_with: &'static str,
    /// Owners are accounts, which must exist to be written to.
    of_accounts: bool,
}

pub(crate) const ACCOUNTS: Table = Table {
    name: "archive",
    by_owner: "archive INDEXED BY archive_owner",
    by_with: "archive INDEXED BY archive_with",
    of_accounts: true,
};

pub(crate) const ROOMS: Table = Table {
    name: "muc_archive",
    by_owner: "muc_archive INDEXED BY muc_archive_owner",
    by_with: "muc_archive INDEXED BY muc_archive_with",
    of_accounts: false,
};

/// Appends most in one transaction: every message is archived twice (sender, recipient)
/// on the message path, and a commit per append would cost a WAL write of every page it
/// touched and a hop to the blocking pool each time.
const MAX_BATCH: usize = 256;

/// An append waiting for the writer.
pub(crate) struct PendingAppend {
    table: &'static Table,
    domain: String,
    user: String,
    entry: ArchiveEntry,
    reply: tokio::sync::oneshot::Sender<Result<i64, StorageError>>,
}

/// The queue of the archive writer: one thread per database that takes every append
/// waiting when it gets to them and writes them in one transaction (group commit). Each
/// caller still gets its own answer after the commit, so an append that returned `Ok` is
/// durable, as with every other store; a failed append (unknown account, duplicate id)
/// does not fail the others of its batch.
pub(crate) type ArchiveWriter = tokio::sync::mpsc::UnboundedSender<PendingAppend>;

/// Starts the writer thread of `conn`. It ends when every sender is gone.
pub(crate) fn start_writer(conn: Shared) -> Result<ArchiveWriter, StorageError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PendingAppend>();
    std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let results = write_batch(&mut conn.lock(), &batch);
                for (job, result) in batch.drain(..).zip(results) {
                    // The caller may have gone (its task ended): nothing to tell.
                    let _ = job.reply.send(result);
                }
            }
        })
        .map_err(|e| StorageError::Backend(format!("cannot start the archive writer: {e}")))?;
    Ok(tx)
}

/// Writes a batch in one transaction; one result per job, in order.
fn write_batch(conn: &mut Connection, jobs: &[PendingAppend]) -> Vec<Result<i64, StorageError>> {
    let failed_all = |e: &StorageError| {
        jobs.iter()
            .map(|_| Err(StorageError::Backend(e.to_string())))
            .collect()
    };
    let tx = match write_tx(conn) {
        Ok(tx) => tx,
        Err(e) => return failed_all(&e),
    };
    // A failed statement is undone alone (SQLite statement atomicity); the rest commit.
    let results: Vec<_> = jobs.iter().map(|job| append_one(&tx, job)).collect();
    if let Err(e) = tx.commit().map_err(backend) {
        return failed_all(&e);
    }
    results
}

fn append_one(tx: &Transaction<'_>, job: &PendingAppend) -> Result<i64, StorageError> {
    let (table, domain, user, entry) = (job.table, &job.domain, &job.user, &job.entry);
    if table.of_accounts {
        require_account(tx, domain, user)?;
    }
    let newest: Option<i64> = tx
        .prepare_cached(&format!(
            "SELECT MAX(ts) FROM {} WHERE domain = ?1 AND username = ?2",
            table.name
        ))
        .and_then(|mut s| s.query_row(params![domain, user], |r| r.get(0)))
        .map_err(read_err)?;
    let ts = newest.map_or(entry.timestamp_us, |n| n.max(entry.timestamp_us));
    let inserted = tx
        .prepare_cached(&format!(
            "INSERT INTO {}
                 (domain, username, stanza_id, ts, with_bare, with_resource, stanza)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (domain, username, stanza_id) DO NOTHING",
            table.name
        ))
        .and_then(|mut s| {
            s.execute(params![
                domain,
                user,
                entry.id,
                ts,
                entry.with_bare,
                entry.with_resource,
                entry.stanza
            ])
        })
        .map_err(write_err)?;
    if inserted == 0 {
        return Err(StorageError::AlreadyExists);
    }
    Ok(ts)
}

impl std::fmt::Debug for SqliteArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteArchiveStore").finish_non_exhaustive()
    }
}

/// The `seq` of the entry with this id in the owner's archive, or NotFound.
fn seq_of(
    conn: &Connection,
    table: &Table,
    domain: &str,
    user: &str,
    id: &str,
) -> Result<i64, StorageError> {
    conn.prepare_cached(&format!(
        "SELECT seq FROM {} WHERE domain = ?1 AND username = ?2 AND stanza_id = ?3",
        table.name
    ))
    .and_then(|mut s| {
        s.query_row(params![domain, user, id], |r| r.get(0))
            .optional()
    })
    .map_err(read_err)?
    .ok_or(StorageError::NotFound)
}

/// A `WHERE` clause and its parameters, built up condition by condition, and the index
/// it is read through.
///
/// The index a query reads is named: the planner, without statistics, counts an owner's
/// rows through the unique id index (the widest entries) and could pick the time index for
/// a page, which would need a sort. The owner index has the narrowest entries (counts read
/// the fewest pages) and, like the `with` index, is in archive order.
#[derive(Clone)]
struct Conditions {
    source: &'static str,
    sql: String,
    values: Vec<Value>,
}

impl Conditions {
    fn new(table: &Table, domain: &str, user: &str) -> Self {
        Conditions {
            source: table.by_owner,
            sql: "domain = ? AND username = ?".to_owned(),
            values: vec![Value::Text(domain.to_owned()), Value::Text(user.to_owned())],
        }
    }

    fn and(&mut self, condition: &str, value: Value) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
        self.values.push(value);
    }

    fn and_in(&mut self, column: &str, values: impl IntoIterator<Item = Value>) {
        let start = self.values.len();
        self.values.extend(values);
        let marks = vec!["?"; self.values.len() - start].join(", ");
        self.sql.push_str(&format!(" AND {column} IN ({marks})"));
    }
}

/// The rows of the result set, as a `WHERE` clause; None when it is certainly empty
/// (a time range with no entry).
fn result_set(
    conn: &Connection,
    table: &Table,
    domain: &str,
    user: &str,
    q: &ArchiveQuery,
) -> Result<Option<Conditions>, StorageError> {
    let f = &q.filter;
    let mut c = Conditions::new(table, domain, user);
    if let Some(w) = &f.with {
        c.source = table.by_with;
        c.and("with_bare = ?", Value::Text(w.bare.clone()));
        if let Some(r) = &w.resource {
            c.and("with_resource = ?", Value::Text(r.clone()));
        }
    }
    if let Some(id) = &f.after_id {
        c.and(
            "seq > ?",
            Value::Integer(seq_of(conn, table, domain, user, id)?),
        );
    }
    if let Some(id) = &f.before_id {
        c.and(
            "seq < ?",
            Value::Integer(seq_of(conn, table, domain, user, id)?),
        );
    }
    if let Some(ids) = &f.ids {
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            seqs.push(Value::Integer(seq_of(conn, table, domain, user, id)?));
        }
        c.and_in("seq", seqs);
    }
    if let Some(start) = f.start_us {
        let first: Option<i64> = conn
            .prepare_cached(&format!(
                "SELECT seq FROM {} WHERE domain = ?1 AND username = ?2 AND ts >= ?3
                 ORDER BY ts, seq LIMIT 1",
                table.name
            ))
            .and_then(|mut s| {
                s.query_row(params![domain, user, start], |r| r.get(0))
                    .optional()
            })
            .map_err(read_err)?;
        match first {
            Some(seq) => c.and("seq >= ?", Value::Integer(seq)),
            None => return Ok(None),
        }
    }
    if let Some(end) = f.end_us {
        let last: Option<i64> = conn
            .prepare_cached(&format!(
                "SELECT seq FROM {} WHERE domain = ?1 AND username = ?2 AND ts <= ?3
                 ORDER BY ts DESC, seq DESC LIMIT 1",
                table.name
            ))
            .and_then(|mut s| {
                s.query_row(params![domain, user, end], |r| r.get(0))
                    .optional()
            })
            .map_err(read_err)?;
        match last {
            Some(seq) => c.and("seq <= ?", Value::Integer(seq)),
            None => return Ok(None),
        }
    }
    Ok(Some(c))
}

fn count(conn: &Connection, c: &Conditions) -> Result<usize, StorageError> {
    let n: i64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM {} WHERE {}",
            c.source, c.sql
        ))
        .and_then(|mut s| s.query_row(params_from_iter(c.values.iter()), |r| r.get(0)))
        .map_err(read_err)?;
    count_from(n)
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, ArchiveEntry)> {
    Ok((
        row.get(0)?,
        ArchiveEntry {
            id: row.get(1)?,
            timestamp_us: row.get(2)?,
            with_bare: row.get(3)?,
            with_resource: row.get(4)?,
            stanza: row.get(5)?,
        },
    ))
}

fn query(
    conn: &mut Connection,
    table: &Table,
    domain: &str,
    user: &str,
    q: &ArchiveQuery,
) -> Result<ArchivePage, StorageError> {
    let tx = read_tx(conn)?;
    // Ids named by the page are checked even when the set turns out empty.
    let page_seq = match &q.page {
        PageRequest::After(id) | PageRequest::Before(id) => {
            Some(seq_of(&tx, table, domain, user, id)?)
        }
        PageRequest::First | PageRequest::Last => None,
    };
    let Some(set) = result_set(&tx, table, domain, user, q)? else {
        return Ok(ArchivePage {
            complete: true,
            ..ArchivePage::default()
        });
    };
    let total = count(&tx, &set)?;
    let mut page = set.clone();
    let backwards = q.page.is_backwards();
    match (&q.page, page_seq) {
        (PageRequest::After(_), Some(seq)) => page.and("seq > ?", Value::Integer(seq)),
        (PageRequest::Before(_), Some(seq)) => page.and("seq < ?", Value::Integer(seq)),
        _ => {}
    }
    // One row more than the page: whether it exists says whether the page is the last.
    page.values
        .push(Value::Integer(to_i64(q.max).saturating_add(1)));
    let sql = format!(
        "SELECT seq, stanza_id, ts, with_bare, with_resource, stanza FROM {}
         WHERE {} ORDER BY seq {} LIMIT ?",
        page.source,
        page.sql,
        if backwards { "DESC" } else { "ASC" }
    );
    let mut rows = {
        let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(page.values.iter()), entry_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(read_err)?
    };
    let complete = rows.len() <= q.max;
    rows.truncate(q.max);
    if backwards {
        rows.reverse();
    }
    let first_index = match (rows.first(), &q.page) {
        (None, _) => None,
        (Some(_), PageRequest::First) => Some(0),
        (Some(_), PageRequest::Last) => Some(total - rows.len()),
        (Some((first_seq, _)), _) => {
            let mut before = set.clone();
            before.and("seq < ?", Value::Integer(*first_seq));
            Some(count(&tx, &before)?)
        }
    };
    Ok(ArchivePage {
        entries: rows.into_iter().map(|(_, e)| e).collect(),
        count: total,
        first_index,
        complete,
    })
}

#[async_trait::async_trait]
impl ArchiveStore for SqliteArchiveStore {
    async fn append_archive(
        &self,
        domain: &str,
        user: &str,
        entry: &ArchiveEntry,
    ) -> Result<i64, StorageError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = PendingAppend {
            table: self.table,
            domain: domain.to_owned(),
            user: user.to_owned(),
            entry: entry.clone(),
            reply,
        };
        self.writer
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
        let (domain, user, q) = (domain.to_owned(), user.to_owned(), q.clone());
        let table = self.table;
        run(&self.conn, move |conn| {
            query(conn, table, &domain, &user, &q)
        })
        .await
    }

    async fn archive_bounds(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Option<(ArchiveBound, ArchiveBound)>, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = read_tx(conn)?;
            let bound = |order: &str| -> Result<Option<ArchiveBound>, StorageError> {
                tx.prepare_cached(&format!(
                    "SELECT stanza_id, ts FROM {} WHERE domain = ?1 AND username = ?2
                     ORDER BY seq {order} LIMIT 1",
                    table.name
                ))
                .and_then(|mut s| {
                    s.query_row(params![domain, user], |r| {
                        Ok(ArchiveBound {
                            id: r.get(0)?,
                            timestamp_us: r.get(1)?,
                        })
                    })
                    .optional()
                })
                .map_err(read_err)
            };
            Ok(match (bound("ASC")?, bound("DESC")?) {
                (Some(first), Some(last)) => Some((first, last)),
                _ => None,
            })
        })
        .await
    }

    async fn purge_archive(&self, before_us: i64, limit: usize) -> Result<usize, StorageError> {
        let table = self.table;
        run(&self.conn, move |conn| {
            // One bounded transaction per call: the write lock is held for `limit` rows at
            // most, so messages keep being archived while a large backlog is purged.
            let tx = write_tx(conn)?;
            let n = tx
                .prepare_cached(&format!(
                    "DELETE FROM {t} WHERE seq IN
                         (SELECT seq FROM {t} WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                    t = table.name
                ))
                .and_then(|mut s| s.execute(params![before_us, to_i64(limit)]))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n)
        })
        .await
    }

    async fn replace_archived(
        &self,
        domain: &str,
        user: &str,
        id: &str,
        stanza: &str,
    ) -> Result<(), StorageError> {
        let (domain, user, id, stanza) = (
            domain.to_owned(),
            user.to_owned(),
            id.to_owned(),
            stanza.to_owned(),
        );
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE {} SET stanza = ?4
                     WHERE domain = ?1 AND username = ?2 AND stanza_id = ?3",
                    table.name
                ))
                .and_then(|mut s| s.execute(params![domain, user, id, stanza]))
                .map_err(write_err)?;
            tx.commit().map_err(backend)?;
            if n == 0 {
                Err(StorageError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn delete_archive(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        let (domain, user) = (domain.to_owned(), user.to_owned());
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let n = tx
                .prepare_cached(&format!(
                    "DELETE FROM {} WHERE domain = ?1 AND username = ?2",
                    table.name
                ))
                .and_then(|mut s| s.execute(params![domain, user]))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n)
        })
        .await
    }

    async fn count_archived(&self) -> Result<Option<u64>, StorageError> {
        let table = self.table;
        run(&self.conn, move |conn| {
            // `count(*)` walks the smallest index (`…_purge`, one integer per row) and reads no
            // stanza; the server asks every few minutes, not per scrape.
            let n: i64 = conn
                .prepare_cached(&format!("SELECT count(*) FROM {}", table.name))
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(backend)?;
            Ok(Some(u64::try_from(n).unwrap_or(0)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteBackend;
    use rookery_storage::{ArchiveFilter, WithFilter};

    /// Statements traced on the connection under test (only this test installs this tracer).
    static TRACED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

    fn record(sql: &str) {
        TRACED.lock().push(sql.trim_start().to_owned());
    }

    /// Every statement a query runs seeks an index: no full scan of the table, no sort of
    /// the rows (the index gives them in archive order), whatever the query.
    #[tokio::test]
    async fn archive_queries_seek_indexes_and_never_sort() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let s = b.storage();
        for user in ["alice", "bob"] {
            s.accounts
                .create_account("example.org", user, &[])
                .await
                .expect("create");
            for n in 0..200 {
                let entry = ArchiveEntry {
                    id: format!("{user}-{n}"),
                    timestamp_us: 1000 * n,
                    with_bare: format!("c{}@example.net", n % 3),
                    with_resource: format!("r{}", n % 2),
                    stanza: "<message/>".into(),
                };
                s.archive
                    .append_archive("example.org", user, &entry)
                    .await
                    .expect("append");
            }
        }
        b.conn.lock().trace(Some(record));
        TRACED.lock().clear();
        let with = Some(WithFilter {
            bare: "c1@example.net".into(),
            resource: None,
        });
        let filters = [
            ArchiveFilter::default(),
            ArchiveFilter {
                with: with.clone(),
                ..ArchiveFilter::default()
            },
            ArchiveFilter {
                with: Some(WithFilter {
                    bare: "c1@example.net".into(),
                    resource: Some("r1".into()),
                }),
                start_us: Some(50_000),
                end_us: Some(150_000),
                ..ArchiveFilter::default()
            },
            ArchiveFilter {
                after_id: Some("alice-10".into()),
                before_id: Some("alice-190".into()),
                ..ArchiveFilter::default()
            },
            ArchiveFilter {
                ids: Some(vec!["alice-3".into(), "alice-99".into()]),
                ..ArchiveFilter::default()
            },
        ];
        let pages = [
            PageRequest::First,
            PageRequest::Last,
            PageRequest::After("alice-100".into()),
            PageRequest::Before("alice-100".into()),
        ];
        for filter in &filters {
            for page in &pages {
                let q = ArchiveQuery {
                    filter: filter.clone(),
                    page: page.clone(),
                    max: 10,
                };
                let p = s
                    .archive
                    .query_archive("example.org", "alice", &q)
                    .await
                    .expect("query");
                assert!(p.entries.len() <= 10);
            }
        }
        s.archive
            .archive_bounds("example.org", "alice")
            .await
            .expect("bounds");
        b.conn.lock().trace(None);
        let selects: Vec<String> = std::mem::take(&mut *TRACED.lock())
            .into_iter()
            .filter(|s| s.starts_with("SELECT"))
            .collect();
        assert!(selects.len() > 40, "{}", selects.len());
        let conn = b.conn.lock();
        for sql in selects {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map([], |r| r.get(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            for step in &plan {
                assert!(
                    step.contains("USING") && !step.contains("TEMP B-TREE"),
                    "{sql}\n{plan:?}"
                );
            }
        }
    }
}
