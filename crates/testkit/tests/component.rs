//! External components (XEP-0114) over a real socket: the header and handshake, the refusals
//! (unknown domain, wrong secret, a served or taken domain, foreign or missing addresses),
//! stanzas both ways between a component and a local user, a full queue, and what happens to
//! stanzas for a component that disconnects.

use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;
use sha1::{Digest, Sha1};
use std::time::Duration;

const GATEWAY: &str = "gw.localhost";
const SECRET: &str = "s3cret-of-the-gateway";

fn config(extra_limits: &str) -> String {
    format!(
        "[limits]\n{extra_limits}\n\
         [component.\"{GATEWAY}\"]\nsecret = '{SECRET}'\n\
         [component.\"{DOMAIN}\"]\nsecret = 'a host is not a component'\n\
         [[listener]]\nkind = 'component'\naddress = '127.0.0.1:0'\n"
    )
}

async fn start(extra_limits: &str) -> TestServer {
    let t = TestServer::start(&config(extra_limits)).await;
    t.add_user("alice", "pw").await;
    t
}

async fn login(t: &TestServer) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    c
}

fn header(to: &str) -> String {
    format!(
        "<stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>"
    )
}

fn handshake(id: &str, secret: &str) -> String {
    let digest = Sha1::digest(format!("{id}{secret}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("<handshake>{hex}</handshake>")
}

/// Opens a component stream for `domain`; returns the client and the server's header.
async fn open(t: &TestServer, domain: &str) -> (RawClient, String) {
    let mut c = RawClient::plain(t.component.expect("component listener")).await;
    c.send(&header(domain)).await;
    let got = c.read_until("xml:lang='en'>").await;
    (c, got)
}

fn stream_id(server_header: &str) -> String {
    let start = server_header.find("id='").expect("stream id") + 4;
    let len = server_header[start..].find('\'').expect("id end");
    server_header[start..start + len].to_owned()
}

/// A component attached under `domain` with `secret`.
async fn attach(t: &TestServer, domain: &str, secret: &str) -> RawClient {
    let (mut c, got) = open(t, domain).await;
    c.send(&handshake(&stream_id(&got), secret)).await;
    let got = c.read_until("<handshake/>").await;
    assert!(!got.contains("stream:error"), "{got}");
    c
}

/// Reads until the server ends the stream; returns everything.
async fn refused(c: &mut RawClient) -> String {
    let (got, closed) = c.read_for(Duration::from_secs(5)).await;
    assert!(closed, "the server closes the connection: {got}");
    got
}

#[tokio::test]
async fn a_component_handshakes_and_exchanges_stanzas_with_a_user() {
    let t = start("").await;
    let (mut gw, got) = open(&t, GATEWAY).await;
    // XEP-0114 §3: an id, the component's domain, no version and no features.
    assert!(
        got.contains("xmlns='jabber:component:accept'")
            && got.contains(&format!("from='{GATEWAY}'")),
        "{got}"
    );
    let stream_tag = &got[got.find("<stream:stream").expect("stream tag")..];
    assert!(
        !stream_tag.contains("version=") && !got.contains("features"),
        "{got}"
    );
    gw.send(&handshake(&stream_id(&got), SECRET)).await;
    gw.read_until("<handshake/>").await;

    let mut alice = login(&t).await;
    // A user's disco#info to the component's domain reaches the component.
    alice
        .send(&format!(
            "<iq type='get' id='info' to='{GATEWAY}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await;
    let got = gw.read_until("</iq>").await;
    assert!(
        got.contains("from=\"alice@localhost/r\"") && got.contains("id=\"info\""),
        "{got}"
    );
    assert!(
        !got.contains("jabber:client"),
        "stanzas take the stream's namespace: {got}"
    );
    // The component's answer reaches the user.
    gw.send(&format!(
        "<iq type='result' id='info' from='{GATEWAY}' to='alice@localhost/r'>\
         <query xmlns='http://jabber.org/protocol/disco#info'>\
         <identity category='gateway' type='irc' name='Gateway'/></query></iq>"
    ))
    .await;
    let got = alice.read_until("</iq>").await;
    assert!(
        got.contains("type=\"result\"") && got.contains("category=\"gateway\""),
        "{got}"
    );
    assert!(got.contains(&format!("from=\"{GATEWAY}\"")), "{got}");

    // Messages both ways, to and from a JID in the component's domain.
    alice
        .send(&format!(
            "<message type='chat' id='m1' to='bot@{GATEWAY}'><body>hello bot</body></message>"
        ))
        .await;
    let got = gw.read_until("</message>").await;
    assert!(
        got.contains("hello bot") && got.contains("from=\"alice@localhost/r\""),
        "{got}"
    );
    gw.send(&format!(
        "<message type='chat' id='m2' from='bot@{GATEWAY}/x' to='alice@localhost/r'><body>hello alice</body></message>"
    ))
    .await;
    let got = alice.read_until("</message>").await;
    assert!(
        got.contains("hello alice") && got.contains(&format!("from=\"bot@{GATEWAY}/x\"")),
        "{got}"
    );

    // A second connection for an attached domain is refused; the first keeps it.
    let (mut second, got) = open(&t, GATEWAY).await;
    second.send(&handshake(&stream_id(&got), SECRET)).await;
    let got = refused(&mut second).await;
    assert!(got.contains("<conflict"), "{got}");
    alice
        .send(&format!(
            "<message type='chat' id='m3' to='bot@{GATEWAY}'><body>still there</body></message>"
        ))
        .await;
    let got = gw.read_until("</message>").await;
    assert!(got.contains("still there"), "{got}");

    // A graceful close is answered with ours, and the domain is free again.
    gw.send("</stream:stream>").await;
    let got = refused(&mut gw).await;
    assert!(got.contains("</stream:stream>"), "{got}");
    let mut again = attach(&t, GATEWAY, SECRET).await;
    again.send("</stream:stream>").await;
    refused(&mut again).await;
    t.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_an_unknown_domain_and_a_served_domain_are_refused() {
    let t = start("").await;
    let (mut c, got) = open(&t, GATEWAY).await;
    c.send(&handshake(&stream_id(&got), "not the secret")).await;
    let got = refused(&mut c).await;
    assert!(got.contains("<not-authorized"), "{got}");

    // Anything before the handshake.
    let (mut c, _) = open(&t, GATEWAY).await;
    c.send(&format!(
        "<message from='{GATEWAY}' to='alice@localhost'><body>x</body></message>"
    ))
    .await;
    let got = refused(&mut c).await;
    assert!(got.contains("<not-authorized"), "{got}");

    let (mut c, got) = open(&t, "unknown.localhost").await;
    let got = format!("{got}{}", refused(&mut c).await);
    assert!(got.contains("<host-unknown"), "{got}");

    // A virtual host cannot be taken by a component, even with its configured secret.
    let (mut c, got) = open(&t, DOMAIN).await;
    c.send(&handshake(&stream_id(&got), "a host is not a component"))
        .await;
    let got = refused(&mut c).await;
    assert!(got.contains("<conflict"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn a_component_sends_from_its_own_domain_with_both_addresses() {
    let t = start("").await;
    let mut gw = attach(&t, GATEWAY, SECRET).await;
    gw.send("<message from='alice@localhost' to='alice@localhost'><body>spoof</body></message>")
        .await;
    let got = refused(&mut gw).await;
    assert!(got.contains("<invalid-from"), "{got}");

    let mut gw = attach(&t, GATEWAY, SECRET).await;
    gw.send("<message to='alice@localhost'><body>who?</body></message>")
        .await;
    let got = refused(&mut gw).await;
    assert!(got.contains("<improper-addressing"), "{got}");

    let mut gw = attach(&t, GATEWAY, SECRET).await;
    gw.send(&format!(
        "<message from='{GATEWAY}'><body>to whom?</body></message>"
    ))
    .await;
    let got = refused(&mut gw).await;
    assert!(got.contains("<improper-addressing"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn stanzas_for_a_component_that_is_gone_come_back_as_errors() {
    // A small queue and no input rate in the way of the large messages that fill it.
    let t = start("session_send_queue = 64\nmax_bytes_per_second = 100000000").await;
    let gw = attach(&t, GATEWAY, SECRET).await;
    let mut alice = login(&t).await;
    // The component reads nothing: once the socket's buffers are full, the connection's
    // queue fills and further stanzas are refused with `resource-constraint`.
    let body = "x".repeat(60_000);
    let mut full = false;
    for batch in 0..100 {
        for i in 0..10 {
            alice
                .send(&format!(
                    "<message type='chat' id='b{batch}-{i}' to='bot@{GATEWAY}'><body>{body}</body></message>"
                ))
                .await;
        }
        let (got, _) = alice.read_for(Duration::from_millis(50)).await;
        if got.contains("resource-constraint") {
            full = true;
            break;
        }
    }
    assert!(full, "the component's queue filled up");
    // The component goes away: what was still queued for it comes back to its sender.
    drop(gw);
    let got = alice.read_until("the component is not connected").await;
    assert!(got.contains("remote-server-not-found"), "{got}");
    // Afterwards its domain has no route: the router's own answer, the same condition.
    let mut gone = false;
    for i in 0..50 {
        alice
            .send(&format!(
                "<message type='chat' id='after{i}' to='bot@{GATEWAY}'><body>anyone?</body></message>"
            ))
            .await;
        let (got, _) = alice.read_for(Duration::from_millis(100)).await;
        if got.contains(&format!("id=\"after{i}\"")) && got.contains("remote-server-not-found") {
            gone = true;
            break;
        }
    }
    assert!(gone, "a message after the disconnection is answered");
    t.stop().await;
}

#[tokio::test]
async fn a_component_listener_counts_its_own_connections() {
    let t = start("").await;
    // Two components configured: two connections plus four spare.
    let mut open_ones = Vec::new();
    for _ in 0..6 {
        open_ones.push(open(&t, GATEWAY).await.0);
    }
    let mut extra = RawClient::plain(t.component.expect("component listener")).await;
    let (got, closed) = extra.read_for(Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "closed at accept: {got}");
    // The clients' ports are not affected.
    login(&t).await;
    drop(open_ones);
    t.stop().await;
}
