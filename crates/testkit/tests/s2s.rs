//! Server-to-server streams over a real socket, from the side of a peer that speaks bytes:
//! the stream header's checks, the features before TLS, what is refused in the clear,
//! dialback verification requests answered from the dialback secret, the parser's limits,
//! and the bounces a local user gets for domains that cannot be reached.

use rookery_net::s2s::dialback::DialbackSecret;
use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;

const SECRET: &str = "a dialback secret for tests";

fn config(extra: &str) -> String {
    format!(
        "[limits]\nmax_stanza_bytes = 10000\n\
         [s2s]\ndialback_secret = '{SECRET}'\nconnect_timeout_secs = 2\n{extra}\n\
         [[listener]]\nkind = 's2s'\naddress = '127.0.0.1:0'\n"
    )
}

fn header(from: &str, to: &str, ns: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{to}' version='1.0'>"
    )
}

async fn peer(t: &TestServer) -> RawClient {
    RawClient::plain(t.s2s.expect("s2s listener")).await
}

#[tokio::test]
async fn features_in_the_clear_offer_required_starttls_and_bidi_only() {
    let t = TestServer::start(&config("")).await;
    let mut c = peer(&t).await;
    c.send(&header("peer.example", DOMAIN, "jabber:server"))
        .await;
    let got = c.read_until("</stream:features>").await;
    assert!(got.contains("xmlns:db='jabber:server:dialback'"), "{got}");
    assert!(
        got.contains("<starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>"),
        "{got}"
    );
    assert!(got.contains("urn:xmpp:features:bidi"), "{got}");
    assert!(
        !got.contains("urn:xmpp:features:dialback"),
        "no dialback before TLS: {got}"
    );
    assert!(!got.contains("EXTERNAL"), "{got}");
    // Dialback in the clear is a policy violation.
    c.send("<db:result from='peer.example' to='localhost'>abc</db:result>")
        .await;
    let end = c.read_to_end().await;
    assert!(end.contains("policy-violation"), "{end}");
    t.stop().await;
}

#[tokio::test]
async fn a_header_for_another_domain_or_namespace_is_refused() {
    let t = TestServer::start(&config("")).await;
    let mut c = peer(&t).await;
    c.send(&header(
        "peer.example",
        "elsewhere.example",
        "jabber:server",
    ))
    .await;
    let got = c.read_to_end().await;
    assert!(got.contains("host-unknown"), "{got}");

    let mut c = peer(&t).await;
    c.send(&header("peer.example", DOMAIN, "jabber:client"))
        .await;
    let got = c.read_to_end().await;
    assert!(got.contains("invalid-namespace"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn dialback_verify_requests_are_answered_from_the_secret() {
    let t = TestServer::start(&config("")).await;
    let key = DialbackSecret::new(SECRET.as_bytes()).key("peer.example", DOMAIN, "stream-1");
    let mut c = peer(&t).await;
    c.send(&header("peer.example", DOMAIN, "jabber:server"))
        .await;
    c.read_until("</stream:features>").await;
    c.send(&format!(
        "<db:verify from='peer.example' to='{DOMAIN}' id='stream-1'>{key}</db:verify>"
    ))
    .await;
    let got = c.read_until("/>").await;
    assert!(
        got.contains("type='valid'") && got.contains("id='stream-1'"),
        "{got}"
    );
    // The same key for another stream id, or another receiving domain, is not valid.
    c.send(&format!(
        "<db:verify from='peer.example' to='{DOMAIN}' id='stream-2'>{key}</db:verify>"
    ))
    .await;
    let got = c.read_until("/>").await;
    assert!(
        got.contains("id='stream-2'") && got.contains("type='invalid'"),
        "{got}"
    );
    c.send(&format!(
        "<db:verify from='other.example' to='{DOMAIN}' id='stream-1'>{key}</db:verify>"
    ))
    .await;
    let got = c.read_until("/>").await;
    assert!(
        got.contains("to='other.example'") && got.contains("type='invalid'"),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn an_oversized_element_ends_the_stream() {
    let t = TestServer::start(&config("")).await;
    let mut c = peer(&t).await;
    c.send(&header("peer.example", DOMAIN, "jabber:server"))
        .await;
    c.read_until("</stream:features>").await;
    let big = format!(
        "<db:verify from='a' to='b' id='c'>{}</db:verify>",
        "x".repeat(20_000)
    );
    let _ = c.try_send(&big).await;
    let got = c.read_to_end().await;
    assert!(got.contains("policy-violation"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn unreachable_domains_bounce_to_the_sender() {
    // A closed port for one domain; nothing at all for the other (a special-use name without
    // an override is not looked up).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let t = TestServer::start(&config(&format!(
        "[s2s.hosts]\n'down.example' = '127.0.0.1:{port}'\n"
    )))
    .await;
    t.add_user("alice", "pw").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    c.send("<message to='bob@nowhere.example' id='m1'><body>x</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    assert!(
        got.contains("id=\"m1\"") && got.contains("remote-server-not-found"),
        "{got}"
    );
    c.send("<message to='bob@down.example' id='m2'><body>y</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    assert!(
        got.contains("id=\"m2\"") && got.contains("remote-server-timeout"),
        "{got}"
    );
    // An error is never answered with an error.
    c.send("<message to='bob@down.example' type='error' id='m3'/>")
        .await;
    // Long enough for the link to fail again (a closed port fails at once).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c.ping("after").await;
    assert!(!c.received.contains("id=\"m3\""), "{}", c.received);
    t.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out_and_bounces() {
    // Accepts the connection and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let t = TestServer::start(&config(&format!(
        "negotiation_timeout_secs = 1\n[s2s.hosts]\n'silent.example' = '127.0.0.1:{port}'\n"
    )))
    .await;
    t.add_user("alice", "pw").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    let started = std::time::Instant::now();
    c.send("<message to='bob@silent.example' id='s1'><body>hello?</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    assert!(
        got.contains("id=\"s1\"") && got.contains("remote-server-timeout"),
        "{got}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    t.stop().await;
    holder.abort();
}

#[tokio::test]
async fn a_dialback_flood_on_one_stream_is_a_policy_violation() {
    // The claimed domain's server accepts and never answers: every verification waits.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let t = TestServer::start(&config(&format!(
        "max_pending_dialback = 3\n[s2s.hosts]\n'slow.example' = '127.0.0.1:{port}'\n"
    )))
    .await;
    let h = header("slow.example", DOMAIN, "jabber:server");
    let mut c =
        RawClient::s2s_starttls(t.s2s.expect("s2s listener"), t.client_tls(&[&TLS13]), &h).await;
    c.send(&h).await;
    let features = c.read_until("</stream:features>").await;
    assert!(
        features.contains("urn:xmpp:features:dialback"),
        "{features}"
    );
    for i in 0..4 {
        let _ = c
            .try_send(&format!(
                "<db:result from='slow.example' to='{DOMAIN}'>key{i}</db:result>"
            ))
            .await;
    }
    let end = c.read_to_end().await;
    assert!(end.contains("policy-violation"), "{end}");
    t.stop().await;
    holder.abort();
}
