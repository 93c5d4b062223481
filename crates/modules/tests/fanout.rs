//! One stanza to many sessions is one element, serialised once: presence broadcast to every
//! contact and carbons to every enabled resource, through the real router. Each recipient's
//! copy is written with its own `to` into that one serialisation.

mod common;

use common::*;
use rookery_core::{Config, Outgoing, Server};
use rookery_stanza::SharedStanza;
use rookery_storage::{RosterItem, Storage, Subscription};
use rookery_xml::{parse_element, Element};
use std::sync::Arc;

const CONTACTS: usize = 300;

fn contact(i: usize) -> String {
    format!("c{i}@{D}")
}

fn item(jid: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_owned(),
        name: None,
        subscription: Subscription::Both,
        ask: false,
        approved: false,
        groups: Vec::new(),
    }
}

/// alice and `CONTACTS` accounts, each mutually subscribed with alice.
async fn server_with_contacts() -> Arc<Server> {
    let storage = Storage::memory();
    let sample = rookery_storage::conformance::sample_all(0);
    storage
        .accounts
        .create_account(D, "alice", &sample)
        .await
        .expect("account");
    for i in 0..CONTACTS {
        let user = format!("c{i}");
        storage
            .accounts
            .create_account(D, &user, &sample)
            .await
            .expect("account");
        storage
            .roster
            .set_roster_item(D, &user, &item(&format!("alice@{D}")), 10_000)
            .await
            .expect("item");
        storage
            .roster
            .set_roster_item(D, "alice", &item(&contact(i)), 10_000)
            .await
            .expect("item");
    }
    let cfg = Config::from_toml(
        &format!("[[host]]\ndomain = '{D}'\n"),
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &rookery_modules::registry(),
    )
    .expect("config");
    Server::new(cfg, storage, &rookery_modules::registry()).expect("server")
}

/// What is queued for a session, as the connection would take it (not copied).
fn queued(c: &mut Client) -> Vec<Outgoing> {
    std::iter::from_fn(|| c.inbox.stanzas.try_recv().ok())
        .map(|o| *o)
        .collect()
}

/// The bytes a stream writes for this copy, parsed back.
fn written(s: &SharedStanza) -> Element {
    let mut out = Vec::new();
    s.write_to(&mut out, "jabber:client");
    let text = String::from_utf8(out).expect("utf-8");
    parse_element(&add_client_ns(&text)).expect("well-formed")
}

#[tokio::test]
async fn presence_to_many_contacts_is_serialised_once() {
    let s = server_with_contacts().await;
    let mut contacts = Vec::new();
    for i in 0..CONTACTS {
        contacts.push(Client::online(&s, &format!("{}/r", contact(i))).await);
    }
    let alice = Client::online(&s, "alice@example.org/home").await;
    alice
        .send("<presence><show>away</show><status>out</status></presence>")
        .await;

    let mut copies: Vec<SharedStanza> = Vec::new();
    for (i, c) in contacts.iter_mut().enumerate() {
        let got: Vec<SharedStanza> = queued(c)
            .into_iter()
            .map(|o| o.stanza)
            .filter(|p| p.name() == "presence" && p.attr("from") == Some(alice.jid.as_str()))
            .filter(|p| p.get_child("show", "jabber:client").is_some())
            .collect();
        assert_eq!(got.len(), 1, "contact {i} got alice's presence once");
        copies.extend(got);
    }
    let first = &copies[0];
    assert!(
        copies.iter().all(|c| c.shares_element_with(first)),
        "every contact's copy is the same element"
    );
    for (i, copy) in copies.iter().enumerate() {
        let p = written(copy);
        assert_eq!(p.attr("to"), Some(contact(i).as_str()), "its own address");
        assert_eq!(p.attr("from"), Some("alice@example.org/home"));
        assert_eq!(
            p.get_child("status", "jabber:client").map(Element::text),
            Some("out".to_owned())
        );
    }
    assert_eq!(
        first.serialisations(),
        1,
        "{CONTACTS} deliveries, one serialisation"
    );
}

#[tokio::test]
async fn carbons_to_many_resources_are_serialised_once() {
    let s = server().await;
    let mut alice: Vec<Client> = Vec::new();
    for r in 0..6 {
        let mut c = Client::online(&s, &format!("alice@example.org/{r}")).await;
        let answer = c
            .ask(
                "<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
                "cb",
            )
            .await;
        assert_result(&answer);
        alice.push(c);
    }
    let bob = Client::online(&s, "bob@example.org/b").await;
    for c in alice.iter_mut() {
        c.drain();
    }

    // Received: alice/0 gets the message, the five others a carbon each.
    bob.send("<message to='alice@example.org/0' type='chat' id='m1'><body>hi</body></message>")
        .await;
    // Sent: alice/0 writes to bob, the five others get a carbon each.
    alice[0]
        .send("<message to='bob@example.org' type='chat' id='m2'><body>yo</body></message>")
        .await;
    let queues: Vec<Vec<SharedStanza>> = alice
        .iter_mut()
        .map(|c| queued(c).into_iter().map(|o| o.stanza).collect())
        .collect();
    for kind in ["received", "sent"] {
        let mut copies = Vec::new();
        for (r, queue) in queues.iter().enumerate().skip(1) {
            let got: Vec<SharedStanza> = queue
                .iter()
                .filter(|m| m.has_child(kind, "urn:xmpp:carbons:2"))
                .cloned()
                .collect();
            assert_eq!(got.len(), 1, "alice/{r} got one {kind} carbon");
            let m = written(&got[0]);
            assert_eq!(
                m.attr("to"),
                Some(format!("alice@example.org/{r}").as_str())
            );
            assert_eq!(m.attr("from"), Some("alice@example.org"));
            copies.extend(got);
        }
        assert!(copies.iter().all(|c| c.shares_element_with(&copies[0])));
        assert_eq!(
            copies[0].serialisations(),
            1,
            "{kind}: five carbons, one serialisation"
        );
    }
}
