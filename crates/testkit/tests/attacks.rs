//! Attacks over real sockets, each followed by a fresh client logging in and pinging: deep
//! nesting before and after authentication, and the per-address connection cap. The
//! Python side (`tests/interop/test_attacks.py`) covers the attacks whose proof needs the
//! server's process (memory, descriptors, SIGKILL).

use rookery_testkit::{RawClient, TestServer};
use rustls::version::TLS13;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A fresh client on direct TLS logs in and pings, within `limit`.
async fn assert_serving(t: &TestServer, user: &str, limit: Duration) {
    let started = Instant::now();
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain(user, "pw", "").await;
    c.ping("still-serving").await;
    assert!(
        started.elapsed() < limit,
        "login and ping took {:?}",
        started.elapsed()
    );
}

fn tail(s: &str) -> &str {
    let mut at = s.len().saturating_sub(600);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

#[tokio::test]
async fn ten_thousand_deep_nesting_is_refused_before_and_after_auth() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let deep = "<a>".repeat(10_000);

    // Before authentication, on the STARTTLS port in the clear.
    let mut c = RawClient::plain(t.c2s).await;
    c.open_stream().await;
    let _ = c.try_send(&format!("<message>{deep}")).await;
    let got = c.read_to_end().await;
    assert!(got.contains("<policy-violation"), "{}", tail(&got));
    assert!(got.ends_with("</stream:stream>"), "{}", tail(&got));

    // After authentication, over TLS, inside a message to oneself.
    let tls = t.client_tls(&[&TLS13]);
    let mut c = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    c.open_stream().await;
    let jid = c.login_plain("alice", "pw", "deep").await;
    let _ = c
        .try_send(&format!(
            "<message to='{jid}' type='chat'><body>x</body>{deep}"
        ))
        .await;
    let got = c.read_to_end().await;
    assert!(got.contains("<policy-violation"), "{}", tail(&got));
    assert!(!got.contains("<body>x</body>"), "the stanza was delivered");

    // Nesting within the limit (64) is delivered.
    let mut c = RawClient::direct_tls(t.direct_tls, tls).await;
    c.open_stream().await;
    let jid = c.login_plain("alice", "pw", "ok").await;
    let nest = "<x xmlns='urn:example:n'>".repeat(40) + &"</x>".repeat(40);
    c.send(&format!(
        "<message to='{jid}' type='chat' id='nested'><body>fine</body>{nest}</message>"
    ))
    .await;
    let got = c.read_until("</message>").await;
    assert!(got.contains("<body>fine</body>"), "{got}");

    assert_serving(&t, "alice", Duration::from_secs(5)).await;
    t.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_at_once() {
    let t = TestServer::start("[limits]\nmax_connections_per_ip = 50\n").await;
    t.add_user("alice", "pw").await;
    let crowded: IpAddr = "127.0.0.3".parse().expect("ip");
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut c = RawClient::plain_from(t.c2s, crowded)
            .await
            .expect("connect");
        c.open_stream().await;
        held.push(c);
    }
    // The 51st to 55th from that address: closed at accept, before a byte is sent.
    for i in 0..5 {
        let started = Instant::now();
        match RawClient::plain_from(t.c2s, crowded).await {
            Err(_) => {}
            Ok(mut c) => {
                let (got, closed) = c.read_for(Duration::from_secs(3)).await;
                assert!(
                    closed && got.is_empty(),
                    "connection {}: got {got:?}",
                    51 + i
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refusal took {:?}",
            started.elapsed()
        );
    }
    // Other addresses still connect, log in and ping (direct TLS comes from 127.0.0.1).
    let other: IpAddr = "127.0.0.4".parse().expect("ip");
    let mut c = RawClient::plain_from(t.c2s, other).await.expect("connect");
    let features = c.open_stream().await;
    assert!(features.contains("starttls"), "{features}");
    assert_serving(&t, "alice", Duration::from_secs(5)).await;
    // A slot given back is usable again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = RawClient::plain_from(t.c2s, crowded)
            .await
            .expect("connect");
        let _ = c.try_send(&rookery_testkit::stream_header()).await;
        let (got, _) = c.read_for(Duration::from_millis(500)).await;
        if got.contains("<stream:features") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was not reused: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.stop().await;
}
