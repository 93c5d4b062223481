//! Full SCRAM exchanges between the server and the independent test client.

mod common;

use common::{exchange, Client};
use rookery_sasl::{
    ChannelBindingType, ChannelBindings, HashAlg, Mechanism, SaslError, ScramCredentials,
    ServerSession, Step,
};

const ITER: u32 = 64; // low count keeps debug-mode tests fast; the server uses the record's count

fn creds(hash: HashAlg, password: &str) -> ScramCredentials {
    ScramCredentials::derive(hash, password, b"0123456789abcdef", ITER).expect("derive")
}

fn bindings() -> ChannelBindings {
    ChannelBindings {
        tls_exporter: Some(vec![0xE5; 32]),
        tls_server_end_point: Some(vec![0x5E; 32]),
    }
}

fn lookup(
    hash: HashAlg,
    user: &'static str,
    password: &'static str,
) -> impl FnOnce(&str) -> Option<ScramCredentials> {
    move |u| (u == user).then(|| creds(hash, password))
}

fn assert_success(o: &common::Outcome, user: &str) {
    match &o.result {
        Ok(Step::Success {
            username,
            additional_data,
            ..
        }) => {
            assert_eq!(username, user);
            assert!(additional_data.is_some());
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn all_hashes_without_channel_binding() {
    for hash in HashAlg::ALL {
        for (flag, plus_adv) in [("n,,", false), ("n,,", true), ("y,,", false)] {
            let mech = Mechanism::scram(hash, false);
            let server = ServerSession::new(mech, bindings(), plus_adv, true);
            let mut c = Client::new(hash, "juliet", "r0meo").with_gs2(flag, b"");
            let o = exchange(server, &mut c, lookup(hash, "juliet", "r0meo"));
            assert_success(&o, "juliet");
        }
    }
}

#[test]
fn all_hashes_with_both_channel_binding_types() {
    for hash in HashAlg::ALL {
        for ty in [
            ChannelBindingType::TlsExporter,
            ChannelBindingType::TlsServerEndPoint,
        ] {
            let cb = bindings();
            let data = cb.get(ty).expect("available").to_vec();
            let server = ServerSession::new(Mechanism::scram(hash, true), cb, true, true);
            let mut c =
                Client::new(hash, "juliet", "r0meo").with_gs2(&format!("p={},,", ty.name()), &data);
            let o = exchange(server, &mut c, lookup(hash, "juliet", "r0meo"));
            assert_success(&o, "juliet");
        }
    }
}

#[test]
fn authzid_is_returned() {
    let server = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha256, "juliet", "r0meo")
        .with_gs2("n,a=admin=2Cx=3Dy@example.org,", b"");
    let o = exchange(server, &mut c, lookup(HashAlg::Sha256, "juliet", "r0meo"));
    match o.result {
        Ok(Step::Success { authzid, .. }) => {
            assert_eq!(authzid.as_deref(), Some("admin,x=y@example.org"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn username_escaping_and_saslprep() {
    // The client escapes ',' and '='; the server decodes them.
    let server = ServerSession::new(Mechanism::ScramSha1, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha1, "a,b=c", "pw");
    let o = exchange(server, &mut c, lookup(HashAlg::Sha1, "a,b=c", "pw"));
    assert_success(&o, "a,b=c");

    // SASLprep: U+00AD (soft hyphen) maps to nothing, in usernames and passwords.
    let record = ScramCredentials::derive(HashAlg::Sha256, "I\u{AD}X", b"salt", ITER).expect("d");
    let server = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha256, "us\u{AD}er", "IX");
    let o = exchange(server, &mut c, move |u| (u == "user").then_some(record));
    assert_success(&o, "user");
}

#[test]
fn wrong_password_fails_not_authorized() {
    for hash in HashAlg::ALL {
        let server = ServerSession::new(Mechanism::scram(hash, false), bindings(), false, true);
        let mut c = Client::new(hash, "juliet", "wrong");
        let o = exchange(server, &mut c, lookup(hash, "juliet", "r0meo"));
        assert_eq!(o.result, Err(SaslError::NotAuthorized));
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
    }
}

#[test]
fn unknown_user_fails_like_wrong_password_with_stable_salt() {
    for hash in HashAlg::ALL {
        let run = |user: &str| {
            let server = ServerSession::new(Mechanism::scram(hash, false), bindings(), false, true);
            let mut c = Client::new(hash, user, "whatever");
            exchange(server, &mut c, |_| None)
        };
        let a = run("nobody");
        let b = run("nobody");
        let other = run("somebody-else");
        assert_eq!(a.result, Err(SaslError::NotAuthorized));
        assert_eq!(b.result, Err(SaslError::NotAuthorized));
        let sa = common::parse_server_first(a.server_first.as_ref().expect("server-first"));
        let sb = common::parse_server_first(b.server_first.as_ref().expect("server-first"));
        let so = common::parse_server_first(other.server_first.as_ref().expect("sf"));
        assert_eq!(sa.salt, sb.salt, "same fake salt on repeated probes");
        assert_eq!(
            sa.salt.len(),
            rookery_sasl::SALT_LEN,
            "looks like a real salt"
        );
        assert_ne!(sa.salt, so.salt, "fake salt depends on the username");
        assert_eq!(sa.iterations, ScramCredentials::MIN_ITERATIONS);
        assert_ne!(sa.nonce, sb.nonce, "server nonces are fresh");
    }
}

#[test]
fn unknown_user_secret_and_iterations_are_configurable() {
    let run = |secret: &[u8]| {
        let server = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true)
            .with_unknown_user_secret(secret)
            .with_unknown_user_iterations(10_000);
        let mut c = Client::new(HashAlg::Sha256, "ghost", "x");
        let o = exchange(server, &mut c, |_| None);
        assert_eq!(o.result, Err(SaslError::NotAuthorized));
        common::parse_server_first(o.server_first.as_ref().expect("sf"))
    };
    let a = run(b"secret-1");
    let b = run(b"secret-1");
    let c = run(b"secret-2");
    assert_eq!(a.salt, b.salt);
    assert_ne!(a.salt, c.salt);
    assert_eq!(a.iterations, 10_000);
}

#[test]
fn downgrade_y_flag_when_plus_advertised() {
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), true, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo").with_gs2("y,,", b"");
    let err = s.start(&c.first()).expect_err("downgrade");
    assert_eq!(err, SaslError::Downgrade);
    assert_eq!(err.condition(), "not-authorized");
}

#[test]
fn channel_binding_flag_mismatches_with_mechanism() {
    // p= with a non-PLUS mechanism
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), true, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo").with_gs2("p=tls-exporter,,", b"");
    assert!(matches!(
        s.start(&c.first()),
        Err(SaslError::MalformedRequest(_))
    ));
    // PLUS mechanism with n or y
    for flag in ["n,,", "y,,"] {
        let mut s = ServerSession::new(Mechanism::ScramSha256Plus, bindings(), true, true);
        let c = Client::new(HashAlg::Sha256, "juliet", "r0meo").with_gs2(flag, b"");
        assert!(s.start(&c.first()).is_err(), "{flag}");
    }
}

#[test]
fn unknown_or_unavailable_channel_binding_type() {
    let mut s = ServerSession::new(Mechanism::ScramSha256Plus, bindings(), true, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo").with_gs2("p=tls-unique,,", b"");
    let err = s.start(&c.first()).expect_err("unknown cb");
    assert_eq!(
        err,
        SaslError::UnsupportedChannelBinding("tls-unique".into())
    );

    let only_endpoint = ChannelBindings {
        tls_exporter: None,
        tls_server_end_point: Some(vec![1; 32]),
    };
    assert_eq!(
        only_endpoint.supported(),
        vec![ChannelBindingType::TlsServerEndPoint]
    );
    let mut s = ServerSession::new(Mechanism::ScramSha256Plus, only_endpoint, true, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo").with_gs2("p=tls-exporter,,", b"");
    assert!(matches!(
        s.start(&c.first()),
        Err(SaslError::UnsupportedChannelBinding(_))
    ));
}

#[test]
fn channel_binding_data_mismatch() {
    // Client bound to different TLS data (e.g. a MITM terminating TLS).
    let server = ServerSession::new(Mechanism::ScramSha512Plus, bindings(), true, true);
    let mut c =
        Client::new(HashAlg::Sha512, "juliet", "r0meo").with_gs2("p=tls-exporter,,", &[0xAA; 32]);
    let o = exchange(server, &mut c, lookup(HashAlg::Sha512, "juliet", "r0meo"));
    assert_eq!(o.result, Err(SaslError::ChannelBindingMismatch));

    // Non-PLUS: c= must still be exactly base64(gs2-header).
    let server = ServerSession::new(Mechanism::ScramSha1, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha1, "juliet", "r0meo");
    c.cbind_override = Some(b"y,,".to_vec());
    let o = exchange(server, &mut c, lookup(HashAlg::Sha1, "juliet", "r0meo"));
    assert_eq!(o.result, Err(SaslError::ChannelBindingMismatch));

    // The header in c= differs from the one sent (authzid stripped).
    let server = ServerSession::new(Mechanism::ScramSha1, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha1, "juliet", "r0meo").with_gs2("n,a=admin,", b"");
    c.cbind_override = Some(b"n,,".to_vec());
    let o = exchange(server, &mut c, lookup(HashAlg::Sha1, "juliet", "r0meo"));
    assert_eq!(o.result, Err(SaslError::ChannelBindingMismatch));
}

#[test]
fn nonce_must_match() {
    let server = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
    c.nonce_override = Some(format!("{}forged", c.client_nonce));
    let o = exchange(server, &mut c, lookup(HashAlg::Sha256, "juliet", "r0meo"));
    assert_eq!(o.result, Err(SaslError::NotAuthorized));
}

/// Run start + credentials, return the server-first; panics on failure.
fn to_server_first(hash: HashAlg, s: &mut ServerSession, first: &[u8]) -> Vec<u8> {
    assert!(matches!(s.start(first), Ok(Step::NeedCredentials { .. })));
    match s.credentials(Some(creds(hash, "r0meo"))) {
        Ok(Step::Challenge(c)) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_client_first_messages() {
    let cases: &[&[u8]] = &[
        b"n,,",
        b"n,",
        b"n",
        b"x,,n=user,r=abc",
        b"n,,n=user",
        b"n,,r=abc,n=user",
        b"n,,n=,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2,r=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a\x7fb",
        b"n,,m=ext,n=user,r=abc",
        b"n,,n=user,r=abc,m=ext",
        b"n,,n=user,r=abc,=x",
        b"n,b=x,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"p=,,n=user,r=abc",
        b"p=bad name,,n=user,r=abc",
        b"n,,n=\xff\xfe,r=abc",
        b"n,,n=user\x00,r=abc",
        b"n,,n=\xe2\x80\xae,r=abc", // RFC 4013 prohibited (bidi control)
    ];
    for &case in cases {
        let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
        let r = s.start(case);
        assert!(
            matches!(r, Err(SaslError::MalformedRequest(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(case)
        );
    }
    // Too long.
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let long = format!("n,,n=user,r={}", "a".repeat(5000));
    assert!(s.start(long.as_bytes()).is_err());
}

#[test]
fn extensions_are_ignored_but_m_is_rejected() {
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    assert!(matches!(
        s.start(b"n,,n=juliet,r=abc,x=ext"),
        Ok(Step::NeedCredentials { .. })
    ));
}

#[test]
fn malformed_client_final_messages() {
    let cases: &[&[u8]] = &[
        b"",
        b"c=biws",
        b"c=biws,r=abc",
        b"c=biws,p=AAAA",
        b"r=abc,c=biws,p=AAAA",
        b"c=!!!,r=abc,p=AAAA",
        b"c=biws,r=abc,p=!!!",
        b"c=biws,r=abc,m=x,p=AAAA",
        b"c=biws,r=abc,p=AAAA,x=y",
        b"\xff\xfe",
    ];
    for &case in cases {
        let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
        let c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
        to_server_first(HashAlg::Sha256, &mut s, &c.first());
        let r = s.step(case);
        assert!(
            matches!(r, Err(SaslError::MalformedRequest(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(case)
        );
        // The session is finished after an error.
        assert!(s.step(case).is_err());
    }
}

#[test]
fn proof_of_wrong_length_is_not_authorized() {
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
    let sf = to_server_first(HashAlg::Sha256, &mut s, &c.first());
    let nonce = common::parse_server_first(&sf).nonce;
    let msg = format!("c=biws,r={nonce},p=AAAA");
    assert_eq!(s.step(msg.as_bytes()), Err(SaslError::NotAuthorized));
}

#[test]
fn empty_initial_response_asks_for_it() {
    for mech in [Mechanism::ScramSha256, Mechanism::Plain] {
        let mut s = ServerSession::new(mech, bindings(), false, true);
        assert_eq!(s.start(b""), Ok(Step::Challenge(Vec::new())));
        assert!(matches!(s.step(b""), Err(SaslError::MalformedRequest(_))));
    }
    let server = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let mut s = server;
    assert_eq!(s.start(b""), Ok(Step::Challenge(Vec::new())));
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
    assert!(matches!(
        s.step(&c.first()),
        Ok(Step::NeedCredentials { .. })
    ));
}

#[test]
fn out_of_sequence_calls_fail() {
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    assert!(s.credentials(None).is_err());
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    assert!(s.step(b"c=biws,r=a,p=AAAA").is_err());
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
    assert!(s.start(&c.first()).is_ok());
    assert!(s.start(&c.first()).is_err());
}

#[test]
fn record_for_wrong_hash_or_corrupt_is_internal_error() {
    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    let c = Client::new(HashAlg::Sha256, "juliet", "r0meo");
    s.start(&c.first()).expect("start");
    let r = s.credentials(Some(creds(HashAlg::Sha1, "r0meo")));
    assert!(matches!(r, Err(SaslError::Internal(_))));
    assert_eq!(
        SaslError::Internal(String::new()).condition(),
        "temporary-auth-failure"
    );

    let mut s = ServerSession::new(Mechanism::ScramSha256, bindings(), false, true);
    s.start(&c.first()).expect("start");
    let mut bad = creds(HashAlg::Sha256, "r0meo");
    bad.stored_key.truncate(5);
    assert!(matches!(
        s.credentials(Some(bad)),
        Err(SaslError::Internal(_))
    ));
}

#[test]
fn iteration_count_comes_from_the_record() {
    let record = ScramCredentials::derive(HashAlg::Sha1, "r0meo", b"NaCl", 4321).expect("derive");
    let server = ServerSession::new(Mechanism::ScramSha1, bindings(), false, true);
    let mut c = Client::new(HashAlg::Sha1, "juliet", "r0meo");
    let o = exchange(server, &mut c, move |_| Some(record));
    assert_success(&o, "juliet");
    let sf = common::parse_server_first(o.server_first.as_ref().expect("sf"));
    assert_eq!(sf.iterations, 4321);
    assert_eq!(sf.salt, b"NaCl");
}

#[test]
fn names_round_trip() {
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(m.name()), Some(m));
        assert_eq!(m.is_plus(), m.name().ends_with("-PLUS"));
        if let Some(h) = m.hash() {
            assert!(m.name().starts_with(&format!("SCRAM-{}", h.name())));
            assert_eq!(Mechanism::scram(h, m.is_plus()), m);
        }
    }
    assert_eq!(Mechanism::ALL[0].name(), "SCRAM-SHA-512-PLUS");
    assert_eq!(Mechanism::ALL[6].name(), "PLAIN");
    assert_eq!(Mechanism::from_name("scram-sha-1"), None);
    for h in HashAlg::ALL {
        assert_eq!(HashAlg::from_name(h.name()), Some(h));
    }
    assert_eq!(HashAlg::from_name("MD5"), None);
    for t in [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ] {
        assert_eq!(ChannelBindingType::from_name(t.name()), Some(t));
    }
    assert_eq!(ChannelBindingType::from_name("tls-unique"), None);
    assert!(ChannelBindings::default().supported().is_empty());
    assert_eq!(
        bindings().supported(),
        vec![
            ChannelBindingType::TlsExporter,
            ChannelBindingType::TlsServerEndPoint
        ]
    );
}

#[test]
fn generated_credentials() {
    let all =
        rookery_sasl::generate_all("secret", ScramCredentials::MIN_ITERATIONS).expect("generate");
    assert_eq!(all.len(), 3);
    for (c, h) in all.iter().zip(HashAlg::ALL) {
        assert_eq!(c.hash, h);
        assert_eq!(c.salt.len(), 16);
        assert_eq!(c.stored_key.len(), h.output_len());
        assert_eq!(c.server_key.len(), h.output_len());
        assert!(c.validate().is_ok());
        assert!(c.verify_password("secret"));
        assert!(!c.verify_password("Secret"));
    }
    assert_ne!(all[0].salt, all[1].salt);
    let again = ScramCredentials::generate(HashAlg::Sha1, "secret", 4096).expect("gen");
    assert_ne!(again.salt, all[0].salt, "salts are random");
    assert!(ScramCredentials::generate(HashAlg::Sha1, "x", 100).is_err());
    // A password SASLprep refuses cannot be set.
    assert!(ScramCredentials::derive(HashAlg::Sha1, "a\u{0007}b", b"s", 1).is_err());
}
