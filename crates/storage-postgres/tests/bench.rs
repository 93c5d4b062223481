//! A storage-level benchmark, SQLite beside PostgreSQL in one run (ignored by `cargo test`;
//! BENCHMARKS.md shows how it is run and what it gave):
//!
//! ```sh
//! ROOKERY_PG_FSYNC=1 cargo test --release -p rookery-storage-postgres --test bench -- \
//!     --ignored --nocapture
//! ```
//!
//! * the message path's archive writes: `BENCH_MESSAGES` (default 100,000) messages, each
//!   appended to the sender's and the recipient's archive as the `mam` module does, from
//!   `BENCH_WRITERS` (default 64) concurrent tasks (sessions), on PostgreSQL with group
//!   commit and without (each append its own transaction, on the pool's connections);
//! * MAM pages over the resulting 100,000-message archive: the newest 50, the newest 50
//!   with one correspondent, 50 after an id in the middle, 50 from a start time in the
//!   middle; `BENCH_QUERIES` (default 200) of each, one at a time.
//!
//! PostgreSQL runs as in the tests (pg/mod.rs), with fsync on when `ROOKERY_PG_FSYNC` is set.

#[allow(dead_code)] // the benchmark uses part of the harness
mod pg;

use std::time::{Duration, Instant};

use rookery_storage::{
    ArchiveEntry, ArchiveFilter, ArchiveQuery, PageRequest, Storage, WithFilter,
};
use rookery_storage_postgres::{PgBackend, PgOptions};
use rookery_storage_sqlite::SqliteBackend;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const D: &str = "example.org";

/// Appends `messages` messages (two archive entries each) from `writers` tasks; returns
/// the elapsed time.
async fn fill(s: &Storage, messages: usize, writers: usize) -> Duration {
    for u in ["alice", "bob"] {
        s.accounts.create_account(D, u, &[]).await.expect("create");
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.spawn(async move {
            let mut n = w;
            while n < messages {
                // Timestamps in microseconds, one message per millisecond of a day.
                let ts = 1_700_000_000_000_000 + i64::try_from(n).expect("n") * 1000;
                let stanza = format!("<message type='chat'><body>message {n}</body></message>");
                for (owner, with) in [("alice", "bob"), ("bob", "alice")] {
                    let entry = ArchiveEntry {
                        id: format!("{owner}-{n:08}"),
                        timestamp_us: ts,
                        with_bare: format!("{with}@{D}"),
                        with_resource: "r".into(),
                        stanza: stanza.clone(),
                    };
                    s.archive
                        .append_archive(D, owner, &entry)
                        .await
                        .expect("append");
                }
                n += writers;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

/// p50 and p90 (ms) of each page kind over `queries` queries.
async fn pages(s: &Storage, messages: usize, queries: usize) -> Vec<(&'static str, f64, f64)> {
    let mut out = Vec::new();
    for kind in ["last", "with", "after", "start"] {
        let mut times = Vec::with_capacity(queries);
        for q in 0..queries {
            // Somewhere in the middle half of the archive.
            let mid = messages / 4 + (q * 7919) % (messages / 2).max(1);
            let query = match kind {
                "last" => ArchiveQuery {
                    filter: ArchiveFilter::default(),
                    page: PageRequest::Last,
                    max: 50,
                },
                "with" => ArchiveQuery {
                    filter: ArchiveFilter {
                        with: Some(WithFilter {
                            bare: format!("bob@{D}"),
                            resource: None,
                        }),
                        ..ArchiveFilter::default()
                    },
                    page: PageRequest::Last,
                    max: 50,
                },
                "after" => ArchiveQuery {
                    filter: ArchiveFilter::default(),
                    page: PageRequest::After(format!("alice-{mid:08}")),
                    max: 50,
                },
                _ => ArchiveQuery {
                    filter: ArchiveFilter {
                        start_us: Some(
                            1_700_000_000_000_000 + i64::try_from(mid).expect("mid") * 1000,
                        ),
                        ..ArchiveFilter::default()
                    },
                    page: PageRequest::First,
                    max: 50,
                },
            };
            let started = Instant::now();
            let page = s
                .archive
                .query_archive(D, "alice", &query)
                .await
                .expect("query");
            times.push(started.elapsed());
            assert_eq!(page.entries.len(), 50, "{kind}");
        }
        times.sort();
        out.push((kind, percentile(&times, 50), percentile(&times, 90)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture (see the file's comment)"]
async fn archive_sqlite_vs_postgresql() {
    let messages = env("BENCH_MESSAGES", 100_000);
    let writers = env("BENCH_WRITERS", 64);
    let queries = env("BENCH_QUERIES", 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteBackend::open(&dir.path().join("bench.db")).expect("sqlite");
    let pg_grouped = PgBackend::open(&PgOptions::new(pg::fresh_database().await))
        .await
        .expect("postgresql");
    let pg_single = PgBackend::open(&PgOptions {
        archive_batch: 0,
        ..PgOptions::new(pg::fresh_database().await)
    })
    .await
    .expect("postgresql");
    let fsync = std::env::var_os("ROOKERY_PG_FSYNC").is_some();
    println!(
        "{messages} messages (2 archive appends each) from {writers} tasks; PostgreSQL fsync {}",
        if fsync { "on" } else { "off" }
    );
    let mut fills = Vec::new();
    for (name, s) in [
        ("SQLite", sqlite.storage()),
        ("PostgreSQL, group commit", pg_grouped.storage()),
        (
            "PostgreSQL, a transaction per append (concurrent)",
            pg_single.storage(),
        ),
    ] {
        let t = fill(&s, messages, writers).await;
        let rate = (2 * messages) as f64 / t.as_secs_f64();
        println!(
            "| append | {name} | {:.1} s | {rate:.0} appends/s |",
            t.as_secs_f64()
        );
        fills.push((name, rate));
    }
    println!(
        "group commit on PostgreSQL: {:.2}x the appends/s of a transaction per append; SQLite/PostgreSQL {:.2}",
        fills[1].1 / fills[2].1,
        fills[0].1 / fills[1].1
    );
    let sqlite_pages = pages(&sqlite.storage(), messages, queries).await;
    let pg_pages = pages(&pg_grouped.storage(), messages, queries).await;
    println!(
        "| page | SQLite p50 ms | p90 ms | PostgreSQL p50 ms | p90 ms | PostgreSQL/SQLite p50 |"
    );
    for ((kind, s50, s90), (_, p50, p90)) in sqlite_pages.iter().zip(&pg_pages) {
        println!(
            "| {kind} | {s50:.2} | {s90:.2} | {p50:.2} | {p90:.2} | {:.2} |",
            p50 / s50
        );
    }
}
