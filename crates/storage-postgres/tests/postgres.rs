//! rookery-storage-postgres against a real PostgreSQL server (see `pg/mod.rs`):
//! conformance, migrations, concurrency across backends, corruption handling, the plans of
//! the archive queries.

#[allow(dead_code)] // the TLS server of the harness is for tests/tls.rs
mod pg;

use rookery_sasl::HashAlg;
use rookery_storage::conformance::{self, sample_all};
use rookery_storage::{ArchiveEntry, RosterItem, StorageError};
use rookery_storage_postgres::{PgBackend, PgOptions, SCHEMA_VERSION};

async fn open(url: &str) -> PgBackend {
    PgBackend::open(&PgOptions {
        pool_size: 8,
        ..PgOptions::new(url)
    })
    .await
    .expect("open")
}

async fn fresh() -> (String, PgBackend) {
    let url = pg::fresh_database().await;
    let b = open(&url).await;
    (url, b)
}

/// Rows in every table of per-account or per-room data.
async fn rows_per_table(url: &str) -> Vec<(&'static str, i64)> {
    let c = pg::raw(url).await;
    let mut out = Vec::new();
    for t in [
        "accounts",
        "scram_credentials",
        "roster_items",
        "roster_pending_in",
        "offline_messages",
        "user_data",
        "archive",
        "pubsub_services",
        "pubsub_nodes",
        "pubsub_items",
        "pubsub_affiliations",
        "pubsub_subscriptions",
        "uploads",
    ] {
        let n: i64 = c
            .query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])
            .await
            .expect("count")
            .get(0);
        out.push((t, n));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_all() {
    let (url, b) = fresh().await;
    conformance::all(&b.storage()).await;
    // Account deletions left no orphan row anywhere.
    for (table, n) in rows_per_table(&url).await {
        assert_eq!(n, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_individual_suites() {
    // Each suite on its own fresh database (they don't depend on running after another).
    for suite in [
        "accounts",
        "roster",
        "offline",
        "user_data",
        "archive",
        "rooms",
        "room_archive",
        "pubsub",
        "upload",
        "deletion",
    ] {
        let (_, b) = fresh().await;
        let s = b.storage();
        match suite {
            "accounts" => conformance::account_store(s.accounts.as_ref()).await,
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
    }
}

#[tokio::test]
async fn migrations_apply_once_and_reopen_is_idempotent() {
    let (url, b) = fresh().await;
    assert_eq!(b.schema_version().await.expect("version"), SCHEMA_VERSION);
    drop(b);
    let b = open(&url).await;
    assert_eq!(b.schema_version().await.expect("version"), SCHEMA_VERSION);
    let c = pg::raw(&url).await;
    let versions: Vec<i64> = c
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    // A server and a CLI starting at once on an empty database: the advisory lock makes
    // them take turns, and neither fails on the other's tables.
    let url = pg::fresh_database().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url).await.schema_version().await })
        })
        .collect();
    for o in opens {
        assert_eq!(o.await.expect("join").expect("version"), SCHEMA_VERSION);
    }
    let c = pg::raw(&url).await;
    let n: i64 = c
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, SCHEMA_VERSION);
}

#[tokio::test]
async fn refuses_a_newer_schema() {
    let (url, b) = fresh().await;
    drop(b);
    pg::raw(&url)
        .await
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, 0)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .expect("insert");
    let err = PgBackend::open(&PgOptions::new(url))
        .await
        .expect_err("newer schema refused");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn urls_are_checked() {
    for bad in [
        "postgresql://u@127.0.0.1:1/db?sslmode=allow",
        "host=127.0.0.1 sslmode=verify-fully",
        "postgresql://[::1/x",
    ] {
        let err = rookery_storage_postgres::parse_url(bad).expect_err(bad);
        assert!(matches!(err, StorageError::Backend(_)), "{bad}: {err}");
    }
    let err = rookery_storage_postgres::parse_url("postgresql://u@h/db?sslmode=allow")
        .expect_err("allow");
    assert!(err.to_string().contains("sslmode"), "{err}");
    for (good, mode) in [
        ("postgresql://u:p@127.0.0.1:5433/db", "prefer"),
        ("postgresql://u@h/db?sslmode=disable", "disable"),
        (
            "host=/tmp port=5433 user=u dbname=db sslmode=prefer",
            "prefer",
        ),
        ("postgresql://u@h/db?sslmode=require", "require"),
        (
            "host=h sslmode=verify-full sslrootcert=/ca.pem",
            "verify-full",
        ),
    ] {
        let u = rookery_storage_postgres::parse_url(good).expect(good);
        assert_eq!(u.tls.as_str(), mode, "{good}");
    }
}

#[tokio::test]
async fn unreachable_database_fails_fast_with_backend_error() {
    // Nothing listens on this port: opening fails with a Backend error, not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let started = std::time::Instant::now();
    let err = PgBackend::open(&PgOptions::new(format!(
        "postgresql://postgres@127.0.0.1:{port}/x"
    )))
    .await
    .expect_err("no server");
    assert!(matches!(err, StorageError::Backend(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_versions_hold_across_backends() {
    // Two backends (two pools, like a server and a CLI) write concurrently.
    let (url, one) = fresh().await;
    let two = open(&url).await;
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
async fn corrupt_rows_are_reported_not_panicked() {
    let (url, b) = fresh().await;
    let s = b.storage();
    s.accounts
        .create_account("example.org", "alice", &sample_all(1))
        .await
        .expect("create");
    s.roster
        .set_roster_item(
            "example.org",
            "alice",
            &RosterItem::new("bob@example.net"),
            10,
        )
        .await
        .expect("set");
    let raw = pg::raw(&url).await;
    raw.batch_execute(
        "UPDATE scram_credentials SET iterations = -1 WHERE hash = 'SHA-256';
         UPDATE scram_credentials SET stored_key = '\\x00' WHERE hash = 'SHA-512';
         UPDATE scram_credentials SET hash = 'MD5' WHERE hash = 'SHA-1';
         ALTER TABLE roster_items DROP CONSTRAINT roster_items_subscription_check;
         UPDATE roster_items SET subscription = 'sideways';",
    )
    .await
    .expect("damage");
    for hash in [HashAlg::Sha256, HashAlg::Sha512] {
        let err = s
            .accounts
            .get_credentials("example.org", "alice", hash)
            .await
            .expect_err("corrupt");
        assert!(matches!(err, StorageError::Corrupt(_)), "{hash}: {err}");
    }
    // The renamed record is not found under its old name.
    assert_eq!(
        s.accounts
            .get_credentials("example.org", "alice", HashAlg::Sha1)
            .await
            .expect("get"),
        None
    );
    let err = s
        .roster
        .roster("example.org", "alice")
        .await
        .expect_err("corrupt");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
}

fn entry(user: &str, n: i64) -> ArchiveEntry {
    ArchiveEntry {
        id: format!("{user}-{n}"),
        timestamp_us: 1000 * n,
        with_bare: format!("c{}@example.net", n % 3),
        with_resource: format!("r{}", n % 2),
        stanza: "<message/>".into(),
    }
}

/// The page queries of the archive read an index in archive order: an Index Scan (or Index
/// Only Scan) on the expected index, never a Seq Scan nor a Sort. The SQL is the store's own
/// (`page_sql`); `enable_seqscan` is off for the check only, so a small test table is not
/// read whole just because it is small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_page_queries_seek_indexes_and_never_sort() {
    let (url, b) = fresh().await;
    let s = b.storage();
    for user in ["alice", "bob"] {
        s.accounts
            .create_account("example.org", user, &[])
            .await
            .expect("create");
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..400 {
            let s = s.clone();
            let user = user.to_owned();
            tasks.spawn(async move {
                s.archive
                    .append_archive("example.org", &user, &entry(&user, n))
                    .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("join").expect("append");
        }
    }
    let mut c = pg::raw(&url).await;
    c.batch_execute("ANALYZE").await.expect("analyze");
    let tx = c.transaction().await.expect("tx");
    tx.batch_execute("SET LOCAL enable_seqscan = off")
        .await
        .expect("set");
    use rookery_storage_postgres::archive_page_sql as page_sql;
    use tokio_postgres::types::ToSql;
    let owner: i64 = tx
        .query_one("SELECT id FROM accounts WHERE username = 'alice'", &[])
        .await
        .expect("owner")
        .get(0);
    let (bare, resource, low, high, limit) = ("c1@example.net", "r1", 100_i64, 300_i64, 11_i64);
    // Each shape of page the store reads: its WHERE clause, its parameters and the index
    // it must seek. The limit parameter comes last.
    let cases: [(&str, Vec<&(dyn ToSql + Sync)>, &str); 5] = [
        ("account_id = $1", vec![&owner], "archive_pkey"),
        (
            "account_id = $1 AND id > $2",
            vec![&owner, &low],
            "archive_pkey",
        ),
        (
            "account_id = $1 AND id < $2 AND id >= $3",
            vec![&owner, &high, &low],
            "archive_pkey",
        ),
        (
            "account_id = $1 AND with_bare = $2",
            vec![&owner, &bare],
            "archive_with",
        ),
        (
            "account_id = $1 AND with_bare = $2 AND with_resource = $3 AND id > $4",
            vec![&owner, &bare, &resource, &low],
            "archive_with",
        ),
    ];
    for (condition, mut params, index) in cases {
        params.push(&limit);
        for backwards in [false, true] {
            let sql = format!(
                "EXPLAIN {}",
                page_sql("archive", condition, backwards, params.len())
            );
            let plan: Vec<String> = tx
                .query(&sql, &params)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| r.get(0))
                .collect();
            let text = plan.join("\n");
            assert!(
                (text.contains("Index Scan") || text.contains("Index Only Scan"))
                    && text.contains(&format!("using {index} ")),
                "{sql}\n{text}"
            );
            assert!(
                !text.contains("Seq Scan") && !text.contains("Sort"),
                "{sql}\n{text}"
            );
        }
    }
    tx.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_ids_increase_in_append_order_under_concurrency() {
    let (url, b) = fresh().await;
    let s = b.storage();
    s.accounts
        .create_account("example.org", "alice", &[])
        .await
        .expect("create");
    // Appends sent one after another (each awaited) come back in that order.
    for n in 0..50 {
        s.archive
            .append_archive("example.org", "alice", &entry("alice", n))
            .await
            .expect("append");
    }
    let raw = pg::raw(&url).await;
    let ids: Vec<String> = raw
        .query("SELECT stanza_id FROM archive ORDER BY id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        (0..50).map(|n| format!("alice-{n}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_conformance_without_group_commit() {
    // `archive_batch = 0`: each append its own transaction, no writer task.
    for suite in ["archive", "room_archive", "deletion"] {
        let b = PgBackend::open(&PgOptions {
            archive_batch: 0,
            pool_size: 8,
            ..PgOptions::new(pg::fresh_database().await)
        })
        .await
        .expect("open");
        let s = b.storage();
        match suite {
            "archive" => conformance::archive_store(&s).await,
            "room_archive" => conformance::room_archive_store(&s).await,
            _ => conformance::account_deletion(&s).await,
        }
    }
}
