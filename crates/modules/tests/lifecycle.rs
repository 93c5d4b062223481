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

/// The archive purge runs from the server's start, before any session exists, reads its
/// settings at each round (so a reload that sets a retention period applies without a
/// restart: `[archive]` is a live section), and its task ends when the server shuts down.
#[tokio::test]
async fn the_archive_purge_follows_reloaded_retention_and_stops_on_shutdown() {
    let s = server_with("[archive]\npurge_interval_secs = 1\n", "").await;
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
    // Without retention (the default) nothing is purged, however many rounds run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(archived(&s, "bob").await, "kept without retention");

    // A reload sets `retention_days = 1`: the next round purges the 3-day-old message.
    let reloaded = rookery_core::Config::from_toml(
        &format!(
            "[archive]\nretention_days = 1\npurge_interval_secs = 1\n[[host]]\ndomain = '{D}'\n"
        ),
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &rookery_modules::registry(),
    )
    .expect("config");
    assert!(s
        .config()
        .sections
        .apply_live(&reloaded.sections)
        .contains(&"archive"));
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

/// A host a reload adds is built with every module, its service domains routed, and the
/// modules running already are not started twice; a host not configured, or added twice,
/// is refused and changes nothing.
#[tokio::test]
async fn a_host_added_at_runtime_is_served_with_its_modules() {
    let s = server().await;
    let tasks = s.tasks().len();
    assert!(!s.serves("third.org"));
    assert!(matches!(
        s.add_host("third.org"),
        Err(rookery_core::AddHostError::NotConfigured(_))
    ));
    let mut next = (*s.config()).clone();
    let reloaded = rookery_core::Config::from_toml(
        "[[host]]\ndomain = 'third.org'\n",
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &rookery_modules::registry(),
    )
    .expect("config");
    next.hosts.extend(reloaded.hosts);
    s.apply_config(next);
    let modules = s.add_host("third.org").expect("added");
    assert!(
        modules.contains(&"muc") && modules.contains(&"mam"),
        "{modules:?}"
    );
    assert!(s.serves("third.org"));
    let muc = s.service("conference.third.org").expect("its MUC service");
    assert_eq!(muc.host(), "third.org");
    assert!(s
        .http_handlers()
        .iter()
        .any(|m| m.path == "/upload/upload.third.org"));
    // Every module ran already for the other hosts: no second purge or expiry task.
    assert_eq!(s.tasks().len(), tasks);
    assert!(matches!(
        s.add_host("third.org"),
        Err(rookery_core::AddHostError::Exists(_))
    ));
    assert!(s.built_hosts().contains(&"third.org".to_owned()));
}

/// Once shutdown has begun the rooms' tasks are gone while their handles may still be
/// registered: a stanza for such a room (the unavailable presence of a session ending
/// during shutdown) is dropped, instead of finding the dead room's queue again and again
/// without yielding, which held a runtime thread and kept the server from stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_for_a_room_after_shutdown_began_does_not_hold_the_thread() {
    let s = server().await;
    let mut c = Client::online(&s, &format!("alice@{D}/r")).await;
    let room = format!("room@conference.{D}");
    c.send(&format!(
        "<presence to='{room}/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        c.drain().iter().any(|e| e.name() == "presence"),
        "joined the room"
    );
    s.shutdown_token().cancel();
    // The room's task sees the cancellation and ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let leave = tokio::spawn(async move {
        c.send(&format!("<presence to='{room}/alice' type='unavailable'/>"))
            .await;
    });
    tokio::time::timeout(Duration::from_secs(5), leave)
        .await
        .expect("routing the stanza returns")
        .expect("join");
}
