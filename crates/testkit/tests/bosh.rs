//! BOSH (XEP-0124, XEP-0206) end to end over real HTTPS, with raw requests: SCRAM, the
//! stream restart, binding, messages with a TCP client, stream management resumed on TCP
//! after the BOSH session went inactive; terminate, unknown sids, the rid window, too
//! many requests, polling too fast, bad requests, the session limits; CORS and discovery.

use base64::Engine as _;
use rookery_testkit::bosh::{attr, body, creation_body, terminate_condition, BoshClient, Endpoint};
use rookery_testkit::scram::{Hash, ScramClient};
use rookery_testkit::{RawClient, TestServer, DOMAIN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let to = text[from..]
        .find(end)
        .map(|i| from + i)
        .unwrap_or(text.len());
    &text[from..to]
}

/// SCRAM-SHA-256 in BOSH requests, then the restart; returns the new features.
async fn scram_login(c: &mut BoshClient, user: &str, password: &str) -> String {
    let mut scram = ScramClient::new(Hash::Sha256, user, password, None);
    let got = c
        .send(&format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(scram.client_first())
        ))
        .await;
    let got = c.read_until_after(got, "</challenge>").await;
    let server_first = B64
        .decode(between(&got, "xmpp-sasl\">", "</challenge>"))
        .expect("challenge base64");
    let client_final = scram.client_final(std::str::from_utf8(&server_first).expect("utf8"));
    let got = c
        .send(&format!(
            "<response xmlns='{SASL}'>{}</response>",
            B64.encode(client_final)
        ))
        .await;
    let got = c.read_until_after(got, "</success>").await;
    let server_final = B64
        .decode(between(&got, "xmpp-sasl\">", "</success>"))
        .expect("success base64");
    assert!(scram.verify_server_final(std::str::from_utf8(&server_final).expect("utf8")));
    c.restart().await
}

async fn bind(c: &mut BoshClient, resource: &str) -> String {
    let got = c
        .send(&format!(
            "<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
    let got = c.read_until_after(got, "</jid>").await;
    between(&got, "<jid>", "</jid>").to_owned()
}

async fn tcp_user(t: &TestServer, user: &str, password: &str, resource: &str) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&rustls::version::TLS13])).await;
    c.open_stream().await;
    c.login_plain(user, password, resource).await;
    c
}

#[tokio::test]
async fn bosh_session_logs_in_chats_with_tcp_and_resumes_on_tcp() {
    let t = TestServer::start("[bosh]\ninactivity_secs = 2\n").await;
    t.add_user("alice", "wonderland").await;
    t.add_user("bob", "builder").await;

    let (mut alice, created) = BoshClient::connect(&t).await;
    // XEP-0124 §7.2, XEP-0206 §3: the terms and the stream's features.
    for (name, value) in [
        ("wait", "5"),
        ("requests", "2"),
        ("hold", "1"),
        ("inactivity", "2"),
        ("polling", "2"),
        ("maxpause", "120"),
        ("ver", "1.6"),
        ("from", DOMAIN),
        ("xmpp:version", "1.0"),
        ("xmpp:restartlogic", "true"),
    ] {
        assert_eq!(
            attr(&created, name).as_deref(),
            Some(value),
            "{name}: {created}"
        );
    }
    assert!(
        attr(&created, "authid").is_some_and(|a| !a.is_empty()),
        "{created}"
    );
    assert!(created.contains("<stream:features"), "{created}");
    assert!(!created.contains("starttls"), "{created}");
    assert!(created.contains(">SCRAM-SHA-256<"), "{created}");
    // A session spans many connections: nothing to bind SCRAM to.
    assert!(!created.contains("-PLUS<"), "{created}");

    let features = scram_login(&mut alice, "alice", "wonderland").await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    assert_eq!(bind(&mut alice, "web").await, format!("alice@{DOMAIN}/web"));
    let got = alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let got = alice.read_until_after(got, "<enabled").await;
    let id = between(&got, "id=\"", "\"").to_owned();
    assert!(!id.is_empty(), "{got}");

    let mut bob = tcp_user(&t, "bob", "builder", "desk").await;
    alice
        .send("<message xmlns='jabber:client' type='chat' to='bob@localhost/desk' id='hi'><body>hello-bob</body></message>")
        .await;
    bob.read_until("hello-bob</body>").await;
    for n in 1..=2 {
        bob.send(&format!(
            "<message type='chat' to='alice@localhost/web' id='m{n}'><body>m{n}</body></message>"
        ))
        .await;
    }
    let got = alice.read_until("m2</body>").await;
    // Every stanza in a body declares jabber:client (XEP-0206 §4).
    assert!(got.contains("<message xmlns=\"jabber:client\""), "{got}");
    alice.send("<a xmlns='urn:xmpp:sm:3' h='2'/>").await;

    // The client goes away: after `inactivity` seconds with no request the session ends
    // like a dropped connection, and stream management keeps it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = alice.request("", "").await;
    assert_eq!(
        terminate_condition(&late).as_deref(),
        Some("item-not-found"),
        "{late}"
    );
    bob.send("<message type='chat' to='alice@localhost/web' id='m3'><body>m3</body></message>")
        .await;

    // Resumed on TCP: the same session, whatever the transport.
    let mut tcp =
        RawClient::direct_tls(t.direct_tls, t.client_tls(&[&rustls::version::TLS13])).await;
    tcp.open_stream().await;
    tcp.auth_plain("alice", "wonderland").await;
    tcp.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='2'/>"
    ))
    .await;
    let got = tcp.read_until("m3</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    assert!(!got.contains(">m2</body>"), "m2 was acknowledged: {got}");
    tcp.send("<message type='chat' to='bob@localhost/desk' id='back'><body>back</body></message>")
        .await;
    bob.read_until("back</body>").await;
    t.stop().await;
}

#[tokio::test]
async fn terminate_ends_the_session_and_unknown_sids_are_not_found() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    let (mut c, _) = BoshClient::connect(&t).await;
    scram_login(&mut c, "alice", "wonderland").await;
    bind(&mut c, "web").await;
    assert_eq!(t.server.sessions().count(), 1);
    let got = c
        .request(
            "type='terminate'",
            "<presence xmlns='jabber:client' type='unavailable'/>",
        )
        .await;
    assert_eq!(terminate_condition(&got).as_deref(), Some(""), "{got}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.server.sessions().count(), 0);
    let got = c.request("", "").await;
    assert_eq!(
        terminate_condition(&got).as_deref(),
        Some("item-not-found"),
        "{got}"
    );
    // A sid nobody has.
    let r = Endpoint::of(&t).post(&body(5, "nosuchsid", "", "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        terminate_condition(&r.body).as_deref(),
        Some("item-not-found")
    );
    t.stop().await;
}

#[tokio::test]
async fn the_rid_window_too_many_requests_and_polling() {
    let t = TestServer::start("").await;
    let e = Endpoint::of(&t);

    // A rid beyond the window (`requests` = 2 after the last one) ends the session.
    let (mut c, _) = BoshClient::create(e.clone(), "wait='5' hold='1'").await;
    c.rid += 2;
    let got = c.request("", "").await;
    assert_eq!(
        terminate_condition(&got).as_deref(),
        Some("item-not-found"),
        "{got}"
    );

    // A repeated rid gets the same response again.
    let (mut c, first) = BoshClient::create(e.clone(), "wait='5' hold='1'").await;
    let repeat = e.post(&body(c.rid, &c.sid, "", "")).await;
    assert_eq!(repeat.body, first.body);

    // Three unanswered requests where two are allowed: one held, one ahead of a gap, and
    // the one that fills it.
    let r1 = c.next_body("", "");
    let r2 = c.next_body("", "");
    let r3 = c.next_body("", "");
    let held = tokio::spawn({
        let e = e.clone();
        async move { e.post(&r1).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ahead = tokio::spawn({
        let e = e.clone();
        async move { e.post(&r3).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = e.post(&r2).await;
    assert_eq!(
        terminate_condition(&third.body).as_deref(),
        Some("policy-violation"),
        "{third:?}"
    );
    for r in [held.await.expect("task"), ahead.await.expect("task")] {
        assert_eq!(
            terminate_condition(&r.body).as_deref(),
            Some("policy-violation")
        );
    }

    // hold=0 polls sooner than `polling` (2 s) after an empty exchange.
    let (mut c, created) = BoshClient::create(e.clone(), "wait='5' hold='0'").await;
    assert_eq!(attr(&created.body, "hold").as_deref(), Some("0"));
    assert_eq!(attr(&created.body, "requests").as_deref(), Some("1"));
    let got = c.request("", "").await;
    assert_eq!(terminate_condition(&got), None, "{got}");
    let got = c.request("", "").await;
    assert_eq!(
        terminate_condition(&got).as_deref(),
        Some("policy-violation"),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_held_request_is_answered_after_wait_and_hold_pairs_requests() {
    let t = TestServer::start("").await;
    let e = Endpoint::of(&t);
    let (mut c, _) = BoshClient::create(e.clone(), "wait='1' hold='1'").await;
    let started = tokio::time::Instant::now();
    let got = c.request("", "").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(terminate_condition(&got), None, "{got}");
    // A held request is answered (empty) when the next one comes.
    let r1 = c.next_body("", "");
    let r2 = c.next_body("", "");
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.post(&r1).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let second = tokio::spawn({
        let e = e.clone();
        async move { e.post(&r2).await }
    });
    let first = first.await.expect("task");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "answered at once"
    );
    assert_eq!(terminate_condition(&first.body), None, "{first:?}");
    assert_eq!(second.await.expect("task").status, 200);
    t.stop().await;
}

#[tokio::test]
async fn bad_requests_limits_cors_and_discovery() {
    let t =
        TestServer::start("[bosh]\nsessions_per_ip = 2\n[limits]\nmax_stanza_bytes = 4096\n").await;
    let e = Endpoint::of(&t);
    // Not BOSH at all: HTTP 400 (XEP-0124 §17.1).
    assert_eq!(e.post("hello").await.status, 400);
    assert_eq!(e.post("<html/>").await.status, 400);
    // BOSH with bad attributes: bad-request (§17.2).
    let r = e
        .post(&format!(
            "<body rid='x' xmlns='{}'/>",
            rookery_testkit::bosh::NS_HTTPBIND
        ))
        .await;
    assert_eq!(
        terminate_condition(&r.body).as_deref(),
        Some("bad-request"),
        "{r:?}"
    );
    // A domain not served here.
    let r = e
        .post(&creation_body(1, "").replace("to='localhost'", "to='example.org'"))
        .await;
    assert_eq!(
        terminate_condition(&r.body).as_deref(),
        Some("host-unknown"),
        "{r:?}"
    );
    // A body larger than a stanza and the wrapper.
    let big = format!(
        "<body rid='1' sid='x' xmlns='{}'>{}</body>",
        rookery_testkit::bosh::NS_HTTPBIND,
        "<a xmlns='x'/>".repeat(1000)
    );
    assert_eq!(e.post(&big).await.status, 413);
    // Sessions per address.
    let (_a, _) = BoshClient::create(e.clone(), "wait='5'").await;
    let (_b, _) = BoshClient::create(e.clone(), "wait='5'").await;
    let r = e.post(&creation_body(77, "")).await;
    assert_eq!(
        terminate_condition(&r.body).as_deref(),
        Some("policy-violation"),
        "{r:?}"
    );
    // GET is not BOSH; a CORS preflight is answered.
    let r = e
        .raw("GET /http-bind HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 405, "{r:?}");
    let r = e
        .raw("OPTIONS /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: https://x.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.head.contains("access-control-allow-origin: *"), "{r:?}");
    assert!(
        r.head
            .contains("access-control-allow-methods: get, post, options"),
        "{r:?}"
    );
    let r = e
        .raw(&format!(
            "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: https://x.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            creation_body(9, "").len(),
            creation_body(9, "")
        ))
        .await;
    assert!(r.head.contains("access-control-allow-origin: *"), "{r:?}");
    // In the clear while TLS is required: no session.
    let mut tcp = tokio::net::TcpStream::connect(t.http)
        .await
        .expect("connect");
    let b = creation_body(11, "");
    tcp.write_all(
        format!(
            "POST /http-bind HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // XEP-0156: listed beside WebSocket.
    let r = e
        .raw("GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        r.body.contains(
            "<Link rel=\"urn:xmpp:alt-connections:xbosh\" href=\"https://localhost/http-bind\"/>"
        ),
        "{r:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn shutdown_terminates_held_requests_with_system_shutdown() {
    let t = TestServer::start("").await;
    let e = Endpoint::of(&t);
    let (mut c, _) = BoshClient::create(e.clone(), "wait='5' hold='1'").await;
    let r = c.next_body("", "");
    let held = tokio::spawn({
        let e = e.clone();
        async move { e.post(&r).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.stop().await;
    let r = held.await.expect("task");
    assert_eq!(
        terminate_condition(&r.body).as_deref(),
        Some("system-shutdown"),
        "{r:?}"
    );
    assert!(r.body.contains("<system-shutdown"), "{r:?}");
}
