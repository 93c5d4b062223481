use super::*;
use rookery_xml::Element;

fn msg() -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", "a@example.org/r")
        .with_attr("to", "b@example.org")
        .with_attr("id", "m1")
        .with_attr("type", "chat")
        .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
}

#[test]
fn error_reply_swaps_addresses_and_keeps_id() {
    let e = error_reply(&msg(), &StanzaError::service_unavailable()).expect("reply");
    assert_eq!(e.name(), "message");
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(e.attr("to"), Some("a@example.org/r"));
    assert_eq!(e.attr("from"), Some("b@example.org"));
    assert_eq!(e.attr("id"), Some("m1"));
    let parsed = StanzaError::from_stanza(&e).expect("error child");
    assert_eq!(parsed.condition, StanzaErrorCondition::ServiceUnavailable);
    assert_eq!(parsed.error_type, ErrorType::Cancel);
}

#[test]
fn errors_are_never_answered_with_errors() {
    let mut m = msg();
    m.set_attr("type", "error");
    assert!(error_reply(&m, &StanzaError::service_unavailable()).is_none());
}

#[test]
fn iq_result_copies_id() {
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "q")
        .with_attr("from", "a@x/r")
        .with_attr("to", "x");
    let r = iq_result(&iq, None);
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(r.attr("id"), Some("q"));
    assert_eq!(r.attr("to"), Some("a@x/r"));
    assert_eq!(r.attr("from"), Some("x"));
}

#[test]
fn stanza_kinds_and_types() {
    assert_eq!(StanzaKind::of(&msg()), Some(StanzaKind::Message));
    assert_eq!(StanzaKind::of(&Element::new("message", ns::SERVER)), None);
    assert_eq!(MessageType::of(&msg()), MessageType::Chat);
    let p = Element::new("presence", ns::CLIENT).with_attr("type", "bogus");
    assert_eq!(PresenceType::of(&p), None);
    assert_eq!(
        PresenceType::of(&Element::new("presence", ns::CLIENT)),
        Some(PresenceType::Available)
    );
}

#[test]
fn condition_names_round_trip() {
    for c in [
        "conflict",
        "system-shutdown",
        "policy-violation",
        "invalid-from",
    ] {
        assert_eq!(
            StreamErrorCondition::from_name(c).map(|c| c.as_str()),
            Some(c)
        );
    }
    let el = StreamErrorCondition::Conflict.to_element(Some("replaced"));
    assert!(el.has_child("conflict", ns::STREAM_ERRORS));
}

#[test]
fn jids_are_prepared() {
    // RFC 7622: the localpart is case-folded, the resource is not.
    let j = parse_jid("Juliet@Example.COM/Balcony").expect("valid");
    assert_eq!(j.as_str(), "juliet@example.com/Balcony");
    assert!(parse_jid("a@b@c").is_err());
    assert!(parse_jid("").is_err());
    assert!(parse_jid("@example.com").is_err());
}

/// Found by the `jid` fuzz target: a compatibility character that normalises to capitals
/// made preparation non-idempotent ("co\u{337a}ec" → "coIUec" → "coiuec").
#[test]
fn jid_with_square_iu_is_refused_where_identities_are_made() {
    let raw = "co\u{337a}ec";
    for s in [raw.to_owned(), format!("{raw}@x"), format!("a@{raw}")] {
        assert!(parse_jid(&s).is_err(), "{s:?} must be refused");
    }
    // In a resource (OpaqueString, case kept) the prepared form is stable and accepted.
    let full = parse_jid(&format!("a@x/{raw}")).expect("resource");
    assert!(is_stable(&full));
    assert!(is_stable(
        &parse_jid("alice@example.org/phone").expect("plain")
    ));
}
