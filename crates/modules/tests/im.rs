//! Rosters, subscriptions and presence through the real router, with in-memory storage and
//! sessions that are queues instead of sockets.

mod common;

use common::*;
use rookery_core::Server;
use rookery_storage::Subscription;
use rookery_xml::Element;
use std::sync::Arc;

async fn server(extra: &str) -> Arc<Server> {
    server_with(extra, "").await
}

fn pushes(got: &[Element]) -> Vec<Element> {
    got.iter()
        .filter(|e| e.name() == "iq" && e.attr("type") == Some("set"))
        .filter_map(|e| e.get_child("query", "jabber:iq:roster"))
        .filter_map(|q| q.get_child("item", "jabber:iq:roster").cloned())
        .collect()
}

async fn item(server: &Server, user: &str, contact: &str) -> Option<rookery_storage::RosterItem> {
    server
        .storage()
        .roster
        .roster_item("example.org", user, contact)
        .await
        .expect("read")
}

#[tokio::test]
async fn roster_get_set_remove_with_versions_and_pushes() {
    let s = server("").await;
    let mut a1 = Client::online(&s, "alice@example.org/one").await;
    let mut a2 = Client::online(&s, "alice@example.org/two").await;
    let mut a3 = Client::bind(&s, "alice@example.org/no-roster").await;
    a1.send("<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let got = a1.drain();
    let q = reply(&got, "g")
        .get_child("query", "jabber:iq:roster")
        .expect("roster");
    let ver0 = q.attr("ver").expect("versioned").to_owned();
    assert_eq!(q.children().count(), 0);

    a1.send("<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='Bob@Example.org' name='Bob'><group>Friends</group><group>Work</group></item></query></iq>").await;
    let got = a1.drain();
    let p = pushes(&got);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(p[0].attr("jid"), Some("bob@example.org"));
    assert_eq!(p[0].attr("subscription"), Some("none"));
    let groups: Vec<_> = p[0].children().map(|g| g.text()).collect();
    assert_eq!(groups, ["Friends", "Work"]);
    assert!(got
        .iter()
        .any(|e| e.attr("id") == Some("s") && e.attr("type") == Some("result")));
    assert_eq!(
        pushes(&a2.drain()).len(),
        1,
        "other interested resource pushed"
    );
    assert!(
        pushes(&a3.drain()).is_empty(),
        "a resource that never asked gets no push"
    );

    // Same version: empty result; old version: the full roster.
    a1.send("<iq type='get' id='g2'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    let ver1 = reply(&a1.drain(), "g2")
        .get_child("query", "jabber:iq:roster")
        .and_then(|q| q.attr("ver").map(str::to_owned))
        .expect("ver");
    assert_ne!(ver0, ver1);
    a1.send(&format!(
        "<iq type='get' id='g3'><query xmlns='jabber:iq:roster' ver='{ver1}'/></iq>"
    ))
    .await;
    assert_eq!(
        reply(&a1.drain(), "g3").children().count(),
        0,
        "unchanged roster: empty result"
    );
    a1.send(&format!(
        "<iq type='get' id='g4'><query xmlns='jabber:iq:roster' ver='{ver0}'/></iq>"
    ))
    .await;
    let got = a1.drain();
    assert_eq!(
        reply(&got, "g4")
            .get_child("query", "jabber:iq:roster")
            .map(|q| q.children().count()),
        Some(1)
    );

    a1.send("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='bob@example.org' subscription='remove'/></query></iq>").await;
    let p = pushes(&a1.drain());
    assert_eq!(p[0].attr("subscription"), Some("remove"));
    assert!(item(&s, "alice", "bob@example.org").await.is_none());
    a1.send("<iq type='set' id='rm2'><query xmlns='jabber:iq:roster'><item jid='bob@example.org' subscription='remove'/></query></iq>").await;
    assert!(reply(&a1.drain(), "rm2")
        .to_string()
        .contains("item-not-found"));
}

#[tokio::test]
async fn roster_set_validation_and_limit() {
    let s = server("[limits]\nmax_roster_items = 1\n").await;
    let mut a = Client::online(&s, "alice@example.org/r").await;
    let cases = [
        (
            "<item jid='x@example.org'/><item jid='y@example.org'/>",
            "bad-request",
        ),
        ("", "bad-request"),
        ("<item jid='x@example.org/res'/>", "bad-request"),
        ("<item jid='a@b@c'/>", "jid-malformed"),
        ("<item jid='alice@example.org'/>", "not-allowed"),
        (
            "<item jid='x@example.org'><group>G</group><group>G</group></item>",
            "bad-request",
        ),
    ];
    for (items, cond) in cases {
        a.send(&format!(
            "<iq type='set' id='v'><query xmlns='jabber:iq:roster'>{items}</query></iq>"
        ))
        .await;
        let got = a.drain();
        assert!(got[0].to_string().contains(cond), "{items}: {got:?}");
    }
    let long = "n".repeat(2000);
    a.send(&format!("<iq type='set' id='v'><query xmlns='jabber:iq:roster'><item jid='x@example.org' name='{long}'/></query></iq>")).await;
    assert!(a.drain()[0].to_string().contains("not-acceptable"));
    a.send("<iq type='set' id='v'><query xmlns='jabber:iq:roster'><item jid='x@example.org'><group></group></item></query></iq>").await;
    assert!(a.drain()[0].to_string().contains("not-acceptable"));
    a.send("<iq type='set' id='ok'><query xmlns='jabber:iq:roster'><item jid='x@example.org'/></query></iq>").await;
    assert!(a.drain().iter().any(|e| e.attr("type") == Some("result")));
    a.send("<iq type='set' id='full'><query xmlns='jabber:iq:roster'><item jid='y@example.org'/></query></iq>").await;
    assert!(
        a.drain()[0].to_string().contains("not-allowed"),
        "roster full"
    );
    a.send("<iq type='set' id='upd'><query xmlns='jabber:iq:roster'><item jid='x@example.org' name='X'/></query></iq>").await;
    assert!(
        a.drain().iter().any(|e| e.attr("type") == Some("result")),
        "updating is not adding"
    );
    a.send("<iq type='get' id='o' to='bob@example.org'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert!(a.drain()[0].to_string().contains("forbidden"));
}

#[tokio::test]
async fn mutual_subscription_then_presence_flows_only_to_subscribers() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;

    alice
        .send("<presence to='bob@example.org' type='subscribe'/>")
        .await;
    let a = item(&s, "alice", "bob@example.org")
        .await
        .expect("item created");
    assert!(a.ask && a.subscription == Subscription::None);
    let got = bob.drain();
    let req = presences(&got, Some("subscribe"));
    assert_eq!(req.len(), 1);
    assert_eq!(
        req[0].attr("from"),
        Some("alice@example.org"),
        "bare JID stamped"
    );
    alice.drain();

    bob.send("<presence to='alice@example.org' type='subscribed'/>")
        .await;
    let b = item(&s, "bob", "alice@example.org")
        .await
        .expect("bob's item");
    assert_eq!(b.subscription, Subscription::From);
    let a = item(&s, "alice", "bob@example.org")
        .await
        .expect("alice's item");
    assert_eq!((a.subscription, a.ask), (Subscription::To, false));
    let got = alice.drain();
    assert_eq!(presences(&got, Some("subscribed")).len(), 1);
    assert_eq!(pushes(&got)[0].attr("subscription"), Some("to"));
    let avail = presences(&got, None);
    assert_eq!(
        avail.len(),
        1,
        "bob's current presence follows approval: {got:?}"
    );
    assert_eq!(avail[0].attr("from"), Some("bob@example.org/b"));
    bob.drain();

    // Bob's changes reach Alice; Alice's don't reach Bob (she is only 'to').
    bob.send("<presence><show>away</show></presence>").await;
    assert_eq!(presences(&alice.drain(), None).len(), 1);
    alice.send("<presence><show>dnd</show></presence>").await;
    let got = bob.drain();
    assert!(
        presences(&got, None)
            .iter()
            .all(|p| p.attr("from") != Some("alice@example.org/a")),
        "no leak: {got:?}"
    );

    // Bob's session drops: Alice is told.
    bob.close().await;
    let got = alice.drain();
    let un = presences(&got, Some("unavailable"));
    assert_eq!(un.len(), 1);
    assert_eq!(un[0].attr("from"), Some("bob@example.org/b"));
}

#[tokio::test]
async fn pending_requests_are_redelivered_at_login_and_probes_answered() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    alice.send("<presence to='carol@example.org' type='subscribe'><status>hi, it is Alice</status></presence>").await;
    // Carol was offline; each login shows the waiting request until she answers.
    for _ in 0..2 {
        let mut carol = Client::bind(&s, "carol@example.org/c").await;
        carol.send("<presence/>").await;
        let got = carol.drain();
        let req = presences(&got, Some("subscribe"));
        assert_eq!(req.len(), 1, "{got:?}");
        assert!(req[0].to_string().contains("hi, it is Alice"));
        carol.close().await;
    }
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    carol
        .send("<presence to='alice@example.org' type='subscribed'/>")
        .await;
    alice.drain();
    // A second resource of Alice comes online: its probe is answered with Carol's presence.
    let mut a2 = Client::bind(&s, "alice@example.org/second").await;
    a2.send("<presence/>").await;
    let got = a2.drain();
    assert!(
        presences(&got, None)
            .iter()
            .any(|p| p.attr("from") == Some("carol@example.org/c")),
        "{got:?}"
    );
    assert!(
        presences(&got, None)
            .iter()
            .any(|p| p.attr("from") == Some("alice@example.org/a")),
        "own other resource: {got:?}"
    );
    // Dave, not subscribed, probes Carol and learns nothing.
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    dave.send("<presence to='carol@example.org' type='probe'/>")
        .await;
    assert!(dave.drain().is_empty());
    carol.drain();
}

#[tokio::test]
async fn probes_of_a_new_resource_are_answered_to_it_alone() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut carol = Client::online(&s, "carol@example.org/c").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    // Alice is subscribed to Carol (online) and to Bob (about to go offline).
    for c in [&mut carol, &mut bob] {
        let contact = c.jid.to_bare();
        alice
            .send(&format!("<presence to='{contact}' type='subscribe'/>"))
            .await;
        c.send("<presence to='alice@example.org' type='subscribed'/>")
            .await;
        c.drain();
    }
    bob.close().await;
    alice.drain();
    carol.drain();

    // A second resource comes online: its probes are answered to it (RFC 6121 §4.3.2)...
    let mut a2 = Client::bind(&s, "alice@example.org/second").await;
    a2.send("<presence/>").await;
    let got = a2.drain();
    let from_carol = presences(&got, None)
        .into_iter()
        .filter(|p| p.attr("from") == Some("carol@example.org/c"))
        .collect::<Vec<_>>();
    assert_eq!(from_carol.len(), 1, "{got:?}");
    assert_eq!(from_carol[0].attr("to"), Some("alice@example.org/second"));
    let bob_gone = presences(&got, Some("unavailable"));
    assert_eq!(bob_gone.len(), 1, "{got:?}");
    assert_eq!(bob_gone[0].attr("from"), Some("bob@example.org"));
    assert_eq!(bob_gone[0].attr("to"), Some("alice@example.org/second"));
    // ...and not replayed to the resource that already had them: it only hears of the new one.
    let got = alice.drain();
    assert!(
        got.iter()
            .all(|p| p.attr("from") == Some("alice@example.org/second")),
        "{got:?}"
    );
    assert_eq!(presences(&got, None).len(), 1, "{got:?}");
    // The probes themselves are the server's business, never delivered to the contact.
    assert!(carol.drain().is_empty());

    // A probe from a full JID passes the subscription check by its bare JID and is answered
    // to that full JID only.
    a2.send("<presence to='carol@example.org' type='probe'/>")
        .await;
    let got = a2.drain();
    assert_eq!(presences(&got, None).len(), 1, "{got:?}");
    assert_eq!(got[0].attr("from"), Some("carol@example.org/c"));
    assert!(alice.drain().is_empty());
    // Dave has no subscription: his probe, from a full JID too, learns nothing.
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    dave.send("<presence to='carol@example.org' type='probe'/>")
        .await;
    assert!(dave.drain().is_empty());
}

#[tokio::test]
async fn pre_approval_grants_the_later_request() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<presence to='alice@example.org' type='subscribed'/>")
        .await;
    let b = item(&s, "bob", "alice@example.org")
        .await
        .expect("pre-approved item");
    assert!(b.approved && b.subscription == Subscription::None);
    assert!(
        presences(&alice.drain(), Some("subscribed")).is_empty(),
        "pre-approval isn't sent"
    );
    bob.drain();
    alice
        .send("<presence to='bob@example.org' type='subscribe'/>")
        .await;
    assert!(
        presences(&bob.drain(), Some("subscribe")).is_empty(),
        "granted without asking Bob"
    );
    let b = item(&s, "bob", "alice@example.org").await.expect("item");
    assert_eq!((b.subscription, b.approved), (Subscription::From, false));
    let a = item(&s, "alice", "bob@example.org").await.expect("item");
    assert_eq!(a.subscription, Subscription::To);
}

#[tokio::test]
async fn directed_presence_is_cleaned_up() {
    let s = server("").await;
    let alice = Client::online(&s, "alice@example.org/a").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    alice.send("<presence to='dave@example.org/d'/>").await;
    assert_eq!(presences(&dave.drain(), None).len(), 1);
    alice.close().await;
    let got = dave.drain();
    assert_eq!(presences(&got, Some("unavailable")).len(), 1, "{got:?}");
}

#[tokio::test]
async fn removing_an_item_ends_both_subscriptions() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    alice
        .send("<presence to='bob@example.org' type='subscribe'/>")
        .await;
    bob.send("<presence to='alice@example.org' type='subscribed'/>")
        .await;
    bob.send("<presence to='alice@example.org' type='subscribe'/>")
        .await;
    alice
        .send("<presence to='bob@example.org' type='subscribed'/>")
        .await;
    assert_eq!(
        item(&s, "alice", "bob@example.org")
            .await
            .map(|i| i.subscription),
        Some(Subscription::Both)
    );
    alice.drain();
    bob.drain();
    alice.send("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='bob@example.org' subscription='remove'/></query></iq>").await;
    assert_eq!(
        item(&s, "bob", "alice@example.org")
            .await
            .map(|i| i.subscription),
        Some(Subscription::None)
    );
    let got = bob.drain();
    assert_eq!(presences(&got, Some("unsubscribe")).len(), 1, "{got:?}");
    assert_eq!(presences(&got, Some("unsubscribed")).len(), 1, "{got:?}");
}

async fn offline_count(server: &Server, user: &str) -> usize {
    server
        .storage()
        .offline
        .count_offline("example.org", user)
        .await
        .expect("count")
}

#[tokio::test]
async fn offline_messages_are_kept_and_delivered_with_a_delay_stamp() {
    let s = server("").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='bob@example.org' type='chat' id='m{i}'><body>m{i}</body></message>"
            ))
            .await;
    }
    // Not stored: chat states without a body, headlines, and no-store hints.
    alice.send("<message to='bob@example.org' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    alice
        .send("<message to='bob@example.org' type='headline'><body>news</body></message>")
        .await;
    alice.send("<message to='bob@example.org' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>").await;
    assert_eq!(offline_count(&s, "bob").await, 3);
    let errors: Vec<_> = alice
        .drain()
        .into_iter()
        .filter(|e| e.attr("type") == Some("error"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "only the no-store chat message is refused: {errors:?}"
    );

    // A negative-priority session does not take the backlog.
    let mut shy = Client::bind(&s, "bob@example.org/shy").await;
    shy.send("<presence><priority>-1</priority></presence>")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(shy.drain().iter().all(|e| e.name() != "message"));
    assert_eq!(offline_count(&s, "bob").await, 3);

    let mut bob = Client::bind(&s, "bob@example.org/b").await;
    bob.send("<presence/>").await;
    let got = bob.drain_at_least(4).await;
    let msgs: Vec<_> = got.iter().filter(|e| e.name() == "message").collect();
    let ids: Vec<_> = msgs.iter().filter_map(|m| m.attr("id")).collect();
    assert_eq!(ids, ["m0", "m1", "m2"], "in order");
    for m in &msgs {
        let d = m.get_child("delay", "urn:xmpp:delay").expect("delay stamp");
        assert_eq!(d.attr("from"), Some("example.org"));
        assert!(d.attr("stamp").is_some_and(|t| t.ends_with('Z')));
        assert_eq!(m.attr("to"), Some("bob@example.org/b"));
    }
    // Removed once written.
    for _ in 0..200 {
        if offline_count(&s, "bob").await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(offline_count(&s, "bob").await, 0);
}

#[tokio::test]
async fn unwritten_offline_messages_stay_stored() {
    let s = server("").await;
    let alice = Client::online(&s, "alice@example.org/a").await;
    alice
        .send("<message to='bob@example.org' type='chat'><body>keep me</body></message>")
        .await;
    let bob = Client::bind(&s, "bob@example.org/b").await;
    bob.send("<presence/>").await;
    // The connection dies before writing anything.
    drop(bob.inbox);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        offline_count(&s, "bob").await,
        1,
        "still there for next time"
    );
}

#[tokio::test]
async fn offline_quota_answers_service_unavailable() {
    let s = server("[limits]\nmax_offline_messages = 2\n").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    for i in 0..3 {
        alice
            .send(&format!(
                "<message to='bob@example.org' type='chat' id='q{i}'><body>x</body></message>"
            ))
            .await;
    }
    let got = alice.drain();
    let err = reply_msg(&got, "q2");
    assert!(err.to_string().contains("service-unavailable"), "{err}");
    assert_eq!(offline_count(&s, "bob").await, 2);
}

fn reply_msg<'a>(got: &'a [Element], id: &str) -> &'a Element {
    got.iter()
        .find(|e| e.name() == "message" && e.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no message {id} in {got:?}"))
}
