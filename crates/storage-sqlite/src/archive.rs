//! Message archives (XEP-0313) on SQLite (schema: `migrations/0009_lean_archive.sql`).
//!
//! An archive's owner is a row of `archive_owners` (`muc_archive_owners` for rooms) and
//! its entries reference it by integer id. Within an owner, archive order is `seq` order,
//! and also `(ts, n)` order (`ts` never decreases, the ordinal `n` increases), so a query
//! becomes a lower and an upper bound on one row each: ids (RSM after/before, after-id,
//! before-id) are looked up by the time their prefix gives, through `(owner, ts, n)` (or,
//! for the few entries whose `ts` is not their id's time, in the ids table: [`row_of`]),
//! `start`/`end` through `(owner, ts, n)` too. The page is then one range seek, on `(owner, ts, n)` with
//! row-value bounds, or on `(owner, with_bare)` (in `seq` order) with `seq` bounds,
//! reading at most `max + 1` rows (the extra one tells whether the page is the last).
//!
//! Counts cost two seeks, not the set: rows are only ever deleted as an owner's oldest
//! entries (the purge) or all of them, so the entries between two rows of an unfiltered
//! set number the difference of their ordinals `n`, and those of a set filtered by a bare
//! JID the difference of their ordinals `wn` (numbered per owner and bare JID). The size
//! of the set is `last - first + 1` and a page's first index `page_first - first`, exact
//! at any size (so the approximate count XEP-0059 §2.2 allows for large sets is not used).
//! The two shapes without an ordinal, a full JID and a list of ids, are counted with
//! `COUNT(*)`: an ids list is short (the caller caps it), and a full JID's set is the part
//! of one conversation from one resource. All statements of a query run in one read
//! transaction, so they see one snapshot.
//!
//! Appends go through one writer thread per database that commits every append waiting
//! at that moment in one transaction (group commit, [`start_writer`]). On the message path
//! they are journaled first (`journal.rs`) and acknowledged without waiting for the commit;
//! every read waits for the writer to commit what was journaled before it.

use rookery_storage::{
    ArchiveBound, ArchiveEntry, ArchiveFilter, ArchivePage, ArchiveQuery, ArchiveStore,
    PageRequest, StorageError, WithFilter,
};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::im::{count_from, read_err, read_tx, require_account, to_i64, write_err, write_tx};
use crate::journal;
use crate::{backend, run, Shared};

/// [`ArchiveStore`] on SQLite: account archives (table `archive`) or room archives
/// (table `muc_archive`, the same shape, its owners referencing no account).
#[derive(Clone)]
pub struct SqliteArchiveStore {
    pub(crate) conn: Shared,
    pub(crate) writer: ArchiveWriter,
    pub(crate) table: &'static Table,
    /// The owner id the next purge call starts from (see `purge_archive`).
    pub(crate) purge_from: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// One archive table, its owners and its indexes.
#[derive(Debug)]
pub(crate) struct Table {
    name: &'static str,
    owners: &'static str,
    /// The table read through `(owner, ts, n)`, named: without statistics the planner
    /// could pick the unique id index for a range, which would need a sort.
    by_time: &'static str,
    by_with: &'static str,
    /// The table read by `seq` alone (an ids filter): the planner would otherwise scan the
    /// owner's range of `(owner, ts, n)`, which covers `owner` and `seq`.
    by_seq: &'static str,
    /// The entries whose id does not carry their timestamp (see [`row_of`]).
    ids: &'static str,
    /// Owners are accounts, which must exist to be written to.
    of_accounts: bool,
    /// The table's number in journal records.
    pub(crate) tag: u8,
}

impl Table {
    fn of_tag(tag: u8) -> Option<&'static Table> {
        [&ACCOUNTS, &ROOMS].into_iter().find(|t| t.tag == tag)
    }
}

pub(crate) const ACCOUNTS: Table = Table {
    name: "archive",
    owners: "archive_owners",
    by_time: "archive INDEXED BY archive_time",
    by_with: "archive INDEXED BY archive_with",
    by_seq: "archive NOT INDEXED",
    ids: "archive_ids",
    of_accounts: true,
    tag: 0,
};

pub(crate) const ROOMS: Table = Table {
    name: "muc_archive",
    owners: "muc_archive_owners",
    by_time: "muc_archive INDEXED BY muc_archive_time",
    by_with: "muc_archive INDEXED BY muc_archive_with",
    by_seq: "muc_archive NOT INDEXED",
    ids: "muc_archive_ids",
    of_accounts: false,
    tag: 1,
};

/// Appends most in one transaction. Every message is archived twice (sender, recipient),
/// and a commit writes a whole page for every index leaf its appends touched: the more
/// appends of the same archives a batch holds, the fewer pages per append. Journaled
/// appends don't wait for the commit, so their batches grow to this under load: with 1,000
/// accounts messaging flat out, 4,096 gave about four appends per archive and a batch,
/// and 16,384 raised the throughput by a quarter (BENCHMARKS.md).
const MAX_BATCH: usize = 16384;

/// How long the writer lets journaled appends gather before it commits them, when no one
/// waits for that commit (no committed append in the batch, no read waiting to settle).
/// Nobody's message waits for it, and one commit per interval instead of one per append
/// (at moderate rates) spares the server's core a transaction, a thread wake-up and a WAL
/// write of the same index pages each time.
///
/// A read or a committed append that arrives meanwhile wakes the writer, which then commits
/// at once: only journaled appends, which nobody waits for, ever wait for the gathering.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// How long the writer gathers once its previous batch was over [`YIELDING_BATCH`] appends:
/// the server is saturated. The larger a batch, the fewer index pages a commit writes per
/// append (a page changed by many appends of a batch is written once), and at saturation a
/// tenth of a second gathers about ten appends per archive of 1,000 accounts messaging:
/// that raised the archived messages per second by about 6 % (BENCHMARKS.md). At moderate
/// rates batches stay small and commits short, which keeps the latency tail low.
const GATHER_SATURATED: std::time::Duration = std::time::Duration::from_millis(100);

/// The writer offers its core to other threads (`sched_yield`) after this many appends of
/// a batch. On a busy core the scheduler otherwise lets a running thread finish its time
/// slice (milliseconds) before a thread woken by a client's message gets the core, and
/// those waits were the tail of message latency; a yield costs a system call when no one
/// else is waiting.
/// Only batches up to [`YIELDING_BATCH`] appends yield: a larger one means the server is
/// saturated, latency is then queueing, and the yields would only cost throughput.
const YIELD_EVERY: usize = 16;

/// See [`YIELD_EVERY`].
const YIELDING_BATCH: usize = 512;

/// Journaled appends not yet committed, at most: past this, appends wait for the writer
/// (memory stays bounded, and so does the wait of a read for what is journaled).
const MAX_UNCOMMITTED: usize = 64 * 1024;

/// How long a read waits for the writer to commit what was journaled before it; past
/// this (the database has been failing for that long) it reads what is committed.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An append waiting for the writer: its table and its journal record ([`journal::encode`]),
/// one buffer instead of six strings (the writer thread frees what it is sent, and a free
/// from another thread than the allocating one is the allocator's slow path).
pub(crate) struct PendingAppend {
    table: &'static Table,
    record: Vec<u8>,
    done: Done,
}

impl PendingAppend {
    fn new(table: &'static Table, domain: &str, user: &str, e: &ArchiveEntry, done: Done) -> Self {
        PendingAppend {
            table,
            record: record_of(table, domain, user, e),
            done,
        }
    }
}

/// The journal record of an append ([`journal::encode`]).
fn record_of(table: &Table, domain: &str, user: &str, e: &ArchiveEntry) -> Vec<u8> {
    let mut record = Vec::with_capacity(64 + e.stanza.len());
    journal::encode(&mut record, table.tag, domain, user, e);
    record
}

/// What the writer does once an append is committed.
enum Done {
    /// Answer the caller, who waits for the commit.
    Reply(tokio::sync::oneshot::Sender<Result<i64, StorageError>>),
    /// The append is in the journal, which the commit catches up to: the `seq`-th
    /// journaled append of this process, ending at `at`.
    Journaled { seq: u64, at: journal::Position },
}

/// The queue of the archive writer: one thread per database that takes every append
/// waiting when it gets to them and writes them in one transaction (group commit).
///
/// An append comes one of two ways. Committed ([`SqliteArchiveStore::append_archive`]):
/// the caller gets its answer after the commit, so an append that returned `Ok` is durable
/// and a failed one (unknown account, duplicate id) does not fail the others of its batch.
/// Journaled ([`SqliteArchiveStore::append_archive_journaled`], when this process owns the
/// database's journal): the caller returns once the record is in the journal (`journal.rs`);
/// a batch that cannot be committed is retried until it is, and an append the database
/// refuses (its account is gone) is dropped with a log line. Both go through one queue,
/// committed in queue order.
#[derive(Clone)]
pub(crate) struct ArchiveWriter {
    queue: tokio::sync::mpsc::UnboundedSender<PendingAppend>,
    shared: Arc<WriterState>,
}

struct WriterState {
    /// The journal, when this process owns it. Appends are written and queued under this
    /// lock, so queue order is journal order.
    journal: Option<parking_lot::Mutex<journal::Journal>>,
    /// The number of appends journaled so far (the last one's `seq`).
    journaled: AtomicU64,
    /// The `seq` of the last journaled append committed.
    committed: AtomicU64,
    /// Woken after every commit of journaled appends.
    settled: tokio::sync::Notify,
    /// Room for journaled appends not yet committed ([`MAX_UNCOMMITTED`]).
    room: tokio::sync::Semaphore,
    /// Reads waiting for the writer ([`ArchiveWriter::settle`]): it then commits at once.
    readers: std::sync::atomic::AtomicUsize,
    /// The writer thread, unparked to end its gathering early (see [`GATHER`]).
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl WriterState {
    /// Cuts the writer's gathering short: someone waits for its next commit.
    fn hurry(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Starts the writer thread of `conn` (`own_connection`: no other store uses it), with the
/// journal this process owns, if any. It ends when every sender is gone.
pub(crate) fn start_writer(
    conn: Shared,
    own_connection: bool,
    journal: Option<journal::Journal>,
) -> Result<ArchiveWriter, StorageError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PendingAppend>();
    let mut retired = journal
        .as_ref()
        .map(|j| (j.dir().to_owned(), j.first_segment()));
    let shared = Arc::new(WriterState {
        journal: journal.map(parking_lot::Mutex::new),
        journaled: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        settled: tokio::sync::Notify::new(),
        room: tokio::sync::Semaphore::new(MAX_UNCOMMITTED),
        readers: std::sync::atomic::AtomicUsize::new(0),
        thread: std::sync::OnceLock::new(),
    });
    let state = shared.clone();
    let writer = std::thread::Builder::new()
        .name("archive-writer".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut cache = AppendCache {
                shared_connection: !own_connection,
                ..AppendCache::default()
            };
            let mut saturated = false;
            while let Some(first) = rx.blocking_recv() {
                // Out of a real-time policy if one was set since (see `lower_priority`).
                crate::lower_priority(0);
                batch.push(first);
                drain(&mut rx, &mut batch);
                let gather = if saturated { GATHER_SATURATED } else { GATHER };
                let deadline = std::time::Instant::now() + gather;
                while batch.len() < MAX_BATCH && unwaited(&state, &batch) {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // Woken early by `hurry`; a spurious wake-up only drains sooner.
                    std::thread::park_timeout(deadline - now);
                    drain(&mut rx, &mut batch);
                }
                saturated = batch.len() > YIELDING_BATCH;
                let results = commit_batch(&conn, &mut cache, &mut batch);
                let mut last = None;
                let mut journaled = 0;
                for (job, result) in batch.drain(..).zip(results) {
                    match job.done {
                        // The caller may have gone (its task ended): nothing to tell.
                        Done::Reply(reply) => drop(reply.send(result)),
                        Done::Journaled { seq, at } => {
                            journaled += 1;
                            last = Some((seq, at));
                            if let (Err(e), Some(r)) = (result, journal::fields(&job.record)) {
                                dropped(r.domain, r.user, &e);
                            }
                        }
                    }
                }
                if let Some((seq, at)) = last {
                    state.committed.store(seq, Ordering::Release);
                    state.room.add_permits(journaled);
                    state.settled.notify_waiters();
                    if let Some((dir, from)) = retired.as_mut() {
                        *from = journal::retire(dir, *from, at);
                    }
                }
            }
        })
        .map_err(|e| StorageError::Backend(format!("cannot start the archive writer: {e}")))?;
    // Set once, before any append can be queued (the sender is still here).
    let _ = shared.thread.set(writer.thread().clone());
    Ok(ArchiveWriter { queue: tx, shared })
}

/// Whether no one waits for the commit of `batch`: no committed append in it, no read
/// waiting to settle.
fn unwaited(state: &WriterState, batch: &[PendingAppend]) -> bool {
    state.readers.load(Ordering::Acquire) == 0
        && batch
            .iter()
            .all(|j| matches!(j.done, Done::Journaled { .. }))
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`].
fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<PendingAppend>,
    batch: &mut Vec<PendingAppend>,
) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// A journaled append the database refused: it was acknowledged, so say so loudly unless
/// its owner is simply gone.
fn dropped(domain: &str, user: &str, e: &StorageError) {
    match e {
        StorageError::NotFound => {
            tracing::debug!(%domain, %user, "archive entry for a deleted account dropped")
        }
        e => tracing::error!(%domain, %user, error = %e, "journaled archive entry dropped"),
    }
}

/// Commits a batch: one result per job, in order. When the transaction as a whole fails,
/// the committed appends get the error and the journaled ones are tried again, with a
/// growing pause, until they commit: they were acknowledged, and the journal's position
/// must not move past them.
fn commit_batch(
    conn: &Shared,
    cache: &mut AppendCache,
    batch: &mut Vec<PendingAppend>,
) -> Vec<Result<i64, StorageError>> {
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match write_batch(&mut conn.lock(), cache, batch) {
            Ok(results) => return results,
            Err(e) => {
                let journaled = batch
                    .iter()
                    .filter(|j| matches!(j.done, Done::Journaled { .. }))
                    .count();
                if journaled == 0 {
                    return batch
                        .iter()
                        .map(|_| Err(StorageError::Backend(e.to_string())))
                        .collect();
                }
                tracing::error!(error = %e, appends = journaled, "archive commit failed; retrying");
                // Answer the waiting callers now; keep the journaled appends, in order.
                for job in std::mem::take(batch) {
                    match job.done {
                        Done::Reply(reply) => {
                            drop(reply.send(Err(StorageError::Backend(e.to_string()))))
                        }
                        Done::Journaled { .. } => batch.push(job),
                    }
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Writes a batch in one transaction; one result per job, in order. Err when the
/// transaction failed as a whole (nothing of it is committed), or when a journaled append
/// failed for a reason other than the database refusing it.
fn write_batch(
    conn: &mut Connection,
    cache: &mut AppendCache,
    jobs: &[PendingAppend],
) -> Result<Vec<Result<i64, StorageError>>, StorageError> {
    let result = write_batch_cached(conn, cache, jobs);
    if result.is_err() {
        // What the cache learnt in the transaction was undone with it.
        cache.clear();
    }
    result
}

fn write_batch_cached(
    conn: &mut Connection,
    cache: &mut AppendCache,
    jobs: &[PendingAppend],
) -> Result<Vec<Result<i64, StorageError>>, StorageError> {
    let tx = write_tx(conn)?;
    cache.check(&tx)?;
    let mut inserts = Inserts::default();
    // A failed statement is undone alone (SQLite statement atomicity); the rest commit.
    let mut results = Vec::with_capacity(jobs.len());
    let mut reached = None;
    for (i, job) in jobs.iter().enumerate() {
        if i % YIELD_EVERY == YIELD_EVERY - 1 && jobs.len() <= YIELDING_BATCH {
            // Let a thread that has messages to deliver have the core (see YIELD_EVERY).
            std::thread::yield_now();
        }
        // A journaled append's id was made for it by the server (see `append_one`).
        let checked = matches!(job.done, Done::Reply(_));
        let result = match journal::fields(&job.record) {
            Some(r) => append_one(&tx, cache, &mut inserts, job.table, &r, checked),
            // Encoded by this process a moment ago: cannot happen.
            None => Err(StorageError::Corrupt("malformed archive append".into())),
        };
        if let Done::Journaled { at, .. } = job.done {
            if matches!(result, Err(StorageError::Backend(_))) {
                return result.map(|_| Vec::new());
            }
            reached = Some(at);
        }
        results.push(result);
    }
    drop(inserts);
    if let Some(at) = reached {
        store_position(&tx, at)?;
    }
    tx.commit().map_err(backend)?;
    Ok(results)
}

/// Records in `tx` that the journal is committed up to `at`.
fn store_position(tx: &Transaction<'_>, at: journal::Position) -> Result<(), StorageError> {
    tx.prepare_cached("UPDATE archive_journal SET segment = ?1, offset = ?2 WHERE id = 1")
        .and_then(|mut s| {
            s.execute(params![
                i64::try_from(at.segment).unwrap_or(i64::MAX),
                i64::try_from(at.offset).unwrap_or(i64::MAX)
            ])
        })
        .map_err(backend)?;
    Ok(())
}

/// Where the journal was committed up to, as stored.
pub(crate) fn stored_position(conn: &Connection) -> Result<journal::Position, StorageError> {
    let (segment, offset): (i64, i64) = conn
        .query_row(
            "SELECT segment, offset FROM archive_journal WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(read_err)?;
    Ok(journal::Position {
        segment: u64::try_from(segment).unwrap_or(0),
        offset: u64::try_from(offset).unwrap_or(0),
    })
}

/// Commits the records a previous run journaled but did not commit (at open, before the
/// writer starts), in batches, each with the position it reaches. Returns how many.
pub(crate) fn replay(
    conn: &mut Connection,
    records: Vec<(journal::Position, journal::Record)>,
) -> Result<usize, StorageError> {
    let n = records.len();
    let mut cache = AppendCache::default();
    for chunk in records.chunks(MAX_BATCH) {
        let tx = write_tx(conn)?;
        cache.check(&tx)?;
        let mut inserts = Inserts::default();
        for (_, r) in chunk {
            let Some(table) = Table::of_tag(r.table) else {
                tracing::error!(
                    tag = r.table,
                    "journaled archive entry of an unknown table dropped"
                );
                continue;
            };
            match append_one(&tx, &mut cache, &mut inserts, table, &r.as_ref(), true) {
                Ok(_) => {}
                // Committed before the position was: the record was replayed already.
                Err(StorageError::AlreadyExists) => {}
                Err(e @ StorageError::Backend(_)) => return Err(e),
                Err(e) => dropped(&r.domain, &r.user, &e),
            }
        }
        drop(inserts);
        if let Some((at, _)) = chunk.last() {
            store_position(&tx, *at)?;
        }
        tx.commit().map_err(backend)?;
    }
    Ok(n)
}

impl ArchiveWriter {
    fn stopped() -> StorageError {
        StorageError::Backend("the archive writer has stopped".into())
    }

    /// Waits until every append journaled before this call is committed (or
    /// [`SETTLE_TIMEOUT`] has passed), so a read sees them.
    async fn settle(&self) {
        let target = self.shared.journaled.load(Ordering::Acquire);
        if self.shared.committed.load(Ordering::Acquire) >= target {
            return;
        }
        let wait = async {
            loop {
                let notified = self.shared.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.shared.committed.load(Ordering::Acquire) >= target {
                    return;
                }
                notified.await;
            }
        };
        self.shared.readers.fetch_add(1, Ordering::AcqRel);
        self.shared.hurry();
        let waited = tokio::time::timeout(SETTLE_TIMEOUT, wait).await;
        self.shared.readers.fetch_sub(1, Ordering::AcqRel);
        if waited.is_err() {
            tracing::warn!("the archive writer is behind; reading what is committed");
        }
    }
}

/// The id of the owner's row, if it has one (it has one once it has archived anything).
fn owner_id(
    conn: &Connection,
    table: &Table,
    domain: &str,
    user: &str,
) -> Result<Option<i64>, StorageError> {
    conn.prepare_cached(&format!(
        "SELECT id FROM {} WHERE domain = ?1 AND username = ?2",
        table.owners
    ))
    .and_then(|mut s| s.query_row(params![domain, user], |r| r.get(0)).optional())
    .map_err(read_err)
}

/// What the writer knows of the archives it appends to, so that an append is one
/// `INSERT` instead of three look-ups and an insert: owner ids, and each archive's newest
/// timestamp and ordinals. Only the writer appends, but other connections delete (an
/// account, a room's archive, the purge), in this process or another: the cache is
/// emptied whenever the database changed through another connection (`PRAGMA
/// data_version`, read under the write lock), and when a transaction of the writer fails.
#[derive(Default)]
pub(crate) struct AppendCache {
    /// The writer shares its connection with the other stores (an in-memory database):
    /// their changes don't move `data_version`, so nothing is kept between transactions.
    shared_connection: bool,
    data_version: i64,
    /// Owner ids by table tag, domain and name.
    owners: [std::collections::HashMap<String, std::collections::HashMap<String, i64>>; 2],
    /// The newest `(ts, n)` of an owner's archive, by table tag and owner id.
    newest: [std::collections::HashMap<i64, (i64, i64)>; 2],
    /// The newest `wn` of an owner's entries with one bare JID.
    newest_with: [std::collections::HashMap<i64, std::collections::HashMap<String, i64>>; 2],
    /// Entries in `newest_with`, which grows with the conversations: bounded by this.
    with_entries: usize,
}

/// At most this many (owner, bare JID) ordinals are cached; past it the cache starts over.
const MAX_CACHED_WITH: usize = 256 * 1024;

impl AppendCache {
    /// Empties the cache unless the database is as this connection left it. Call with the
    /// write lock held (in a write transaction).
    fn check(&mut self, tx: &Transaction<'_>) -> Result<(), StorageError> {
        let version: i64 = tx
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(backend)?;
        if version != self.data_version || self.shared_connection {
            *self = AppendCache {
                data_version: version,
                shared_connection: self.shared_connection,
                ..AppendCache::default()
            };
        }
        Ok(())
    }

    fn clear(&mut self) {
        *self = AppendCache {
            shared_connection: self.shared_connection,
            ..AppendCache::default()
        };
    }
}

/// The row insert of each table, prepared once for a batch: looking a statement up in the
/// connection's cache by its text (and formatting that text) for every append, then
/// clearing its bindings, was a twentieth of the archive writer's time.
#[derive(Default)]
struct Inserts<'t>([Option<rusqlite::CachedStatement<'t>>; 2]);

impl<'t> Inserts<'t> {
    fn of(
        &mut self,
        tx: &'t Transaction<'_>,
        table: &Table,
    ) -> Result<&mut rusqlite::CachedStatement<'t>, StorageError> {
        let slot = &mut self.0[usize::from(table.tag)];
        let statement = match slot.take() {
            Some(statement) => statement,
            None => tx
                .prepare_cached(&format!(
                    "INSERT INTO {}
                         (owner, ts, n, wn, stanza_id, with_bare, with_resource, stanza)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    table.name
                ))
                .map_err(write_err)?,
        };
        Ok(slot.insert(statement))
    }
}

/// Appends `entry` to the owner's archive; returns the timestamp stored.
///
/// `checked`: AlreadyExists if the archive has an entry with this id. A journaled append
/// is not checked: its id is one the server has just made for it (the archiving time and
/// 95 random bits, `mam::new_stanza_id`), unique by construction, and the look-ups cost
/// about a tenth of an append (BENCHMARKS.md).
fn append_one<'t>(
    tx: &'t Transaction<'_>,
    cache: &mut AppendCache,
    inserts: &mut Inserts<'t>,
    table: &Table,
    entry: &journal::RecordRef<'_>,
    checked: bool,
) -> Result<i64, StorageError> {
    let (domain, user) = (entry.domain, entry.user);
    let t = usize::from(table.tag);
    let cached = cache.owners[t]
        .get(domain)
        .and_then(|u| u.get(user))
        .copied();
    let owner = match cached {
        Some(id) => id,
        None => {
            let id = match owner_id(tx, table, domain, user)? {
                Some(id) => id,
                None => {
                    // An owner row of an account exists only while the account does (it
                    // cascades from `accounts`), so the account is checked only when the
                    // row is made.
                    if table.of_accounts {
                        require_account(tx, domain, user)?;
                    }
                    tx.prepare_cached(&format!(
                        "INSERT INTO {} (domain, username) VALUES (?1, ?2)",
                        table.owners
                    ))
                    .and_then(|mut s| s.insert(params![domain, user]))
                    .map_err(write_err)?
                }
            };
            cache.owners[t]
                .entry(domain.to_owned())
                .or_default()
                .insert(user.to_owned(), id);
            id
        }
    };
    // The newest entry, overall and with this bare JID: the timestamp never decreases and
    // the ordinals continue from theirs (see the module documentation).
    let newest = match cache.newest[t].get(&owner) {
        Some(&newest) => Some(newest),
        None => tx
            .prepare_cached(&format!(
                "SELECT ts, n FROM {} WHERE owner = ?1 ORDER BY ts DESC, n DESC LIMIT 1",
                table.by_time
            ))
            .and_then(|mut s| {
                s.query_row(params![owner], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(read_err)?,
    };
    let (ts, n) = newest.map_or((entry.timestamp_us, 1), |(ts, n)| {
        (ts.max(entry.timestamp_us), n.saturating_add(1))
    });
    let cached_with = cache.newest_with[t]
        .get(&owner)
        .and_then(|w| w.get(entry.with_bare))
        .copied();
    let newest_with = match cached_with {
        Some(wn) => Some(wn),
        None => tx
            .prepare_cached(&format!(
                "SELECT wn FROM {} WHERE owner = ?1 AND with_bare = ?2 ORDER BY seq DESC LIMIT 1",
                table.by_with
            ))
            .and_then(|mut s| {
                s.query_row(params![owner, entry.with_bare], |r| r.get(0))
                    .optional()
            })
            .map_err(read_err)?,
    };
    let wn = newest_with.map_or(1, |wn| wn.saturating_add(1));
    if checked {
        match row_of(tx, table, owner, entry.id) {
            Ok(_) => return Err(StorageError::AlreadyExists),
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let seq = inserts
        .of(tx, table)?
        .insert(params![
            owner,
            ts,
            n,
            wn,
            entry.id,
            entry.with_bare,
            entry.with_resource,
            // Text, not a blob: UTF-8 (see `RecordRef::stanza`).
            ToSqlOutput::Borrowed(ValueRef::Text(entry.stanza))
        ])
        .map_err(write_err)?;
    if rookery_storage::id_time(entry.id) != Some(ts) {
        // Not found by its time: listed. A clash here (an unchecked append) keeps the
        // first entry's listing; ids are unique by construction on that path.
        tx.prepare_cached(&format!(
            "INSERT INTO {} (owner, stanza_id, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner, stanza_id) DO NOTHING",
            table.ids
        ))
        .and_then(|mut s| s.execute(params![owner, entry.id, seq]))
        .map_err(write_err)?;
    }
    cache.newest[t].insert(owner, (ts, n));
    if cached_with.is_none() {
        if cache.with_entries >= MAX_CACHED_WITH {
            cache.newest_with = Default::default();
            cache.with_entries = 0;
        }
        cache.with_entries += 1;
    }
    let with = cache.newest_with[t].entry(owner).or_default();
    match with.get_mut(entry.with_bare) {
        Some(slot) => *slot = wn,
        None => {
            with.insert(entry.with_bare.to_owned(), wn);
        }
    }
    Ok(ts)
}

impl std::fmt::Debug for SqliteArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteArchiveStore").finish_non_exhaustive()
    }
}

/// Where an entry is in its archive: its `seq`, and its `(ts, n)` and `wn` (see the
/// module documentation).
#[derive(Debug, Clone, Copy)]
struct Row {
    seq: i64,
    ts: i64,
    n: i64,
    wn: i64,
}

const ROW_COLUMNS: &str = "seq, ts, n, wn";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        ts: r.get(1)?,
        n: r.get(2)?,
        wn: r.get(3)?,
    })
}

/// The entry with this id in the owner's archive, or NotFound.
///
/// There is no index of ids (`migrations/0011_archive_ids.sql`): an id that carries a
/// time ([`rookery_storage::id_time`], the server's own ids) is looked for among the
/// owner's entries at that time, through `(owner, ts, n)`; an entry whose `ts` is not its
/// id's time is listed in the ids table, looked in next.
fn row_of(conn: &Connection, table: &Table, owner: i64, id: &str) -> Result<Row, StorageError> {
    if let Some(ts) = rookery_storage::id_time(id) {
        let row = conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM {} WHERE owner = ?1 AND ts = ?2 AND stanza_id = ?3",
                table.by_time
            ))
            .and_then(|mut s| s.query_row(params![owner, ts, id], row_from).optional())
            .map_err(read_err)?;
        if let Some(row) = row {
            return Ok(row);
        }
    }
    conn.prepare_cached(&format!(
        "SELECT a.seq, a.ts, a.n, a.wn FROM {ids} i JOIN {t} a ON a.seq = i.seq
         WHERE i.owner = ?1 AND i.stanza_id = ?2 AND a.owner = ?1",
        ids = table.ids,
        t = table.name
    ))
    .and_then(|mut s| s.query_row(params![owner, id], row_from).optional())
    .map_err(read_err)?
    .ok_or(StorageError::NotFound)
}

/// One end of a range of an archive: at or beyond (`inclusive`) or strictly beyond a row.
#[derive(Debug, Clone, Copy)]
struct Bound {
    row: Row,
    inclusive: bool,
}

/// The tighter of two lower bounds (`lower`) or two upper bounds. Archive order is `n`
/// order within an owner.
fn tighter(a: Option<Bound>, b: Bound, lower: bool) -> Bound {
    let Some(a) = a else { return b };
    match a.row.n.cmp(&b.row.n) {
        std::cmp::Ordering::Equal => Bound {
            row: a.row,
            inclusive: a.inclusive && b.inclusive,
        },
        std::cmp::Ordering::Less => {
            if lower {
                b
            } else {
                a
            }
        }
        std::cmp::Ordering::Greater => {
            if lower {
                a
            } else {
                b
            }
        }
    }
}

/// A result set: the owner's entries matching `with` and `ids`, between `lower` and
/// `upper`.
#[derive(Debug, Clone)]
struct Set {
    owner: i64,
    with: Option<WithFilter>,
    /// The `seq` of each entry of an ids filter.
    ids: Option<Vec<i64>>,
    lower: Option<Bound>,
    upper: Option<Bound>,
}

/// A statement's `FROM`, `WHERE` and `ORDER BY` clauses and the parameters of its `WHERE`.
struct Clauses {
    from: &'static str,
    filter: String,
    values: Vec<Value>,
    order_by: String,
}

impl Set {
    /// The ordinal column counting this set, if there is one: `n` for the whole archive,
    /// `wn` for one bare JID.
    fn ordinal(&self) -> Option<fn(&Row) -> i64> {
        match (&self.with, &self.ids) {
            (None, None) => Some(|r| r.n),
            (Some(w), None) if w.resource.is_none() => Some(|r| r.wn),
            _ => None,
        }
    }

    /// The clauses reading this set between `lower` and `upper` through the index whose
    /// entries are in archive order: `(owner, with_bare)` for `with`, the primary key for
    /// ids, `(owner, ts, n)` otherwise.
    fn clauses(
        &self,
        table: &'static Table,
        lower: Option<Bound>,
        upper: Option<Bound>,
        desc: bool,
    ) -> Clauses {
        let mut filter = "owner = ?".to_owned();
        let mut values = vec![Value::Integer(self.owner)];
        let from = if let Some(w) = &self.with {
            filter.push_str(" AND with_bare = ?");
            values.push(Value::Text(w.bare.clone()));
            if let Some(r) = &w.resource {
                filter.push_str(" AND with_resource = ?");
                values.push(Value::Text(r.clone()));
            }
            table.by_with
        } else if self.ids.is_some() {
            table.by_seq
        } else {
            table.by_time
        };
        let by_time = from == table.by_time;
        if let Some(ids) = &self.ids {
            let marks = vec!["?"; ids.len()].join(", ");
            filter.push_str(&format!(" AND seq IN ({marks})"));
            values.extend(ids.iter().map(|s| Value::Integer(*s)));
        }
        for (bound, op) in [(lower, ">"), (upper, "<")] {
            let Some(b) = bound else { continue };
            let eq = if b.inclusive { "=" } else { "" };
            if by_time {
                // A row value: the seek lands on the row itself, however many entries share
                // its timestamp.
                filter.push_str(&format!(" AND (ts, n) {op}{eq} (?, ?)"));
                values.push(Value::Integer(b.row.ts));
                values.push(Value::Integer(b.row.n));
            } else {
                filter.push_str(&format!(" AND seq {op}{eq} ?"));
                values.push(Value::Integer(b.row.seq));
            }
        }
        let dir = if desc { "DESC" } else { "ASC" };
        let order_by = if by_time {
            format!("ts {dir}, n {dir}")
        } else {
            format!("seq {dir}")
        };
        Clauses {
            from,
            filter,
            values,
            order_by,
        }
    }

    /// The first (or, `desc`, the last) row of the set.
    fn edge(
        &self,
        conn: &Connection,
        table: &'static Table,
        desc: bool,
    ) -> Result<Option<Row>, StorageError> {
        let c = self.clauses(table, self.lower, self.upper, desc);
        conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM {} WHERE {} ORDER BY {} LIMIT 1",
            c.from, c.filter, c.order_by
        ))
        .and_then(|mut s| {
            s.query_row(params_from_iter(c.values.iter()), row_from)
                .optional()
        })
        .map_err(read_err)
    }

    /// `COUNT(*)` of the set up to `upper`: for the shapes without an ordinal only.
    fn count_to(
        &self,
        conn: &Connection,
        table: &'static Table,
        upper: Option<Bound>,
    ) -> Result<usize, StorageError> {
        let c = self.clauses(table, self.lower, upper, false);
        let n: i64 = conn
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM {} WHERE {}",
                c.from, c.filter
            ))
            .and_then(|mut s| s.query_row(params_from_iter(c.values.iter()), |r| r.get(0)))
            .map_err(read_err)?;
        count_from(n)
    }
}

/// The result set of a filter; None when it is certainly empty (a time range with no
/// entry).
fn result_set(
    conn: &Connection,
    table: &Table,
    owner: i64,
    f: &ArchiveFilter,
) -> Result<Option<Set>, StorageError> {
    let mut set = Set {
        owner,
        with: f.with.clone(),
        ids: None,
        lower: None,
        upper: None,
    };
    if let Some(id) = &f.after_id {
        let row = row_of(conn, table, owner, id)?;
        set.lower = Some(tighter(
            set.lower,
            Bound {
                row,
                inclusive: false,
            },
            true,
        ));
    }
    if let Some(id) = &f.before_id {
        let row = row_of(conn, table, owner, id)?;
        set.upper = Some(tighter(
            set.upper,
            Bound {
                row,
                inclusive: false,
            },
            false,
        ));
    }
    if let Some(ids) = &f.ids {
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            seqs.push(row_of(conn, table, owner, id)?.seq);
        }
        set.ids = Some(seqs);
    }
    // start/end: the first entry at or after `start`, the last at or before `end`.
    for (time, lower) in [(f.start_us, true), (f.end_us, false)] {
        let Some(time) = time else { continue };
        let (op, dir) = if lower { (">=", "ASC") } else { ("<=", "DESC") };
        let row = conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM {} WHERE owner = ?1 AND ts {op} ?2
                 ORDER BY ts {dir}, n {dir} LIMIT 1",
                table.by_time
            ))
            .and_then(|mut s| s.query_row(params![owner, time], row_from).optional())
            .map_err(read_err)?;
        let Some(row) = row else { return Ok(None) };
        let bound = Bound {
            row,
            inclusive: true,
        };
        if lower {
            set.lower = Some(tighter(set.lower, bound, true));
        } else {
            set.upper = Some(tighter(set.upper, bound, false));
        }
    }
    Ok(Some(set))
}

/// Up to `max` owners with ids in `from..until` whose oldest entry is older than
/// `before_us`, in id order (one seek per owner examined; read outside the write lock).
fn purge_candidates(
    conn: &Connection,
    table: &Table,
    before_us: i64,
    from: i64,
    until: i64,
    max: usize,
) -> Result<Vec<i64>, StorageError> {
    conn.prepare_cached(&format!(
        "SELECT o.id FROM {owners} o
         WHERE o.id >= ?2 AND o.id < ?3
           AND (SELECT ts FROM {time} WHERE owner = o.id ORDER BY ts, n LIMIT 1) < ?1
         ORDER BY o.id LIMIT ?4",
        owners = table.owners,
        time = table.by_time
    ))
    .and_then(|mut s| {
        s.query_map(params![before_us, from, until, to_i64(max)], |r| r.get(0))?
            .collect::<Result<_, _>>()
    })
    .map_err(read_err)
}

const PAGE_COLUMNS: &str = "seq, ts, n, wn, stanza_id, with_bare, with_resource, stanza";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Row, ArchiveEntry)> {
    Ok((
        row_from(r)?,
        ArchiveEntry {
            id: r.get(4)?,
            timestamp_us: r.get(1)?,
            with_bare: r.get(5)?,
            with_resource: r.get(6)?,
            stanza: r.get(7)?,
        },
    ))
}

/// The difference of two ordinals, as a count.
fn ordinal_distance(from: i64, to: i64) -> Result<usize, StorageError> {
    to.checked_sub(from)
        .ok_or_else(|| StorageError::Corrupt(format!("archive ordinals {from}..{to}")))
        .and_then(count_from)
}

fn query(
    conn: &mut Connection,
    table: &'static Table,
    domain: &str,
    user: &str,
    q: &ArchiveQuery,
) -> Result<ArchivePage, StorageError> {
    let empty = ArchivePage {
        complete: true,
        ..ArchivePage::default()
    };
    let tx = read_tx(conn)?;
    let Some(owner) = owner_id(&tx, table, domain, user)? else {
        // No archive: an id it names is unknown, anything else is an empty set.
        let f = &q.filter;
        let names_ids = matches!(q.page, PageRequest::After(_) | PageRequest::Before(_))
            || f.after_id.is_some()
            || f.before_id.is_some()
            || f.ids.as_ref().is_some_and(|ids| !ids.is_empty());
        return if names_ids {
            Err(StorageError::NotFound)
        } else {
            Ok(empty)
        };
    };
    // Ids named by the page are checked even when the set turns out empty.
    let page_row = match &q.page {
        PageRequest::After(id) | PageRequest::Before(id) => Some(row_of(&tx, table, owner, id)?),
        PageRequest::First | PageRequest::Last => None,
    };
    let Some(set) = result_set(&tx, table, owner, &q.filter)? else {
        return Ok(empty);
    };
    let (mut lower, mut upper) = (set.lower, set.upper);
    match (&q.page, page_row) {
        (PageRequest::After(_), Some(row)) => {
            lower = Some(tighter(
                lower,
                Bound {
                    row,
                    inclusive: false,
                },
                true,
            ));
        }
        (PageRequest::Before(_), Some(row)) => {
            upper = Some(tighter(
                upper,
                Bound {
                    row,
                    inclusive: false,
                },
                false,
            ));
        }
        _ => {}
    }
    let backwards = q.page.is_backwards();
    let c = set.clauses(table, lower, upper, backwards);
    let mut values = c.values;
    // One row more than the page: whether it exists says whether the page is the last.
    values.push(Value::Integer(to_i64(q.max).saturating_add(1)));
    let sql = format!(
        "SELECT {PAGE_COLUMNS} FROM {} WHERE {} ORDER BY {} LIMIT ?",
        c.from, c.filter, c.order_by
    );
    let mut rows = {
        let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(params_from_iter(values.iter()), entry_from_row)
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(read_err)?
    };
    let complete = rows.len() <= q.max;
    rows.truncate(q.max);
    if backwards {
        rows.reverse();
    }
    let page_first = rows.first().map(|(row, _)| *row);
    let (count, first_index) = match set.ordinal() {
        Some(ordinal) => {
            // Exact in two seeks (see the module documentation).
            match (set.edge(&tx, table, false)?, set.edge(&tx, table, true)?) {
                (Some(first), Some(last)) => {
                    let count = ordinal_distance(ordinal(&first), ordinal(&last))? + 1;
                    let index = page_first
                        .map(|p| ordinal_distance(ordinal(&first), ordinal(&p)))
                        .transpose()?;
                    (count, index)
                }
                _ => (0, None),
            }
        }
        None => {
            let count = set.count_to(&tx, table, set.upper)?;
            let index = match (page_first, &q.page) {
                (None, _) => None,
                (Some(_), PageRequest::First) => Some(0),
                (Some(_), PageRequest::Last) => Some(count.saturating_sub(rows.len())),
                (Some(row), _) => Some(set.count_to(
                    &tx,
                    table,
                    Some(tighter(
                        set.upper,
                        Bound {
                            row,
                            inclusive: false,
                        },
                        false,
                    )),
                )?),
            };
            (count, index)
        }
    };
    Ok(ArchivePage {
        entries: rows.into_iter().map(|(_, e)| e).collect(),
        count,
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
        let job = PendingAppend::new(self.table, domain, user, entry, Done::Reply(reply));
        self.writer
            .queue
            .send(job)
            .map_err(|_| ArchiveWriter::stopped())?;
        self.writer.shared.hurry();
        answer.await.map_err(|_| ArchiveWriter::stopped())?
    }

    async fn append_archive_journaled(
        &self,
        domain: &str,
        user: &str,
        entry: ArchiveEntry,
    ) -> Result<(), StorageError> {
        let state = &self.writer.shared;
        let Some(journal) = &state.journal else {
            return self.append_archive(domain, user, &entry).await.map(|_| ());
        };
        // Written on the first poll whatever the room left, so appends are journaled (and
        // committed) in the order their futures were first polled; an append that found no
        // room waits for it once journaled.
        let has_room = match state.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        };
        let record = record_of(self.table, domain, user, &entry);
        // Written and queued under the journal's lock: queue order is journal order.
        let written = {
            let mut journal = journal.lock();
            match journal.append(&record) {
                Ok(Some(at)) => {
                    let seq = state.journaled.load(Ordering::Relaxed) + 1;
                    let job = PendingAppend {
                        table: self.table,
                        record,
                        done: Done::Journaled { seq, at },
                    };
                    let sent = self.writer.queue.send(job);
                    state.journaled.store(seq, Ordering::Release);
                    Ok(sent)
                }
                Ok(None) => Err(Some(entry)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the archive journal");
                    Err(None)
                }
            }
        };
        match written {
            // Unsent, the record is still in the journal: the next open commits it.
            Ok(sent) => {
                sent.map_err(|_| ArchiveWriter::stopped())?;
                if !has_room {
                    state
                        .room
                        .acquire()
                        .await
                        .map_err(|_| ArchiveWriter::stopped())?
                        .forget();
                }
                Ok(())
            }
            Err(unjournaled) => {
                if has_room {
                    state.room.add_permits(1);
                }
                match unjournaled {
                    // Too large for the journal: committed before it is acknowledged.
                    Some(entry) => self.append_archive(domain, user, &entry).await.map(|_| ()),
                    None => Err(StorageError::Backend(
                        "cannot write the archive journal".into(),
                    )),
                }
            }
        }
    }

    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<ArchivePage, StorageError> {
        self.writer.settle().await;
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
        self.writer.settle().await;
        let (domain, user) = (domain.to_owned(), user.to_owned());
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = read_tx(conn)?;
            let Some(owner) = owner_id(&tx, table, &domain, &user)? else {
                return Ok(None);
            };
            let bound = |dir: &str| -> Result<Option<ArchiveBound>, StorageError> {
                tx.prepare_cached(&format!(
                    "SELECT stanza_id, ts FROM {} WHERE owner = ?1
                     ORDER BY ts {dir}, n {dir} LIMIT 1",
                    table.by_time
                ))
                .and_then(|mut s| {
                    s.query_row(params![owner], |r| {
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
        self.writer.settle().await;
        use std::sync::atomic::Ordering;
        let table = self.table;
        let purge_from = self.purge_from.clone();
        run(&self.conn, move |conn| {
            // Owner by owner, through (owner, ts, n): there is no index on the time alone
            // (it would be one more index written by every append). Each owner loses its
            // oldest entries, which keeps the ordinals' differences exact. The caller calls
            // again while a call purges `limit` entries; a call resumes at the owner where
            // the previous one stopped, so one run examines each owner once, not once per
            // call, and wraps around once so owners passed by an interrupted run are not
            // left out.
            let from = purge_from.load(Ordering::Relaxed);
            let mut candidates = purge_candidates(conn, table, before_us, from, i64::MAX, limit)?;
            if candidates.len() < limit && from > 0 {
                let more = limit - candidates.len();
                candidates.extend(purge_candidates(conn, table, before_us, 0, from, more)?);
            }
            // One bounded transaction per call: the write lock is held for `limit` rows at
            // most, so messages keep being archived while a large backlog is purged.
            let tx = write_tx(conn)?;
            let mut purged = 0;
            let mut next_from = 0;
            for owner in candidates {
                if purged >= limit {
                    // This owner may have more: the next call starts with it.
                    next_from = owner;
                    break;
                }
                purged += tx
                    .prepare_cached(&format!(
                        "DELETE FROM {t} WHERE seq IN
                             (SELECT seq FROM {time} WHERE owner = ?1 AND ts < ?2
                              ORDER BY ts, n LIMIT ?3)",
                        t = table.name,
                        time = table.by_time
                    ))
                    .and_then(|mut s| s.execute(params![owner, before_us, to_i64(limit - purged)]))
                    .map_err(backend)?;
                // The listings of purged entries (`row_of`): every `seq` below the oldest
                // entry left, since the purge takes the oldest first and seqs grow.
                tx.prepare_cached(&format!(
                    "DELETE FROM {ids} WHERE owner = ?1 AND seq < COALESCE(
                         (SELECT seq FROM {time} WHERE owner = ?1 ORDER BY ts, n LIMIT 1),
                         9223372036854775807)",
                    ids = table.ids,
                    time = table.by_time
                ))
                .and_then(|mut s| s.execute(params![owner]))
                .map_err(backend)?;
                next_from = owner;
            }
            tx.commit().map_err(backend)?;
            // A call that purged less than `limit` ends the run: the next starts over.
            purge_from.store(
                if purged >= limit { next_from } else { 0 },
                Ordering::Relaxed,
            );
            Ok(purged)
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
        self.writer.settle().await;
        let (domain, user, id, stanza) = (
            domain.to_owned(),
            user.to_owned(),
            id.to_owned(),
            stanza.to_owned(),
        );
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let owner = owner_id(&tx, table, &domain, &user)?.ok_or(StorageError::NotFound)?;
            let row = row_of(&tx, table, owner, &id)?;
            tx.prepare_cached(&format!(
                "UPDATE {} SET stanza = ?2 WHERE seq = ?1",
                table.name
            ))
            .and_then(|mut s| s.execute(params![row.seq, stanza]))
            .map_err(write_err)?;
            tx.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_archive(&self, domain: &str, user: &str) -> Result<usize, StorageError> {
        self.writer.settle().await;
        let (domain, user) = (domain.to_owned(), user.to_owned());
        let table = self.table;
        run(&self.conn, move |conn| {
            let tx = write_tx(conn)?;
            let Some(owner) = owner_id(&tx, table, &domain, &user)? else {
                return Ok(0);
            };
            let n = tx
                .prepare_cached(&format!("DELETE FROM {} WHERE owner = ?1", table.name))
                .and_then(|mut s| s.execute(params![owner]))
                .map_err(backend)?;
            // The owner row goes too (a destroyed room's name leaves nothing behind); the
            // next append makes a new one.
            tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", table.owners))
                .and_then(|mut s| s.execute(params![owner]))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n)
        })
        .await
    }

    async fn count_archived(&self) -> Result<Option<u64>, StorageError> {
        self.writer.settle().await;
        let table = self.table;
        run(&self.conn, move |conn| {
            // `count(*)` walks the smallest index (three integers per row) and reads no
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

    /// Ids are found without an index of ids: by their time when they carry the entry's
    /// own (`archive_ids` stays empty), else through their listing; duplicates are refused
    /// either way, a replaced stanza is found either way, and the purge drops listings.
    #[tokio::test]
    async fn ids_are_found_by_their_time_or_their_listing() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let s = b.storage();
        create_alice(&s).await;
        let entry = |id: String, ts: i64| ArchiveEntry {
            id,
            timestamp_us: ts,
            with_bare: "bob@example.org".into(),
            with_resource: String::new(),
            stanza: format!("<message id='{ts}'/>"),
        };
        let native = |ts: i64, tail: &str| format!("{}{tail}", rookery_storage::id_time_prefix(ts));
        let listed = || -> i64 {
            b.conn
                .lock()
                .query_row("SELECT COUNT(*) FROM archive_ids", [], |r| r.get(0))
                .expect("count")
        };
        // Ids carrying their entry's time: none listed, even sharing a microsecond.
        let ids = [
            native(1_000, "a"),
            native(2_000, "b"),
            native(2_000, "c"),
            native(3_000, "d"),
        ];
        for (id, ts) in ids.iter().zip([1_000, 2_000, 2_000, 3_000]) {
            s.archive
                .append_archive("example.org", "alice", &entry(id.clone(), ts))
                .await
                .expect("append");
        }
        assert_eq!(listed(), 0);
        // An id from elsewhere, and one whose time the store raised (the clock went back):
        // listed.
        let foreign = "from-elsewhere".to_owned();
        let raised = native(2_500, "e");
        s.archive
            .append_archive("example.org", "alice", &entry(foreign.clone(), 4_000))
            .await
            .expect("append");
        assert_eq!(
            s.archive
                .append_archive("example.org", "alice", &entry(raised.clone(), 2_500))
                .await
                .expect("append"),
            4_000
        );
        assert_eq!(listed(), 2);
        // Duplicates of every kind are refused.
        for (id, ts) in [(&ids[2], 9_000), (&foreign, 9_000), (&raised, 9_000)] {
            assert!(matches!(
                s.archive
                    .append_archive("example.org", "alice", &entry(id.clone(), ts))
                    .await,
                Err(StorageError::AlreadyExists)
            ));
        }
        // Every id bounds a page to the right entries.
        let all = [&ids[0], &ids[1], &ids[2], &ids[3], &foreign, &raised];
        for (i, id) in all.iter().enumerate() {
            let q = ArchiveQuery {
                filter: ArchiveFilter {
                    after_id: Some((*id).clone()),
                    ..ArchiveFilter::default()
                },
                page: PageRequest::First,
                max: 10,
            };
            let page = s
                .archive
                .query_archive("example.org", "alice", &q)
                .await
                .expect("query");
            let got: Vec<&String> = page.entries.iter().map(|e| &e.id).collect();
            assert_eq!(got, all[i + 1..].to_vec(), "after {id}");
        }
        let unknown = ArchiveQuery {
            filter: ArchiveFilter {
                after_id: Some(native(2_000, "zz")),
                ..ArchiveFilter::default()
            },
            page: PageRequest::First,
            max: 10,
        };
        assert!(matches!(
            s.archive
                .query_archive("example.org", "alice", &unknown)
                .await,
            Err(StorageError::NotFound)
        ));
        for id in [&ids[1], &foreign] {
            s.archive
                .replace_archived("example.org", "alice", id, "<message>gone</message>")
                .await
                .expect("replace");
        }
        let replaced: i64 = b
            .conn
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM archive WHERE stanza = '<message>gone</message>'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(replaced, 2);
        // The purge takes the four oldest and the foreign id's entry (time 4,000 < 4,001),
        // and its listing; the raised entry (also at 4,000) goes too.
        assert_eq!(s.archive.purge_archive(4_001, 100).await.expect("purge"), 6);
        assert_eq!(listed(), 0);
        // Purging part: the listing of what is left stays.
        for (n, ts) in [(1, 5_000), (2, 6_000)] {
            s.archive
                .append_archive("example.org", "alice", &entry(format!("x{n}"), ts))
                .await
                .expect("append");
        }
        assert_eq!(s.archive.purge_archive(5_500, 100).await.expect("purge"), 1);
        assert_eq!(listed(), 1);
    }

    /// The purge resumes where its previous call stopped and wraps around: a run of calls
    /// (until one purges less than its limit) purges every owner's old entries, even after
    /// a run that was cut short, and leaves newer entries and their counts exact.
    #[tokio::test]
    async fn purge_runs_cover_every_owner_once_and_wrap_around() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let rooms = b.room_archive_store();
        let entry = |id: String, ts: i64| ArchiveEntry {
            id,
            timestamp_us: ts,
            with_bare: "room@conference.example.org".into(),
            with_resource: "nick".into(),
            stanza: "<message/>".into(),
        };
        for room in 0..40 {
            for n in 0..4 {
                // Three old entries, then one at time 1000.
                let ts = if n < 3 { 10 + n } else { 1000 };
                rooms
                    .append_archive(
                        "conference.example.org",
                        &format!("r{room}"),
                        &entry(format!("e{n}"), ts),
                    )
                    .await
                    .expect("append");
            }
        }
        // A run cut short after its first call: 7 entries gone, the cursor mid-way.
        assert_eq!(rooms.purge_archive(12, 7).await.expect("purge"), 7);
        // The next run (a later cutoff) goes on from there and wraps around.
        let mut calls = Vec::new();
        loop {
            let n = rooms.purge_archive(500, 7).await.expect("purge");
            calls.push(n);
            if n < 7 {
                break;
            }
            assert!(calls.len() < 100, "{calls:?}");
        }
        assert_eq!(calls.iter().sum::<usize>(), 40 * 3 - 7, "{calls:?}");
        for room in 0..40 {
            let p = rooms
                .query_archive(
                    "conference.example.org",
                    &format!("r{room}"),
                    &ArchiveQuery {
                        filter: ArchiveFilter::default(),
                        page: PageRequest::Last,
                        max: 10,
                    },
                )
                .await
                .expect("query");
            assert_eq!(p.entries.len(), 1, "r{room}");
            assert_eq!((p.count, p.first_index), (1, Some(0)), "r{room}");
            assert_eq!(p.entries[0].id, "e3");
        }
        assert_eq!(rooms.purge_archive(500, 7).await.expect("purge"), 0);
    }

    /// Every statement a query runs seeks an index: no full scan of the table, no sort of
    /// the rows (the index gives them in archive order), no count over an owner's whole
    /// range, and no count at all where ordinals give it, whatever the query.
    #[tokio::test]
    async fn archive_queries_seek_indexes_and_never_sort() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let s = b.storage();
        // Even entries have ids carrying their time (found through `(owner, ts, n)`), odd
        // ones ids from elsewhere (listed in `archive_ids`).
        let id = |user: &str, n: i64| {
            if n % 2 == 0 {
                format!("{}{user}{n}", rookery_storage::id_time_prefix(1000 * n))
            } else {
                format!("{user}-{n}")
            }
        };
        for user in ["alice", "bob"] {
            s.accounts
                .create_account("example.org", user, &[])
                .await
                .expect("create");
            for n in 0..200 {
                let entry = ArchiveEntry {
                    id: id(user, n),
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
                after_id: Some(id("alice", 10)),
                before_id: Some(id("alice", 191)),
                ..ArchiveFilter::default()
            },
            ArchiveFilter {
                ids: Some(vec![id("alice", 3), id("alice", 98)]),
                ..ArchiveFilter::default()
            },
        ];
        let pages = [
            PageRequest::First,
            PageRequest::Last,
            PageRequest::After(id("alice", 100)),
            PageRequest::Before(id("alice", 101)),
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
        // Only the shapes without an ordinal count rows: a full JID, a list of ids.
        for sql in selects.iter().filter(|s| s.starts_with("SELECT COUNT")) {
            assert!(
                sql.contains("with_resource") || sql.contains("seq IN"),
                "{sql}"
            );
        }
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
                // A count is never a walk of the owner's whole range.
                assert!(
                    !(sql.starts_with("SELECT COUNT") && step.ends_with("(owner=?)")),
                    "{sql}\n{plan:?}"
                );
            }
        }
    }

    fn entry(id: &str, ts: i64) -> ArchiveEntry {
        ArchiveEntry {
            id: id.into(),
            timestamp_us: ts,
            with_bare: "bob@example.org".into(),
            with_resource: "phone".into(),
            stanza: format!("<message xmlns='jabber:client'><body>{id}</body></message>"),
        }
    }

    /// Creates alice@example.org, the account whose archive most tests write.
    async fn create_alice(s: &rookery_storage::Storage) {
        s.accounts
            .create_account("example.org", "alice", &[])
            .await
            .expect("create");
    }

    async fn ids(store: &dyn ArchiveStore, user: &str) -> Vec<String> {
        let q = ArchiveQuery {
            filter: ArchiveFilter::default(),
            page: PageRequest::First,
            max: 1000,
        };
        store
            .query_archive("example.org", user, &q)
            .await
            .expect("query")
            .entries
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// The journal of `path`, once the previous backend's writer has let go of it (its
    /// thread ends after the last store is dropped).
    fn claim_when_free(path: &std::path::Path) -> journal::Claim {
        for _ in 0..200 {
            if let Some(claim) = journal::Claim::take(path).expect("claim") {
                return claim;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the journal stayed held");
    }

    /// Reopens `path` once the previous backend has let go of the journal.
    fn reopen(path: &std::path::Path) -> SqliteBackend {
        drop(claim_when_free(path));
        SqliteBackend::open(path).expect("open")
    }

    /// After a batch large enough to mean saturation the writer gathers for longer
    /// ([`GATHER_SATURATED`]), but a read or a committed append arriving meanwhile cuts the
    /// gathering short: neither waits for it.
    #[tokio::test]
    async fn reads_and_committed_appends_cut_a_long_gathering_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rookery.db");
        let b = SqliteBackend::open(&path).expect("open");
        let s = b.storage();
        create_alice(&s).await;
        // Another connection holding the write lock keeps the writer in its commit while
        // appends queue up: its next batch holds them all, whatever the machine's speed.
        let blocker = Connection::open(&path).expect("second connection");
        let q = ArchiveQuery {
            filter: ArchiveFilter::default(),
            page: PageRequest::Last,
            max: 1,
        };
        let mut n = 0;
        let mut journal = |count: usize| {
            let entries: Vec<_> = (0..count)
                .map(|_| {
                    n += 1;
                    entry(&format!("e{n}"), n)
                })
                .collect();
            let archive = s.archive.clone();
            async move {
                for e in entries {
                    archive
                        .append_archive_journaled("example.org", "alice", e)
                        .await
                        .expect("journaled append");
                }
            }
        };
        // A batch over YIELDING_BATCH, committed, then one journaled append: the writer is
        // then in a long gathering, a fifth of the way through.
        let long_gathering = |journal: &mut dyn FnMut(usize) -> _| {
            blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
            let batch = journal(YIELDING_BATCH * 2);
            let one = journal(1);
            let archive = s.archive.clone();
            let q = q.clone();
            let blocker = &blocker;
            async move {
                batch.await;
                blocker.execute_batch("COMMIT").expect("unlock");
                archive
                    .query_archive("example.org", "alice", &q)
                    .await
                    .expect("settle");
                one.await;
                tokio::time::sleep(GATHER_SATURATED / 5).await;
            }
        };
        let mut read_waits = Vec::new();
        let mut append_waits = Vec::new();
        for round in 0..3 {
            // A read during a long gathering.
            long_gathering(&mut journal).await;
            let started = std::time::Instant::now();
            let page = s
                .archive
                .query_archive("example.org", "alice", &q)
                .await
                .expect("query");
            read_waits.push(started.elapsed());
            assert_eq!(
                page.count,
                round * (YIELDING_BATCH * 4 + 3) + YIELDING_BATCH * 2 + 1
            );
            // The same with a committed append.
            long_gathering(&mut journal).await;
            let started = std::time::Instant::now();
            s.archive
                .append_archive(
                    "example.org",
                    "alice",
                    &entry(&format!("c{round}"), 1 << 40),
                )
                .await
                .expect("committed append");
            append_waits.push(started.elapsed());
        }
        // Unhurried, each would wait the rest of the gathering (four fifths of
        // GATHER_SATURATED); the best of three leaves room for a slow machine.
        let best = |w: &[std::time::Duration]| w.iter().min().copied().unwrap_or_default();
        assert!(best(&read_waits) < GATHER_SATURATED / 2, "{read_waits:?}");
        assert!(
            best(&append_waits) < GATHER_SATURATED / 2,
            "{append_waits:?}"
        );
    }

    /// Journaled appends are read back at once (reads wait for the writer), in order with
    /// committed ones, and cost no commit on the caller's path.
    #[tokio::test]
    async fn journaled_appends_are_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rookery.db");
        let b = SqliteBackend::open(&path).expect("open");
        let s = b.storage();
        create_alice(&s).await;
        assert!(
            b.archive_writer.shared.journal.is_some(),
            "the server owns the journal"
        );
        for n in 0..500 {
            let e = entry(&format!("j{n:03}"), 1000 + n);
            if n % 100 == 50 {
                s.archive
                    .append_archive("example.org", "alice", &e)
                    .await
                    .expect("committed append");
            } else {
                s.archive
                    .append_archive_journaled("example.org", "alice", e)
                    .await
                    .expect("journaled append");
            }
        }
        let want: Vec<_> = (0..500).map(|n| format!("j{n:03}")).collect();
        let q = ArchiveQuery {
            filter: ArchiveFilter::default(),
            page: PageRequest::First,
            max: 1000,
        };
        let page = s
            .archive
            .query_archive("example.org", "alice", &q)
            .await
            .expect("query");
        assert_eq!(
            page.entries.iter().map(|e| &e.id).collect::<Vec<_>>(),
            want.iter().collect::<Vec<_>>()
        );
        assert_eq!(page.count, 500);
        // An append for an account that does not exist is dropped, not an error later on.
        s.archive
            .append_archive_journaled("example.org", "nobody", entry("x", 1))
            .await
            .expect("journaled");
        assert!(ids(s.archive.as_ref(), "nobody").await.is_empty());
        // The position reached is stored with the entries.
        let stored = stored_position(&b.conn.lock()).expect("position");
        assert!(stored.segment >= 1 && stored.offset > 0, "{stored:?}");
        // A second process on the same database gets no journal and commits directly.
        let other = SqliteBackend::open(&path).expect("second open");
        assert!(other.archive_writer.shared.journal.is_none());
        other
            .archive_store()
            .append_archive_journaled("example.org", "alice", entry("k", 5000))
            .await
            .expect("direct");
        assert_eq!(
            ids(s.archive.as_ref(), "alice")
                .await
                .last()
                .map(String::as_str),
            Some("k")
        );
    }

    /// What a killed server journaled but never committed is committed at the next open,
    /// once, before anything reads the archive; a record the database refuses is dropped.
    #[tokio::test]
    async fn the_next_open_commits_what_a_killed_process_journaled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rookery.db");
        {
            let b = SqliteBackend::open(&path).expect("open");
            let s = b.storage();
            create_alice(&s).await;
            s.archive
                .append_archive_journaled("example.org", "alice", entry("a1", 10))
                .await
                .expect("journaled");
            assert_eq!(ids(s.archive.as_ref(), "alice").await, ["a1"]);
        }
        // As a killed server leaves it: records in the journal past the stored position.
        let applied = {
            let conn = Connection::open(&path).expect("raw open");
            stored_position(&conn).expect("position")
        };
        {
            let mut j = claim_when_free(&path).start(applied).expect("start");
            let mut buf = Vec::new();
            for (table, user, id) in [
                (ACCOUNTS.tag, "alice", "a2"),
                (ACCOUNTS.tag, "ghost", "g1"),
                (ROOMS.tag, "room", "r1"),
                (ACCOUNTS.tag, "alice", "a3"),
            ] {
                journal::encode(&mut buf, table, "example.org", user, &entry(id, 20));
                j.append(&buf).expect("append").expect("fits");
            }
        }
        let b = reopen(&path);
        let s = b.storage();
        assert_eq!(ids(s.archive.as_ref(), "alice").await, ["a1", "a2", "a3"]);
        assert_eq!(ids(s.room_archive.as_ref(), "room").await, ["r1"]);
        assert!(ids(s.archive.as_ref(), "ghost").await.is_empty());
        drop((s, b));
        // Nothing is committed twice, and the old segments are gone.
        let b = reopen(&path);
        assert_eq!(
            ids(b.storage().archive.as_ref(), "alice").await,
            ["a1", "a2", "a3"]
        );
        let segments = std::fs::read_dir(journal::dir_of(&path))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count();
        assert_eq!(segments, 0, "no segment is left before the first append");
    }

    /// The writer's cache of owners and ordinals follows deletions made through other
    /// connections: a deleted account's owner id, reused for another account, never
    /// receives the deleted account's entries, and a recreated archive counts from 1.
    #[tokio::test]
    async fn the_append_cache_follows_deletions_by_other_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rookery.db");
        let b = SqliteBackend::open(&path).expect("open");
        let s = b.storage();
        for user in ["alice", "bob"] {
            s.accounts
                .create_account("example.org", user, &[])
                .await
                .expect("create");
            s.archive
                .append_archive_journaled("example.org", user, entry(&format!("{user}1"), 10))
                .await
                .expect("append");
        }
        assert_eq!(ids(s.archive.as_ref(), "bob").await, ["bob1"]);
        s.accounts
            .delete_account("example.org", "bob")
            .await
            .expect("delete");
        s.accounts
            .create_account("example.org", "carol", &[])
            .await
            .expect("create");
        s.archive
            .append_archive_journaled("example.org", "carol", entry("carol1", 20))
            .await
            .expect("append");
        s.accounts
            .create_account("example.org", "bob", &[])
            .await
            .expect("create");
        s.archive
            .append_archive_journaled("example.org", "bob", entry("bob2", 30))
            .await
            .expect("append");
        assert_eq!(ids(s.archive.as_ref(), "carol").await, ["carol1"]);
        assert_eq!(ids(s.archive.as_ref(), "bob").await, ["bob2"]);
        // A room's archive deleted and started again counts from its first entry.
        let rooms = b.room_archive_store();
        for id in ["r1", "r2"] {
            rooms
                .append_archive_journaled("example.org", "room", entry(id, 40))
                .await
                .expect("append");
        }
        assert_eq!(
            rooms
                .delete_archive("example.org", "room")
                .await
                .expect("delete"),
            2
        );
        rooms
            .append_archive_journaled("example.org", "room", entry("r3", 50))
            .await
            .expect("append");
        let q = ArchiveQuery {
            filter: ArchiveFilter::default(),
            page: PageRequest::Last,
            max: 10,
        };
        let page = rooms
            .query_archive("example.org", "room", &q)
            .await
            .expect("query");
        assert_eq!((page.count, page.first_index), (1, Some(0)));
        assert_eq!(page.entries[0].id, "r3");
        let alice = s
            .archive
            .query_archive("example.org", "alice", &q)
            .await
            .expect("query");
        assert_eq!(alice.count, 1);
    }
}
