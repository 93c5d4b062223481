//! The PostgreSQL storage backend of Rookery: every store of [`Storage`] in one PostgreSQL
//! database, reached through a pool of connections (tokio-postgres, deadpool).
//!
//! # Invariants
//!
//! * **Only SCRAM records are stored, never passwords** (table `scram_credentials`).
//! * **Everything of an account hangs off `accounts`.** Accounts have a bigint identity;
//!   credentials, roster items, pending subscriptions, offline messages, user data, the
//!   message archive, the account's PEP service (and through it its nodes, items,
//!   affiliations and subscriptions) and its upload records reference `accounts (id)` with
//!   `ON DELETE CASCADE`: deleting an account is one statement for all of that. The PubSub
//!   affiliations and subscriptions its JIDs hold on other services are deleted in the same
//!   transaction. Rooms, room archives and PubSub service domains belong to no account.
//! * **Checks and writes are atomic.** Every write of per-account data first locks the
//!   account row (`SELECT ... FOR NO KEY UPDATE`, NotFound when absent) and every PubSub
//!   write locks its service row, in the transaction of the write: writers of one owner are
//!   serialised, so quotas (roster items, offline messages, PubSub nodes/items/subscriptions,
//!   upload bytes) are checked and written with no other writer in between, and the roster
//!   version is bumped in the same transaction as the change. `NO KEY UPDATE` does not
//!   conflict with the key-share locks foreign keys take, so inserts elsewhere that
//!   reference the account are not held up.
//! * **Reads of several statements see one snapshot** (a `REPEATABLE READ READ ONLY`
//!   transaction).
//! * **Byte order.** Every name column is `COLLATE "C"`: names compare and sort by bytes,
//!   as the storage traits require, whatever the database's default collation.
//! * **Schema versioning.** Migrations (embedded from `migrations/*.sql`) are applied once
//!   each, in order, each in its own transaction under a transaction-scoped advisory lock
//!   (so a server and a CLI starting together don't race), and recorded in
//!   `schema_migrations`. A database whose schema is newer than this build is refused.
//! * **A database that goes away gives errors, fast.** Taking a connection from the pool
//!   waits at most [`CHECKOUT_TIMEOUT`], and connecting at most [`CONNECT_TIMEOUT`]; a
//!   failure is [`StorageError::Backend`], which the modules answer with
//!   `internal-server-error`. Broken connections are dropped by the pool and new ones made
//!   when the database is back: no restart of the server is needed.
//! * **Rows are validated on read.** A value of the wrong type, a NULL where none belongs
//!   or a malformed record surfaces as [`StorageError::Corrupt`], never as a panic.
//! * **Archive appends are group-committed** (`archive.rs`): one writer task commits every
//!   append waiting at that moment in one transaction; each caller is answered after the
//!   commit.
//! * **Archive queries cost a page, not an archive** (`archive.rs`): index range seeks in
//!   archive order reading `max + 1` rows (the plans are checked in `tests/postgres.rs`).
//! * **TLS to the database as libpq does it** (`tls.rs`): `sslmode` `disable`, `prefer`
//!   (the default: TLS when offered, certificate unchecked), `require` (TLS, certificate
//!   unchecked), `verify-ca` (chain checked against `sslrootcert` or the system's roots),
//!   `verify-full` (chain and host name). The CA file is read when the backend is opened:
//!   an unreadable one is an error then, not at the first connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rookery_sasl::{HashAlg, ScramCredentials};
use rookery_storage::{validate_credentials, AccountStore, Storage, StorageError};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

mod archive;
mod im;
mod pubsub;
mod tls;

pub use archive::{page_sql as archive_page_sql, PgArchiveStore};
pub use im::{
    PgHostDataStore, PgOfflineStore, PgRoomStore, PgRosterStore, PgUploadStore, PgUserDataStore,
};
pub use pubsub::PgPubSubStore;
pub use tls::{split_url, MakeRustlsConnect, RootCert, SplitUrl, TlsMode, MAX_ROOT_CERT_FILE};

/// The migrations, in order: entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_accounts.sql"),
    include_str!("../migrations/0002_im.sql"),
    include_str!("../migrations/0003_archive.sql"),
    include_str!("../migrations/0004_pubsub.sql"),
    include_str!("../migrations/0005_uploads.sql"),
    include_str!("../migrations/0006_host_data.sql"),
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Connections kept by default (`[storage] pool_size`).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Longest wait for a free connection of the pool: a dead or saturated database gives
/// callers an error after this, not a session that hangs.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a new connection (when the URL sets no `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key taken while migrating ("rookery" in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x0072_6f6f_6b65_7279;

/// A failure of the database or of the connection to it.
pub(crate) fn db(e: tokio_postgres::Error) -> StorageError {
    if e.is_closed() {
        return StorageError::Backend(format!("database connection lost: {e}"));
    }
    match e.as_db_error() {
        Some(d) => StorageError::Backend(format!("database: {}", d.message())),
        None => StorageError::Backend(format!("database: {}", with_causes(&e))),
    }
}

/// An error and its causes, one after the other: tokio-postgres says "error performing
/// TLS handshake" and keeps the reason (a certificate error) in its source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    // Bounded: a source chain is a few links.
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Errors of a write: a foreign-key violation means the owner doesn't exist (a concurrent
/// deletion got there first).
pub(crate) fn write_err(e: tokio_postgres::Error) -> StorageError {
    if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        StorageError::NotFound
    } else {
        db(e)
    }
}

/// A column of the wrong type or a NULL where none belongs: corrupt data.
pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, StorageError> {
    row.try_get(i)
        .map_err(|e| StorageError::Corrupt(format!("column {i}: {e}")))
}

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a statement (prepared once per connection) and returns its rows.
pub(crate) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StorageError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&st, params).await.map_err(db)
}

/// Runs a statement returning at most one row.
pub(crate) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StorageError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query_opt(&st, params).await.map_err(db)
}

/// Runs a statement returning exactly one row.
pub(crate) async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, StorageError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query_one(&st, params).await.map_err(db)
}

/// Runs a write statement; a foreign-key violation is NotFound.
pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, StorageError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.execute(&st, params).await.map_err(write_err)
}

/// Locks the account row for this transaction and returns its id; NotFound if there is no
/// such account. Every write of per-account data starts with it (see the crate invariants).
pub(crate) async fn lock_account<C: GenericClient>(
    c: &C,
    domain: &str,
    user: &str,
) -> Result<i64, StorageError> {
    let row = query_opt(
        c,
        "SELECT id FROM accounts WHERE domain = $1 AND username = $2 FOR NO KEY UPDATE",
        &[&domain, &user],
    )
    .await?
    .ok_or(StorageError::NotFound)?;
    get(&row, 0)
}

/// The id of an account (no lock), if it exists: reads of an unknown account are empty.
pub(crate) async fn account_id<C: GenericClient>(
    c: &C,
    domain: &str,
    user: &str,
) -> Result<Option<i64>, StorageError> {
    match query_opt(
        c,
        "SELECT id FROM accounts WHERE domain = $1 AND username = $2",
        &[&domain, &user],
    )
    .await?
    {
        Some(row) => Ok(Some(get(&row, 0)?)),
        None => Ok(None),
    }
}

pub(crate) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn count_from(n: i64) -> Result<usize, StorageError> {
    usize::try_from(n).map_err(|_| StorageError::Corrupt(format!("negative count {n}")))
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the pool hands out.
pub(crate) type Conn = deadpool_postgres::Object;

/// The connection pool shared by the stores of one backend.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
}

impl Db {
    /// A connection, waiting at most [`CHECKOUT_TIMEOUT`].
    pub(crate) async fn conn(&self) -> Result<Conn, StorageError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => db(e),
            other => StorageError::Backend(format!("database unavailable: {other}")),
        })
    }
}

/// Settings of a [`PgBackend`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgresql://user[:password]@host[:port]/dbname[?param=value...]` or the key-value
    /// form `host=... user=... dbname=...`, as libpq and tokio-postgres read them.
    pub url: String,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Most archive appends committed in one transaction by the archive writer (group
    /// commit). 0: no writer, each append is its own transaction on a pooled connection,
    /// concurrently (for measuring what grouping gains).
    pub archive_batch: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            archive_batch: archive::MAX_BATCH,
        }
    }
}

/// A checked connection string: tokio-postgres's settings and the TLS mode (see `tls.rs`).
#[derive(Debug, Clone)]
pub struct PgUrl {
    pub config: tokio_postgres::Config,
    pub tls: TlsMode,
    pub root_cert: RootCert,
}

impl PgUrl {
    /// The TLS connector of this URL; reads the CA file of `verify-ca`/`verify-full`, so a
    /// missing or unreadable `sslrootcert` is an error here.
    pub fn connector(&self) -> Result<MakeRustlsConnect, StorageError> {
        Ok(MakeRustlsConnect::new(tls::client_config(
            self.tls,
            &self.root_cert,
        )?))
    }
}

/// Parses and checks a connection string: the TLS mode, and the connect timeout it needs.
pub fn parse_url(url: &str) -> Result<PgUrl, StorageError> {
    let split = split_url(url)?;
    let mut config: tokio_postgres::Config = split
        .rest
        .parse()
        .map_err(|e| StorageError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
    config.ssl_mode(split.mode.wire());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("rookery");
    }
    Ok(PgUrl {
        config,
        tls: split.mode,
        root_cert: split.root_cert,
    })
}

/// An open PostgreSQL database (a pool of connections to it).
#[derive(Clone)]
pub struct PgBackend {
    db: Db,
    /// None: appends commit one by one (`archive_batch = 0`).
    archive_writer: Option<archive::ArchiveWriter>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend").finish_non_exhaustive()
    }
}

impl PgBackend {
    /// Connects, applies the migrations the database lacks and starts the archive writer.
    /// Must run inside a tokio runtime.
    pub async fn open(options: &PgOptions) -> Result<Self, StorageError> {
        let url = parse_url(&options.url)?;
        if options.pool_size == 0 {
            return Err(StorageError::Backend("pool_size must be at least 1".into()));
        }
        let manager = Manager::from_config(
            url.config.clone(),
            url.connector()?,
            ManagerConfig {
                // A connection whose socket closed (database restarted) reports it at once
                // and is dropped; no extra round trip per checkout.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CHECKOUT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Backend(format!("cannot build the pool: {e}")))?;
        let db = Db { pool };
        {
            let mut conn = db.conn().await?;
            migrate(&mut conn).await?;
        }
        Ok(PgBackend {
            archive_writer: (options.archive_batch > 0)
                .then(|| archive::start_writer(db.clone(), options.archive_batch)),
            db,
        })
    }

    /// The trait objects backed by this database.
    pub fn storage(&self) -> Storage {
        Storage {
            accounts: Arc::new(PgAccountStore {
                db: self.db.clone(),
            }),
            roster: Arc::new(PgRosterStore {
                db: self.db.clone(),
            }),
            offline: Arc::new(PgOfflineStore {
                db: self.db.clone(),
            }),
            user_data: Arc::new(PgUserDataStore {
                db: self.db.clone(),
            }),
            archive: Arc::new(self.archive_store()),
            rooms: Arc::new(PgRoomStore {
                db: self.db.clone(),
            }),
            room_archive: Arc::new(self.room_archive_store()),
            pubsub: Arc::new(PgPubSubStore {
                db: self.db.clone(),
            }),
            upload: Arc::new(PgUploadStore {
                db: self.db.clone(),
            }),
            host_data: Arc::new(PgHostDataStore {
                db: self.db.clone(),
            }),
        }
    }

    /// The concrete archive store of accounts (also `storage().archive`).
    pub fn archive_store(&self) -> PgArchiveStore {
        PgArchiveStore {
            db: self.db.clone(),
            writer: self.archive_writer.clone(),
            table: &archive::ACCOUNTS,
        }
    }

    /// The concrete archive store of MUC rooms (also `storage().room_archive`).
    pub fn room_archive_store(&self) -> PgArchiveStore {
        PgArchiveStore {
            db: self.db.clone(),
            writer: self.archive_writer.clone(),
            table: &archive::ROOMS,
        }
    }

    /// The schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<i64, StorageError> {
        let conn = self.db.conn().await?;
        current_version(&conn).await
    }

    /// The server's version string (`SHOW server_version`), for `rookery check`.
    pub async fn server_version(&self) -> Result<String, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_one(&conn, "SHOW server_version", &[]).await?;
        get(&row, 0)
    }
}

async fn current_version<C: GenericClient>(c: &C) -> Result<i64, StorageError> {
    let row = c
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db)?;
    get(&row, 0)
}

/// Applies the migrations the database lacks, each once, each in its own transaction
/// holding a transaction-scoped advisory lock: processes migrating at once (a server and
/// a CLI) take turns, and each re-reads the version under the lock.
async fn migrate(conn: &mut Conn) -> Result<(), StorageError> {
    loop {
        let tx = conn.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint PRIMARY KEY,
                 applied_at bigint NOT NULL
             )",
        )
        .await
        .map_err(db)?;
        let current = current_version(&tx).await?;
        if current > SCHEMA_VERSION {
            return Err(StorageError::Backend(format!(
                "database schema version {current} is newer than this build of Rookery \
                 supports (version {SCHEMA_VERSION}); upgrade Rookery or use a matching database"
            )));
        }
        let Some(sql) = usize::try_from(current)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
        else {
            tx.commit().await.map_err(db)?;
            return Ok(());
        };
        let version = current + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StorageError::Backend(format!("migration {version} failed: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &now_unix()],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
}

/// [`AccountStore`] on PostgreSQL.
#[derive(Clone)]
pub struct PgAccountStore {
    db: Db,
}

impl std::fmt::Debug for PgAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgAccountStore")
    }
}

async fn insert_credentials<C: GenericClient>(
    c: &C,
    account: i64,
    creds: &[ScramCredentials],
) -> Result<(), StorageError> {
    for cr in creds {
        execute(
            c,
            "INSERT INTO scram_credentials
                 (account_id, hash, salt, iterations, stored_key, server_key)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &account,
                &cr.hash.name(),
                &cr.salt,
                &i64::from(cr.iterations),
                &cr.stored_key,
                &cr.server_key,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Turns a `scram_credentials` row back into a record, checking everything.
fn credentials_from_row(row: &Row, expected: HashAlg) -> Result<ScramCredentials, StorageError> {
    let name: String = get(row, 0)?;
    let hash = HashAlg::from_name(&name)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown hash {name:?}")))?;
    if hash != expected {
        return Err(StorageError::Corrupt(format!(
            "asked for {expected}, row says {hash}"
        )));
    }
    let iterations: i64 = get(row, 2)?;
    let creds = ScramCredentials {
        hash,
        salt: get(row, 1)?,
        iterations: u32::try_from(iterations).map_err(|_| {
            StorageError::Corrupt(format!("iteration count {iterations} out of range"))
        })?,
        stored_key: get(row, 3)?,
        server_key: get(row, 4)?,
    };
    creds
        .validate()
        .map_err(|e| StorageError::Corrupt(format!("{hash} record: {e}")))?;
    Ok(creds)
}

#[async_trait::async_trait]
impl AccountStore for PgAccountStore {
    async fn create_account(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        // ON CONFLICT DO NOTHING: of concurrent creations, one inserts, the others wait for
        // it and then see the conflict, with no error that would abort the transaction.
        let row = query_opt(
            &tx,
            "INSERT INTO accounts (domain, username, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (domain, username) DO NOTHING RETURNING id",
            &[&domain, &username, &now_unix()],
        )
        .await?
        .ok_or(StorageError::AlreadyExists)?;
        insert_credentials(&tx, get(&row, 0)?, creds).await?;
        tx.commit().await.map_err(db)
    }

    async fn set_credentials(
        &self,
        domain: &str,
        username: &str,
        creds: &[ScramCredentials],
    ) -> Result<(), StorageError> {
        validate_credentials(creds)?;
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let account = lock_account(&tx, domain, username).await?;
        execute(
            &tx,
            "DELETE FROM scram_credentials WHERE account_id = $1",
            &[&account],
        )
        .await?;
        insert_credentials(&tx, account, creds).await?;
        tx.commit().await.map_err(db)
    }

    async fn get_credentials(
        &self,
        domain: &str,
        username: &str,
        hash: HashAlg,
    ) -> Result<Option<ScramCredentials>, StorageError> {
        let conn = self.db.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT c.hash, c.salt, c.iterations, c.stored_key, c.server_key
             FROM accounts a JOIN scram_credentials c ON c.account_id = a.id
             WHERE a.domain = $1 AND a.username = $2 AND c.hash = $3",
            &[&domain, &username, &hash.name()],
        )
        .await?;
        row.map(|r| credentials_from_row(&r, hash)).transpose()
    }

    async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        let conn = self.db.conn().await?;
        Ok(account_id(&conn, domain, username).await?.is_some())
    }

    async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        let mut conn = self.db.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        // Everything of the account goes with it in this one statement (ON DELETE CASCADE).
        let deleted = execute(
            &tx,
            "DELETE FROM accounts WHERE domain = $1 AND username = $2",
            &[&domain, &username],
        )
        .await?
            > 0;
        // What its JIDs hold on other PubSub services references no account row: removed in
        // the same transaction.
        if deleted {
            pubsub::forget_jids(&tx, &format!("{username}@{domain}")).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(deleted)
    }

    async fn list_accounts(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.db.conn().await?;
        let rows = match domain {
            Some(d) => {
                query(
                    &conn,
                    "SELECT username, domain FROM accounts WHERE domain = $1
                     ORDER BY domain, username",
                    &[&d],
                )
                .await?
            }
            None => {
                query(
                    &conn,
                    "SELECT username, domain FROM accounts ORDER BY domain, username",
                    &[],
                )
                .await?
            }
        };
        rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
    }
}

/// Where a connection string points, without its password: `user@host:port/dbname`.
pub fn describe_url(url: &str) -> String {
    let Ok(PgUrl { config, .. }) = parse_url(url) else {
        return "an invalid URL".to_owned();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("(default user)"),
        if hosts.is_empty() {
            "(default host)".to_owned()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// What `rookery check` reports of a database, found without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `SHOW server_version`.
    pub server_version: String,
    /// The schema version recorded, or None when no migration has run yet (the server
    /// creates the schema when it starts).
    pub schema_version: Option<i64>,
    /// The `sslmode` connected with.
    pub tls_mode: TlsMode,
    /// The TLS version of the connection (`pg_stat_ssl`), None without TLS.
    pub tls: Option<String>,
}

/// Connects once (no pool, no migration) and reads the server's and the schema's versions.
pub async fn probe(url: &str) -> Result<Probe, StorageError> {
    let url = parse_url(url)?;
    let (client, connection) = url.config.connect(url.connector()?).await.map_err(db)?;
    let task = tokio::spawn(connection);
    let result = async {
        let row = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(db)?;
        let server_version: String = get(&row, 0)?;
        let row = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(db)?;
        let schema_version = if get::<bool>(&row, 0)? {
            let row = client
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(db)?;
            Some(get(&row, 0)?)
        } else {
            None
        };
        let row = client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(db)?;
        let tls = if get::<bool>(&row, 0)? {
            Some(get::<Option<String>>(&row, 1)?.unwrap_or_else(|| "TLS".to_owned()))
        } else {
            None
        };
        Ok(Probe {
            server_version,
            schema_version,
            tls_mode: url.tls,
            tls,
        })
    }
    .await;
    drop(client);
    let _ = task.await;
    result
}
