//! Stream management (XEP-0198) over real sockets: acknowledgements, resumption after a
//! dropped connection (no loss, no duplicate), take-over of a live connection, expiry into
//! offline storage, and the protocol errors.

use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;
use std::time::Duration;

async fn login(t: &TestServer, user: &str, resource: &str) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain(user, "pw", resource).await;
    c
}

/// Enables resumable stream management; returns the SM-ID.
async fn enable(c: &mut RawClient, extra: &str) -> String {
    c.send(&format!(
        "<enable xmlns='urn:xmpp:sm:3' resume='true'{extra}/>"
    ))
    .await;
    let got = c.read_until("<enabled").await;
    let got = if got.contains("/>") {
        got
    } else {
        format!("{got}{}", c.read_until("/>").await)
    };
    attr(&got, "enabled", "id").expect("an SM-ID")
}

/// The value of `name` on the first `<tag` in `text`.
fn attr(text: &str, tag: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}"))?;
    let rest = &text[start..];
    let end = rest.find('>')?;
    let el = &rest[..end];
    let at = el.find(&format!(" {name}="))? + name.len() + 3;
    let quote = el.as_bytes()[at - 1] as char;
    let value_end = el[at..].find(quote)? + at;
    Some(el[at..value_end].to_owned())
}

async fn send_chat(c: &mut RawClient, to: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn resume_after_a_dropped_connection_loses_and_repeats_nothing() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    let mut alice = login(&t, "alice", "phone").await;
    let id = enable(&mut alice, "").await;
    alice.send("<presence/>").await;
    let mut bob = login(&t, "bob", "pc").await;
    bob.ping("sync").await;

    for n in 1..=3 {
        send_chat(&mut bob, "alice@localhost/phone", &format!("m{n}")).await;
    }
    let got = alice.read_until("m3</body>").await;
    assert!(got.contains("<r xmlns='urn:xmpp:sm:3'/>"), "{got}");
    // Alice confirms her own presence and m1, then her network goes away.
    alice.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;
    alice.ping("p").await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 4..=5 {
        send_chat(&mut bob, "alice@localhost/phone", &format!("m{n}")).await;
    }
    bob.ping("sync2").await;

    let mut again = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    again.open_stream().await;
    let features = again.auth_plain("alice", "pw").await;
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='2'/>"
        ))
        .await;
    let got = again.read_until("m5</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    // Alice sent presence and one ping on the old stream: 2 handled.
    assert_eq!(attr(&got, "resumed", "h").as_deref(), Some("2"), "{got}");
    for n in 2..=5 {
        assert_eq!(count(&got, &format!(">m{n}</body>")), 1, "m{n} once: {got}");
    }
    assert_eq!(count(&got, ">m1</body>"), 0, "m1 was acknowledged: {got}");
    let order: Vec<_> = (2..=5)
        .map(|n| got.find(&format!(">m{n}</body>")).unwrap_or(0))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {got}");
    // The session kept its resource and availability: bob never saw it go.
    let (bob_saw, _) = bob.read_for(Duration::from_millis(200)).await;
    assert!(!bob_saw.contains("unavailable"), "{bob_saw}");
    // The resumed stream works both ways and keeps counting: 4 resent/held stanzas.
    again.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let got = again.read_until("<a ").await;
    assert_eq!(attr(&got, "a", "h").as_deref(), Some("2"), "{got}");
    again.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    again.ping("after").await;
    send_chat(&mut bob, "alice@localhost/phone", "m6").await;
    again.read_until("m6</body>").await;
    assert_eq!(t.server.sessions().count(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_live_connection_is_taken_over_by_the_resuming_one() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let mut old = login(&t, "alice", "phone").await;
    let id = enable(&mut old, "").await;
    let mut new = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    new.open_stream().await;
    new.auth_plain("alice", "pw").await;
    new.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let got = new.read_until("<resumed").await;
    assert!(got.contains("<resumed"), "{got}");
    let closed = old.read_to_end().await;
    assert!(closed.contains("<conflict"), "{closed}");
    new.ping("works").await;
    assert_eq!(t.server.sessions().count(), 1);
    t.stop().await;
}

#[tokio::test]
async fn unknown_expired_and_foreign_ids_are_item_not_found_and_binding_still_works() {
    let t = TestServer::start("[stream_management]\nresume_timeout_secs = 1\n").await;
    t.add_user("alice", "pw").await;
    t.add_user("mallory", "pw").await;
    t.add_user("bob", "pw").await;
    let mut alice = login(&t, "alice", "phone").await;
    let id = enable(&mut alice, "").await;
    alice.send("<presence/>").await;
    let mut bob = login(&t, "bob", "pc").await;
    send_chat(&mut bob, "alice@localhost/phone", "unacked").await;
    alice.read_until("unacked</body>").await;

    // Another account cannot take the session, even knowing its id.
    let mut m = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    m.open_stream().await;
    m.auth_plain("mallory", "pw").await;
    m.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let got = m.read_until("</failed>").await;
    assert!(got.contains("item-not-found"), "{got}");
    assert!(attr(&got, "failed", "h").is_none(), "{got}");
    // RFC: the client may bind normally after a failed resumption.
    m.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    let got = m.read_until("</iq>").await;
    assert!(got.contains("mallory@localhost/"), "{got}");

    // The connection drops and nobody resumes within the (1 s) timeout.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut late = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    late.open_stream().await;
    late.auth_plain("alice", "pw").await;
    late.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let got = late.read_until("</failed>").await;
    assert!(got.contains("item-not-found"), "{got}");
    // Alice had handled her presence: the server remembers h=1 for her.
    assert_eq!(attr(&got, "failed", "h").as_deref(), Some("1"), "{got}");
    // The session ended with the timeout.
    assert_eq!(t.server.sessions().count(), 2, "bob and mallory only");
    // The unacknowledged message went to offline storage: delivered once at next login.
    late.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    late.read_until("</iq>").await;
    late.send("<presence/>").await;
    let got = late.read_until("unacked</body>").await;
    assert!(got.contains("urn:xmpp:delay"), "{got}");
    let (more, _) = late.read_for(Duration::from_millis(300)).await;
    assert!(!more.contains("unacked</body>"), "once only: {more}");
    let _ = DOMAIN;
    t.stop().await;
}

#[tokio::test]
async fn unacked_messages_go_to_another_resource_when_the_stream_closes() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    let mut phone = login(&t, "alice", "phone").await;
    // Without resumption: the session ends with the stream.
    phone
        .send("<enable xmlns='urn:xmpp:sm:3'/><presence/>")
        .await;
    phone.read_until("<enabled").await;
    let mut laptop = login(&t, "alice", "laptop").await;
    laptop.send("<presence/>").await;
    laptop.ping("sync").await;
    let mut bob = login(&t, "bob", "pc").await;
    send_chat(&mut bob, "alice@localhost/phone", "lost-in-flight").await;
    phone.read_until("lost-in-flight</body>").await;
    // The phone closes its stream without acknowledging: the message goes to the laptop
    // (RFC 6121 §8.5.3.2.1 for a resource that is gone).
    phone.send("</stream:stream>").await;
    let got = laptop.read_until("lost-in-flight</body>").await;
    assert_eq!(count(&got, "lost-in-flight</body>"), 1, "{got}");
    let (more, _) = laptop.read_for(Duration::from_millis(300)).await;
    assert!(!more.contains("lost-in-flight"), "once only: {more}");
    t.stop().await;
}

#[tokio::test]
async fn protocol_errors() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.auth_plain("alice", "pw").await;
    // Before binding (and not resuming): unexpected-request.
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let got = c.read_until("</failed>").await;
    assert!(got.contains("unexpected-request"), "{got}");
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await;
    c.read_until("</iq>").await;
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let got = c.read_until("<enabled").await;
    assert!(
        !got.contains("resume="),
        "not resumable unless asked: {got}"
    );
    // Twice: unexpected-request.
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let got = c.read_until("</failed>").await;
    assert!(got.contains("unexpected-request"), "{got}");
    // Acknowledging more than was sent ends the stream (§6).
    c.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    let got = c.read_to_end().await;
    assert!(got.contains("<undefined-condition"), "{got}");
    assert!(got.contains("handled-count-too-high"), "{got}");
    assert!(got.contains("send-count=\"0\""), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn a_client_that_never_acks_is_cut_off_at_the_bound() {
    let t = TestServer::start("[stream_management]\nmax_unacked_stanzas = 5\n").await;
    t.add_user("alice", "pw").await;
    let mut c = login(&t, "alice", "r").await;
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    c.read_until("<enabled").await;
    for n in 0..10 {
        let _ = c
            .try_send(&format!(
                "<iq type='get' id='p{n}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
    }
    let got = c.read_to_end().await;
    assert!(got.contains("<policy-violation"), "{got}");
    t.stop().await;
}
