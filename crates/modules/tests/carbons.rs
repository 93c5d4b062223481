//! XEP-0280 Message Carbons through the real router: three resources of alice, bob as the
//! contact, sessions that are queues instead of sockets.

mod common;

use common::*;
use rookery_stanza::StanzaErrorCondition;
use rookery_xml::Element;

const NS: &str = "urn:xmpp:carbons:2";
const FWD: &str = "urn:xmpp:forward:0";

async fn enable(c: &mut Client) {
    let r = c
        .ask(
            "<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
            "cb",
        )
        .await;
    assert_result(&r);
}

/// The original message inside a carbon of `kind`, after checking the wrapper's addressing.
fn carbon<'a>(el: &'a Element, kind: &str, to: &str) -> &'a Element {
    assert_eq!(el.name(), "message", "{el:?}");
    assert_eq!(el.attr("from"), Some("alice@example.org"), "{el:?}");
    assert_eq!(el.attr("to"), Some(to), "{el:?}");
    el.get_child(kind, NS)
        .and_then(|k| k.get_child("forwarded", FWD))
        .and_then(|f| f.get_child("message", "jabber:client"))
        .unwrap_or_else(|| panic!("no {kind} carbon in {el:?}"))
}

fn body(el: &Element) -> String {
    el.get_child("body", "jabber:client")
        .map(|b| b.text())
        .unwrap_or_default()
}

struct Setup {
    a1: Client,
    a2: Client,
    a3: Client,
    bob: Client,
}

/// alice/1 and alice/2 enable carbons, alice/3 does not.
async fn setup() -> Setup {
    let s = server().await;
    let mut a1 = Client::online(&s, "alice@example.org/1").await;
    let mut a2 = Client::online(&s, "alice@example.org/2").await;
    let mut a3 = Client::online(&s, "alice@example.org/3").await;
    let bob = Client::online(&s, "bob@example.org/b").await;
    enable(&mut a1).await;
    enable(&mut a2).await;
    a1.drain();
    a2.drain();
    a3.drain();
    Setup { a1, a2, a3, bob }
}

#[tokio::test]
async fn enable_disable_and_refusals() {
    let s = server().await;
    let mut a = Client::online(&s, "alice@example.org/1").await;
    for id in ["e1", "e2"] {
        // §10.1: repeating is not an error.
        let r = a
            .ask(
                &format!("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:carbons:2'/></iq>"),
                id,
            )
            .await;
        assert_result(&r);
    }
    let r = a
        .ask(
            "<iq type='set' id='d1'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
            "d1",
        )
        .await;
    assert_result(&r);
    let r = a
        .ask(
            "<iq type='get' id='g'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
            "g",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::BadRequest));
    let r = a
        .ask(
            "<iq type='set' id='o' to='bob@example.org'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
            "o",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAllowed));
    let r = a
        .ask(
            "<iq type='set' id='x'><other xmlns='urn:xmpp:carbons:2'/></iq>",
            "x",
        )
        .await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::BadRequest));
    let r = a
        .ask(
            "<iq type='get' id='i' to='example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "i",
        )
        .await;
    let q = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("query");
    assert!(q.children().any(|f| f.attr("var") == Some(NS)), "{q:?}");
}

#[tokio::test]
async fn sent_carbons_go_to_other_enabled_resources_only() {
    let Setup {
        mut a1,
        mut a2,
        mut a3,
        mut bob,
    } = setup().await;
    // Sent by a resource with carbons disabled: copies still go to the enabled ones (§8).
    a3.send("<message to='bob@example.org' type='chat' id='m1'><body>from 3</body></message>")
        .await;
    let got1 = a1.drain();
    let got2 = a2.drain();
    assert_eq!(got1.len(), 1, "{got1:?}");
    assert_eq!(got2.len(), 1, "{got2:?}");
    let inner = carbon(&got1[0], "sent", "alice@example.org/1");
    assert_eq!(inner.attr("from"), Some("alice@example.org/3"));
    assert_eq!(inner.attr("to"), Some("bob@example.org"));
    assert_eq!(body(inner), "from 3");
    assert_eq!(got1[0].attr("type"), Some("chat"));
    carbon(&got2[0], "sent", "alice@example.org/2");
    assert!(a3.drain().is_empty());
    assert_eq!(bob.drain().len(), 1);

    // Sent by an enabled resource: not to itself, not to the disabled one.
    a1.send("<message to='bob@example.org/b' type='chat' id='m2'><body>from 1</body></message>")
        .await;
    assert!(a1.drain().is_empty());
    assert!(a3.drain().is_empty());
    let got2 = a2.drain();
    assert_eq!(got2.len(), 1);
    assert_eq!(
        body(carbon(&got2[0], "sent", "alice@example.org/2")),
        "from 1"
    );
    let got = bob.drain();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].get_child("sent", NS).is_none(),
        "bob gets the original"
    );
}

#[tokio::test]
async fn received_carbons_full_and_bare() {
    let Setup {
        mut a1,
        mut a2,
        mut a3,
        bob,
    } = setup().await;
    // To a full JID: the addressee gets the original, other enabled resources a copy (§7).
    bob.send("<message to='alice@example.org/1' type='chat' id='r1'><body>to 1</body></message>")
        .await;
    let got1 = a1.drain();
    assert_eq!(got1.len(), 1);
    assert_eq!(got1[0].get_child("received", NS), None);
    assert_eq!(body(&got1[0]), "to 1");
    let got2 = a2.drain();
    assert_eq!(got2.len(), 1);
    let inner = carbon(&got2[0], "received", "alice@example.org/2");
    assert_eq!(inner.attr("from"), Some("bob@example.org/b"));
    assert_eq!(inner.attr("to"), Some("alice@example.org/1"));
    assert!(a3.drain().is_empty(), "carbons disabled: nothing");

    // To the bare JID with equal priorities: every resource gets the original (RFC 6121
    // §8.5.2.1.1), so nobody gets a copy as well.
    bob.send("<message to='alice@example.org' type='chat' id='r2'><body>bare</body></message>")
        .await;
    for c in [&mut a1, &mut a2, &mut a3] {
        let got = c.drain();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].get_child("received", NS).is_none());
        assert_eq!(body(&got[0]), "bare");
    }

    // alice/2 goes to a negative priority: a bare-JID message reaches the others as the
    // original and alice/2 as a copy.
    a2.send("<presence><priority>-1</priority></presence>")
        .await;
    a1.drain();
    a2.drain();
    a3.drain();
    bob.send("<message to='alice@example.org' type='chat' id='r3'><body>bare 2</body></message>")
        .await;
    assert_eq!(body(&a1.drain()[0]), "bare 2");
    assert_eq!(body(&a3.drain()[0]), "bare 2");
    let got2 = a2.drain();
    assert_eq!(got2.len(), 1);
    assert_eq!(
        body(carbon(&got2[0], "received", "alice@example.org/2")),
        "bare 2"
    );
    // §9: a private message to the bare JID is still delivered by RFC 6121 rules (to every
    // top-priority resource), but copied to nobody.
    bob.send("<message to='alice@example.org' type='chat'><body>bare private</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        .await;
    assert_eq!(body(&a1.drain()[0]), "bare private");
    assert_eq!(body(&a3.drain()[0]), "bare private");
    assert!(a2.drain().is_empty());
}

#[tokio::test]
async fn private_no_copy_groupchat_headline_and_muc_pm() {
    let Setup {
        mut a1,
        mut a2,
        mut a3,
        bob,
    } = setup().await;
    let cases = [
        "<message to='{to}' type='chat'><body>p</body><private xmlns='urn:xmpp:carbons:2'/><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message to='{to}' type='chat'><body>p</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        "<message to='{to}' type='chat'><body>p</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message to='{to}' type='headline'><body>p</body></message>",
        "<message to='{to}'><thread>t</thread></message>",
    ];
    for case in cases {
        a3.send(&case.replace("{to}", "bob@example.org/b")).await;
        assert!(a1.drain().is_empty(), "sent: {case}");
        assert!(a2.drain().is_empty(), "sent: {case}");
        bob.send(&case.replace("{to}", "alice@example.org/3")).await;
        assert!(a1.drain().is_empty(), "received: {case}");
        assert!(a2.drain().is_empty(), "received: {case}");
        let got3 = a3.drain();
        assert_eq!(got3.len(), 1, "{case}: {got3:?}");
        // The server leaves <private/> in place (§9).
        if case.contains("private") {
            assert!(got3[0].has_child("private", NS));
        }
    }
    // A private message from a MUC participant is not copied; one to a participant is.
    let pm = "<message to='{to}' type='chat'><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>";
    bob.send(&pm.replace("{to}", "alice@example.org/3")).await;
    assert!(a1.drain().is_empty());
    assert_eq!(a3.drain().len(), 1);
    a3.send(&pm.replace("{to}", "bob@example.org/b")).await;
    assert_eq!(a1.drain().len(), 1);
    assert_eq!(a2.drain().len(), 1);
    // Messages between the account's own resources are not copied.
    a3.send("<message to='alice@example.org/1' type='chat'><body>self</body></message>")
        .await;
    let got1 = a1.drain();
    assert_eq!(got1.len(), 1);
    assert!(got1[0].get_child("received", NS).is_none());
    assert!(a2.drain().is_empty());
}

#[tokio::test]
async fn errors_answering_copied_messages_are_copied() {
    let Setup {
        mut a1,
        mut a2,
        mut a3,
        mut bob,
    } = setup().await;
    // alice/3 sends, the copies go out; bob answers with an error to alice/3.
    a3.send("<message to='bob@example.org/b' type='chat' id='q1'><body>?</body></message>")
        .await;
    a1.drain();
    a2.drain();
    bob.drain();
    bob.send("<message to='alice@example.org/3' type='error' id='q1'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    assert_eq!(a3.drain().len(), 1);
    let got = a1.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        carbon(&got[0], "received", "alice@example.org/1").attr("type"),
        Some("error")
    );
    assert_eq!(a2.drain().len(), 1);
    // An error with an id nobody copied is not copied.
    bob.send("<message to='alice@example.org/3' type='error' id='zz'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    assert_eq!(a3.drain().len(), 1);
    assert!(a1.drain().is_empty());

    // bob sends to alice/3, copies go out; alice/3 answers with an error: sent carbon.
    bob.send("<message to='alice@example.org/3' type='chat' id='q2'><body>!</body></message>")
        .await;
    a3.drain();
    a1.drain();
    a2.drain();
    a3.send("<message to='bob@example.org/b' type='error' id='q2'><error type='cancel'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    let got = a1.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        carbon(&got[0], "sent", "alice@example.org/1").attr("type"),
        Some("error")
    );
}

#[tokio::test]
async fn forged_carbons_are_refused() {
    let Setup {
        mut a1,
        mut a2,
        mut a3,
        mut bob,
    } = setup().await;
    // bob pretends to be alice's server (the attack of §7's example).
    bob.send("<message to='alice@example.org' type='chat' id='f1'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='carol@example.org/c' to='alice@example.org/1' type='chat'><body>forged</body></message></forwarded></received></message>")
        .await;
    for c in [&mut a1, &mut a2, &mut a3] {
        assert!(c.drain().is_empty(), "forged carbon delivered");
    }
    let got = bob.drain();
    assert_eq!(reply(&got, "f1").attr("type"), Some("error"));
    assert_eq!(
        condition(reply(&got, "f1")),
        Some(StanzaErrorCondition::NotAcceptable)
    );
    // One of alice's own resources cannot fake a carbon for another either.
    a3.send("<message to='alice@example.org/1' type='chat' id='f2'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@example.org/2' to='bob@example.org' type='chat'><body>forged</body></message></forwarded></sent></message>")
        .await;
    assert!(a1.drain().is_empty());
    assert!(a2.drain().is_empty());
    assert_eq!(
        condition(reply(&a3.drain(), "f2")),
        Some(StanzaErrorCondition::NotAcceptable)
    );
}

#[tokio::test]
async fn forged_carbon_from_elsewhere_is_dropped_before_delivery() {
    // What a module or (later) another server routes: not from a local client, so only the
    // delivery filter stands between it and alice.
    let Setup { mut a1, mut a2, .. } = setup().await;
    let server = a1.server.clone();
    let forged = rookery_xml::parse_element(
        "<message xmlns='jabber:client' from='mallory@example.org/m' to='alice@example.org/1' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='carol@example.org/c' type='chat'><body>forged</body></message></forwarded></received></message>",
    )
    .expect("xml");
    server.route(forged).await;
    assert!(a1.drain().is_empty());
    assert!(a2.drain().is_empty());
}

#[tokio::test]
async fn undeliverable_message_copied_to_enabled_unavailable_resources() {
    let s = server().await;
    // Bound and carbon-enabled, but no available presence: RFC 6121 delivers to nobody.
    let mut a = Client::bind(&s, "alice@example.org/quiet").await;
    enable(&mut a).await;
    a.drain();
    let bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<message to='alice@example.org' type='chat' id='u1'><body>later</body></message>")
        .await;
    let got = a.drain();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        body(carbon(&got[0], "received", "alice@example.org/quiet")),
        "later"
    );
    // And it was still stored offline.
    let stored = s
        .storage()
        .offline
        .peek_offline(D, "alice", 10)
        .await
        .expect("peek");
    assert_eq!(stored.len(), 1);
}
