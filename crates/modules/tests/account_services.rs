//! vCard, private storage, last activity, blocking, in-band account management, contact
//! addresses and account disco through the real router, with in-memory storage and sessions
//! that are queues instead of sockets.

mod common;

use common::*;
use rookery_core::Server;
use rookery_stanza::{StanzaError, StanzaErrorCondition, StreamErrorCondition};
use rookery_storage::{HashAlg, RosterItem, Subscription};
use rookery_xml::Element;
use std::time::Duration;

async fn data(server: &Server, user: &str, store: &str, key: &str) -> Option<String> {
    server
        .storage()
        .user_data
        .get_data(D, user, store, key)
        .await
        .expect("read")
}

/// `a` subscribes to `b`'s presence and `b` approves: `a` has `to`, `b` has `from`.
async fn subscribe(a: &mut Client, b: &mut Client) {
    a.send(&format!(
        "<presence to='{}' type='subscribe'/>",
        b.jid.to_bare()
    ))
    .await;
    b.send(&format!(
        "<presence to='{}' type='subscribed'/>",
        a.jid.to_bare()
    ))
    .await;
    a.drain();
    b.drain();
}

// ---- vcard-temp ---------------------------------------------------------------------------

#[tokio::test]
async fn vcard_get_set_others_and_limits() {
    let s = server_with("[limits]\nmax_vcard_bytes = 300\n", "").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;

    // Own vCard, none yet: an empty one (§3.1).
    let r = alice
        .ask(
            "<iq type='get' id='g0'><vCard xmlns='vcard-temp'/></iq>",
            "g0",
        )
        .await;
    assert_result(&r);
    let v = r.get_child("vCard", "vcard-temp").expect("vCard");
    assert_eq!(v.children().count(), 0);

    let r = alice
        .ask(
            "<iq type='set' id='s'><vCard xmlns='vcard-temp'><FN>Alice A.</FN><NICKNAME>al</NICKNAME></vCard></iq>",
            "s",
        )
        .await;
    assert_result(&r);
    let stored = data(&s, "alice", "vcard", "").await.expect("stored");
    assert!(
        stored.contains("Alice A.") && stored.contains("vcard-temp"),
        "{stored}"
    );

    // Own bare JID as 'to' is the same as none.
    let r = alice
        .ask(
            "<iq type='get' id='g1' to='alice@example.org'><vCard xmlns='vcard-temp'/></iq>",
            "g1",
        )
        .await;
    let fn_ = r
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("FN", "vcard-temp"))
        .map(Element::text);
    assert_eq!(fn_.as_deref(), Some("Alice A."));

    // Another account's vCard is public (§3.3), answered from the account's bare JID.
    let r = bob
        .ask(
            "<iq type='get' id='o' to='alice@example.org'><vCard xmlns='vcard-temp'/></iq>",
            "o",
        )
        .await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some("alice@example.org"));
    let nick = r
        .get_child("vCard", "vcard-temp")
        .and_then(|v| v.get_child("NICKNAME", "vcard-temp"))
        .map(Element::text);
    assert_eq!(nick.as_deref(), Some("al"));
    // ...but an account without one looks like a missing account (§3.3).
    let r = bob
        .ask(
            "<iq type='get' id='n' to='carol@example.org'><vCard xmlns='vcard-temp'/></iq>",
            "n",
        )
        .await;
    assert_eq!(
        condition(&r),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    let r = bob
        .ask(
            "<iq type='get' id='x' to='nobody@example.org'><vCard xmlns='vcard-temp'/></iq>",
            "x",
        )
        .await;
    assert_eq!(
        condition(&r),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );

    // Setting someone else's: forbidden (§3.2), nothing changes.
    let r = bob
        .ask(
            "<iq type='set' id='f' to='alice@example.org'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>",
            "f",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    assert_eq!(data(&s, "alice", "vcard", "").await, Some(stored.clone()));

    // Too large: not-acceptable, the old vCard stays.
    let big = "x".repeat(400);
    let r = alice
        .ask(
            &format!(
                "<iq type='set' id='big'><vCard xmlns='vcard-temp'><DESC>{big}</DESC></vCard></iq>"
            ),
            "big",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));
    assert_eq!(data(&s, "alice", "vcard", "").await, Some(stored));

    // An empty vCard deletes it.
    let r = alice
        .ask(
            "<iq type='set' id='d'><vCard xmlns='vcard-temp'/></iq>",
            "d",
        )
        .await;
    assert_result(&r);
    assert_eq!(data(&s, "alice", "vcard", "").await, None);
}

// ---- Private XML storage --------------------------------------------------------------------

#[tokio::test]
async fn private_storage_get_set_and_refusals() {
    let s = server_with("[limits]\nmax_private_bytes = 200\n", "").await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;

    let r = alice
        .ask(
            "<iq type='set' id='s'><query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></prefs></query></iq>",
            "s",
        )
        .await;
    assert_result(&r);
    assert!(data(&s, "alice", "private", "prefs exodus:prefs")
        .await
        .is_some_and(|x| x.contains("Hamlet")));

    let r = alice
        .ask(
            "<iq type='get' id='g'><query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'/></query></iq>",
            "g",
        )
        .await;
    let nick = r
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("prefs", "exodus:prefs"))
        .and_then(|p| p.get_child("defaultnick", "exodus:prefs"))
        .map(Element::text);
    assert_eq!(nick.as_deref(), Some("Hamlet"));

    // Keyed by name and namespace: another name in the same namespace is unset, and comes
    // back empty.
    let r = alice
        .ask(
            "<iq type='get' id='u'><query xmlns='jabber:iq:private'><other xmlns='exodus:prefs'/></query></iq>",
            "u",
        )
        .await;
    let q = r.get_child("query", "jabber:iq:private").expect("query");
    let other = q.get_child("other", "exodus:prefs").expect("echoed");
    assert_eq!(other.children().count(), 0);

    // Only the account itself.
    for t in ["get", "set"] {
        let r = bob
            .ask(
                &format!("<iq type='{t}' id='f' to='alice@example.org'><query xmlns='jabber:iq:private'><prefs xmlns='exodus:prefs'/></query></iq>"),
                "f",
            )
            .await;
        assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden), "{t}");
    }

    // Refused namespaces, an empty query, an oversized element.
    for payload in [
        "<x xmlns='jabber:client'/>",
        "<query xmlns='jabber:iq:private'/>",
        "",
        &format!("<big xmlns='big:ns'>{}</big>", "y".repeat(300)),
    ] {
        let r = alice
            .ask(
                &format!(
                    "<iq type='set' id='n'><query xmlns='jabber:iq:private'>{payload}</query></iq>"
                ),
                "n",
            )
            .await;
        assert_eq!(
            condition(&r),
            Some(StanzaErrorCondition::NotAcceptable),
            "{payload}"
        );
    }
    assert_eq!(
        s.storage()
            .user_data
            .data_keys(D, "alice", "private")
            .await
            .expect("keys"),
        ["prefs exodus:prefs"]
    );
}

// ---- Last activity --------------------------------------------------------------------------

#[tokio::test]
async fn last_activity_server_contacts_and_strangers() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let mut dave = Client::online(&s, "dave@example.org/d").await;
    subscribe(&mut alice, &mut bob).await;

    // The server: its uptime.
    let r = alice
        .ask(
            "<iq type='get' id='up' to='example.org'><query xmlns='jabber:iq:last'/></iq>",
            "up",
        )
        .await;
    let q = r.get_child("query", "jabber:iq:last").expect("query");
    assert!(q
        .attr("seconds")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some());

    // An online contact: 0.
    let ask_bob = "<iq type='get' id='l' to='bob@example.org'><query xmlns='jabber:iq:last'/></iq>";
    let r = alice.ask(ask_bob, "l").await;
    assert_eq!(
        r.get_child("query", "jabber:iq:last")
            .and_then(|q| q.attr("seconds")),
        Some("0")
    );

    // Bob logs out with a status: recorded.
    bob.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        .await;
    bob.close().await;
    let record = data(&s, "bob", "last", "").await.expect("recorded");
    assert!(record.contains("Heading Home"), "{record}");
    let r = alice.ask(ask_bob, "l").await;
    let q = r.get_child("query", "jabber:iq:last").expect("query");
    let secs: u64 = q
        .attr("seconds")
        .and_then(|v| v.parse().ok())
        .expect("seconds");
    assert!(secs < 5, "{secs}");
    assert_eq!(q.text(), "Heading Home");

    // The answer is the time since the recorded logout.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 903;
    s.storage()
        .user_data
        .set_data(
            D,
            "bob",
            "last",
            "",
            Some(&format!("<last xmlns='jabber:iq:last' stamp='{stamp}'/>")),
            1000,
        )
        .await
        .expect("write");
    let r = alice.ask(ask_bob, "l").await;
    let q = r.get_child("query", "jabber:iq:last").expect("query");
    let secs: u64 = q
        .attr("seconds")
        .and_then(|v| v.parse().ok())
        .expect("seconds");
    assert!((903..910).contains(&secs), "{secs}");
    assert_eq!(q.text(), "");

    // Not subscribed to Bob's presence: forbidden (§3).
    let r = dave.ask(ask_bob, "l").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    // Carol (offline) lets Alice see her presence but never logged out since the module
    // exists: no record.
    let mut item = RosterItem::new("alice@example.org");
    item.subscription = Subscription::From;
    s.storage()
        .roster
        .set_roster_item(D, "carol", &item, 100)
        .await
        .expect("write");
    let ask_carol =
        "<iq type='get' id='c' to='carol@example.org'><query xmlns='jabber:iq:last'/></iq>";
    let r = alice.ask(ask_carol, "c").await;
    assert_eq!(
        condition(&r),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    let r = dave.ask(ask_carol, "c").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));
    let r = dave
        .ask(
            "<iq type='get' id='me'><query xmlns='jabber:iq:last'/></iq>",
            "me",
        )
        .await;
    assert_eq!(
        r.get_child("query", "jabber:iq:last")
            .and_then(|q| q.attr("seconds")),
        Some("0"),
        "the account itself, online"
    );
}

// ---- Blocking -------------------------------------------------------------------------------

fn blocking_pushes<'a>(got: &'a [Element], command: &str) -> Vec<&'a Element> {
    got.iter()
        .filter(|e| e.name() == "iq" && e.attr("type") == Some("set"))
        .filter_map(|e| e.get_child(command, "urn:xmpp:blocking"))
        .collect()
}

fn items(el: &Element) -> Vec<String> {
    el.children()
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect()
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let r = c
        .ask(
            "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl",
        )
        .await;
    items(
        r.get_child("blocklist", "urn:xmpp:blocking")
            .expect("blocklist"),
    )
}

fn is_blocked_error(el: &Element) -> bool {
    condition(el) == Some(StanzaErrorCondition::NotAcceptable)
        && el
            .get_child("error", "jabber:client")
            .is_some_and(|e| e.has_child("blocked", "urn:xmpp:blocking:errors"))
}

#[tokio::test]
async fn blocking_list_block_unblock_and_pushes() {
    let s = server().await;
    let mut a1 = Client::online(&s, "alice@example.org/one").await;
    let mut a2 = Client::online(&s, "alice@example.org/two").await;
    assert!(blocklist(&mut a1).await.is_empty());

    let r = a1
        .ask(
            "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='Bob@Example.org'/><item jid='carol@example.org/phone'/></block></iq>",
            "b",
        )
        .await;
    assert_result(&r);
    // a2 never asked for the list: no push; a1 did.
    assert!(blocking_pushes(&a2.drain(), "block").is_empty());
    a1.send("<iq type='set' id='b2'><block xmlns='urn:xmpp:blocking'><item jid='dave@example.org'/></block></iq>").await;
    let got = a1.drain();
    assert_result(reply(&got, "b2"));
    let p = blocking_pushes(&got, "block");
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(items(p[0]), ["dave@example.org"]);
    assert_eq!(
        blocklist(&mut a2).await,
        [
            "bob@example.org",
            "carol@example.org/phone",
            "dave@example.org"
        ],
        "normalised, sorted"
    );
    let stored = data(&s, "alice", "blocklist", "").await.expect("stored");
    assert!(stored.contains("carol@example.org/phone"), "{stored}");

    // Errors: empty block, bad JID, blocking oneself, another account's list.
    for (xml, cond) in [
        (
            "<block xmlns='urn:xmpp:blocking'/>",
            StanzaErrorCondition::BadRequest,
        ),
        (
            "<block xmlns='urn:xmpp:blocking'><item jid='a@b@c'/></block>",
            StanzaErrorCondition::JidMalformed,
        ),
        (
            "<block xmlns='urn:xmpp:blocking'><item jid='alice@example.org'/></block>",
            StanzaErrorCondition::NotAllowed,
        ),
    ] {
        let r = a1
            .ask(&format!("<iq type='set' id='e'>{xml}</iq>"), "e")
            .await;
        assert_eq!(condition(&r), Some(cond), "{xml}");
    }
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let r = bob
        .ask(
            "<iq type='get' id='o' to='carol@example.org'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "o",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::Forbidden));

    // Unblock one: both interested resources get the push.
    a1.drain();
    a2.drain();
    let r = a1
        .ask(
            "<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'><item jid='dave@example.org'/></unblock></iq>",
            "u",
        )
        .await;
    assert_result(&r);
    let got = a2.drain();
    let p = blocking_pushes(&got, "unblock");
    assert_eq!(p.len(), 1);
    assert_eq!(items(p[0]), ["dave@example.org"]);
    assert_eq!(
        blocklist(&mut a1).await,
        ["bob@example.org", "carol@example.org/phone"]
    );

    // Unblock all: an empty push, an empty list, nothing stored.
    a2.drain();
    a1.send("<iq type='set' id='ua'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        .await;
    let got = a1.drain();
    assert_result(reply(&got, "ua"));
    let p = blocking_pushes(&got, "unblock");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].children().count(), 0);
    assert_eq!(blocking_pushes(&a2.drain(), "unblock").len(), 1);
    assert!(blocklist(&mut a1).await.is_empty());
    assert_eq!(data(&s, "alice", "blocklist", "").await, None);
}

#[tokio::test]
async fn blocking_enforcement_both_ways_and_presence() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    subscribe(&mut alice, &mut bob).await;
    subscribe(&mut bob, &mut alice).await;
    alice.send("<presence><show>chat</show></presence>").await;
    assert_eq!(presences(&bob.drain(), None).len(), 1, "subscribed");
    alice.drain();
    let disco = "<iq type='get' id='di' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>";
    assert_result(&bob.ask(disco, "di").await);

    // Blocking Bob withdraws Alice's presence from him (§3.3).
    alice
        .send("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@example.org'/></block></iq>")
        .await;
    alice.drain();
    let got = bob.drain();
    let un = presences(&got, Some("unavailable"));
    assert_eq!(un.len(), 1, "{got:?}");
    assert_eq!(un[0].attr("from"), Some("alice@example.org/a"));

    // Inbound: a message bounces with service-unavailable, an IQ too, presence vanishes.
    bob.send("<message to='alice@example.org' type='chat' id='m1'><body>hi</body></message>")
        .await;
    let got = bob.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].attr("type"), Some("error"));
    assert_eq!(
        condition(&got[0]),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    bob.send("<message to='alice@example.org/a' id='m2'><body>hi</body></message>")
        .await;
    assert_eq!(
        condition(&bob.drain()[0]),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    assert_eq!(
        condition(&bob.ask(disco, "di").await),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    bob.send("<presence><show>away</show></presence>").await;
    assert!(bob.drain().iter().all(|e| e.attr("type") != Some("error")));
    assert!(alice.drain().is_empty(), "Alice gets nothing from Bob");

    // Outbound: refused with the blocked condition; Alice's broadcasts skip Bob.
    alice
        .send("<message to='bob@example.org' id='o1'><body>psst</body></message>")
        .await;
    let got = alice.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(is_blocked_error(&got[0]), "{got:?}");
    let r = alice
        .ask(
            "<iq type='get' id='o2' to='bob@example.org/b'><ping xmlns='urn:xmpp:ping'/></iq>",
            "o2",
        )
        .await;
    assert!(is_blocked_error(&r), "{r:?}");
    alice.send("<presence><show>dnd</show></presence>").await;
    alice.drain();
    assert!(
        bob.drain().is_empty(),
        "no presence, no message reached Bob"
    );

    // Unblocking sends Alice's current presence to Bob again (§3.4) and lets stanzas through.
    alice
        .send("<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'><item jid='bob@example.org'/></unblock></iq>")
        .await;
    alice.drain();
    let got = bob.drain();
    let avail = presences(&got, None);
    assert_eq!(avail.len(), 1, "{got:?}");
    assert_eq!(avail[0].attr("from"), Some("alice@example.org/a"));
    assert!(avail[0].to_string().contains("dnd"));
    bob.send("<message to='alice@example.org' type='chat'><body>back</body></message>")
        .await;
    assert_eq!(alice.drain().len(), 1);
    assert!(bob.drain().is_empty());
}

#[tokio::test]
async fn blocking_a_domain_and_offline_accounts() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let mut eve = Client::online(&s, "eve@other.org/e").await;
    alice
        .send("<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='other.org'/></block></iq>")
        .await;
    alice.drain();
    eve.send("<message to='alice@example.org' type='chat'><body>hi</body></message>")
        .await;
    assert_eq!(
        condition(&eve.drain()[0]),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    alice
        .send("<message to='eve@other.org' type='chat'><body>hi</body></message>")
        .await;
    assert!(is_blocked_error(&alice.drain()[0]));
    // Bob, on Alice's own domain, is not affected.
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<message to='alice@example.org' type='chat'><body>hi</body></message>")
        .await;
    assert!(bob.drain().is_empty());
    assert_eq!(alice.drain().len(), 1);

    // Offline, the stored list still applies: the message bounces instead of being kept.
    alice.close().await;
    eve.send("<message to='alice@example.org' type='chat' id='off'><body>hi</body></message>")
        .await;
    let got = eve.drain();
    assert_eq!(
        condition(reply(&got, "off")),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    assert_eq!(
        s.storage()
            .offline
            .count_offline(D, "alice")
            .await
            .expect("count"),
        0
    );
    // Back online, the list is loaded again.
    let mut alice = Client::online(&s, "alice@example.org/again").await;
    assert_eq!(blocklist(&mut alice).await, ["other.org"]);
    alice
        .send("<message to='eve@other.org'><body>x</body></message>")
        .await;
    assert!(is_blocked_error(&alice.drain()[0]));
}

// ---- In-band registration: password change and removal --------------------------------------

#[tokio::test]
async fn password_change_regenerates_scram_records() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let r = alice
        .ask(
            "<iq type='get' id='g' to='example.org'><query xmlns='jabber:iq:register'/></iq>",
            "g",
        )
        .await;
    let q = r.get_child("query", "jabber:iq:register").expect("query");
    assert!(q.has_child("registered", "jabber:iq:register"));
    assert_eq!(
        q.get_child("username", "jabber:iq:register")
            .map(Element::text)
            .as_deref(),
        Some("alice")
    );

    let before = s
        .storage()
        .accounts
        .get_credentials(D, "alice", HashAlg::Sha256)
        .await
        .expect("read");
    for (body, cond) in [
        (
            "<username>bob</username><password>x</password>",
            StanzaErrorCondition::BadRequest,
        ),
        (
            "<username>alice</username><password/>",
            StanzaErrorCondition::BadRequest,
        ),
        (
            "<password>only</password>",
            StanzaErrorCondition::BadRequest,
        ),
    ] {
        let r = alice
            .ask(
                &format!("<iq type='set' id='e' to='example.org'><query xmlns='jabber:iq:register'>{body}</query></iq>"),
                "e",
            )
            .await;
        assert_eq!(condition(&r), Some(cond), "{body}");
    }
    let r = alice
        .ask(
            "<iq type='set' id='o' to='bob@example.org'><query xmlns='jabber:iq:register'><username>bob</username><password>x</password></query></iq>",
            "o",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAllowed));
    assert_eq!(
        s.storage()
            .accounts
            .get_credentials(D, "alice", HashAlg::Sha256)
            .await
            .expect("read"),
        before,
        "unchanged after refusals"
    );

    let r = alice
        .ask(
            "<iq type='set' id='c' to='example.org'><query xmlns='jabber:iq:register'><username>Alice</username><password>n3w s3cret</password></query></iq>",
            "c",
        )
        .await;
    assert_result(&r);
    for hash in HashAlg::ALL {
        let creds = s
            .storage()
            .accounts
            .get_credentials(D, "alice", hash)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("a record for {hash}"));
        assert!(creds.verify_password("n3w s3cret"), "{hash}");
        assert!(!creds.verify_password("wrong"), "{hash}");
        assert_eq!(creds.iterations, 4096);
    }
    // Without 'to' (the account itself) works as well.
    let r = alice
        .ask(
            "<iq type='set' id='c2'><query xmlns='jabber:iq:register'><username>alice</username><password>third one</password></query></iq>",
            "c2",
        )
        .await;
    assert_result(&r);
    let creds = s
        .storage()
        .accounts
        .get_credentials(D, "alice", HashAlg::Sha1)
        .await
        .expect("read")
        .expect("record");
    assert!(creds.verify_password("third one"));
    // Shorter than limits.min_password_length (8 by default): refused, nothing changes.
    let r = alice
        .ask(
            "<iq type='set' id='c3'><query xmlns='jabber:iq:register'><username>alice</username><password>short</password></query></iq>",
            "c3",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));
    let text = StanzaError::from_stanza(&r).and_then(|e| e.text);
    assert!(
        text.as_deref().is_some_and(|t| t.contains("too short")),
        "{r:?}"
    );
    let creds = s
        .storage()
        .accounts
        .get_credentials(D, "alice", HashAlg::Sha1)
        .await
        .expect("read")
        .expect("record");
    assert!(creds.verify_password("third one"));
}

#[tokio::test]
async fn account_removal_deletes_everything_and_closes_sessions() {
    let s = server().await;
    let mut a1 = Client::online(&s, "alice@example.org/one").await;
    let mut a2 = Client::online(&s, "alice@example.org/two").await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    subscribe(&mut a1, &mut bob).await;
    subscribe(&mut bob, &mut a1).await;
    a1.send("<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>")
        .await;
    a1.send(
        "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='x@y.org'/></block></iq>",
    )
    .await;
    a1.drain();
    a2.drain();
    bob.drain();
    assert!(data(&s, "alice", "vcard", "").await.is_some());

    // <remove/> with company is refused.
    let r = a1
        .ask(
            "<iq type='set' id='bad'><query xmlns='jabber:iq:register'><remove/><username>alice</username></query></iq>",
            "bad",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::BadRequest));

    a1.send("<iq type='set' id='rm'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    // The other session is closed at once; the requester only once its result is written.
    let (cond, _) = tokio::time::timeout(Duration::from_secs(5), a2.handle.kicked())
        .await
        .expect("kicked");
    assert_eq!(cond, StreamErrorCondition::NotAuthorized);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), a1.handle.kicked())
            .await
            .is_err(),
        "not before the result is written"
    );
    let got = a1.drain(); // acknowledges the result as written
    assert_result(reply(&got, "rm"));
    for c in [&a1, &a2] {
        let (cond, _) = tokio::time::timeout(Duration::from_secs(5), c.handle.kicked())
            .await
            .expect("kicked");
        assert_eq!(cond, StreamErrorCondition::NotAuthorized);
    }
    let st = s.storage();
    assert!(!st
        .accounts
        .account_exists(D, "alice")
        .await
        .expect("exists"));
    assert!(st
        .roster
        .roster(D, "alice")
        .await
        .expect("roster")
        .items
        .is_empty());
    for store in ["vcard", "blocklist"] {
        assert_eq!(data(&s, "alice", store, "").await, None, "{store}");
    }
    // Bob's subscriptions with Alice were cancelled both ways.
    let item = st
        .roster
        .roster_item(D, "bob", "alice@example.org")
        .await
        .expect("read")
        .expect("item kept");
    assert_eq!(item.subscription, Subscription::None);
    let got = bob.drain();
    assert!(!presences(&got, Some("unsubscribe")).is_empty(), "{got:?}");
    assert!(!presences(&got, Some("unsubscribed")).is_empty(), "{got:?}");
}

// ---- Disco: contact addresses and accounts ---------------------------------------------------

#[tokio::test]
async fn disco_carries_contact_addresses() {
    let s = server_with(
        "",
        "[host.contact]\nabuse = ['mailto:abuse@example.org', 'xmpp:abuse@example.org']\nsecurity = ['https://example.org/security']\n",
    )
    .await;
    let mut alice = Client::online(&s, "alice@example.org/a").await;
    let r = alice
        .ask(
            "<iq type='get' id='d' to='example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let features: Vec<_> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    for f in [
        "vcard-temp",
        "jabber:iq:private",
        "jabber:iq:last",
        "urn:xmpp:blocking",
        "jabber:iq:register",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    let x = q.get_child("x", "jabber:x:data").expect("form");
    assert_eq!(x.attr("type"), Some("result"));
    let field = |var: &str| {
        x.children()
            .find(|f| f.attr("var") == Some(var))
            .map(|f| f.children().map(Element::text).collect::<Vec<_>>())
    };
    assert_eq!(
        field("FORM_TYPE"),
        Some(vec!["http://jabber.org/network/serverinfo".to_owned()])
    );
    assert_eq!(
        field("abuse-addresses"),
        Some(vec![
            "mailto:abuse@example.org".to_owned(),
            "xmpp:abuse@example.org".to_owned()
        ])
    );
    assert_eq!(
        field("security-addresses"),
        Some(vec!["https://example.org/security".to_owned()])
    );
    assert_eq!(
        field("admin-addresses"),
        None,
        "unconfigured roles are left out"
    );

    // No addresses (other.org): no form.
    let mut eve = Client::online(&s, "eve@other.org/e").await;
    let r = eve
        .ask(
            "<iq type='get' id='d' to='other.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    assert!(!r.to_string().contains("jabber:x:data"), "{r:?}");
}

#[tokio::test]
async fn disco_on_account_bare_jids() {
    let s = server().await;
    let mut bob = Client::online(&s, "bob@example.org/b").await;
    let r = bob
        .ask(
            "<iq type='get' id='i' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "i",
        )
        .await;
    assert_result(&r);
    assert_eq!(r.attr("from"), Some("alice@example.org"));
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    let id = q
        .get_child("identity", "http://jabber.org/protocol/disco#info")
        .expect("identity");
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("account"), Some("registered"))
    );
    assert!(q
        .children()
        .any(|f| f.attr("var") == Some("http://jabber.org/protocol/disco#info")));

    let r = bob
        .ask(
            "<iq type='get' id='it' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
            "it",
        )
        .await;
    assert_result(&r);
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .expect("query");
    assert_eq!(q.children().count(), 0);

    // Own account without 'to'; a node; a missing account.
    let r = bob
        .ask(
            "<iq type='get' id='own'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "own",
        )
        .await;
    assert_result(&r);
    let r = bob
        .ask(
            "<iq type='get' id='n' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>",
            "n",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::ItemNotFound));
    let r = bob
        .ask(
            "<iq type='get' id='m' to='nobody@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "m",
        )
        .await;
    assert_eq!(
        condition(&r),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
}
