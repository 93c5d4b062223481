//! XEP-0357 Push Notifications through the real router: carol's client `carol@example.org/app`
//! plays the app server's push service, alice enables push, bob writes to her.

mod common;

use common::*;
use rookery_core::events::HeldMessage;
use rookery_core::Server;
use rookery_stanza::StanzaErrorCondition;
use rookery_xml::Element;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DATA: &str = "jabber:x:data";
const SERVICE: &str = "carol@example.org/app";

fn enable_xml(id: &str, node: &str, form: &str) -> String {
    format!("<iq type='set' id='{id}'><enable xmlns='urn:xmpp:push:0' jid='{SERVICE}' node='{node}'>{form}</enable></iq>")
}

const OPTIONS: &str = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cr3t</value></field></x>";

async fn stored_keys(s: &Server, user: &str) -> Vec<String> {
    s.storage()
        .user_data
        .data_keys(D, user, "push")
        .await
        .expect("keys")
}

/// alice enables push to carol's app (node `n1`, with publish options) and disconnects.
async fn enabled(s: &Arc<Server>) {
    let mut alice = Client::online(s, "alice@example.org/phone").await;
    let r = alice.ask(&enable_xml("e1", "n1", OPTIONS), "e1").await;
    assert_result(&r);
    alice.close().await;
}

/// The summary form of a notification as (var, value) pairs, after checking its envelope.
fn summary(iq: &Element, node: &str) -> Vec<(String, String)> {
    assert_eq!(iq.name(), "iq", "{iq:?}");
    assert_eq!(iq.attr("type"), Some("set"));
    assert_eq!(iq.attr("from"), Some("alice@example.org"));
    assert_eq!(iq.attr("to"), Some(SERVICE));
    let pubsub = iq.get_child("pubsub", PUBSUB).expect("pubsub");
    let publish = pubsub.get_child("publish", PUBSUB).expect("publish");
    assert_eq!(publish.attr("node"), Some(node));
    let form = publish
        .get_child("item", PUBSUB)
        .and_then(|i| i.get_child("notification", NS))
        .and_then(|n| n.get_child("x", DATA))
        .expect("summary form");
    assert_eq!(form.attr("type"), Some("submit"));
    form.children()
        .map(|f| {
            (
                f.attr("var").unwrap_or_default().to_owned(),
                f.get_child("value", DATA)
                    .map(|v| v.text())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], var: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(v, _)| v == var)
        .map(|(_, value)| value.as_str())
}

async fn answer(service: &Client, iq: &Element, error: Option<&str>) {
    let id = iq.attr("id").expect("id");
    let xml = match error {
        None => format!("<iq type='result' id='{id}' to='alice@example.org'/>"),
        Some(e) => format!("<iq type='error' id='{id}' to='alice@example.org'>{e}</iq>"),
    };
    service.send(&xml).await;
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn enable_disable_validation_and_storage() {
    let s = server_with("[push]\nmax_registrations = 2\n", "").await;
    let mut alice = Client::online(&s, "alice@example.org/phone").await;
    let bad = [
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' node='n'/></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='@@bad' node='n'/></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='push.example'/></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x></enable></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='get' id='b1'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'/></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='set' id='b1'><other xmlns='urn:xmpp:push:0'/></iq>", StanzaErrorCondition::BadRequest),
        ("<iq type='set' id='b1' to='bob@example.org'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'/></iq>", StanzaErrorCondition::Forbidden),
        // Unreachable without federation or a local PubSub service.
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='push.example' node='n'/></iq>", StanzaErrorCondition::RemoteServerNotFound),
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='example.org' node='n'/></iq>", StanzaErrorCondition::ServiceUnavailable),
        ("<iq type='set' id='b1'><enable xmlns='urn:xmpp:push:0' jid='carol@example.org' node='n'/></iq>", StanzaErrorCondition::ServiceUnavailable),
    ];
    for (xml, cond) in bad {
        let r = alice.ask(xml, "b1").await;
        assert_eq!(condition(&r), Some(cond), "{xml}");
    }
    assert!(stored_keys(&s, "alice").await.is_empty());

    assert_result(&alice.ask(&enable_xml("e1", "n1", ""), "e1").await);
    // The same JID and node again: the options are replaced, not a second registration.
    assert_result(&alice.ask(&enable_xml("e2", "n1", OPTIONS), "e2").await);
    assert_eq!(stored_keys(&s, "alice").await, [format!("{SERVICE}\nn1")]);
    let doc = s
        .storage()
        .user_data
        .get_data(D, "alice", "push", &format!("{SERVICE}\nn1"))
        .await
        .expect("read")
        .expect("stored");
    assert!(doc.contains("s3cr3t"), "{doc}");
    assert_result(&alice.ask(&enable_xml("e3", "n2", ""), "e3").await);
    let r = alice.ask(&enable_xml("e4", "n3", ""), "e4").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::PolicyViolation));
    let big = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='k'><value>{}</value></field></x>",
        "a".repeat(5000)
    );
    let r = alice.ask(&enable_xml("e5", "n1", &big), "e5").await;
    assert_eq!(condition(&r), Some(StanzaErrorCondition::NotAcceptable));

    // Disable one node, then the whole JID; disabling again is not an error.
    let r = alice
        .ask(&format!("<iq type='set' id='d1'><disable xmlns='urn:xmpp:push:0' jid='{SERVICE}' node='n2'/></iq>"), "d1")
        .await;
    assert_result(&r);
    assert_eq!(stored_keys(&s, "alice").await, [format!("{SERVICE}\nn1")]);
    assert_result(&alice.ask(&enable_xml("e6", "n3", ""), "e6").await);
    let r = alice
        .ask(
            &format!(
                "<iq type='set' id='d2'><disable xmlns='urn:xmpp:push:0' jid='{SERVICE}'/></iq>"
            ),
            "d2",
        )
        .await;
    assert_result(&r);
    assert!(stored_keys(&s, "alice").await.is_empty());
    let r = alice
        .ask(
            &format!(
                "<iq type='set' id='d3'><disable xmlns='urn:xmpp:push:0' jid='{SERVICE}'/></iq>"
            ),
            "d3",
        )
        .await;
    assert_result(&r);

    // Advertised on the account's JID, not the server's.
    let r = alice
        .ask("<iq type='get' id='i1' to='alice@example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "i1")
        .await;
    assert!(r.to_string().contains(NS), "{r:?}");
    let r = alice
        .ask("<iq type='get' id='i2' to='example.org'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "i2")
        .await;
    assert_result(&r);
    assert!(!r.to_string().contains(NS), "{r:?}");
}

#[tokio::test]
async fn offline_message_notifies_with_count_and_sender_and_no_body() {
    let s = server().await;
    let mut svc = Client::online(&s, SERVICE).await;
    enabled(&s).await;
    svc.drain();
    let bob = Client::online(&s, "bob@example.org/b").await;

    bob.send("<message to='alice@example.org' type='chat'><body>secret words</body></message>")
        .await;
    let got = svc.drain_at_least(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let f = summary(&got[0], "n1");
    assert_eq!(field(&f, "FORM_TYPE"), Some("urn:xmpp:push:summary"));
    assert_eq!(field(&f, "message-count"), Some("1"));
    assert_eq!(field(&f, "last-message-sender"), Some("bob@example.org/b"));
    assert_eq!(
        field(&f, "last-message-body"),
        None,
        "no body unless configured"
    );
    assert!(!got[0].to_string().contains("secret words"));
    // The stored publish options follow the notification.
    let options = got[0]
        .get_child("pubsub", PUBSUB)
        .and_then(|p| p.get_child("publish-options", PUBSUB))
        .expect("publish-options");
    assert!(options.to_string().contains("s3cr3t"));
    answer(&svc, &got[0], None).await;
    settle().await;

    // The message was still stored offline.
    assert_eq!(
        s.storage()
            .offline
            .count_offline(D, "alice")
            .await
            .expect("count"),
        1
    );

    // A chat state alone wakes nobody; the next real message counts 2.
    bob.send("<message to='alice@example.org' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    settle().await;
    assert!(svc.drain().is_empty());
    bob.send("<message to='alice@example.org/phone' type='chat'><body>two</body></message>")
        .await;
    let got = svc.drain_at_least(1).await;
    assert_eq!(field(&summary(&got[0], "n1"), "message-count"), Some("2"));
    answer(&svc, &got[0], None).await;
    settle().await;

    // alice connects: the count starts again.
    let alice = Client::bind(&s, "alice@example.org/desk").await;
    alice.close().await;
    bob.send("<message to='alice@example.org' type='chat'><body>three</body></message>")
        .await;
    let got = svc.drain_at_least(1).await;
    assert_eq!(field(&summary(&got[0], "n1"), "message-count"), Some("1"));
}

#[tokio::test]
async fn body_included_when_configured() {
    let s = server_with("[push]\ninclude_body = true\n", "").await;
    let mut svc = Client::online(&s, SERVICE).await;
    enabled(&s).await;
    svc.drain();
    let bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<message to='alice@example.org' type='chat'><body>hello there</body></message>")
        .await;
    let got = svc.drain_at_least(1).await;
    assert_eq!(
        field(&summary(&got[0], "n1"), "last-message-body"),
        Some("hello there")
    );
}

#[tokio::test]
async fn a_flood_is_coalesced_one_notification_in_flight() {
    let s = server().await;
    let mut svc = Client::online(&s, SERVICE).await;
    enabled(&s).await;
    svc.drain();
    let bob = Client::online(&s, "bob@example.org/b").await;
    let msg = |i: usize| {
        format!("<message to='alice@example.org' type='chat'><body>m{i}</body></message>")
    };
    bob.send(&msg(0)).await;
    settle().await;
    // The first is in flight and unanswered: the next 49 only count.
    for i in 1..50 {
        bob.send(&msg(i)).await;
    }
    settle().await;
    let first = svc.drain();
    assert_eq!(
        first.len(),
        1,
        "one notification while unanswered: {first:?}"
    );
    assert_eq!(field(&summary(&first[0], "n1"), "message-count"), Some("1"));
    answer(&svc, &first[0], None).await;
    let second = svc.drain_at_least(1).await;
    assert_eq!(second.len(), 1, "the rest as one: {second:?}");
    assert_eq!(
        field(&summary(&second[0], "n1"), "message-count"),
        Some("50")
    );
    answer(&svc, &second[0], None).await;
    settle().await;
    assert!(svc.drain().is_empty(), "nothing more");
}

#[tokio::test]
async fn an_error_answer_disables_a_timeout_keeps() {
    let s = server_with("[push]\nrequest_timeout_secs = 1\n", "").await;
    let mut svc = Client::online(&s, SERVICE).await;
    enabled(&s).await;
    svc.drain();
    let bob = Client::online(&s, "bob@example.org/b").await;
    let send = || bob.send("<message to='alice@example.org' type='chat'><body>x</body></message>");

    // No answer: kept.
    send().await;
    assert_eq!(svc.drain_at_least(1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        stored_keys(&s, "alice").await.len(),
        1,
        "a timeout keeps it"
    );

    // A temporary error (type wait): kept.
    send().await;
    let got = svc.drain_at_least(1).await;
    answer(&svc, &got[0], Some("<error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")).await;
    settle().await;
    assert_eq!(
        stored_keys(&s, "alice").await.len(),
        1,
        "a wait error keeps it"
    );

    // item-not-found: disabled, and nothing is sent any more.
    send().await;
    let got = svc.drain_at_least(1).await;
    answer(&svc, &got[0], Some("<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>")).await;
    settle().await;
    assert!(
        stored_keys(&s, "alice").await.is_empty(),
        "an error disables it"
    );
    send().await;
    settle().await;
    assert!(svc.drain().is_empty());
}

#[tokio::test]
async fn service_offline_is_an_error_that_disables() {
    let s = server().await;
    enabled(&s).await;
    let bob = Client::online(&s, "bob@example.org/b").await;
    bob.send("<message to='alice@example.org' type='chat'><body>x</body></message>")
        .await;
    for _ in 0..100 {
        if stored_keys(&s, "alice").await.is_empty() {
            return;
        }
        settle().await;
    }
    panic!("the registration should be disabled: service-unavailable answered");
}

#[tokio::test]
async fn held_message_notifies_the_registrations_of_that_session() {
    let s = server().await;
    let mut svc = Client::online(&s, SERVICE).await;
    let mut phone = Client::online(&s, "alice@example.org/phone").await;
    let mut desk = Client::online(&s, "alice@example.org/desk").await;
    assert_result(&phone.ask(&enable_xml("e1", "phone-node", ""), "e1").await);
    assert_result(&desk.ask(&enable_xml("e2", "desk-node", ""), "e2").await);
    svc.drain();
    let host = s.host(D).expect("host").clone();
    let held = |xml: &str| -> rookery_stanza::SharedStanza {
        rookery_xml::parse_element(&add_client_ns(xml))
            .expect("xml")
            .into()
    };

    // Held for the phone's session: only the phone's registration is notified.
    host.hooks()
        .run(
            &s,
            HeldMessage {
                session: phone.handle.clone(),
                stanza: held("<message from='bob@example.org/b' to='alice@example.org/phone' type='chat'><body>wake up</body></message>"),
            },
        )
        .await;
    let got = svc.drain_at_least(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let f = summary(&got[0], "phone-node");
    assert_eq!(field(&f, "last-message-sender"), Some("bob@example.org/b"));
    assert_eq!(field(&f, "message-count"), Some("1"));
    answer(&svc, &got[0], None).await;

    // Not worth waking for: a chat state.
    host.hooks()
        .run(
            &s,
            HeldMessage {
                session: phone.handle.clone(),
                stanza: held("<message from='bob@example.org/b' to='alice@example.org/phone' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            },
        )
        .await;
    settle().await;
    assert!(svc.drain().is_empty());

    // Disabled from the other session: the phone's held messages notify nobody.
    let r = desk
        .ask(&format!("<iq type='set' id='d' ><disable xmlns='urn:xmpp:push:0' jid='{SERVICE}' node='phone-node'/></iq>"), "d")
        .await;
    assert_result(&r);
    host.hooks()
        .run(
            &s,
            HeldMessage {
                session: phone.handle.clone(),
                stanza: held("<message from='bob@example.org/b' to='alice@example.org/phone' type='chat'><body>again</body></message>"),
            },
        )
        .await;
    settle().await;
    assert!(svc.drain().is_empty());
    phone.drain();
}
