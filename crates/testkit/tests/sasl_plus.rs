//! SCRAM-*-PLUS end to end over real TLS 1.3 and 1.2, with both channel-binding types, and the
//! rejection of a client whose binding data doesn't match its connection.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rookery_testkit::scram::{Hash, ScramClient};
use rookery_testkit::{RawClient, TestServer};

fn text_of(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}")).expect("element present");
    let rest = &xml[start..];
    let open_end = rest.find('>').expect("tag end");
    let close = rest.find(&format!("</{tag}>")).unwrap_or(open_end + 1);
    rest[open_end + 1..close.max(open_end + 1)].to_owned()
}

/// Runs a SCRAM exchange; returns the server's final answer element text.
async fn scram(c: &mut RawClient, mech: &str, mut client: ScramClient) -> Result<(), String> {
    let first = B64.encode(client.client_first());
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{first}</auth>"
    ))
    .await;
    let got = c.read_until("</challenge>").await;
    let server_first =
        String::from_utf8(B64.decode(text_of(&got, "challenge")).expect("b64")).expect("utf8");
    let fin = B64.encode(client.client_final(&server_first));
    c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{fin}</response>"
    ))
    .await;
    let got = c.read_until("</").await;
    if got.contains("<success") {
        let data =
            String::from_utf8(B64.decode(text_of(&got, "success")).expect("b64")).expect("utf8");
        assert!(
            client.verify_server_final(&data),
            "server signature verifies"
        );
        Ok(())
    } else {
        Err(got)
    }
}

#[tokio::test]
async fn scram_plus_with_both_binding_types() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    let cases = [
        (
            Hash::Sha256,
            "SCRAM-SHA-256-PLUS",
            "tls-exporter",
            &rustls::version::TLS13,
        ),
        (
            Hash::Sha512,
            "SCRAM-SHA-512-PLUS",
            "tls-exporter",
            &rustls::version::TLS13,
        ),
        (
            Hash::Sha1,
            "SCRAM-SHA-1-PLUS",
            "tls-server-end-point",
            &rustls::version::TLS13,
        ),
        (
            Hash::Sha256,
            "SCRAM-SHA-256-PLUS",
            "tls-server-end-point",
            &rustls::version::TLS12,
        ),
    ];
    for (hash, mech, cb, version) in cases {
        let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[version])).await;
        let features = c.open_stream().await;
        assert!(
            features.contains(&format!("<mechanism>{mech}</mechanism>")),
            "{features}"
        );
        assert!(
            features.contains(&format!("type=\"{cb}\"")),
            "XEP-0440 lists {cb}: {features}"
        );
        let data = match cb {
            "tls-exporter" => c.tls_exporter.clone().expect("exporter"),
            _ => rookery_sasl::tls_server_end_point(&t.cert).expect("end point"),
        };
        let client = ScramClient::new(hash, "alice", "wonderland", Some((cb, data)));
        scram(&mut c, mech, client)
            .await
            .unwrap_or_else(|e| panic!("{mech} {cb}: {e}"));
    }
    t.stop().await;
}

#[tokio::test]
async fn tls12_offers_no_exporter() {
    let t = TestServer::start("").await;
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&rustls::version::TLS12])).await;
    let features = c.open_stream().await;
    assert!(!features.contains("tls-exporter"), "{features}");
    assert!(features.contains("tls-server-end-point"), "{features}");
    t.stop().await;
}

#[tokio::test]
async fn wrong_binding_data_is_refused() {
    let t = TestServer::start("").await;
    t.add_user("alice", "wonderland").await;
    let mut c = RawClient::connect_starttls(t.c2s, t.client_tls(&[&rustls::version::TLS13])).await;
    c.open_stream().await;
    // Binding data of another connection (a man in the middle would present exactly this).
    let client = ScramClient::new(
        Hash::Sha256,
        "alice",
        "wonderland",
        Some(("tls-exporter", vec![7u8; 32])),
    );
    let err = scram(&mut c, "SCRAM-SHA-256-PLUS", client)
        .await
        .expect_err("must fail");
    assert!(err.contains("<not-authorized"), "{err}");
    // The right binding on the same stream then works (after the slow-down).
    let data = c.tls_exporter.clone().expect("exporter");
    let client = ScramClient::new(
        Hash::Sha256,
        "alice",
        "wonderland",
        Some(("tls-exporter", data)),
    );
    scram(&mut c, "SCRAM-SHA-256-PLUS", client)
        .await
        .expect("succeeds");
    t.stop().await;
}

#[tokio::test]
async fn scram_without_plus_and_wrong_password() {
    let t = TestServer::start("").await;
    t.add_user("bob", "builder").await;
    let mut c = RawClient::connect_starttls(t.c2s, t.client_tls(&[&rustls::version::TLS13])).await;
    c.open_stream().await;
    let err = scram(
        &mut c,
        "SCRAM-SHA-1",
        ScramClient::new(Hash::Sha1, "bob", "wrong", None),
    )
    .await
    .expect_err("wrong password");
    assert!(err.contains("<not-authorized"), "{err}");
    scram(
        &mut c,
        "SCRAM-SHA-1",
        ScramClient::new(Hash::Sha1, "bob", "builder", None),
    )
    .await
    .expect("right password");
    // After success: a stream restart offers binding.
    c.send(&rookery_testkit::stream_header()).await;
    let features = c.read_until("</stream:features>").await;
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    t.stop().await;
}
