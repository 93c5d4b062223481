//! The embedded default storage backend of Rookery: one SQLite database file.
//!
//! # Invariants
//!
//! * **Only SCRAM records are stored, never passwords** (table `scram_credentials`:
//!   salt, iteration count, StoredKey, ServerKey per hash).
//! * **Durability.** The database runs in WAL mode with `synchronous=NORMAL`: a
//!   transaction that returned `Ok` survives a crash or kill of the process (the WAL is
//!   written before commit returns); only an operating-system crash or power loss can
//!   lose the last few commits. That is the trade-off recommended by SQLite for WAL and
//!   the one Rookery makes: FULL would fsync on every commit for protection only
//!   against OS crashes. Archive appends on the message path get the same guarantee
//!   sooner, from the archive journal (`journal.rs`): a record copied into a shared file
//!   mapping is in the kernel's page cache, and the next open commits what the last run
//!   journaled but did not commit.
//! * **Several processes.** The server and the `rookery user` CLI may open the same file
//!   at once: writers use `BEGIN IMMEDIATE` and wait up to 5 s (`busy_timeout`) for the
//!   lock, and WAL lets readers proceed meanwhile.
//! * **Never block the async runtime.** Every store call runs on tokio's blocking pool
//!   with the connection behind a mutex, except archive appends, which a dedicated writer
//!   thread commits in batches (a committed append is answered after the commit, a
//!   journaled one once it is in the journal; reads of the archive wait for the writer).
//! * **Archive appends don't queue behind the other stores, nor behind checkpoints.** For a
//!   database file the archive writer has its own connection (WAL lets the other connection
//!   read meanwhile; writes of both take SQLite's write lock in turn, waiting up to
//!   [`BUSY_TIMEOUT`]). Neither connection checkpoints on commit (`wal_autocheckpoint=0`):
//!   a checkpointer thread with a third connection copies the WAL back into the database
//!   every [`CHECKPOINT_INTERVAL`] (PASSIVE: it never waits for a writer or reader), and
//!   makes the WAL start over past [`WAL_RESTART_FRAMES`]. A checkpoint fsyncs the
//!   database; on the commit path it stalled the archive writer, and with it every
//!   message, for the length of that fsync. The CLI's connections keep SQLite's default
//!   automatic checkpoints.
//! * **Schema versioning.** Migrations (embedded from `migrations/*.sql`) are applied
//!   once each, in order, each in its own transaction, recorded in `schema_migrations`.
//!   A database whose schema is newer than this build knows is refused.
//! * **Rows are validated on read.** Malformed records surface as
//!   [`StorageError::Corrupt`], never as a panic.
//! * **Everything of an account hangs off `accounts`.** Credentials, roster items (and,
//!   through them, their groups), the roster version, pending inbound subscriptions,
//!   offline messages, user data, the message archive, the account's PEP service
//!   (`pubsub_services`, and through it its nodes, items, affiliations and subscriptions)
//!   and its upload records (`uploads`) all reference `accounts` with `ON DELETE CASCADE`: deleting an account is one
//!   statement for all of that, and with `foreign_keys=ON` (required at open) no row can
//!   exist for a missing account. The PubSub affiliations and subscriptions the account's
//!   JIDs hold on other services reference their nodes, not the account: they are deleted
//!   in the same transaction, so account deletion removes everything at once or nothing.
//!   Writes of the IM and PubSub stores also check the owner inside their transaction and
//!   report a missing one as [`StorageError::NotFound`].
//!   Persistent MUC rooms (`muc_rooms`), room archives and PubSub service domains are the
//!   exception: they belong to a service domain, which has no accounts, so they reference
//!   nothing and outlive any account.
//! * **Checks and writes are atomic.** Every write runs in one `BEGIN IMMEDIATE`
//!   transaction: a roster change and its version bump commit together; the offline
//!   quota, the roster item limit and the PubSub quotas are checked under the same write
//!   lock as the insert they guard, so concurrent writers (tasks or processes) never
//!   exceed them.
//! * **Hot paths are cheap.** Statements are prepared once per connection
//!   (`prepare_cached`, with a cache larger than the set of statements); a roster is read with its version and all its groups in two
//!   queries, whatever its size; offline messages are read, counted and deleted through
//!   the `(domain, username, id)` index and the primary key.
//! * **Offline message ids** come from `AUTOINCREMENT`: increasing, never reused.
//! * **Archive queries cost a page, not an archive** (`archive.rs`): every query is a
//!   range seek on an index whose entries are in archive order, reading `max + 1` rows,
//!   and the RSM count and first index of a whole archive or one correspondent are
//!   differences of ordinals kept on the rows (two seeks), since rows are only deleted
//!   oldest first or all at once.
//! * **PubSub pages cost a page, not a node** (`pubsub.rs`): items are read newest first
//!   through the `(node_id, seq)` index, and node and service item counts are columns kept
//!   in the transaction of every change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rookery_sasl::{HashAlg, ScramCredentials};
use rookery_storage::{validate_credentials, AccountStore, Storage, StorageError};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

mod archive;
mod im;
mod journal;
mod pubsub;
mod rooms;
mod upload;

pub use archive::SqliteArchiveStore;
pub use im::{SqliteOfflineStore, SqliteRosterStore, SqliteUserDataStore};
pub use pubsub::SqlitePubSubStore;
pub use rooms::{SqliteHostDataStore, SqliteRoomStore};
pub use upload::SqliteUploadStore;

/// The migrations, in order: entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_accounts.sql"),
    include_str!("../migrations/0002_im.sql"),
    include_str!("../migrations/0003_archive.sql"),
    include_str!("../migrations/0004_muc_rooms.sql"),
    include_str!("../migrations/0005_muc_archive.sql"),
    include_str!("../migrations/0006_pubsub.sql"),
    include_str!("../migrations/0007_uploads.sql"),
    include_str!("../migrations/0008_host_data.sql"),
    include_str!("../migrations/0009_lean_archive.sql"),
    include_str!("../migrations/0010_archive_journal.sql"),
    include_str!("../migrations/0011_archive_ids.sql"),
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Prepared statements kept per connection: more than the stores use (about 90 with the
/// PubSub store's), so `prepare_cached` never evicts one on a mixed workload (rusqlite's
/// default is 16).
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// How long a writer waits for another connection's lock (the CLI, say).
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// How often the checkpointer copies the WAL back into the database file. An index page
/// the archive writer changes in several commits in between is copied once: at 500 ms
/// instead of 200 ms the server delivered about 5 % more archived messages per second
/// (BENCHMARKS.md); a longer wait lets the WAL grow past [`WAL_RESTART_FRAMES`] between
/// checkpoints and gained nothing.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// WAL frames (pages) after which the checkpointer makes the WAL start over (a RESTART
/// checkpoint). Under constant writes a PASSIVE checkpoint never catches up with the last
/// frame, so the WAL would only grow: every frame then lands in new file blocks, which
/// the file system zeroes first — that cost more than all of SQLite's own work. A RESTART
/// checkpoint waits for the writer's current transaction, copies the few frames the
/// PASSIVE ones left and syncs, then the next transaction writes the WAL from its start
/// again, into pages already in the operating system's cache.
pub const WAL_RESTART_FRAMES: i64 = 16384;

/// The WAL file is cut back to this size when it starts over (`journal_size_limit`).
const WAL_SIZE_LIMIT: i64 = 256 * 1024 * 1024;

/// Page cache per connection, in KiB (SQLite's default is 2,000 KiB): the archive's index
/// pages for the accounts being written stay in memory instead of being read again through
/// the operating system on every append.
const CACHE_KIB: i64 = 32 * 1024;

type Shared = Arc<Mutex<Connection>>;

fn backend(e: rusqlite::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// Run `f` with the connection on tokio's blocking pool.
async fn run<T, F>(conn: &Shared, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
{
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = conn.lock();
        f(&mut guard)
    })
    .await
    .map_err(|e| StorageError::Backend(format!("blocking task failed: {e}")))?
}

/// Run `f`, a small indexed read, on the calling thread when the connection is free, and on
/// tokio's blocking pool (as [`run`]) when another task holds it.
///
/// Why on the calling thread: with its pages in SQLite's cache such a read costs a few
/// microseconds, less than handing it to a pool thread and back (two wake-ups and two
/// context switches). A login makes about twelve of them (credentials, roster, pending
/// subscriptions, offline messages, the modules' per-user data), and the hand-offs were a
/// third of a login's CPU (BENCHMARKS.md, "Logins: reads on the calling thread"). In WAL
/// mode a reader never waits for a writer, so the caller is held only for the read itself
/// (or, rarely, by SQLite's busy handler while another connection recovers the WAL).
/// Writes, which wait for the write lock, and the archive's reads, which wait for the
/// journal, stay on the pool.
async fn read<T, F>(conn: &Shared, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
{
    if let Some(mut guard) = conn.try_lock() {
        return f(&mut guard);
    }
    run(conn, f).await
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Creates the database file owner-only if it does not exist, or narrows an existing one's
/// mode to owner-only.
fn make_private(path: &Path) -> Result<(), StorageError> {
    let err =
        |e: std::io::Error| StorageError::Backend(format!("cannot open {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => narrow_mode(path),
        Err(e) => Err(err(e)),
    }
}

/// Removes group and other permissions from `path`, if it exists.
fn narrow_mode(path: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(StorageError::Backend(format!(
                    "cannot read the mode of {}: {e}",
                    path.display()
                )))
            }
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)).map_err(
                |e| {
                    StorageError::Backend(format!(
                        "cannot make {} private (mode 0600): {e}",
                        path.display()
                    ))
                },
            )?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Takes the archive journal of the database at `path` (`journal.rs`) and commits what a
/// previous run left in it; None when another process has it (that process commits its
/// own records; this one commits its archive appends before acknowledging them).
fn open_journal(
    path: &Path,
    conn: &mut Connection,
) -> Result<Option<journal::Journal>, StorageError> {
    let failed = |e: std::io::Error| {
        StorageError::Backend(format!(
            "archive journal {}: {e}",
            journal::dir_of(path).display()
        ))
    };
    let Some(claim) = journal::Claim::take(path).map_err(failed)? else {
        tracing::info!(
            "the archive journal is held by another process; archive appends are committed directly"
        );
        return Ok(None);
    };
    let applied = archive::stored_position(conn)?;
    let leftovers = claim.leftovers(applied).map_err(failed)?;
    let reached = leftovers.last().map_or(applied, |(at, _)| *at);
    let n = archive::replay(conn, leftovers)?;
    if n > 0 {
        tracing::info!(entries = n, "archive entries recovered from the journal");
    }
    claim.start(reached).map(Some).map_err(failed)
}

/// An open SQLite database.
#[derive(Clone)]
pub struct SqliteBackend {
    conn: Shared,
    archive_writer: archive::ArchiveWriter,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Open or create the database file: WAL journal mode, synchronous=NORMAL,
    /// foreign_keys=ON, busy_timeout 5000 ms, then run migrations.
    ///
    /// Blocking: call it at startup (or from `spawn_blocking`), not from async code.
    ///
    /// The file holds SCRAM records, so it is made readable by its owner only (0600), and so
    /// are its `-wal` and `-shm` files: SQLite creates those with the database's mode, and
    /// ones left wider by an earlier version are narrowed here.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        make_private(path)?;
        let open = || {
            Connection::open(path)
                .map_err(|e| StorageError::Backend(format!("cannot open {}: {e}", path.display())))
        };
        // Which step failed goes into the error: an operator's "database is locked" says
        // more with it.
        let during = |what: &'static str| {
            move |e: StorageError| match e {
                StorageError::Backend(m) => StorageError::Backend(format!("{what}: {m}")),
                other => other,
            }
        };
        let mut conn = open()?;
        configure(&mut conn, true).map_err(during("configuring the connection"))?;
        migrate(&mut conn).map_err(during("updating the schema"))?;
        let mut writer = open()?;
        configure(&mut writer, true).map_err(during("configuring the archive writer"))?;
        let journal =
            open_journal(path, &mut writer).map_err(during("opening the archive journal"))?;
        let mut checkpointer = open()?;
        configure(&mut checkpointer, true).map_err(during("configuring the checkpointer"))?;
        let conn = Arc::new(Mutex::new(conn));
        // The stores hold the connection: the checkpointer stops when the last one is gone.
        start_checkpointer(checkpointer, Arc::downgrade(&conn))?;
        let backend = SqliteBackend {
            archive_writer: archive::start_writer(Arc::new(Mutex::new(writer)), true, journal)?,
            conn,
        };
        // Opening in WAL mode creates the companions; narrow any an older version left wide.
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            narrow_mode(Path::new(&companion))?;
        }
        Ok(backend)
    }

    /// A private in-memory database (tests, ephemeral servers).
    pub fn open_in_memory() -> Result<Self, StorageError> {
        let mut conn = Connection::open_in_memory().map_err(backend)?;
        configure(&mut conn, false)?;
        migrate(&mut conn)?;
        // One connection: an in-memory database is private to the connection that made it.
        let conn = Arc::new(Mutex::new(conn));
        Ok(SqliteBackend {
            // Nothing of an in-memory database outlives the process: no journal.
            archive_writer: archive::start_writer(conn.clone(), false, None)?,
            conn,
        })
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
            upload: Arc::new(SqliteUploadStore {
                conn: self.conn.clone(),
            }),
            host_data: Arc::new(SqliteHostDataStore {
                conn: self.conn.clone(),
            }),
        }
    }

    /// The concrete PubSub store (also available as `storage().pubsub`).
    pub fn pubsub_store(&self) -> SqlitePubSubStore {
        SqlitePubSubStore {
            conn: self.conn.clone(),
        }
    }

    /// The concrete store of MUC room archives (also available as `storage().room_archive`).
    pub fn room_archive_store(&self) -> SqliteArchiveStore {
        SqliteArchiveStore {
            conn: self.conn.clone(),
            writer: self.archive_writer.clone(),
            table: &archive::ROOMS,
            purge_from: Default::default(),
        }
    }

    /// The concrete MUC room store (also available as `storage().rooms`).
    pub fn room_store(&self) -> SqliteRoomStore {
        SqliteRoomStore {
            conn: self.conn.clone(),
        }
    }

    /// The concrete archive store (also available as `storage().archive`).
    pub fn archive_store(&self) -> SqliteArchiveStore {
        SqliteArchiveStore {
            conn: self.conn.clone(),
            writer: self.archive_writer.clone(),
            table: &archive::ACCOUNTS,
            purge_from: Default::default(),
        }
    }

    /// The concrete account store (also available as `storage().accounts`).
    pub fn account_store(&self) -> SqliteAccountStore {
        SqliteAccountStore {
            conn: self.conn.clone(),
        }
    }

    /// The concrete roster store (also available as `storage().roster`).
    pub fn roster_store(&self) -> SqliteRosterStore {
        SqliteRosterStore {
            conn: self.conn.clone(),
        }
    }

    /// The concrete offline store (also available as `storage().offline`).
    pub fn offline_store(&self) -> SqliteOfflineStore {
        SqliteOfflineStore {
            conn: self.conn.clone(),
        }
    }

    /// The concrete user-data store (also available as `storage().user_data`).
    pub fn user_data_store(&self) -> SqliteUserDataStore {
        SqliteUserDataStore {
            conn: self.conn.clone(),
        }
    }

    /// `PRAGMA integrity_check` reports "ok" and `PRAGMA foreign_key_check` reports no
    /// row without its account (or roster item). Blocking.
    pub fn integrity_check(&self) -> Result<bool, StorageError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(backend)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let orphans = conn
            .prepare("PRAGMA foreign_key_check")
            .and_then(|mut s| s.exists([]))
            .map_err(backend)?;
        Ok(rows.len() == 1 && rows[0] == "ok" && !orphans)
    }

    /// The schema version recorded in the database. Blocking.
    pub fn schema_version(&self) -> Result<i64, StorageError> {
        current_version(&self.conn.lock())
    }
}

/// The settings of every connection of the server: busy timeout, statement cache, WAL,
/// synchronous=NORMAL, foreign keys (required), the page cache, and for database files no
/// checkpoint on commit (the checkpointer thread does them, see the invariants above).
fn configure(conn: &mut Connection, file: bool) -> Result<(), StorageError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    // Switching a new database to WAL takes an exclusive lock. When another process is doing
    // the same at that moment (a script creating accounts with parallel `rookery user add`),
    // SQLite answers SQLITE_BUSY at once instead of waiting, since it skips the busy handler
    // where waiting could deadlock; so the switch is retried until the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => break r.map_err(backend)?,
        }
    };
    if file && !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Backend(format!(
            "cannot enable WAL journal mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(backend)?;
    let fk: bool = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .map_err(backend)?;
    if !fk {
        return Err(StorageError::Backend(
            "SQLite foreign key support is unavailable".into(),
        ));
    }
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(backend)?;
    if file {
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(backend)?;
    }
    Ok(())
}

/// Starts the checkpointer of a database file on its own connection: every
/// [`CHECKPOINT_INTERVAL`] a PASSIVE checkpoint (it copies what no reader still needs,
/// syncs, and waits for nobody), and a RESTART one when the WAL holds more than
/// [`WAL_RESTART_FRAMES`] frames. It ends when `alive` can no longer be upgraded (the
/// backend and every store made from it are gone), after a last checkpoint that empties
/// the WAL.
fn start_checkpointer(
    conn: Connection,
    alive: std::sync::Weak<Mutex<Connection>>,
) -> Result<(), StorageError> {
    // (busy, frames in the WAL, frames copied): `busy` is 1 when a RESTART or TRUNCATE
    // checkpoint could not finish within the busy timeout.
    let checkpoint = move |conn: &Connection, mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(|e| tracing::warn!("SQLite {mode} checkpoint failed: {e}"))
        .ok()
    };
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || loop {
            lower_priority(CHECKPOINTER_NICE);
            std::thread::sleep(CHECKPOINT_INTERVAL);
            if alive.upgrade().is_none() {
                checkpoint(&conn, "TRUNCATE");
                return;
            }
            if let Some((_, frames, _)) = checkpoint(&conn, "PASSIVE") {
                if frames > WAL_RESTART_FRAMES {
                    checkpoint(&conn, "RESTART");
                }
            }
        })
        .map_err(|e| StorageError::Backend(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}

/// The checkpointer's nice value. It is on no one's path (appends don't wait for it), but
/// on a busy core a checkpoint it ran (milliseconds of copying pages) made the thread that
/// delivers messages wait for the CPU: most of the message latency tail at a steady rate
/// with the archive on (`perf sched timehist`: 11 of the 18 waits over 0.8 ms). At nice
/// 10 a woken delivery thread takes the core from it at once, and it still gets a share
/// (about a tenth) of a saturated core, so the WAL keeps being copied back.
const CHECKPOINTER_NICE: i32 = 10;

/// Makes the calling thread a background one: out of a real-time policy, at `nice`
/// (Linux: per thread; it only ever lowers a priority, which needs no privilege).
///
/// A server run under a real-time policy (`chrt`, systemd's `CPUSchedulingPolicy`) has
/// every thread real-time, and a real-time thread keeps its core until it blocks: a
/// storage thread would then hold a delivering thread off for a whole commit or checkpoint.
/// The storage threads call this each round, since the policy can be set while they run.
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getscheduler/sched_setscheduler on the calling thread (pid 0), with
        // a parameter that lives for the call.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            if policy == libc::SCHED_FIFO || policy == libc::SCHED_RR {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            } else if nice == 0 {
                return;
            }
        }
        // SAFETY: gettid and setpriority on the calling thread take no pointers.
        let failed = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0
        };
        if failed {
            tracing::debug!(error = %std::io::Error::last_os_error(), nice, "thread priority unchanged");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

fn current_version(conn: &Connection) -> Result<i64, StorageError> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(backend)
}

/// Apply the migrations the database lacks, each once, each in its own transaction.
/// Safe to run concurrently from several processes (`BEGIN IMMEDIATE` serialises them
/// and the version is re-read inside the transaction).
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// [`migrate`], stopping at schema `target` (tests build databases of older versions).
fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StorageError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             )",
        )
        .map_err(backend)?;
        let current = current_version(&tx)?;
        if current > SCHEMA_VERSION {
            return Err(StorageError::Backend(format!(
                "database schema version {current} is newer than this build of Rookery \
                 supports (version {SCHEMA_VERSION}); upgrade Rookery or use a matching database"
            )));
        }
        let Some(sql) = usize::try_from(current)
            .ok()
            .filter(|_| current < target)
            .and_then(|i| MIGRATIONS.get(i))
        else {
            tx.commit().map_err(backend)?;
            return Ok(());
        };
        let version = current + 1;
        tx.execute_batch(sql)
            .map_err(|e| StorageError::Backend(format!("migration {version} failed: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_unix()],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
}

/// [`AccountStore`] on SQLite.
#[derive(Clone)]
pub struct SqliteAccountStore {
    conn: Shared,
}

impl std::fmt::Debug for SqliteAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAccountStore").finish_non_exhaustive()
    }
}

impl SqliteAccountStore {
    /// Run `f` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        run(&self.conn, f).await
    }
}

fn insert_credentials(
    tx: &rusqlite::Transaction<'_>,
    domain: &str,
    username: &str,
    creds: &[ScramCredentials],
) -> Result<(), StorageError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO scram_credentials
                 (domain, username, hash, salt, iterations, stored_key, server_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(backend)?;
    for c in creds {
        stmt.execute(params![
            domain,
            username,
            c.hash.name(),
            c.salt,
            i64::from(c.iterations),
            c.stored_key,
            c.server_key
        ])
        .map_err(backend)?;
    }
    Ok(())
}

fn blob(v: ValueRef<'_>, what: &str) -> Result<Vec<u8>, StorageError> {
    match v {
        ValueRef::Blob(b) => Ok(b.to_vec()),
        other => Err(StorageError::Corrupt(format!(
            "{what} is {:?}, not a BLOB",
            other.data_type()
        ))),
    }
}

/// Turn a `scram_credentials` row back into a record, checking everything.
fn credentials_from_row(
    row: &rusqlite::Row<'_>,
    expected: HashAlg,
) -> Result<ScramCredentials, StorageError> {
    let col = |i: usize| row.get_ref(i).map_err(backend);
    let hash = match col(0)? {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(HashAlg::from_name)
            .ok_or_else(|| {
                StorageError::Corrupt(format!("unknown hash {:?}", String::from_utf8_lossy(t)))
            })?,
        other => {
            return Err(StorageError::Corrupt(format!(
                "hash is {:?}, not TEXT",
                other.data_type()
            )))
        }
    };
    if hash != expected {
        return Err(StorageError::Corrupt(format!(
            "asked for {expected}, row says {hash}"
        )));
    }
    let iterations = match col(2)? {
        ValueRef::Integer(i) => u32::try_from(i)
            .map_err(|_| StorageError::Corrupt(format!("iteration count {i} out of range")))?,
        other => {
            return Err(StorageError::Corrupt(format!(
                "iterations is {:?}, not INTEGER",
                other.data_type()
            )))
        }
    };
    let creds = ScramCredentials {
        hash,
        salt: blob(col(1)?, "salt")?,
        iterations,
        stored_key: blob(col(3)?, "stored_key")?,
        server_key: blob(col(4)?, "server_key")?,
    };
    creds
        .validate()
        .map_err(|e| StorageError::Corrupt(format!("{hash} record: {e}")))?;
    Ok(creds)
}

#[async_trait::async_trait]
impl AccountStore for SqliteAccountStore {
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let (domain, username, creds) = (domain.to_owned(), username.to_owned(), creds.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT INTO accounts (domain, username, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![domain, username, now_unix()],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StorageError::AlreadyExists);
            }
            insert_credentials(&tx, &domain, &username, &creds)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let (domain, username, creds) = (domain.to_owned(), username.to_owned(), creds.to_vec());
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM accounts WHERE domain = ?1 AND username = ?2",
                    params![domain, username],
                    |_| Ok(()),
                )
                .optional()
                .map_err(backend)?
                .is_some();
            if !exists {
                return Err(StorageError::NotFound);
            }
            tx.execute(
                "DELETE FROM scram_credentials WHERE domain = ?1 AND username = ?2",
                params![domain, username],
            )
            .map_err(backend)?;
            insert_credentials(&tx, &domain, &username, &creds)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_credentials(
        &self,
        domain: &str,
        username: &str,
        hash: HashAlg,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        let (domain, username) = (domain.to_owned(), username.to_owned());
        read(&self.conn, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hash, salt, iterations, stored_key, server_key
                     FROM scram_credentials
                     WHERE domain = ?1 AND username = ?2 AND hash = ?3",
                )
                .map_err(backend)?;
            let mut rows = stmt
                .query(params![domain, username, hash.name()])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => credentials_from_row(row, hash).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        let (domain, username) = (domain.to_owned(), username.to_owned());
        read(&self.conn, move |conn| {
            conn.prepare_cached("SELECT 1 FROM accounts WHERE domain = ?1 AND username = ?2")
                .and_then(|mut s| s.exists(params![domain, username]))
                .map_err(backend)
        })
        .await
    }

    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        let (domain, username) = (domain.to_owned(), username.to_owned());
        self.run(move |conn| {
            let tx = im::write_tx(conn)?;
            // Everything of the account goes with it, in this one statement (ON DELETE
            // CASCADE): credentials, roster items and groups, roster version, pending
            // subscriptions, offline messages, user data, archive, its PEP service, its
            // upload records.
            let deleted = tx
                .prepare_cached("DELETE FROM accounts WHERE domain = ?1 AND username = ?2")
                .and_then(|mut s| s.execute(params![domain, username]))
                .map_err(backend)?
                > 0;
            // What its JIDs hold on other PubSub services references no account row: it is
            // removed in the same transaction.
            if deleted {
                pubsub::forget_jids(&tx, &format!("{username}@{domain}"))?;
            }
            tx.commit().map_err(backend)?;
            Ok(deleted)
        })
        .await
    }

    async fn list_accounts(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let domain = domain.map(str::to_owned);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT username, domain FROM accounts
                     WHERE ?1 IS NULL OR domain = ?1
                     ORDER BY domain, username",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![domain], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<(String, String)>, _>>()
                .map_err(|e| StorageError::Corrupt(format!("account row: {e}")))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several processes opening a database that does not exist yet (a script creating
    /// accounts with parallel `rookery user add`): each waits for the others instead of
    /// failing with "database is locked", and the schema is made once. The processes are
    /// this test binary again, running `opens_the_database_named_by_the_environment`.
    #[test]
    fn concurrent_first_opens_from_several_processes_wait_for_each_other() {
        let exe = std::env::current_exe().expect("test binary");
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("rookery.db");
            // All start opening at the same moment, as parallel processes can.
            let at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis()
                + 300;
            let children: Vec<_> = (0..8)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .args([
                            "--exact",
                            "tests::opens_the_database_named_by_the_environment",
                            "--ignored",
                            "--quiet",
                        ])
                        .env("ROOKERY_TEST_OPEN_DB", &path)
                        .env("ROOKERY_TEST_OPEN_AT", at.to_string())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn")
                })
                .collect();
            for child in children {
                let out = child.wait_with_output().expect("wait");
                assert!(
                    out.status.success(),
                    "an open failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let conn = Connection::open(&path).expect("reopen");
            assert_eq!(current_version(&conn).expect("version"), SCHEMA_VERSION);
        }
    }

    /// The child of the test above (ignored when run alone).
    #[test]
    #[ignore = "run by concurrent_first_opens_from_several_processes_wait_for_each_other"]
    fn opens_the_database_named_by_the_environment() {
        if let Some(path) = std::env::var_os("ROOKERY_TEST_OPEN_DB") {
            let at: u128 = std::env::var("ROOKERY_TEST_OPEN_AT")
                .ok()
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let now = || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            };
            while now() < at {
                std::hint::spin_loop();
            }
            SqliteBackend::open(Path::new(&path)).expect("open");
        }
    }

    /// A read runs on the calling thread while the connection is free, and waits on the
    /// blocking pool (without holding the caller's thread) while another task holds it.
    #[tokio::test(flavor = "current_thread")]
    // The guard is held across the sleep on purpose: it stands for another task's use.
    #[allow(clippy::await_holding_lock)]
    async fn reads_run_inline_when_the_connection_is_free() {
        let conn: Shared = Arc::new(Mutex::new(Connection::open_in_memory().expect("open")));
        let caller = std::thread::current().id();
        let inline = read(&conn, |c| {
            let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0)).map_err(backend)?;
            Ok((one, std::thread::current().id()))
        })
        .await
        .expect("read");
        assert_eq!(inline, (1, caller));

        // Held by another task: the read goes to the pool and completes once released.
        let guard = conn.lock();
        let pending = tokio::spawn({
            let conn = conn.clone();
            async move { read(&conn, |_| Ok(std::thread::current().id())).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !pending.is_finished(),
            "the read must wait for the connection"
        );
        drop(guard);
        let on = pending.await.expect("join").expect("read");
        assert_ne!(on, caller, "a held connection is waited for on the pool");
    }

    #[test]
    fn migrations_are_idempotent_on_one_connection() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("first");
        migrate(&mut conn).expect("second");
        migrate(&mut conn).expect("third");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, SCHEMA_VERSION);
        assert_eq!(current_version(&conn).expect("version"), SCHEMA_VERSION);
    }

    /// A database at schema 8 (archives keyed by domain and username text, five indexes)
    /// with rows in both archive tables migrates to the integer-owner schema with every
    /// entry, id, timestamp and order intact, exact counts, and seq never reused.
    #[tokio::test]
    async fn archives_migrate_from_schema_8_intact() {
        use rookery_storage::{ArchiveEntry, ArchiveFilter, ArchiveQuery, PageRequest};
        use rookery_storage::{StorageError, WithFilter};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rookery.db");
        let entry = |n: i64, with: &str, res: &str, ts: i64| ArchiveEntry {
            id: format!("id-{}", (n * 7919) % 10007),
            timestamp_us: ts,
            with_bare: with.to_owned(),
            with_resource: res.to_owned(),
            stanza: format!("<message id='m{n}'><body>{n}</body></message>"),
        };
        let mut alice = Vec::new();
        {
            let mut conn = Connection::open(&path).expect("open");
            configure(&mut conn, true).expect("configure");
            migrate_to(&mut conn, 8).expect("to 8");
            assert_eq!(current_version(&conn).expect("v"), 8);
            for user in ["alice", "bob"] {
                conn.execute("INSERT INTO accounts VALUES ('example.org', ?1, 0)", [user])
                    .expect("account");
            }
            let insert = |table: &str, domain: &str, user: &str, e: &ArchiveEntry| {
                conn.execute(
                    &format!(
                        "INSERT INTO {table} (domain, username, stanza_id, ts, with_bare,
                             with_resource, stanza) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    ),
                    params![
                        domain,
                        user,
                        e.id,
                        e.timestamp_us,
                        e.with_bare,
                        e.with_resource,
                        e.stanza
                    ],
                )
                .expect("insert");
            };
            for n in 0..40 {
                let with = if n % 3 == 0 {
                    "bob@example.org"
                } else {
                    "carol@example.net"
                };
                // Some entries share a timestamp (a clock that went back was raised).
                let e = entry(
                    n,
                    with,
                    if n % 2 == 0 { "r1" } else { "" },
                    1000 + 10 * (n / 2),
                );
                insert("archive", "example.org", "alice", &e);
                alice.push(e);
                insert(
                    "archive",
                    "example.org",
                    "bob",
                    &entry(100 + n, "alice@example.org", "", 5 + n),
                );
                insert(
                    "muc_archive",
                    "conference.example.org",
                    "lobby",
                    &entry(200 + n, "lobby@conference.example.org", "nick", 7 + n),
                );
            }
            // A purged oldest entry, and bob's newest deleted (the highest seq is gone).
            conn.execute("DELETE FROM archive WHERE stanza_id = ?1", [&alice[0].id])
                .expect("purge");
            alice.remove(0);
            conn.execute(
                "DELETE FROM archive WHERE seq = (SELECT MAX(seq) FROM archive)",
                [],
            )
            .expect("delete");
        }
        let max_seq_before: i64 = Connection::open(&path)
            .expect("open")
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'archive'",
                [],
                |r| r.get(0),
            )
            .expect("seq");

        let b = SqliteBackend::open(&path).expect("open migrates");
        assert_eq!(b.schema_version().expect("v"), SCHEMA_VERSION);
        let s = b.storage();
        let q = |filter: ArchiveFilter, page: PageRequest, max: usize| ArchiveQuery {
            filter,
            page,
            max,
        };
        let p = s
            .archive
            .query_archive(
                "example.org",
                "alice",
                &q(ArchiveFilter::default(), PageRequest::First, 100),
            )
            .await
            .expect("query");
        assert_eq!(p.entries, alice);
        assert_eq!((p.count, p.first_index, p.complete), (39, Some(0), true));
        // Counts and indexes come from the ordinals the migration numbered.
        let p = s
            .archive
            .query_archive(
                "example.org",
                "alice",
                &q(
                    ArchiveFilter::default(),
                    PageRequest::After(alice[9].id.clone()),
                    5,
                ),
            )
            .await
            .expect("after");
        assert_eq!(p.entries, alice[10..15]);
        assert_eq!((p.count, p.first_index), (39, Some(10)));
        let bob_filter = ArchiveFilter {
            with: Some(WithFilter {
                bare: "bob@example.org".into(),
                resource: None,
            }),
            ..ArchiveFilter::default()
        };
        let bobs: Vec<_> = alice
            .iter()
            .filter(|e| e.with_bare == "bob@example.org")
            .cloned()
            .collect();
        let p = s
            .archive
            .query_archive(
                "example.org",
                "alice",
                &q(bob_filter.clone(), PageRequest::Last, 3),
            )
            .await
            .expect("with");
        assert_eq!(p.entries, bobs[bobs.len() - 3..]);
        assert_eq!((p.count, p.first_index), (bobs.len(), Some(bobs.len() - 3)));
        let p = s
            .room_archive
            .query_archive(
                "conference.example.org",
                "lobby",
                &q(ArchiveFilter::default(), PageRequest::Last, 100),
            )
            .await
            .expect("room");
        assert_eq!(p.count, 40);
        assert_eq!(p.entries[0].id, entry(200, "", "", 0).id);
        let p = s
            .archive
            .query_archive(
                "example.org",
                "bob",
                &q(ArchiveFilter::default(), PageRequest::First, 100),
            )
            .await
            .expect("bob");
        assert_eq!(p.count, 39);
        // The id index still refuses duplicates; appends continue the order and the counts.
        assert!(matches!(
            s.archive
                .append_archive("example.org", "alice", &alice[3])
                .await,
            Err(StorageError::AlreadyExists)
        ));
        let late = entry(500, "bob@example.org", "", 1);
        let ts = s
            .archive
            .append_archive("example.org", "alice", &late)
            .await
            .expect("append");
        assert_eq!(ts, alice[38].timestamp_us);
        let p = s
            .archive
            .query_archive("example.org", "alice", &q(bob_filter, PageRequest::Last, 1))
            .await
            .expect("with");
        assert_eq!(p.entries[0].id, late.id);
        assert_eq!((p.count, p.first_index), (bobs.len() + 1, Some(bobs.len())));
        let seq: i64 = b
            .conn
            .lock()
            .query_row(
                "SELECT seq FROM archive WHERE stanza_id = ?1",
                [&late.id],
                |r| r.get(0),
            )
            .expect("seq");
        assert!(seq > max_seq_before, "{seq} <= {max_seq_before}");
        // Account deletion still cascades to the archive.
        assert!(s
            .accounts
            .delete_account("example.org", "alice")
            .await
            .expect("delete"));
        let left: i64 = b
            .conn
            .lock()
            .query_row(
                "SELECT COUNT(*) FROM archive a JOIN archive_owners o ON o.id = a.owner
                 WHERE o.username = 'alice'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(left, 0);
        assert!(b.integrity_check().expect("check"));
    }

    /// Statements traced on the connection under test (only that test installs a tracer).
    static TRACED: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

    fn record(sql: &str) {
        TRACED.lock().push(sql.trim_start().to_owned());
    }

    fn traced_selects() -> Vec<String> {
        std::mem::take(&mut *TRACED.lock())
            .into_iter()
            .filter(|s| s.starts_with("SELECT"))
            .collect()
    }

    #[tokio::test]
    async fn roster_reads_do_not_grow_with_the_roster() {
        use rookery_storage::RosterItem;
        let b = SqliteBackend::open_in_memory().expect("open");
        let s = b.storage();
        s.accounts
            .create_account("example.org", "alice", &[])
            .await
            .expect("create");
        for i in 0..30 {
            let item = RosterItem {
                groups: vec![format!("g{}", i % 4), "all".into(), format!("g{}", i % 4)],
                ..RosterItem::new(format!("c{i:02}@example.net"))
            };
            s.roster
                .set_roster_item("example.org", "alice", &item, 100)
                .await
                .expect("set");
        }
        b.conn.lock().trace(Some(record));
        TRACED.lock().clear();

        let roster = s
            .roster
            .roster("example.org", "alice")
            .await
            .expect("roster");
        assert_eq!((roster.version, roster.items.len()), (30, 30));
        assert_eq!(roster.items[5].groups, ["g1", "all"]);
        assert_eq!(
            traced_selects().len(),
            2,
            "version + items, then all groups"
        );

        let item = s
            .roster
            .roster_item("example.org", "alice", "c05@example.net")
            .await
            .expect("item")
            .expect("present");
        assert_eq!(item.groups, ["g1", "all"]);
        assert_eq!(traced_selects().len(), 2, "item, then its groups");

        // An empty roster (and an unknown account) is still one row for the version.
        let empty = s
            .roster
            .roster("example.org", "nobody")
            .await
            .expect("roster");
        assert_eq!(empty, rookery_storage::Roster::default());
        assert_eq!(traced_selects().len(), 2);

        // An offline push is: owner check, bounded count, insert.
        s.offline
            .push_offline("example.org", "alice", "<message/>", 10)
            .await
            .expect("push")
            .expect("stored");
        assert_eq!(traced_selects().len(), 2);
        b.conn.lock().trace(None);
    }

    #[test]
    fn in_memory_pragmas() {
        let b = SqliteBackend::open_in_memory().expect("open");
        let conn = b.conn.lock();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .expect("fk");
        assert_eq!(fk, 1);
        let timeout: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .expect("busy");
        assert_eq!(timeout, 5000);
    }
}
