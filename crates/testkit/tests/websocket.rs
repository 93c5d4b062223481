//! XMPP over WebSocket (RFC 7395) end to end, with an independent client (tokio-tungstenite):
//! SCRAM (and -PLUS with the wss connection's channel binding), binding, messages with a TCP
//! client, stream management resumed on another WebSocket and on TCP; the HTTP listener's
//! limits; XEP-0156 discovery.

use base64::Engine as _;
use rookery_testkit::scram::{Hash, ScramClient};
use rookery_testkit::ws::{http_status, open_frame, WsClient, WsOptions};
use rookery_testkit::{RawClient, TestServer, DOMAIN};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

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

/// SCRAM over the WebSocket, then the restart (a new `<open/>`); returns the features.
async fn scram_login(c: &mut WsClient, mechanism: &str, mut scram: ScramClient) -> String {
    c.send(&format!(
        "<auth xmlns='{SASL}' mechanism='{mechanism}'>{}</auth>",
        B64.encode(scram.client_first())
    ))
    .await;
    let got = c.read_until("</challenge>").await;
    let server_first = B64
        .decode(between(&got, "xmpp-sasl\">", "</challenge>"))
        .expect("challenge base64");
    let client_final = scram.client_final(std::str::from_utf8(&server_first).expect("utf8"));
    c.send(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        B64.encode(client_final)
    ))
    .await;
    let got = c.read_until("</success>").await;
    let server_final = B64
        .decode(between(&got, "xmpp-sasl\">", "</success>"))
        .expect("success base64");
    assert!(scram.verify_server_final(std::str::from_utf8(&server_final).expect("utf8")));
    c.open().await
}

async fn bind(c: &mut WsClient, resource: &str) -> String {
    c.send(&format!(
        "<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
    ))
    .await;
    let got = c.read_until("</jid>").await;
    between(&got, "<jid>", "</jid>").to_owned()
}

async fn chat(c: &mut WsClient, to: &str, body: &str) {
    c.send(&format!(
        "<message xmlns='jabber:client' type='chat' to='{to}' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

async fn tcp_user(t: &TestServer, user: &str, password: &str, resource: &str) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&rustls::version::TLS13])).await;
    c.open_stream().await;
    c.login_plain(user, password, resource).await;
    c
}

#[tokio::test]
async fn websocket_session_logs_in_chats_with_tcp_and_resumes_anywhere() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    t.add_user("bob", "builder").await;

    let mut alice = WsClient::connect(&t).await;
    let features = alice.open().await;
    let first = &alice.messages[0];
    assert!(
        first.starts_with("<open ") && first.contains("urn:ietf:params:xml:ns:xmpp-framing"),
        "{first}"
    );
    assert!(
        alice.messages[1].starts_with("<stream:features"),
        "one element per message: {:?}",
        alice.messages
    );
    assert!(
        !features.contains("starttls"),
        "no STARTTLS on WebSocket: {features}"
    );
    assert!(features.contains(">PLAIN<"), "wss is TLS: {features}");
    assert!(features.contains(">SCRAM-SHA-256-PLUS<"), "{features}");
    // SCRAM-SHA-256-PLUS bound to the wss connection (tls-exporter, RFC 9266).
    let cb = alice.tls_exporter.clone().expect("exporter");
    let features = scram_login(
        &mut alice,
        "SCRAM-SHA-256-PLUS",
        ScramClient::new(
            Hash::Sha256,
            "alice",
            "wonderland",
            Some(("tls-exporter", cb)),
        ),
    )
    .await;
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    assert_eq!(bind(&mut alice, "web").await, format!("alice@{DOMAIN}/web"));
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = alice.read_until("<enabled").await;
    let id = between(&enabled, "id=\"", "\"").to_owned();
    assert!(!id.is_empty(), "{enabled}");

    let mut bob = tcp_user(&t, "bob", "builder", "desk").await;
    chat(&mut alice, "bob@localhost/desk", "hello-bob").await;
    bob.read_until("hello-bob</body>").await;
    for n in 1..=3 {
        bob.send(&format!(
            "<message type='chat' to='alice@localhost/web' id='m{n}'><body>m{n}</body></message>"
        ))
        .await;
    }
    let got = alice.read_until("m3</body>").await;
    // Each stanza is a message of its own and declares its namespace.
    assert!(
        alice
            .messages
            .iter()
            .filter(|m| m.contains("<body>m"))
            .all(|m| m.starts_with("<message xmlns=\"jabber:client\"") && m.ends_with("</message>")),
        "{got}"
    );
    alice.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    alice.ping("before-drop").await;
    // The connection drops without <close/>: the session waits for resumption.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send("<message type='chat' to='alice@localhost/web' id='m4'><body>m4</body></message>")
        .await;
    bob.ping("sync").await;

    // Resumed on another WebSocket.
    let mut again = WsClient::connect(&t).await;
    again.open().await;
    scram_login(
        &mut again,
        "SCRAM-SHA-256",
        ScramClient::new(Hash::Sha256, "alice", "wonderland", None),
    )
    .await;
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='1'/>"
        ))
        .await;
    let got = again.read_until("m4</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    assert!(!got.contains(">m1</body>"), "m1 was acknowledged: {got}");
    for n in 2..=4 {
        assert_eq!(got.matches(&format!(">m{n}</body>")).count(), 1, "{got}");
    }
    // m1, m2, m3, the ping's answer and m4: five stanzas handled.
    again.send("<a xmlns='urn:xmpp:sm:3' h='5'/>").await;
    again.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    again.read_until("<a ").await;
    drop(again);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send("<message type='chat' to='alice@localhost/web' id='m5'><body>m5</body></message>")
        .await;
    bob.ping("sync2").await;

    // And on TCP: the same session, whatever the transport.
    let mut tcp =
        RawClient::direct_tls(t.direct_tls, t.client_tls(&[&rustls::version::TLS13])).await;
    tcp.open_stream().await;
    tcp.auth_plain("alice", "wonderland").await;
    tcp.send(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='5'/>"
    ))
    .await;
    let got = tcp.read_until("m5</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    assert!(!got.contains(">m4</body>"), "{got}");
    tcp.send("<message type='chat' to='bob@localhost/desk' id='back'><body>back</body></message>")
        .await;
    bob.read_until("back</body>").await;
    assert_eq!(t.server.sessions().count(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_graceful_close_and_pings() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    // A client's WebSocket ping is answered.
    c.send_raw(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("ping");
    use futures_util::StreamExt;
    let pong = tokio::time::timeout(rookery_testkit::TIMEOUT, c.inner().next())
        .await
        .expect("in time");
    assert!(
        matches!(&pong, Some(Ok(Message::Pong(d))) if d.as_ref() == b"hi"),
        "{pong:?}"
    );
    c.send("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
        .await;
    let rest = c.read_to_close().await;
    assert!(
        rest.contains("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
        "{rest}"
    );
    t.stop().await;
}

#[tokio::test]
async fn an_idle_websocket_is_pinged_and_stays_while_it_answers() {
    let t = TestServer::start("[limits]\nidle_timeout_secs = 1\n").await;
    t.add_user("alice", "wonderland").await;
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    scram_login(
        &mut c,
        "SCRAM-SHA-256",
        ScramClient::new(Hash::Sha256, "alice", "wonderland", None),
    )
    .await;
    bind(&mut c, "idle").await;
    // tungstenite answers the server's pings while we wait for one.
    use futures_util::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(5), c.inner().next())
        .await
        .expect("a ping after the idle time");
    assert!(matches!(m, Some(Ok(Message::Ping(_)))), "{m:?}");
    // The pong (sent by the next read) counts: the session is still there after a while.
    let _ = tokio::time::timeout(Duration::from_millis(2500), c.inner().next()).await;
    let _ = tokio::time::timeout(Duration::from_millis(1500), c.inner().next()).await;
    c.ping("alive").await;
    t.stop().await;
}

#[tokio::test]
async fn refusals_at_the_handshake() {
    let t = TestServer::start("[http]\ncors_origins = ['https://app.example']\n").await;
    let opts = |headers: Vec<(&'static str, String)>| WsOptions {
        headers,
        ..WsOptions::xmpp(&t)
    };
    // No `xmpp` subprotocol (RFC 7395 §3.2).
    let e = WsClient::try_connect(t.https, opts(vec![]))
        .await
        .err()
        .expect("refused");
    assert_eq!(http_status(&e), Some(400), "{e}");
    let e = WsClient::try_connect(
        t.https,
        opts(vec![("Sec-WebSocket-Protocol", "chat".into())]),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(http_status(&e), Some(400), "{e}");
    // An origin that is not allowed.
    let e = WsClient::try_connect(
        t.https,
        opts(vec![
            ("Sec-WebSocket-Protocol", "xmpp".into()),
            ("Origin", "https://evil.example".into()),
        ]),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(http_status(&e), Some(403), "{e}");
    // The allowed one, and none at all (not a browser).
    WsClient::try_connect(
        t.https,
        opts(vec![
            ("Sec-WebSocket-Protocol", "xmpp".into()),
            ("Origin", "https://app.example".into()),
        ]),
    )
    .await
    .expect("allowed origin");
    // Plain ws while TLS is required.
    let e = WsClient::try_connect(
        t.http,
        WsOptions {
            tls: None,
            ..WsOptions::xmpp(&t)
        },
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(http_status(&e), Some(403), "{e}");
    t.stop().await;
}

/// Sends an HTTP request over TLS and returns the response as text.
async fn https_request(t: &TestServer, request: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(t.https)
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(t.client_tls(&[&rustls::version::TLS13]));
    let name = rustls::pki_types::ServerName::try_from(DOMAIN.to_owned()).expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("tls");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(rookery_testkit::TIMEOUT, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn websocket_stream_errors_and_message_limits() {
    let t = TestServer::start("[limits]\nmax_stanza_bytes = 4096\n").await;
    // Text before <open/>: a stream error (with our <open/> before it, RFC 7395 §3.5).
    let mut c = WsClient::connect(&t).await;
    c.send("hello").await;
    let got = c.read_to_close().await;
    assert!(got.contains("<not-well-formed"), "{got}");
    assert!(c.messages[0].starts_with("<open "), "{:?}", c.messages);
    assert!(got.contains("<close xmlns="), "{got}");
    // A stanza before <open/>.
    let mut c = WsClient::connect(&t).await;
    c.send("<message xmlns='jabber:client'/>").await;
    assert!(c.read_to_close().await.contains("<not-well-formed"));
    // Two elements in one message.
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    c.send("<iq xmlns='jabber:client' type='get' id='1'/><iq xmlns='jabber:client' type='get' id='2'/>")
        .await;
    assert!(c.read_to_close().await.contains("<not-well-formed"));
    // A binary message.
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    c.send_raw(Message::binary(b"<open/>".to_vec()))
        .await
        .expect("send");
    assert!(c.read_to_close().await.contains("<not-well-formed"));
    // A message over limits.max_stanza_bytes: the WebSocket layer refuses it before it is
    // buffered whole; `policy-violation` as on TCP, then close 1009.
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    let big = format!(
        "<message xmlns='jabber:client'><body>{}</body></message>",
        "x".repeat(5000)
    );
    let _ = c.send_raw(Message::text(big)).await;
    let got = c.read_to_close().await;
    assert!(!got.contains("<message"), "{got}");
    assert!(got.contains("<policy-violation"), "{got}");
    // The server is fine.
    let mut c = WsClient::connect(&t).await;
    c.open().await;
    t.stop().await;
}

#[tokio::test]
async fn http_limits_body_size_slow_headers_and_connections_per_address() {
    let t = TestServer::start(
        "[limits]\nmax_connections_per_ip = 3\n\
         [http]\nmax_request_bytes = 100\nheader_timeout_secs = 1\n",
    )
    .await;
    // A body over the limit: 413, by its declared length.
    let r = https_request(
        &t,
        "POST /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // A request head over 16 KiB.
    let r = https_request(
        &t,
        &format!(
            "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "x".repeat(20_000)
        ),
    )
    .await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // Headers sent too slowly: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(t.http)
        .await
        .expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // An idle connection too.
    let mut idle = tokio::net::TcpStream::connect(t.http)
        .await
        .expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("idle connection closed in time")
        .unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 408"));
    // Connections per address are shared with the XMPP ports: two TCP streams and one
    // WebSocket fill the three slots, the next WebSocket is not even accepted.
    let mut a = RawClient::plain(t.c2s).await;
    a.open_stream().await;
    let mut b = RawClient::plain(t.c2s).await;
    b.open_stream().await;
    let mut w = WsClient::connect(&t).await;
    w.open().await;
    assert!(WsClient::try_connect(t.https, WsOptions::xmpp(&t))
        .await
        .is_err());
    // A forwarding header from a peer that is no trusted proxy changes nothing.
    let mut forged = WsOptions::xmpp(&t);
    forged
        .headers
        .push(("X-Forwarded-For", "198.51.100.9".to_owned()));
    assert!(WsClient::try_connect(t.https, forged).await.is_err());
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut w2 = WsClient::connect(&t).await;
    w2.open().await;
    t.stop().await;
}

#[tokio::test]
async fn a_plain_websocket_behind_a_trusted_proxy() {
    let t = TestServer::start(
        "[tls]\nrequire_starttls = false\n\
         [limits]\nmax_connections_per_ip = 1\n\
         [http]\ntrusted_proxies = ['127.0.0.1']\n",
    )
    .await;
    t.add_user("alice", "wonderland").await;
    let plain = |headers: Vec<(&'static str, String)>| {
        let mut h = vec![("Sec-WebSocket-Protocol", "xmpp".to_owned())];
        h.extend(headers);
        WsOptions {
            tls: None,
            path: "/xmpp-websocket",
            headers: h,
        }
    };
    // The proxy says the client used https: PLAIN is offered (the channel is confidential),
    // -PLUS is not (no channel binding to the client's TLS).
    let mut c = WsClient::try_connect(
        t.http,
        plain(vec![
            ("X-Forwarded-For", "198.51.100.7".into()),
            ("X-Forwarded-Proto", "https".into()),
        ]),
    )
    .await
    .expect("handshake");
    let features = c.open().await;
    assert!(features.contains(">PLAIN<"), "{features}");
    assert!(!features.contains("-PLUS<"), "{features}");
    scram_login(
        &mut c,
        "SCRAM-SHA-256",
        ScramClient::new(Hash::Sha256, "alice", "wonderland", None),
    )
    .await;
    bind(&mut c, "proxied").await;
    let peers: Vec<String> = t
        .server
        .sessions()
        .all()
        .iter()
        .map(|s| s.peer().map(|p| p.ip().to_string()).unwrap_or_default())
        .collect();
    assert_eq!(
        peers,
        ["198.51.100.7"],
        "the forwarded address is the session's"
    );
    // The per-address limit counts the forwarded address, not the proxy's.
    let e = WsClient::try_connect(
        t.http,
        plain(vec![("X-Forwarded-For", "198.51.100.7".into())]),
    )
    .await
    .err()
    .expect("over the limit");
    assert_eq!(http_status(&e), Some(503), "{e}");
    // Another client through the same proxy, over plain http: no PLAIN.
    let mut d = WsClient::try_connect(
        t.http,
        plain(vec![("X-Forwarded-For", "198.51.100.8".into())]),
    )
    .await
    .expect("another client");
    let features = d.open().await;
    assert!(!features.contains(">PLAIN<"), "{features}");
    assert!(features.contains(">SCRAM-SHA-256<"), "{features}");
    t.stop().await;
}

#[tokio::test]
async fn discovery_lists_the_websocket_endpoint() {
    let t = TestServer::start("[http]\npath_prefix = '/xmpp'\n").await;
    let r = https_request(
        &t,
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost:5443\r\nOrigin: https://x.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{r}"
    );
    assert!(r.contains("application/xrd+xml"), "{r}");
    assert!(
        r.contains("<Link rel=\"urn:xmpp:alt-connections:websocket\" href=\"wss://localhost:5443/xmpp/xmpp-websocket\"/>"),
        "{r}"
    );
    let r = https_request(
        &t,
        "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains(r#"{"href":"wss://localhost/xmpp/xmpp-websocket","rel":"urn:xmpp:alt-connections:websocket"}"#),
        "{r}"
    );
    // A domain this server does not serve.
    let r = https_request(
        &t,
        "GET /.well-known/host-meta HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // The endpoint moved under the prefix.
    let mut opts = WsOptions::xmpp(&t);
    opts.path = "/xmpp/xmpp-websocket";
    let mut c = WsClient::try_connect(t.https, opts)
        .await
        .expect("under the prefix");
    c.open().await;
    t.stop().await;

    // With a public URL, whatever the request says.
    let t = TestServer::start("[http]\npublic_url = 'https://chat.example.org/'\n").await;
    let r = https_request(
        &t,
        "GET /.well-known/host-meta.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.contains("wss://chat.example.org/xmpp-websocket"), "{r}");
    // A CORS preflight.
    let r = https_request(
        &t,
        "OPTIONS /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nOrigin: https://x.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("access-control-allow-methods"),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test]
async fn websocket_open_must_name_a_served_domain() {
    let t = TestServer::start("").await;
    let mut c = WsClient::connect(&t).await;
    c.send("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.org' version='1.0'/>")
        .await;
    let got = c.read_to_close().await;
    assert!(got.contains("<host-unknown"), "{got}");
    let _ = open_frame();
    t.stop().await;
}

/// SASL2 with Bind 2, inline SM and a FAST token over WebSocket, then a FAST login on a
/// new WebSocket: the same negotiation code as on TCP, nothing of it transport-specific.
#[tokio::test]
async fn sasl2_bind2_and_fast_over_websocket() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    let ua = "5b2e1a54-3f0c-4a8e-9d35-0a1f1c2e7b11";
    let mut c = WsClient::connect(&t).await;
    let features = c.open().await;
    assert!(features.contains("urn:xmpp:sasl:2"), "{features}");
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response>\
           <user-agent id='{ua}'><software>Web</software></user-agent>\
           <bind xmlns='urn:xmpp:bind:0'><tag>Web</tag>\
             <enable xmlns='urn:xmpp:sm:3' resume='true'/>\
           </bind>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        B64.encode("\0alice\0wonderland")
    ))
    .await;
    let got = c.read_until("</stream:features>").await;
    assert!(got.contains("<success xmlns=\"urn:xmpp:sasl:2\""), "{got}");
    assert!(got.contains("<bound xmlns=\"urn:xmpp:bind:0\""), "{got}");
    let jid = between(
        &got,
        "<authorization-identifier>",
        "</authorization-identifier>",
    )
    .to_owned();
    assert!(jid.starts_with("alice@localhost/Web/"), "{jid}");
    let token = between(&got, "token=\"", "\"").to_owned();
    assert!(!token.is_empty(), "{got}");
    c.ping("p1").await;

    let mut again = WsClient::connect(&t).await;
    again.open().await;
    let initial = B64.encode(rookery_testkit::scram::ht_sha256_initial(
        "alice", &token, b"",
    ));
    again
        .send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
               <initial-response>{initial}</initial-response>\
               <user-agent id='{ua}'/>\
               <bind xmlns='urn:xmpp:bind:0'><tag>Web</tag></bind>\
             </authenticate>"
        ))
        .await;
    let got = again.read_until("</stream:features>").await;
    assert!(got.contains("<success"), "{got}");
    assert_eq!(
        between(
            &got,
            "<authorization-identifier>",
            "</authorization-identifier>"
        ),
        jid,
        "the same resource for the same client"
    );
    again.ping("p2").await;
    t.stop().await;
}
