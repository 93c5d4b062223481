//! rookery-storage-sqlite: conformance, persistence, migrations, multi-process access,
//! corruption handling.

use std::path::Path;
use std::time::Duration;

use rookery_sasl::HashAlg;
use rookery_storage::conformance::{self, sample_all, sample_credentials};
use rookery_storage::StorageError;
use rookery_storage_sqlite::{SqliteBackend, SCHEMA_VERSION};

fn raw(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).expect("raw open");
    c.busy_timeout(Duration::from_secs(5)).expect("timeout");
    c
}

#[tokio::test]
async fn conformance_in_memory() {
    let b = SqliteBackend::open_in_memory().expect("open");
    conformance::account_store(b.storage().accounts.as_ref()).await;
    assert!(b.integrity_check().expect("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = SqliteBackend::open(&dir.path().join("rookery.db")).expect("open");
    conformance::account_store(b.storage().accounts.as_ref()).await;
    assert!(b.integrity_check().expect("check"));
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
