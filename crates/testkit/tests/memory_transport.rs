//! The client stream without a socket: an in-memory transport under `c2s::run` logs in
//! with SCRAM, binds, exchanges messages with another session, loses its "connection",
//! and resumes its stream-management session with the unacknowledged messages.

use base64::Engine as _;
use rookery_net::c2s::{self, StreamContext};
use rookery_net::transport::{Received, StanzaTransport, UpgradeError};
use rookery_sasl::ChannelBindings;
use rookery_testkit::scram::{Hash, ScramClient};
use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rookery_xml::{Framing, Limits, StreamEvent, StreamParser};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, DuplexStream};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One end of an in-memory pipe: what a test (or an embedding application) can put under
/// a client stream instead of a socket.
struct MemoryTransport {
    pipe: DuplexStream,
    buf: Vec<u8>,
    /// Bytes in `buf` not yet handed to the parser.
    pending: usize,
    eof: bool,
    parser: StreamParser,
}

impl MemoryTransport {
    fn new(pipe: DuplexStream) -> Self {
        MemoryTransport {
            pipe,
            buf: vec![0; 4096],
            pending: 0,
            eof: false,
            parser: StreamParser::new(Limits::default()),
        }
    }
}

impl StanzaTransport for MemoryTransport {
    fn framing(&self) -> Framing {
        Framing::Stream
    }

    fn peer(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn is_confidential(&self) -> bool {
        // Nothing leaves the process.
        true
    }

    fn can_upgrade(&self) -> bool {
        false
    }

    fn channel_bindings(&self) -> ChannelBindings {
        ChannelBindings::none()
    }

    async fn readable(&mut self) -> io::Result<()> {
        if self.pending == 0 && !self.eof {
            // Reading a pipe is cancel-safe: nothing is lost if the stream wakes up for
            // something else first.
            let n = self.pipe.read(&mut self.buf).await?;
            self.eof = n == 0;
            self.pending = n;
        }
        Ok(())
    }

    fn receive(&mut self, events: &mut Vec<StreamEvent>) -> Received {
        if self.pending == 0 {
            return if self.eof {
                Received::Closed
            } else {
                Received::Nothing
            };
        }
        let bytes = std::mem::take(&mut self.pending);
        Received::Events {
            bytes,
            parsed: self.parser.feed(&self.buf[..bytes], events),
        }
    }

    fn restart(&mut self) {
        self.parser.reset();
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.pipe.write_all(bytes).await
    }

    async fn upgrade_tls(&mut self) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unsupported)
    }

    async fn close(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.pipe.shutdown().await;
    }
}

/// A client stream running over a new in-memory pipe; the client end of it.
fn connect(t: &TestServer, streams: &Arc<StreamContext>) -> RawClient {
    let (client, server) = tokio::io::duplex(64 * 1024);
    t.server
        .tasks()
        .spawn(c2s::run(streams.clone(), MemoryTransport::new(server)));
    RawClient::over(client)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map(|i| i + start.len()).unwrap_or(0);
    let to = text[from..]
        .find(end)
        .map(|i| from + i)
        .unwrap_or(text.len());
    &text[from..to]
}

/// SCRAM-SHA-256 and the stream restart; returns the features offered after it.
async fn scram_login(c: &mut RawClient, user: &str, password: &str) -> String {
    let features = c.open_stream().await;
    assert!(features.contains(">SCRAM-SHA-256<"), "{features}");
    assert!(
        !features.contains("starttls"),
        "nothing to upgrade: {features}"
    );
    let mut scram = ScramClient::new(Hash::Sha256, user, password, None);
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode(scram.client_first())
    ))
    .await;
    let got = c.read_until("</challenge>").await;
    let server_first = B64
        .decode(between(&got, "xmpp-sasl\">", "</challenge>"))
        .expect("challenge base64");
    let client_final = scram.client_final(std::str::from_utf8(&server_first).expect("utf8"));
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client_final)
    ))
    .await;
    let got = c.read_until("</success>").await;
    let server_final = B64
        .decode(between(&got, "xmpp-sasl\">", "</success>"))
        .expect("success base64");
    assert!(
        scram.verify_server_final(std::str::from_utf8(&server_final).expect("utf8")),
        "the server proved it knows the credentials"
    );
    c.open_stream().await
}

async fn bind(c: &mut RawClient, resource: &str) -> String {
    c.send(&format!(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
    ))
    .await;
    let got = c.read_until("</jid>").await;
    between(&got, "<jid>", "</jid>").to_owned()
}

async fn chat(c: &mut RawClient, to: &str, body: &str) {
    c.send(&format!(
        "<message type='chat' to='{to}' id='{body}'><body>{body}</body></message>"
    ))
    .await;
}

#[tokio::test]
async fn a_stream_over_memory_logs_in_binds_chats_and_resumes() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    t.add_user("bob", "builder").await;
    let streams = Arc::new(StreamContext::new(t.server.clone()));

    let mut alice = connect(&t, &streams);
    let features = scram_login(&mut alice, "alice", "wonderland").await;
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    assert_eq!(bind(&mut alice, "mem").await, format!("alice@{DOMAIN}/mem"));
    alice
        .send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    // The answer is written in one piece.
    let enabled = alice.read_until("<enabled").await;
    let id = between(&enabled, "id=\"", "\"").to_owned();
    assert!(!id.is_empty(), "{enabled}");

    let mut bob = connect(&t, &streams);
    scram_login(&mut bob, "bob", "builder").await;
    assert_eq!(bind(&mut bob, "desk").await, format!("bob@{DOMAIN}/desk"));

    // Both ways between two sessions, neither with a socket.
    chat(&mut alice, "bob@localhost/desk", "hello-bob").await;
    bob.read_until("hello-bob</body>").await;
    for n in 1..=3 {
        chat(&mut bob, "alice@localhost/mem", &format!("m{n}")).await;
    }
    alice.read_until("m3</body>").await;
    // Alice confirms m1 only, then her "connection" goes away.
    alice.send("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    alice.ping("before-drop").await;
    drop(alice);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    chat(&mut bob, "alice@localhost/mem", "m4").await;
    bob.ping("sync").await;

    let mut again = connect(&t, &streams);
    scram_login(&mut again, "alice", "wonderland").await;
    // Alice handled her message and the ping on the old stream.
    again
        .send(&format!(
            "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='1'/>"
        ))
        .await;
    let got = again.read_until("m4</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    assert!(got.contains("h=\"2\""), "two stanzas handled: {got}");
    assert!(!got.contains(">m1</body>"), "m1 was acknowledged: {got}");
    for n in 2..=4 {
        assert_eq!(
            got.matches(&format!(">m{n}</body>")).count(),
            1,
            "m{n} once: {got}"
        );
    }
    // The resumed session goes on both ways.
    chat(&mut bob, "alice@localhost/mem", "m5").await;
    again.read_until("m5</body>").await;
    chat(&mut again, "bob@localhost/desk", "back").await;
    bob.read_until("back</body>").await;
    assert_eq!(t.server.sessions().count(), 2);
    t.stop().await;
}
