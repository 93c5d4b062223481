//! The order in which modules' handlers run on each event, as the enabled modules declare it.
//!
//! These chains carry cross-module rules: the carbons module refuses forged carbons before
//! any other filter and copies only what every filter let through; what the blocking module
//! drops is never archived; contacts see an account come online before its offline backlog
//! is replayed, and the message of the day comes after both; the last-activity module observes presence before it is broadcast; carbons
//! and push act on an undeliverable message before offline storage stops the event; the
//! blocking module loads a list before anything else runs for a new session and forgets it
//! after everything else ran for a closed one; the caps module sees presence to an account
//! before the presence module may stop it, and an account's own presence after it was
//! broadcast; the avatar module stamps its hash only on presence the blocking module let
//! through. A change to any of these orders must be
//! deliberate: it fails here.

use rookery_core::events::{
    Bind2Bound, BindInline, ClientStanza, HeldMessage, InboundPresence, LocalDelivery,
    MessageDelivered, OutboundPresence, PresenceBroadcast, SessionBound, SessionClosed,
    UndeliverableMessage,
};
use rookery_core::{Config, Host, ModuleRegistry};
use rookery_modules::private::PrivateStored;
use rookery_modules::pubsub::{PublishedItem, RetractedItem};
use rookery_modules::vcard::VCardStored;
use rookery_storage::Storage;

fn host(modules: Option<Vec<String>>) -> Host {
    let cfg = Config::load(None, &rookery_modules::registry()).expect("default config");
    rookery_modules::registry()
        .build_host("example.org", modules.as_deref(), &cfg, &Storage::memory())
        .expect("host")
}

/// (event, handler or filter order) for every event modules handle.
fn chains(h: &Host) -> Vec<(&'static str, Vec<&'static str>)> {
    let hooks = h.hooks();
    vec![
        ("ClientStanza", hooks.filter_order::<ClientStanza>()),
        ("LocalDelivery", hooks.filter_order::<LocalDelivery>()),
        ("Bind2Bound", hooks.filter_order::<Bind2Bound>()),
        ("SessionBound", hooks.handler_order::<SessionBound>()),
        ("SessionClosed", hooks.handler_order::<SessionClosed>()),
        (
            "PresenceBroadcast",
            hooks.handler_order::<PresenceBroadcast>(),
        ),
        (
            "OutboundPresence",
            hooks.handler_order::<OutboundPresence>(),
        ),
        ("InboundPresence", hooks.handler_order::<InboundPresence>()),
        (
            "UndeliverableMessage",
            hooks.handler_order::<UndeliverableMessage>(),
        ),
        (
            "MessageDelivered",
            hooks.handler_order::<MessageDelivered>(),
        ),
        ("HeldMessage", hooks.handler_order::<HeldMessage>()),
        ("BindInline", hooks.handler_order::<BindInline>()),
        ("PublishedItem", hooks.handler_order::<PublishedItem>()),
        ("RetractedItem", hooks.handler_order::<RetractedItem>()),
        ("PrivateStored", hooks.handler_order::<PrivateStored>()),
        ("VCardStored", hooks.handler_order::<VCardStored>()),
    ]
}

/// The chains whose order depends in part on how modules are listed.
struct Free {
    client_stanza: [&'static str; 6],
    session_bound: [&'static str; 4],
    session_closed: [&'static str; 5],
    presence_broadcast: [&'static str; 5],
    published_item: [&'static str; 2],
}

fn expected(free: Free) -> Vec<(&'static str, Vec<&'static str>)> {
    let Free {
        client_stanza,
        session_bound,
        session_closed,
        presence_broadcast,
        published_item,
    } = free;
    vec![
        ("ClientStanza", client_stanza.to_vec()),
        ("LocalDelivery", vec!["carbons", "blocking", "mam"]),
        ("Bind2Bound", vec!["mam", "offline"]),
        ("SessionBound", session_bound.to_vec()),
        ("SessionClosed", session_closed.to_vec()),
        ("PresenceBroadcast", presence_broadcast.to_vec()),
        ("OutboundPresence", vec!["presence"]),
        ("InboundPresence", vec!["caps", "presence"]),
        ("UndeliverableMessage", vec!["carbons", "push", "offline"]),
        ("MessageDelivered", vec!["carbons"]),
        ("HeldMessage", vec!["push"]),
        ("BindInline", vec!["carbons"]),
        ("PublishedItem", published_item.to_vec()),
        ("RetractedItem", vec!["bookmarks"]),
        ("PrivateStored", vec!["bookmarks"]),
        ("VCardStored", vec!["avatar"]),
    ]
}

#[test]
fn every_cross_module_order_holds_with_all_modules() {
    assert_eq!(
        chains(&host(None)),
        expected(Free {
            client_stanza: ["register", "carbons", "blocking", "mam", "avatar", "carbons"],
            session_bound: ["blocking", "push", "mam", "bookmarks"],
            session_closed: ["presence", "caps", "last", "avatar", "blocking"],
            presence_broadcast: ["last", "presence", "caps", "offline", "admin"],
            published_item: ["bookmarks", "avatar"],
        })
    );
}

/// Listing the modules in another order changes only the order of handlers that declare none
/// between them (mam and avatar on ClientStanza, mam, push and bookmarks on SessionBound,
/// presence, caps, last and avatar on SessionClosed, offline, admin and caps on PresenceBroadcast,
/// bookmarks and avatar on PublishedItem, which act on different nodes): the initialisation
/// order, as it always was.
#[test]
fn the_order_does_not_depend_on_how_modules_are_listed() {
    let mut names: Vec<String> = rookery_modules::registry()
        .modules()
        .iter()
        .map(|m| m.name.to_owned())
        .collect();
    names.reverse();
    assert_eq!(
        chains(&host(Some(names))),
        expected(Free {
            client_stanza: ["register", "carbons", "blocking", "avatar", "mam", "carbons"],
            session_bound: ["blocking", "bookmarks", "mam", "push"],
            session_closed: ["avatar", "last", "caps", "presence", "blocking"],
            presence_broadcast: ["last", "presence", "offline", "admin", "caps"],
            published_item: ["avatar", "bookmarks"],
        })
    );
}

/// A constraint that names a module the build does not have is refused when the host is
/// built, not silently ignored.
#[test]
fn a_constraint_naming_no_module_is_refused() {
    struct Typo;
    impl rookery_core::Module for Typo {
        const NAME: &'static str = "typo";
        fn init(host: &mut rookery_core::HostBuilder<'_>) -> Result<(), rookery_core::ModuleError> {
            host.hook::<SessionBound, _, _>(
                rookery_core::Order::normal().after("blockng"),
                |_, _| async { rookery_core::Flow::Continue },
            );
            Ok(())
        }
    }
    let mut r = ModuleRegistry::new();
    r.register::<Typo>();
    let cfg = Config::load(None, &rookery_modules::registry()).expect("default config");
    let e = r
        .build_host("example.org", None, &cfg, &Storage::memory())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("blockng") && e.contains("SessionBound"), "{e}");
}
