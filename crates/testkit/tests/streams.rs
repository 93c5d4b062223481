//! Stream-level behaviour over real sockets: SNI, host checks, STARTTLS injection, binding,
//! conflicts, keepalives and graceful shutdown.

use rookery_testkit::{stream_header, RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;

#[tokio::test]
async fn sni_selects_the_certificate_of_each_host() {
    let t = TestServer::start("[[host]]\ndomain = 'example.org'\n").await;
    for domain in ["example.org", DOMAIN] {
        // The client trusts only that domain's certificate and checks the name in it.
        let tls = t.client_tls_trusting(&[&TLS13], &[domain]);
        let mut c = RawClient::direct_tls_to(t.direct_tls, tls, domain).await;
        c.send(&stream_header().replace(&format!("to='{DOMAIN}'"), &format!("to='{domain}'")))
            .await;
        let got = c.read_until("</stream:features>").await;
        assert!(got.contains(&format!("from='{domain}'")), "{got}");
    }
    t.stop().await;
}

#[tokio::test]
async fn unserved_and_changed_hosts_are_refused() {
    let t = TestServer::start("").await;
    let mut c = RawClient::plain(t.c2s).await;
    c.send(&stream_header().replace("to='localhost'", "to='nope.example'"))
        .await;
    let got = c.read_to_end().await;
    assert!(got.contains("<host-unknown"), "{got}");
    assert!(got.ends_with("</stream:stream>"), "{got}");

    // After STARTTLS the restarted stream must name the same domain.
    let t2 = TestServer::start("[[host]]\ndomain = 'example.org'\n").await;
    let mut c = RawClient::connect_starttls(t2.c2s, t2.client_tls(&[&TLS13])).await;
    c.send(&stream_header().replace("to='localhost'", "to='example.org'"))
        .await;
    let got = c.read_to_end().await;
    assert!(got.contains("<host-unknown"), "{got}");
    t.stop().await;
    t2.stop().await;
}

#[tokio::test]
async fn data_pipelined_after_starttls_is_discarded() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let mut c = RawClient::plain(t.c2s).await;
    c.open_stream().await;
    // An attacker in the middle appends a plaintext command after <starttls/>: it must not be
    // executed inside the TLS session (RFC 6120 §5.4.3.3).
    c.send(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
         <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>",
    )
    .await;
    let got = c.read_until("<proceed").await;
    assert!(
        !got.contains("success") && !got.contains("failure"),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn auth_before_tls_is_refused_and_plain_not_offered() {
    let t = TestServer::start("").await;
    let mut c = RawClient::plain(t.c2s).await;
    let features = c.open_stream().await;
    assert!(features.contains("<required/>"), "{features}");
    assert!(!features.contains("mechanism"), "{features}");
    c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        .await;
    let got = c.read_until("</failure>").await;
    assert!(got.contains("<encryption-required/>"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn binding_conflict_replaces_the_older_session() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let tls = t.client_tls(&[&TLS13]);
    let mut first = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    first.open_stream().await;
    assert_eq!(
        first.login_plain("alice", "pw", "phone").await,
        "alice@localhost/phone"
    );
    let mut second = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    second.open_stream().await;
    assert_eq!(
        second.login_plain("alice", "pw", "phone").await,
        "alice@localhost/phone"
    );
    let got = first.read_to_end().await;
    assert!(got.contains("<conflict"), "{got}");
    // The newer session works: it can ping the server.
    second
        .send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = second.read_until("id=\"p1\"").await;
    assert!(
        got.contains("type=\"result\"") && got.contains("p1"),
        "{got}"
    );
    // A server-generated resource when none is asked for.
    let mut third = RawClient::direct_tls(t.direct_tls, tls).await;
    third.open_stream().await;
    let jid = third.login_plain("alice", "pw", "").await;
    assert!(
        jid.starts_with("alice@localhost/") && jid.len() > "alice@localhost/".len(),
        "{jid}"
    );
    t.stop().await;
}

#[tokio::test]
async fn keepalives_pass_and_shutdown_closes_streams() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    c.send("   \n  ").await;
    c.send("<iq type='get' id='k' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(c.read_until("id=\"k\"").await.contains("type=\"result\""));
    let stop = t.stop();
    let got = c.read_to_end();
    let (_, got) = tokio::join!(stop, got);
    assert!(got.contains("<system-shutdown"), "{got}");
    assert!(got.ends_with("</stream:stream>"), "{got}");
}

#[tokio::test]
async fn idle_unauthenticated_connections_time_out() {
    let t = TestServer::start("[limits]\nunauthenticated_timeout_secs = 1\n").await;
    let mut c = RawClient::plain(t.c2s).await;
    c.open_stream().await;
    let got = c.read_to_end().await;
    assert!(got.contains("<connection-timeout"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn in_band_registration_when_enabled() {
    let t = TestServer::start_with_host(
        "[limits]\nregistrations_per_ip_per_hour = 1\n",
        "registration = true",
    )
    .await;
    let tls = t.client_tls(&[&TLS13]);
    let mut c = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    let features = c.open_stream().await;
    assert!(
        features.contains("http://jabber.org/features/iq-register"),
        "{features}"
    );
    c.send("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let got = c.read_until("id=\"r1\"").await;
    assert!(got.contains("type=\"result\""), "{got}");
    // Shorter than limits.min_password_length: refused before it counts against the rate.
    c.send("<iq type='set' id='r1s'><query xmlns='jabber:iq:register'><username>newbie</username><password>s3cret</password></query></iq>").await;
    let got = c.read_until("id=\"r1s\"").await;
    assert!(
        got.contains("not-acceptable") && got.contains("too short"),
        "{got}"
    );
    c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>newbie</username><password>s3cret-newbie</password></query></iq>").await;
    let got = c.read_until("id=\"r2\"").await;
    assert!(got.contains("type=\"result\""), "{got}");
    // The same name again: conflict; another registration from this address: rate limited.
    c.send("<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>NEWBIE</username><password>another-password</password></query></iq>").await;
    let got = c.read_until("id=\"r3\"").await;
    assert!(
        got.contains("conflict") || got.contains("resource-constraint"),
        "{got}"
    );
    c.send("<iq type='set' id='r4'><query xmlns='jabber:iq:register'><username>other</username><password>another-password</password></query></iq>").await;
    let got = c.read_until("id=\"r4\"").await;
    assert!(got.contains("resource-constraint"), "{got}");
    // The new account logs in.
    let mut d = RawClient::direct_tls(t.direct_tls, tls).await;
    d.open_stream().await;
    assert_eq!(
        d.login_plain("newbie", "s3cret-newbie", "r").await,
        "newbie@localhost/r"
    );
    t.stop().await;
}

#[tokio::test]
async fn registration_is_off_by_default() {
    let t = TestServer::start("").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    let features = c.open_stream().await;
    assert!(!features.contains("iq-register"), "{features}");
    c.send("<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>x</username><password>y</password></query></iq>").await;
    let got = c.read_until("id=\"r\"").await;
    assert!(got.contains("service-unavailable"), "{got}");
    assert!(!t
        .server
        .storage()
        .accounts
        .account_exists("localhost", "x")
        .await
        .expect("read"));
    t.stop().await;
}

/// A host that does not run the `register` module answers a registration request before
/// authentication as a host with registration off does: `service-unavailable`, and the stream
/// goes on (XEP-0077 §3.1). Any other IQ before authentication still ends the stream with
/// `not-authorized` (RFC 6120 §4.9.3.12).
#[tokio::test]
async fn registration_on_a_host_without_the_register_module_is_service_unavailable() {
    let t = TestServer::start_with_host("", "modules = ['disco', 'ping']").await;
    t.add_user("alice", "pw").await;
    let tls = t.client_tls(&[&TLS13]);
    let mut c = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    let features = c.open_stream().await;
    assert!(!features.contains("iq-register"), "{features}");
    c.send("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    let got = c.read_until("id=\"r1\"").await;
    assert!(
        got.contains("type=\"error\"") && got.contains("service-unavailable"),
        "{got}"
    );
    c.send("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>x</username><password>long-enough</password></query></iq>").await;
    let got = c.read_until("id=\"r2\"").await;
    assert!(got.contains("service-unavailable"), "{got}");
    assert!(!got.contains("stream:error"), "{got}");
    // The stream is still open: the client can log in on it.
    assert_eq!(c.login_plain("alice", "pw", "r").await, "alice@localhost/r");
    assert!(!t
        .server
        .storage()
        .accounts
        .account_exists("localhost", "x")
        .await
        .expect("read"));

    let mut d = RawClient::direct_tls(t.direct_tls, tls).await;
    d.open_stream().await;
    d.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    let got = d.read_to_end().await;
    assert!(got.contains("<not-authorized"), "{got}");
    t.stop().await;
}

/// A burst over the stanza rate pauses reading and then resumes it: what the burst's read
/// brought is handled, the next stanza waits until the bucket has refilled, and the stream
/// stays up.
#[tokio::test]
async fn a_burst_over_the_rate_pauses_reading_then_resumes() {
    let t =
        TestServer::start("[limits]\nmax_stanzas_per_second = 20\nrate_limit_grace_secs = 30\n")
            .await;
    t.add_user("burst", "pw").await;
    let tls = t.client_tls(&[&TLS13]);
    let mut c = RawClient::direct_tls(t.direct_tls, tls).await;
    c.open_stream().await;
    c.login_plain("burst", "pw", "b").await;
    // Twice the burst allowance (40), in one write: 40 over, a pause of about two seconds.
    let batch: String = (0..80)
        .map(|i| {
            format!("<iq type='get' id='b{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        })
        .collect();
    c.send(&batch).await;
    let got = c.read_until("id=\"b79\"").await;
    assert_eq!(got.matches("type=\"result\"").count(), 80, "{got}");
    let paused = std::time::Instant::now();
    c.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let got = c.read_until("id=\"after\"").await;
    let waited = paused.elapsed();
    assert!(!got.contains("<policy-violation"), "{got}");
    assert!(
        waited >= std::time::Duration::from_millis(1000),
        "{waited:?}"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_flooding_client_is_paced_then_cut_off_while_others_keep_their_latency() {
    let t = TestServer::start("[limits]\nmax_stanzas_per_second = 20\nrate_limit_grace_secs = 2\n")
        .await;
    t.add_user("flood", "pw").await;
    t.add_user("calm", "pw").await;
    let tls = t.client_tls(&[&TLS13]);
    let mut flooder = RawClient::direct_tls(t.direct_tls, tls.clone()).await;
    flooder.open_stream().await;
    flooder.login_plain("flood", "pw", "f").await;
    let mut calm = RawClient::direct_tls(t.direct_tls, tls).await;
    calm.open_stream().await;
    calm.login_plain("calm", "pw", "c").await;

    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move {
        let batch: String = (0..20)
            .map(|i| {
                format!(
                    "<iq type='get' id='f{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                )
            })
            .collect();
        for _ in 0..200 {
            if flooder.try_send(&batch).await.is_err() {
                break;
            }
        }
        flooder.read_to_end().await
    });
    // Meanwhile another client's pings are answered promptly.
    for i in 0..5 {
        let sent = std::time::Instant::now();
        calm.send(&format!(
            "<iq type='get' id='c{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        calm.read_until(&format!("id=\"c{i}\"")).await;
        assert!(
            sent.elapsed() < std::time::Duration::from_millis(500),
            "ping {i} took {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let got = flood.await.expect("flood task");
    let elapsed = started.elapsed();
    assert!(
        got.contains("<policy-violation"),
        "{}",
        &got[got.len().saturating_sub(400)..]
    );
    // Paced, not served flat out: 4,000 pings at 20/s would take minutes; it was cut off
    // after the grace period instead, having had only a fraction answered.
    let answered = got.matches("type=\"result\"").count();
    assert!(answered < 400, "{answered} pings answered");
    assert!(elapsed >= std::time::Duration::from_secs(2), "{elapsed:?}");
    t.stop().await;
}

#[tokio::test]
async fn idle_clients_get_a_liveness_check_then_a_timeout() {
    let t = TestServer::start("[limits]\nidle_timeout_secs = 1\n").await;
    t.add_user("alice", "pw").await;
    // A client that answers the check stays.
    let mut live = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    live.open_stream().await;
    let jid = live.login_plain("alice", "pw", "live").await;
    let got = live.read_until("urn:xmpp:ping").await;
    assert!(got.contains(&format!("to=\"{jid}\"")), "{got}");
    let id_at = got.find("id=\"").expect("ping id") + 4;
    let id = &got[id_at..id_at + got[id_at..].find('"').expect("id end")];
    live.send(&format!("<iq type='result' id='{id}' to='{DOMAIN}'/>"))
        .await;
    live.ping("still-here").await;
    // A silent one is closed with connection-timeout after the check.
    let mut silent = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    silent.open_stream().await;
    silent.login_plain("alice", "pw", "silent").await;
    let got = silent.read_to_end().await;
    assert!(got.contains("urn:xmpp:ping"), "{got}");
    assert!(got.contains("<connection-timeout"), "{got}");
    // Under stream management the check is an ack request.
    let mut sm = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    sm.open_stream().await;
    sm.login_plain("alice", "pw", "sm").await;
    sm.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    sm.read_until("<enabled").await;
    let got = sm.read_until("<r xmlns").await;
    assert!(got.contains("urn:xmpp:sm:3"), "{got}");
    t.stop().await;
}
