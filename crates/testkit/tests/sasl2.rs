//! SASL2 (XEP-0388), Bind 2 (XEP-0386), FAST (XEP-0484), SCRAM downgrade protection
//! (XEP-0474) and stream limits (XEP-0478) over real TLS, with an independent client.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rookery_testkit::scram::{
    downgrade_hash, ht_sha256_initial, ht_sha256_responder, server_first_downgrade_attr, Hash,
    ScramClient,
};
use rookery_testkit::{RawClient, TestServer, DOMAIN};
use rustls::version::TLS13;
use std::time::Duration;

const UA: &str = "d4565fa7-4d72-4749-b3d3-740edbf87770";

/// Text content of the first `<tag ...>text</tag>`.
fn text_of(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}"))?;
    let rest = &xml[start..];
    let open_end = rest.find('>')?;
    if rest[..open_end].ends_with('/') {
        return Some(String::new());
    }
    let close = rest.find(&format!("</{tag}>"))?;
    Some(rest[open_end + 1..close].to_owned())
}

fn attr(text: &str, tag: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}"))?;
    let rest = &text[start..];
    let el = &rest[..rest.find('>')?];
    let at = el.find(&format!(" {name}="))? + name.len() + 3;
    let quote = el.as_bytes()[at - 1] as char;
    let end = el[at..].find(quote)? + at;
    Some(el[at..end].to_owned())
}

/// Every `<mechanism>` inside the first `<container ...>...</container>`.
fn mechanisms_in(xml: &str, container: &str) -> Vec<String> {
    let Some(start) = xml.find(&format!("<{container}")) else {
        return Vec::new();
    };
    let end = xml[start..]
        .find(&format!("</{container}>"))
        .map_or(xml.len(), |e| start + e);
    let inner = &xml[start..end];
    // Only direct mechanisms, not those of a nested <fast>.
    let inner = inner.split("<inline").next().unwrap_or(inner);
    inner
        .split("<mechanism>")
        .skip(1)
        .filter_map(|p| p.split("</mechanism>").next())
        .map(str::to_owned)
        .collect()
}

async fn connect(t: &TestServer) -> (RawClient, String) {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    let features = c.open_stream().await;
    (c, features)
}

fn plain_b64(user: &str, pw: &str) -> String {
    B64.encode(format!("\0{user}\0{pw}"))
}

#[tokio::test]
async fn one_round_trip_login_with_bind2_sm_csi_and_a_fast_token() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let (mut c, features) = connect(&t).await;
    // Advertised: SASL2 with Bind 2 (and its inline features), SM, FAST, stream limits.
    assert!(
        features.contains("<authentication xmlns=\"urn:xmpp:sasl:2\""),
        "{features}"
    );
    assert!(
        features.contains("<bind xmlns=\"urn:xmpp:bind:0\""),
        "{features}"
    );
    assert!(features.contains("var=\"urn:xmpp:sm:3\""), "{features}");
    assert!(features.contains("var=\"urn:xmpp:csi:0\""), "{features}");
    assert!(features.contains("HT-SHA-256-NONE"), "{features}");
    assert!(features.contains("<max-bytes>"), "{features}");
    assert!(
        features.contains("<idle-seconds>1800</idle-seconds>"),
        "{features}"
    );
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response>\
           <user-agent id='{UA}'><software>Test</software><device>Phone</device></user-agent>\
           <bind xmlns='urn:xmpp:bind:0'><tag>Test</tag>\
             <enable xmlns='urn:xmpp:sm:3' resume='true'/>\
             <inactive xmlns='urn:xmpp:csi:0'/>\
           </bind>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = c.read_until("</stream:features>").await;
    assert!(got.contains("<success xmlns=\"urn:xmpp:sasl:2\""), "{got}");
    let jid = text_of(&got, "authorization-identifier").expect("identity");
    assert!(jid.starts_with("alice@localhost/Test/"), "{jid}");
    assert!(got.contains("<bound xmlns=\"urn:xmpp:bind:0\""), "{got}");
    assert!(
        got.contains("<enabled") && got.contains("resume=\"true\""),
        "{got}"
    );
    let token = attr(&got, "token", "token").expect("a FAST token");
    assert!(attr(&got, "token", "expiry").is_some(), "{got}");
    // No stream restart; the features that follow offer neither SASL nor binding.
    let after = &got[got.find("</success>").expect("success end")..];
    assert!(
        !after.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{after}"
    );
    assert!(!after.contains("<mechanisms"), "{after}");
    // The session works at once.
    c.ping("p1").await;
    assert_eq!(t.server.sessions().count(), 1);

    // The same client logs in again with the token (one round trip) and gets the same
    // resource: its old session is replaced.
    let (mut again, _) = connect(&t).await;
    let initial = B64.encode(ht_sha256_initial("alice", &token, b""));
    again
        .send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
               <initial-response>{initial}</initial-response>\
               <user-agent id='{UA}'/>\
               <bind xmlns='urn:xmpp:bind:0'><tag>Test</tag></bind>\
               <fast xmlns='urn:xmpp:fast:0'/>\
             </authenticate>"
        ))
        .await;
    let got = again.read_until("</stream:features>").await;
    assert!(got.contains("<success"), "{got}");
    assert_eq!(
        text_of(&got, "authorization-identifier").as_deref(),
        Some(jid.as_str()),
        "stable resource for the same client"
    );
    let server_proof = B64
        .decode(text_of(&got, "additional-data").expect("responder proof"))
        .expect("b64");
    assert_eq!(
        server_proof,
        ht_sha256_responder(&token, b""),
        "mutual auth"
    );
    assert!(!got.contains("<token"), "a fresh token is not rotated");
    let old = c.read_to_end().await;
    assert!(old.contains("<conflict"), "{old}");
    again.ping("p2").await;
    t.stop().await;
}

/// Reads until a SASL2 outcome (`</success>` or `</failure>`) arrived; returns all of it.
async fn read_outcome(c: &mut RawClient) -> String {
    let mut acc = String::new();
    for _ in 0..100 {
        let (chunk, closed) = c.read_for(Duration::from_millis(100)).await;
        acc.push_str(&chunk);
        if acc.contains("</success>") || acc.contains("</failure>") || closed {
            break;
        }
    }
    acc
}

/// A FAST login with `token`; `extra` goes into the `<fast/>` element.
async fn login_token(t: &TestServer, token: &str, extra: &str) -> String {
    let (mut c, _) = connect(t).await;
    let initial = B64.encode(ht_sha256_initial("alice", token, b""));
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'>\
           <initial-response>{initial}</initial-response>\
           <user-agent id='{UA}'/><fast xmlns='urn:xmpp:fast:0'{extra}/>\
         </authenticate>"
    ))
    .await;
    read_outcome(&mut c).await
}

#[tokio::test]
async fn fast_tokens_rotate_and_invalidate_and_wrong_ones_fail() {
    let t = TestServer::start("[fast]\ntoken_lifetime_secs = 4\n").await;
    t.add_user("alice", "pw").await;
    // Password login asking for a token.
    let (mut c, _) = connect(&t).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response><user-agent id='{UA}'/>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = c.read_until("</stream:features>").await;
    let first = attr(&got, "token", "token").expect("token");
    // Without Bind 2 the identity is the bare JID and binding is still offered.
    assert_eq!(
        text_of(&got, "authorization-identifier").as_deref(),
        Some("alice@localhost")
    );
    assert!(got.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{got}");

    // A wrong token fails (and counts as a failed attempt).
    let got = login_token(&t, "not-the-token", "").await;
    assert!(got.contains("<failure xmlns=\"urn:xmpp:sasl:2\""), "{got}");
    assert!(got.contains("<not-authorized"), "{got}");

    // Past half its life the token is rotated at its next use...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let got = login_token(&t, &first, "").await;
    assert!(got.contains("<success"), "{got}");
    let second = attr(&got, "token", "token").expect("rotated token");
    assert_ne!(first, second);
    // ...and the old one keeps working until the new one is used: a client that missed
    // the rotated token logs in with the old one and gets another (the unused one is
    // dropped, XEP-0484 §3.4).
    let got = login_token(&t, &first, "").await;
    assert!(got.contains("<success"), "{got}");
    let third = attr(&got, "token", "token").expect("rotated again");
    assert!(login_token(&t, &second, "")
        .await
        .contains("<not-authorized"));
    assert!(login_token(&t, &third, "").await.contains("<success"));
    let got = login_token(&t, &first, "").await;
    assert!(got.contains("<not-authorized"), "retired: {got}");
    let second = third;

    // Invalidation (log out): the token is gone.
    let got = login_token(&t, &second, " invalidate='true'").await;
    assert!(got.contains("<success") && !got.contains("<token"), "{got}");
    let got = login_token(&t, &second, "").await;
    assert!(got.contains("<not-authorized"), "{got}");

    // Expired tokens are refused as expired.
    let (mut c, _) = connect(&t).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response><user-agent id='{UA}'/>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = c.read_until("</stream:features>").await;
    let fourth = attr(&got, "token", "token").expect("token");
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let got = login_token(&t, &fourth, "").await;
    assert!(got.contains("<credentials-expired"), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn scram_over_sasl2_carries_downgrade_protection_and_a_stripped_list_is_detected() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    for (profile, container) in [("sasl2", "authentication"), ("legacy", "mechanisms")] {
        let (mut c, features) = connect(&t).await;
        let mechs = mechanisms_in(&features, container);
        assert!(
            mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS"),
            "{features}"
        );
        let cbs: Vec<String> = ["tls-exporter", "tls-server-end-point"]
            .into_iter()
            .filter(|t| features.contains(&format!("type=\"{t}\"")))
            .map(str::to_owned)
            .collect();
        let mut client = ScramClient::new(Hash::Sha256, "alice", "wonderland", None);
        let first = B64.encode(client.client_first());
        if profile == "sasl2" {
            c.send(&format!(
                "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-256'>\
                   <initial-response>{first}</initial-response></authenticate>"
            ))
            .await;
        } else {
            c.send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
            ))
            .await;
        }
        let got = c.read_until("</challenge>").await;
        let server_first = String::from_utf8(
            B64.decode(text_of(&got, "challenge").expect("challenge"))
                .expect("b64"),
        )
        .expect("utf8");
        let h = server_first_downgrade_attr(&server_first).expect("h= in server-first");
        let m: Vec<&str> = mechs.iter().map(String::as_str).collect();
        let cb: Vec<&str> = cbs.iter().map(String::as_str).collect();
        assert_eq!(h, downgrade_hash(Hash::Sha256, &m, &cb), "{profile}");
        // A man in the middle who stripped the -PLUS mechanisms (to force a downgrade)
        // would show the client a list whose hash differs: the client aborts.
        let stripped: Vec<&str> = m
            .iter()
            .copied()
            .filter(|x| !x.ends_with("-PLUS"))
            .collect();
        assert_ne!(h, downgrade_hash(Hash::Sha256, &stripped, &cb));
        let stripped_plain: Vec<&str> = vec!["PLAIN"];
        assert_ne!(h, downgrade_hash(Hash::Sha256, &stripped_plain, &[]));
        // The exchange completes normally.
        let fin = B64.encode(client.client_final(&server_first));
        let ns = if profile == "sasl2" {
            "urn:xmpp:sasl:2"
        } else {
            "urn:ietf:params:xml:ns:xmpp-sasl"
        };
        c.send(&format!("<response xmlns='{ns}'>{fin}</response>"))
            .await;
        let got = c.read_until("</success>").await;
        let data = if profile == "sasl2" {
            text_of(&got, "additional-data").expect("server final")
        } else {
            text_of(&got, "success").expect("server final")
        };
        let data = String::from_utf8(B64.decode(data.trim()).expect("b64")).expect("utf8");
        assert!(client.verify_server_final(&data), "{profile}");
    }
    t.stop().await;
}

#[tokio::test]
async fn sasl2_failure_and_inline_resumption() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    // A wrong password: a SASL2 failure with the RFC 6120 condition, nothing bound.
    let (mut c, _) = connect(&t).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response>\
           <bind xmlns='urn:xmpp:bind:0'/></authenticate>",
        plain_b64("alice", "wrong")
    ))
    .await;
    let got = c.read_until("</failure>").await;
    assert!(got.contains("<failure xmlns=\"urn:xmpp:sasl:2\""), "{got}");
    assert!(
        got.contains("<not-authorized xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\""),
        "{got}"
    );
    assert_eq!(t.server.sessions().count(), 0);

    // Bind 2 with resumable SM, then the connection drops with a message in flight.
    let (mut phone, _) = connect(&t).await;
    phone
        .send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
               <initial-response>{}</initial-response>\
               <bind xmlns='urn:xmpp:bind:0'><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>\
             </authenticate>",
            plain_b64("alice", "pw")
        ))
        .await;
    let got = phone.read_until("</stream:features>").await;
    let id = attr(&got, "enabled", "id").expect("SM id");
    let jid = text_of(&got, "authorization-identifier").expect("jid");
    assert!(
        jid.starts_with("alice@localhost/"),
        "Bind 2: the full JID: {jid}"
    );
    let mut bob = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    bob.open_stream().await;
    bob.login_plain("bob", "pw", "pc").await;
    bob.send(&format!(
        "<message type='chat' to='{jid}'><body>in-flight</body></message>"
    ))
    .await;
    phone.read_until("in-flight</body>").await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send(&format!(
        "<message type='chat' to='{jid}'><body>while-away</body></message>"
    ))
    .await;
    bob.ping("sync").await;
    // Resume inside SASL2: one round trip, nothing lost, nothing repeated.
    let (mut back, _) = connect(&t).await;
    back.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response>\
           <resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>\
           <bind xmlns='urn:xmpp:bind:0'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = back.read_until("while-away</body>").await;
    assert!(got.contains("<resumed"), "{got}");
    assert!(
        !got.contains("<bound"),
        "bind is skipped after resumption: {got}"
    );
    // XEP-0388 §2.6.1: the identity of the resumed session, with its resource.
    assert_eq!(
        text_of(&got, "authorization-identifier").as_deref(),
        Some(jid.as_str()),
        "{got}"
    );
    assert_eq!(got.matches("in-flight</body>").count(), 1, "{got}");
    assert_eq!(got.matches("while-away</body>").count(), 1, "{got}");
    let success_end = got.find("</success>").expect("success");
    let first_message = got.find("in-flight").expect("message");
    assert!(success_end < first_message, "{got}");
    back.ping("works").await;
    // XEP-0198 §9.2: the resumed stream goes on right after <success/>, with no features.
    let after = &back.received[back.received.find("<success").expect("success")..];
    assert!(!after.contains("<stream:features"), "{after}");
    let _ = DOMAIN;
    t.stop().await;
}

#[tokio::test]
async fn carbons_enabled_inline_in_bind2() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    let (mut phone, features) = connect(&t).await;
    assert!(
        features.contains("var=\"urn:xmpp:carbons:2\""),
        "{features}"
    );
    phone
        .send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
               <initial-response>{}</initial-response>\
               <bind xmlns='urn:xmpp:bind:0'><tag>Phone</tag><enable xmlns='urn:xmpp:carbons:2'/></bind>\
             </authenticate>",
            plain_b64("alice", "pw")
        ))
        .await;
    phone.read_until("</stream:features>").await;
    let mut laptop = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    laptop.open_stream().await;
    laptop.login_plain("alice", "pw", "laptop").await;
    let mut bob = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    bob.open_stream().await;
    bob.login_plain("bob", "pw", "pc").await;
    bob.send("<message type='chat' to='alice@localhost/laptop'><body>to-laptop</body></message>")
        .await;
    laptop.read_until("to-laptop</body>").await;
    let got = phone.read_until("to-laptop</body>").await;
    assert!(
        got.contains("<received xmlns=\"urn:xmpp:carbons:2\""),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn bind2_reports_the_archive_and_leaves_archived_offline_messages_to_it() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    t.add_user("bob", "pw").await;
    let mut bob = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    bob.open_stream().await;
    bob.login_plain("bob", "pw", "pc").await;
    for n in 1..=2 {
        bob.send(&format!(
            "<message type='chat' to='alice@localhost'><body>missed-{n}</body></message>"
        ))
        .await;
    }
    bob.ping("stored").await;
    let (mut phone, _) = connect(&t).await;
    phone
        .send(&format!(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
               <initial-response>{}</initial-response><bind xmlns='urn:xmpp:bind:0'/>\
             </authenticate>",
            plain_b64("alice", "pw")
        ))
        .await;
    let got = phone.read_until("</stream:features>").await;
    assert!(got.contains("<metadata xmlns=\"urn:xmpp:mam:2\""), "{got}");
    let first = attr(&got, "start", "id").expect("first archived id");
    let last = attr(&got, "end", "id").expect("last archived id");
    assert_ne!(first, last);
    // Initial presence: the offline queue was left to the archive, nothing is replayed.
    phone.send("<presence/>").await;
    phone.ping("after-presence").await;
    let (more, _) = phone.read_for(Duration::from_millis(500)).await;
    let seen = phone.received.clone() + &more;
    assert!(!seen.contains("missed-1</body>"), "{seen}");
    // The archive has both, from the id the metadata named.
    phone
        .send(&format!(
            "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='q1'>\
               <x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
                 <field var='after-id'><value>{first}</value></field></x></query></iq>"
        ))
        .await;
    let got = phone.read_until("</fin>").await;
    assert!(got.contains("missed-2</body>"), "{got}");
    assert!(got.contains(&format!("id=\"{last}\"")), "{got}");
    t.stop().await;
}

#[tokio::test]
async fn changing_the_password_in_band_revokes_fast_tokens() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    let (mut c, _) = connect(&t).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response><user-agent id='{UA}'/>\
           <bind xmlns='urn:xmpp:bind:0'/>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = c.read_until("</stream:features>").await;
    let token = attr(&got, "token", "token").expect("token");
    assert!(login_token(&t, &token, "").await.contains("<success"));
    // XEP-0077 §3.3: the password changes; tokens issued under the old one stop working.
    c.send(
        "<iq type='set' id='pw'><query xmlns='jabber:iq:register'>\
           <username>alice</username><password>new password</password></query></iq>",
    )
    .await;
    let got = c.read_until("id=\"pw\"").await;
    assert!(got.contains("type=\"result\""), "{got}");
    let got = login_token(&t, &token, "").await;
    assert!(got.contains("<not-authorized"), "{got}");
    t.stop().await;
}

/// A SASL1 PLAIN attempt on a fresh stream; the outcome element as received.
async fn sasl1_plain(t: &TestServer, user: &str, pw: &str) -> String {
    let (mut c, _) = connect(t).await;
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain_b64(user, pw)
    ))
    .await;
    read_outcome(&mut c).await
}

/// A SASL2 PLAIN attempt on a fresh stream.
async fn sasl2_plain(t: &TestServer, user: &str, pw: &str) -> String {
    let (mut c, _) = connect(t).await;
    c.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response><user-agent id='{UA}'/>\
         </authenticate>",
        plain_b64(user, pw)
    ))
    .await;
    read_outcome(&mut c).await
}

#[tokio::test]
async fn a_disabled_account_cannot_log_in_by_any_mechanism_and_its_sessions_end() {
    let t = TestServer::start("").await;
    t.add_user("alice", "pw").await;
    // A live session and a FAST token from before.
    let (mut live, _) = connect(&t).await;
    live.send(&format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
           <initial-response>{}</initial-response><user-agent id='{UA}'/>\
           <bind xmlns='urn:xmpp:bind:0'/>\
           <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
         </authenticate>",
        plain_b64("alice", "pw")
    ))
    .await;
    let got = live.read_until("</stream:features>").await;
    let token = attr(&got, "token", "token").expect("token");

    let alice = rookery_stanza::BareJid::new("alice@localhost").expect("jid");
    assert!(
        rookery_modules::admin::ops::set_disabled(&t.server, &alice, true, "test")
            .await
            .expect("disable")
    );
    // XEP-0133 §4.5: the active session ends.
    let (rest, _) = live.read_for(Duration::from_secs(2)).await;
    assert!(rest.contains("policy-violation"), "{rest}");
    let (_, closed) = live.read_for(Duration::from_millis(500)).await;
    assert!(closed, "the stream is closed");

    // RFC 6120 §6.5.1 on every path, after the proof only.
    let got = sasl1_plain(&t, "alice", "pw").await;
    assert!(
        got.contains("<failure xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\"")
            && got.contains("<account-disabled"),
        "SASL: {got}"
    );
    let got = sasl1_plain(&t, "alice", "wrong").await;
    assert!(
        got.contains("<not-authorized") && !got.contains("account-disabled"),
        "a wrong password learns nothing: {got}"
    );
    let got = sasl2_plain(&t, "alice", "pw").await;
    assert!(
        got.contains("<failure xmlns=\"urn:xmpp:sasl:2\"") && got.contains("<account-disabled"),
        "SASL2: {got}"
    );
    let got = login_token(&t, &token, "").await;
    assert!(got.contains("<account-disabled"), "FAST: {got}");
    // The data is kept: the account still exists with its token.
    assert!(t
        .server
        .storage()
        .accounts
        .account_exists("localhost", "alice")
        .await
        .expect("exists"));

    assert!(
        rookery_modules::admin::ops::set_disabled(&t.server, &alice, false, "test")
            .await
            .expect("enable")
    );
    assert!(sasl1_plain(&t, "alice", "pw").await.contains("<success"));
    assert!(sasl2_plain(&t, "alice", "pw").await.contains("<success"));
    assert!(login_token(&t, &token, "").await.contains("<success"));
    t.stop().await;
}
