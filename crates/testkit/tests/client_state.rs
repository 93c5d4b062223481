//! Client state indication (XEP-0352) on the wire: held presence and chat states, flushed in
//! order, deduplicated, before the message that needs the client's attention.

use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;
use std::time::Duration;

async fn login(t: &TestServer, user: &str, resource: &str) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain(user, "pw", resource).await;
    c
}

#[tokio::test]
async fn inactive_client_gets_latest_presence_and_chat_state_then_the_message() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    let mut phone = login(&t, "alice", "phone").await;
    phone.send("<inactive xmlns='urn:xmpp:csi:0'/>").await;
    phone.ping("sync").await;
    let mut bob = login(&t, "bob", "pc").await;
    for show in ["away", "dnd", "xa"] {
        bob.send(&format!(
            "<presence to='alice@{DOMAIN}/phone'><show>{show}</show></presence>"
        ))
        .await;
    }
    bob.send(&format!(
        "<message type='chat' to='alice@{DOMAIN}/phone'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ))
    .await;
    bob.ping("b1").await;
    let (held, _) = phone.read_for(Duration::from_millis(500)).await;
    assert!(
        held.is_empty(),
        "nothing reaches an inactive client: {held}"
    );
    bob.send(&format!(
        "<message type='chat' to='alice@{DOMAIN}/phone'><body>wake</body></message>"
    ))
    .await;
    let got = phone.read_until("wake</body>").await;
    assert!(!got.contains(">away<") && !got.contains(">dnd<"), "{got}");
    let xa = got.find(">xa<").expect("latest presence");
    let composing = got.find("<composing").expect("chat state");
    let wake = got.find("wake</body>").expect("message");
    assert!(xa < composing && composing < wake, "{got}");

    // <active/> flushes before the next request is answered (§5).
    bob.send(&format!(
        "<presence to='alice@{DOMAIN}/phone'><show>chat</show></presence>"
    ))
    .await;
    bob.ping("b2").await;
    let (held, _) = phone.read_for(Duration::from_millis(300)).await;
    assert!(held.is_empty(), "{held}");
    phone.send("<active xmlns='urn:xmpp:csi:0'/>").await;
    phone.ping("after-active").await;
    assert!(phone.received.contains(">chat<"), "{}", phone.received);
    t.stop().await;
}
