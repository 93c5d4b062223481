//! rookery-storage-sqlite: conformance, persistence, migrations, multi-process access,
//! corruption handling.

use std::path::Path;
use std::time::Duration;

use rookery_sasl::HashAlg;
use rookery_storage::conformance::{self, sample_all, sample_credentials};
use rookery_storage::{RosterItem, StorageError, Subscription};
use rookery_storage_sqlite::{SqliteBackend, SCHEMA_VERSION};

fn raw(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).expect("raw open");
    c.busy_timeout(Duration::from_secs(5)).expect("timeout");
    c
}

/// Rows left in every per-account table (all must be 0 once the suite cleaned up).
fn rows_per_table(c: &rusqlite::Connection) -> Vec<(&'static str, i64)> {
    [
        "accounts",
        "scram_credentials",
        "roster_items",
        "roster_groups",
        "roster_versions",
        "roster_pending_in",
        "offline_messages",
        "user_data",
        "archive",
        "archive_owners",
        "muc_archive",
        "muc_archive_owners",
        "pubsub_services",
        "pubsub_nodes",
        "pubsub_items",
        "pubsub_affiliations",
        "pubsub_subscriptions",
    ]
    .into_iter()
    .map(|t| {
        let n = c
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .expect("count");
        (t, n)
    })
    .collect()
}

#[tokio::test]
async fn conformance_in_memory() {
    let b = SqliteBackend::open_in_memory().expect("open");
    conformance::all(&b.storage()).await;
    assert!(b.integrity_check().expect("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let b = SqliteBackend::open(&path).expect("open");
    conformance::all(&b.storage()).await;
    assert!(b.integrity_check().expect("check"));
    // Account deletions left no orphan row anywhere.
    for (table, n) in rows_per_table(&raw(&path)) {
        assert_eq!(n, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_individual_suites_on_file() {
    // Each suite on its own fresh database (they don't depend on running after another).
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, suite) in [
        "roster",
        "offline",
        "user_data",
        "archive",
        "rooms",
        "room_archive",
        "pubsub",
        "upload",
        "deletion",
    ]
    .iter()
    .enumerate()
    {
        let b = SqliteBackend::open(&dir.path().join(format!("{i}.db"))).expect("open");
        let s = b.storage();
        match *suite {
            "roster" => conformance::roster_store(&s).await,
            "offline" => conformance::offline_store(&s).await,
            "user_data" => conformance::user_data_store(&s).await,
            "archive" => conformance::archive_store(&s).await,
            "rooms" => conformance::room_store(&s).await,
            "room_archive" => conformance::room_archive_store(&s).await,
            "pubsub" => conformance::pubsub_store(&s).await,
            "upload" => conformance::upload_store(&s).await,
            _ => conformance::account_deletion(&s).await,
        }
        assert!(b.integrity_check().expect("check"), "{suite}");
    }
}

/// Build the database exactly as a build with schema version 1 left it.
fn create_v1_database(path: &Path) {
    let c = raw(path);
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         );",
    )
    .expect("schema_migrations");
    c.execute_batch(include_str!("../migrations/0001_accounts.sql"))
        .expect("migration 1");
    c.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)",
        [],
    )
    .expect("version 1");
    let cred = sample_credentials(HashAlg::Sha256, 42);
    c.execute(
        "INSERT INTO accounts (domain, username, created_at) VALUES ('example.org', 'old', 0)",
        [],
    )
    .expect("account");
    c.execute(
        "INSERT INTO scram_credentials
             (domain, username, hash, salt, iterations, stored_key, server_key)
         VALUES ('example.org', 'old', ?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            cred.hash.name(),
            cred.salt,
            i64::from(cred.iterations),
            cred.stored_key,
            cred.server_key
        ],
    )
    .expect("credentials");
}

#[tokio::test]
async fn schema_version_1_database_migrates_keeping_its_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    create_v1_database(&path);

    let b = SqliteBackend::open(&path).expect("open migrates");
    assert_eq!(b.schema_version().expect("version"), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 11);
    let s = b.storage();
    assert_eq!(
        s.accounts.list_accounts(None).await.expect("list"),
        vec![("old".to_owned(), "example.org".to_owned())]
    );
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "old", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 42))
    );
    // The migrated account uses the new stores, starting empty.
    assert_eq!(
        s.roster.roster("example.org", "old").await.expect("roster"),
        rookery_storage::Roster::default()
    );
    assert_eq!(
        s.roster
            .set_roster_item(
                "example.org",
                "old",
                &RosterItem::new("friend@example.net"),
                10
            )
            .await
            .expect("set"),
        1
    );
    assert!(s
        .offline
        .push_offline("example.org", "old", "<message/>", 10)
        .await
        .expect("push")
        .is_some());
    s.user_data
        .set_data("example.org", "old", "vcard", "", Some("<vCard/>"), 100)
        .await
        .expect("set data");
    let pep = rookery_storage::PubSubService::Account {
        domain: "example.org",
        user: "old",
    };
    s.pubsub
        .create_node(pep, "urn:xmpp:avatar:metadata", "{}", "old@example.org", 10)
        .await
        .expect("create node");
    s.pubsub
        .publish_item(
            pep,
            "urn:xmpp:avatar:metadata",
            &rookery_storage::ItemRecord {
                id: "current".into(),
                publisher: "old@example.org".into(),
                payload: "<metadata/>".into(),
                published_us: 1,
            },
            1,
            10,
        )
        .await
        .expect("publish");
    // And deleting it cascades into the new tables.
    assert!(s
        .accounts
        .delete_account("example.org", "old")
        .await
        .expect("delete"));
    assert!(b.integrity_check().expect("check"));
    drop(s);
    drop(b);
    for (table, n) in rows_per_table(&raw(&path)) {
        assert_eq!(n, 0, "{table}");
    }
    let versions: Vec<i64> = raw(&path)
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_quota_holds_across_connections() {
    // Two backends on one file (the server and the CLI, say) push concurrently.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let one = SqliteBackend::open(&path).expect("open");
    let two = SqliteBackend::open(&path).expect("open");
    one.storage()
        .accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let s = if i % 2 == 0 {
            one.storage()
        } else {
            two.storage()
        };
        tasks.spawn(async move {
            s.offline
                .push_offline("example.org", "alice", &format!("<message id='{i}'/>"), 15)
                .await
        });
    }
    let mut stored = 0;
    while let Some(r) = tasks.join_next().await {
        if r.expect("join").expect("push").is_some() {
            stored += 1;
        }
    }
    assert_eq!(stored, 15);
    assert_eq!(
        two.storage()
            .offline
            .count_offline("example.org", "alice")
            .await
            .expect("count"),
        15
    );
    // Concurrent roster changes from both connections get distinct versions.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = if i % 2 == 0 {
            one.storage()
        } else {
            two.storage()
        };
        tasks.spawn(async move {
            s.roster
                .set_roster_item(
                    "example.org",
                    "alice",
                    &RosterItem::new(format!("c{i}@example.net")),
                    100,
                )
                .await
        });
    }
    let mut versions = Vec::new();
    while let Some(r) = tasks.join_next().await {
        versions.push(r.expect("join").expect("set"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test]
async fn hot_path_queries_use_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let b = SqliteBackend::open(&path).expect("open");
    let s = b.storage();
    s.accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    for i in 0..50 {
        s.roster
            .set_roster_item(
                "example.org",
                "alice",
                &RosterItem {
                    groups: vec![format!("g{}", i % 3), "all".into()],
                    ..RosterItem::new(format!("c{i:02}@example.net"))
                },
                1000,
            )
            .await
            .expect("set");
    }
    let c = raw(&path);
    let roster = s
        .roster
        .roster("example.org", "alice")
        .await
        .expect("roster");
    assert_eq!(roster.version, 50);
    assert_eq!(roster.items.len(), 50);
    assert_eq!(
        roster.items[7].groups,
        vec!["g1".to_owned(), "all".to_owned()]
    );
    // The lookups behind the hot paths use indexes, never a full scan.
    for sql in [
        "SELECT id, stanza FROM offline_messages
         WHERE domain = 'example.org' AND username = 'alice' ORDER BY id LIMIT 10",
        "SELECT COUNT(*) FROM offline_messages WHERE domain = 'example.org' AND username = 'alice'",
        "SELECT contact, name FROM roster_groups
         WHERE domain = 'example.org' AND username = 'alice' ORDER BY contact, position",
        "SELECT contact, name FROM roster_groups
         WHERE domain = 'example.org' AND username = 'alice' AND contact = 'c07@example.net'
         ORDER BY position",
        "DELETE FROM offline_messages WHERE id = 1 AND domain = 'a' AND username = 'b'",
        "SELECT contact, name, subscription, ask, approved,
                (SELECT version FROM roster_versions
                 WHERE domain = 'example.org' AND username = 'alice')
         FROM roster_items WHERE domain = 'example.org' AND username = 'alice'
         ORDER BY contact",
        "SELECT COUNT(*) FROM (SELECT 1 FROM offline_messages
                               WHERE domain = 'example.org' AND username = 'alice' LIMIT 10)",
    ] {
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan")
            .query_map([], |r| r.get(3))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let plan = plan.join("; ");
        assert!(
            !plan.contains("SCAN offline_messages")
                && !plan.contains("SCAN roster_groups")
                && !plan.contains("SCAN roster_items"),
            "{sql}: {plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
    }
}

#[tokio::test]
async fn corrupt_im_rows_are_reported_not_panicked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let b = SqliteBackend::open(&path).expect("open");
    let s = b.storage();
    s.accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    let item = RosterItem {
        subscription: Subscription::Both,
        groups: vec!["G".into()],
        ..RosterItem::new("bob@example.net")
    };
    s.roster
        .set_roster_item("example.org", "alice", &item, 10)
        .await
        .expect("set");
    let c = raw(&path);
    // Bypass the CHECK constraints, as a broken tool or disk might.
    c.execute_batch(
        "PRAGMA ignore_check_constraints = ON;
         UPDATE roster_items SET subscription = 'sometimes';",
    )
    .expect("corrupt");
    for r in [
        s.roster.roster("example.org", "alice").await.map(|_| ()),
        s.roster
            .roster_item("example.org", "alice", "bob@example.net")
            .await
            .map(|_| ()),
    ] {
        assert!(matches!(r, Err(StorageError::Corrupt(_))), "{r:?}");
    }
    c.execute_batch("UPDATE roster_items SET subscription = 'both', ask = 7;")
        .expect("corrupt");
    assert!(matches!(
        s.roster.roster("example.org", "alice").await,
        Err(StorageError::Corrupt(_))
    ));
    c.execute_batch("UPDATE roster_items SET ask = 0; UPDATE roster_versions SET version = -3;")
        .expect("corrupt");
    assert!(matches!(
        s.roster.roster("example.org", "alice").await,
        Err(StorageError::Corrupt(_))
    ));
    // Replacing the item and changing the roster repairs it.
    c.execute_batch("UPDATE roster_versions SET version = 3;")
        .expect("repair version");
    assert_eq!(
        s.roster
            .set_roster_item("example.org", "alice", &item, 10)
            .await
            .expect("set"),
        4
    );
    assert_eq!(
        s.roster
            .roster_item("example.org", "alice", "bob@example.net")
            .await
            .expect("item"),
        Some(item)
    );
}

#[tokio::test]
async fn file_is_wal_and_data_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    {
        let b = SqliteBackend::open(&path).expect("open");
        let s = b.storage();
        s.accounts
            .create_account("example.org", "alice", &sample_all(4))
            .await
            .expect("create");
    }
    let b = SqliteBackend::open(&path).expect("reopen");
    let s = b.storage();
    assert!(s
        .accounts
        .account_exists("example.org", "alice")
        .await
        .expect("exists"));
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "alice", HashAlg::Sha512)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha512, 4))
    );
    let c = raw(&path);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    assert!(b.integrity_check().expect("check"));
}

/// The database holds SCRAM records: it and its WAL companions are owner-only, whether the
/// process umask is permissive or an earlier version left them readable by others.
#[cfg(unix)]
#[tokio::test]
async fn database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let wal = dir.path().join("rookery.db-wal");
    let shm = dir.path().join("rookery.db-shm");
    {
        let b = SqliteBackend::open(&path).expect("open");
        b.storage()
            .accounts
            .create_account("example.org", "alice", &sample_all(4))
            .await
            .expect("create");
        for p in [&path, &wal, &shm] {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
    }
    // A database left world-readable (as earlier versions created it) is narrowed on open.
    for p in [&path, &wal, &shm] {
        if p.exists() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
    let b = SqliteBackend::open(&path).expect("reopen");
    for p in [&path, &wal, &shm] {
        if p.exists() {
            assert_eq!(mode(p), 0o600, "{}", p.display());
        }
    }
    assert!(b
        .storage()
        .accounts
        .account_exists("example.org", "alice")
        .await
        .expect("exists"));
}

#[tokio::test]
async fn a_room_survives_closing_and_reopening_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    {
        let b = SqliteBackend::open(&path).expect("open");
        b.storage()
            .rooms
            .set_room(
                "conference.example.org",
                "lobby",
                Some("{\"kept\":1}"),
                1024,
            )
            .await
            .expect("set");
    }
    let b = SqliteBackend::open(&path).expect("reopen");
    assert_eq!(
        b.storage()
            .rooms
            .get_room("conference.example.org", "lobby")
            .await
            .expect("get")
            .as_deref(),
        Some("{\"kept\":1}")
    );
    assert!(b.integrity_check().expect("check"));
}

#[tokio::test]
async fn migrations_apply_once_and_reopen_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    for _ in 0..3 {
        let b = SqliteBackend::open(&path).expect("open");
        assert_eq!(b.schema_version().expect("version"), SCHEMA_VERSION);
    }
    let c = raw(&path);
    let versions: Vec<i64> = c
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    drop(SqliteBackend::open(&path).expect("open"));
    raw(&path)
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
            [SCHEMA_VERSION + 1],
        )
        .expect("insert");
    match SqliteBackend::open(&path) {
        Err(StorageError::Backend(msg)) => {
            assert!(msg.contains("newer"), "{msg}");
        }
        other => panic!("expected refusal, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unopenable_path_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no/such/dir/rookery.db");
    assert!(matches!(
        SqliteBackend::open(&path),
        Err(StorageError::Backend(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_writes_while_first_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let server = SqliteBackend::open(&path).expect("server open");
    let cli = SqliteBackend::open(&path).expect("cli open");
    let (s, c) = (server.storage(), cli.storage());

    // The CLI adds an account; the running server sees it immediately.
    c.accounts
        .create_account("example.org", "newbie", &sample_all(1))
        .await
        .expect("cli create");
    assert!(s
        .accounts
        .account_exists("example.org", "newbie")
        .await
        .expect("exists"));
    // The CLI changes a password; the server reads the new record.
    c.accounts
        .set_credentials("example.org", "newbie", &sample_all(2))
        .await
        .expect("cli set");
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "newbie", HashAlg::Sha256)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha256, 2))
    );
    // Both write concurrently: busy_timeout + BEGIN IMMEDIATE keep everyone succeeding.
    let (s2, c2) = (s.clone(), c.clone());
    let a = tokio::spawn(async move {
        for i in 0..40 {
            s2.accounts
                .create_account("example.org", &format!("s{i:02}"), &sample_all(3))
                .await
                .expect("server write");
        }
    });
    let b = tokio::spawn(async move {
        for i in 0..40 {
            c2.accounts
                .create_account("example.org", &format!("c{i:02}"), &sample_all(3))
                .await
                .expect("cli write");
        }
    });
    a.await.expect("join");
    b.await.expect("join");
    assert_eq!(
        s.accounts
            .list_accounts(Some("example.org"))
            .await
            .expect("list")
            .len(),
        81
    );
    // Deletion through the CLI cascades to the credentials, seen by the server.
    assert!(c
        .accounts
        .delete_account("example.org", "newbie")
        .await
        .expect("delete"));
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "newbie", HashAlg::Sha1)
            .await
            .expect("get"),
        None
    );
    let orphans: i64 = raw(&path)
        .query_row(
            "SELECT COUNT(*) FROM scram_credentials WHERE username = 'newbie'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(orphans, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_waits_for_another_process_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let server = SqliteBackend::open(&path).expect("open");
    let s = server.storage();

    // Another process holds the write lock for a while.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let p = path.clone();
    let holder = std::thread::spawn(move || {
        let mut c = raw(&p);
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("lock");
        tx.execute(
            "INSERT INTO accounts (domain, username, created_at) VALUES ('example.org', 'cli', 0)",
            [],
        )
        .expect("insert");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().expect("commit");
    });
    locked_rx.recv().expect("locked");
    // Reads proceed under WAL while the other writer holds the lock.
    assert!(!s
        .accounts
        .account_exists("example.org", "cli")
        .await
        .expect("read"));
    // The write waits for the lock instead of failing with SQLITE_BUSY.
    s.accounts
        .create_account("example.org", "srv", &sample_all(1))
        .await
        .expect("write after waiting");
    holder.join().expect("holder");
    assert!(s
        .accounts
        .account_exists("example.org", "cli")
        .await
        .expect("exists"));
}

#[tokio::test]
async fn corrupt_rows_are_reported_not_panicked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let b = SqliteBackend::open(&path).expect("open");
    let s = b.storage();
    s.accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    let c = raw(&path);
    let corrupt = |sql: &str, hash: HashAlg| {
        c.execute(sql, [hash.name()]).expect("corrupt");
    };
    corrupt(
        "UPDATE scram_credentials SET stored_key = x'00' WHERE hash = ?1",
        HashAlg::Sha1,
    );
    corrupt(
        "UPDATE scram_credentials SET iterations = 0 WHERE hash = ?1",
        HashAlg::Sha256,
    );
    corrupt(
        "UPDATE scram_credentials SET iterations = 5000000000 WHERE hash = ?1",
        HashAlg::Sha512,
    );
    for h in HashAlg::ALL {
        let r = s.accounts.get_credentials("example.org", "alice", h).await;
        assert!(matches!(r, Err(StorageError::Corrupt(_))), "{h}: {r:?}");
    }
    // Replacing the records repairs the account.
    s.accounts
        .set_credentials("example.org", "alice", &sample_all(2))
        .await
        .expect("set");
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        Some(sample_credentials(HashAlg::Sha1, 2))
    );
}

#[tokio::test]
async fn real_scram_records_round_trip() {
    let b = SqliteBackend::open_in_memory().expect("open");
    let s = b.storage();
    let creds = rookery_sasl::generate_all("hunter2", 4096).expect("generate");
    s.accounts
        .create_account("example.org", "juliet", &creds)
        .await
        .expect("create");
    for c in &creds {
        let got = s
            .accounts
            .get_credentials("example.org", "juliet", c.hash)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&got, c);
        assert!(got.verify_password("hunter2"));
    }
}

fn pubsub_item(id: &str) -> rookery_storage::ItemRecord {
    rookery_storage::ItemRecord {
        id: id.into(),
        publisher: "alice@example.org".into(),
        payload: "<entry/>".into(),
        published_us: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_quotas_hold_across_connections() {
    use rookery_storage::{PubSubService, StorageError};
    // Two backends on one file: each has its own connection, so only the database's
    // write lock keeps the checks and the writes together.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let one = SqliteBackend::open(&path).expect("open");
    let two = SqliteBackend::open(&path).expect("open");
    let svc = PubSubService::Domain("pubsub.example.org");
    let pick = |i: usize| {
        if i % 2 == 0 {
            one.storage()
        } else {
            two.storage()
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let s = pick(i);
        tasks.spawn(async move {
            s.pubsub
                .create_node(svc, &format!("n{i:02}"), "{}", "o@example.org", 6)
                .await
        });
    }
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("join") {
            Ok(()) => created += 1,
            Err(StorageError::LimitReached(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 6);
    let nodes = one.storage().pubsub.list_nodes(svc).await.expect("list");
    assert_eq!(nodes.len(), 6);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let s = pick(i);
        let node = nodes[i % 6].node.clone();
        tasks.spawn(async move {
            s.pubsub
                .publish_item(svc, &node, &pubsub_item(&format!("i{i:02}")), 100, 25)
                .await
        });
    }
    let mut published = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("join") {
            Ok(_) => published += 1,
            Err(StorageError::LimitReached(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(published, 25);
    let items: i64 = raw(&path)
        .query_row("SELECT COUNT(*) FROM pubsub_items", [], |r| r.get(0))
        .expect("count");
    let counted: i64 = raw(&path)
        .query_row("SELECT item_count FROM pubsub_services", [], |r| r.get(0))
        .expect("counter");
    let per_node: i64 = raw(&path)
        .query_row("SELECT SUM(item_count) FROM pubsub_nodes", [], |r| r.get(0))
        .expect("counters");
    assert_eq!((items, counted, per_node), (25, 25, 25));
}

#[tokio::test]
async fn pubsub_data_persists_and_bad_counts_are_corrupt_not_panics() {
    use rookery_storage::{ItemSelection, PubSubService, StorageError};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let svc = PubSubService::Domain("pubsub.example.org");
    {
        let b = SqliteBackend::open(&path).expect("open");
        let s = b.storage();
        s.pubsub
            .create_node(svc, "n", "{\"v\":1}", "o@example.org", 10)
            .await
            .expect("create");
        for id in ["a", "b", "c"] {
            s.pubsub
                .publish_item(svc, "n", &pubsub_item(id), 10, 100)
                .await
                .expect("publish");
        }
    }
    let b = SqliteBackend::open(&path).expect("reopen");
    let s = b.storage();
    let page = s
        .pubsub
        .get_items(
            svc,
            "n",
            ItemSelection::Page {
                after: None,
                before: None,
                max: 10,
            },
        )
        .await
        .expect("items");
    let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!((ids, page.count), (vec!["c", "b", "a"], 3));
    // A counter below the rows it counts (an edit by hand, say) is reported, not trusted
    // into an underflow.
    raw(&path)
        .execute_batch("UPDATE pubsub_nodes SET item_count = 0")
        .expect("tamper");
    let r = s
        .pubsub
        .publish_item(svc, "n", &pubsub_item("a"), 10, 100)
        .await;
    assert!(matches!(r, Err(StorageError::Corrupt(_))), "{r:?}");
    // The counters refuse negative values outright.
    assert!(raw(&path)
        .execute_batch("UPDATE pubsub_services SET item_count = -1")
        .is_err());
}

/// The server's connections don't checkpoint on commit: the checkpointer thread copies the
/// WAL into the database file while appends go on, and empties the WAL once the stores are
/// gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpointer_copies_the_wal_and_empties_it_at_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rookery.db");
    let wal = dir.path().join("rookery.db-wal");
    let b = SqliteBackend::open(&path).expect("open");
    let storage = b.storage();
    storage
        .accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("account");
    let size_before = std::fs::metadata(&path).expect("db").len();
    for i in 0..3000 {
        let entry = rookery_storage::ArchiveEntry {
            id: format!("id-{i}"),
            timestamp_us: 1_000_000 + i,
            with_bare: "bob@example.org".into(),
            with_resource: String::new(),
            stanza: format!(
                "<message xmlns='jabber:client'><body>{}</body></message>",
                "x".repeat(200)
            ),
        };
        storage
            .archive
            .append_archive("example.org", "alice", &entry)
            .await
            .expect("append");
    }
    // Nobody here checkpoints: the database file grows only through the checkpointer.
    let mut grown = false;
    for _ in 0..50 {
        if std::fs::metadata(&path).expect("db").len() > size_before + 500_000 {
            grown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(grown, "the WAL was not copied into the database file");
    drop(storage);
    drop(b);
    let mut emptied = false;
    for _ in 0..50 {
        if std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
            emptied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(emptied, "the WAL was not emptied once the stores were gone");
    let c = raw(&path);
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM archive", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 3000);
}
