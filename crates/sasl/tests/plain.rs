//! PLAIN (RFC 4616).

use rookery_sasl::{
    ChannelBindings, HashAlg, Mechanism, SaslError, ScramCredentials, ServerSession, Step,
};

fn record() -> ScramCredentials {
    ScramCredentials::derive(HashAlg::Sha256, "p\u{e4}ss word", b"salty", 32).expect("derive")
}

fn session() -> ServerSession {
    ServerSession::new(Mechanism::Plain, ChannelBindings::default(), false, true)
}

#[test]
fn good_password() {
    for (msg, authz) in [
        (&b"\0juliet\0p\xc3\xa4ss word"[..], None),
        (
            &b"admin@example.org\0juliet\0p\xc3\xa4ss word"[..],
            Some("admin@example.org"),
        ),
    ] {
        let mut s = session();
        match s.start(msg).expect("start") {
            Step::NeedCredentials { username, authzid } => {
                assert_eq!(username, "juliet");
                assert_eq!(authzid.as_deref(), authz);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.credentials(Some(record())),
            Ok(Step::Success {
                username: "juliet".into(),
                authzid: authz.map(str::to_owned),
                additional_data: None
            })
        );
    }
}

#[test]
fn any_hash_record_verifies() {
    for h in HashAlg::ALL {
        let mut s = session();
        s.start(b"\0juliet\0pw").expect("start");
        let rec = ScramCredentials::derive(h, "pw", b"salt", 16).expect("derive");
        assert!(matches!(s.credentials(Some(rec)), Ok(Step::Success { .. })));
    }
}

#[test]
fn bad_password_and_unknown_user() {
    let mut s = session();
    s.start(b"\0juliet\0wrong").expect("start");
    assert_eq!(s.credentials(Some(record())), Err(SaslError::NotAuthorized));

    let mut s = session();
    s.start(b"\0nobody\0wrong").expect("start");
    assert_eq!(s.credentials(None), Err(SaslError::NotAuthorized));
}

#[test]
fn username_is_saslprepped() {
    let mut s = session();
    match s.start("\0jul\u{AD}iet\0x".as_bytes()).expect("start") {
        Step::NeedCredentials { username, .. } => assert_eq!(username, "juliet"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed() {
    let cases: &[&[u8]] = &[
        b"juliet",
        b"\0juliet",
        b"\0\0pw",
        b"\0juliet\0",
        b"\0juliet\0pw\0extra",
        b"\0\xff\0pw",
        b"\0juliet\0\xff",
        b"\xff\0juliet\0pw",
        b"\0ju\x07liet\0pw",
    ];
    for &c in cases {
        let mut s = session();
        assert!(
            matches!(s.start(c), Err(SaslError::MalformedRequest(_))),
            "{c:?}"
        );
    }
    let mut s = session();
    assert!(s.start(&vec![b'a'; 5000]).is_err());
}

#[test]
fn refused_without_tls() {
    let mut s = ServerSession::new(Mechanism::Plain, ChannelBindings::default(), false, false);
    let err = s.start(b"\0juliet\0pw").expect_err("no tls");
    assert_eq!(err, SaslError::EncryptionRequired);
    assert_eq!(err.condition(), "encryption-required");
}

#[test]
fn empty_initial_response_then_response() {
    let mut s = session();
    assert_eq!(s.start(b""), Ok(Step::Challenge(vec![])));
    assert!(matches!(
        s.step(b"\0juliet\0wrong"),
        Ok(Step::NeedCredentials { .. })
    ));
    assert_eq!(s.credentials(Some(record())), Err(SaslError::NotAuthorized));
}

#[test]
fn the_proved_password_is_handed_over_once_and_only_after_success() {
    let mut s = session();
    s.start(b"\0juliet\0p\xc3\xa4ss word").expect("start");
    assert!(matches!(
        s.credentials(Some(record())),
        Ok(Step::Success { .. })
    ));
    assert_eq!(
        s.take_verified_password().as_deref(),
        Some("p\u{e4}ss word")
    );
    assert_eq!(s.take_verified_password(), None, "once");

    let mut s = session();
    s.start(b"\0juliet\0wrong").expect("start");
    assert!(s.credentials(Some(record())).is_err());
    assert_eq!(s.take_verified_password(), None, "not for a wrong password");
}
