//! What modules run for the whole server: started with it, stopped by its shutdown.

mod common;

use common::*;
use rookery_core::Server;
use std::sync::Arc;
use std::time::Duration;

/// The upload module's expiry and sweep task, which runs whenever a host enables it (all
/// modules are enabled in these tests).
const UPLOAD_TASKS: usize = 1;

async fn archived(s: &Arc<Server>, user: &str) -> bool {
    s.storage()
        .archive
        .archive_bounds(D, user)
        .await
        .expect("bounds")
        .is_some()
}

/// The archive purge runs from the server's start, before any session exists, and its task
/// ends when the server shuts down.
#[tokio::test]
async fn the_archive_purge_runs_from_start_and_stops_on_shutdown() {
    let s = server_with(
        "[archive]\nretention_days = 1\npurge_interval_secs = 1\n",
        "",
    )
    .await;
    assert_eq!(
        s.tasks().len(),
        1 + UPLOAD_TASKS,
        "the purge task runs from the start"
    );
    let old_us = (time::OffsetDateTime::now_utc().unix_timestamp() - 3 * 86_400) * 1_000_000;
    s.storage()
        .archive
        .append_archive(
            D,
            "bob",
            &rookery_storage::ArchiveEntry {
                id: "old".into(),
                timestamp_us: old_us,
                with_bare: "alice@example.org".into(),
                with_resource: String::new(),
                stanza: "<message xmlns='jabber:client'><body>old</body></message>".into(),
            },
        )
        .await
        .expect("append");
    let mut purged = false;
    for _ in 0..300 {
        if !archived(&s, "bob").await {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        purged,
        "no session was ever bound, and the old message was purged"
    );

    s.shutdown_token().cancel();
    s.tasks().close();
    tokio::time::timeout(Duration::from_secs(5), s.tasks().wait())
        .await
        .expect("the purge task stopped on shutdown");
    assert!(s.tasks().is_empty());
}

/// Without retention there is nothing to purge, and no task.
#[tokio::test]
async fn no_purge_task_without_retention() {
    let s = server().await;
    assert_eq!(s.tasks().len(), UPLOAD_TASKS);
}
