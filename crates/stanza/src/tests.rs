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
    // The kind does not depend on the content namespace; which one a stream takes is the
    // transport's business.
    assert_eq!(
        StanzaKind::of(&Element::new("message", ns::SERVER)),
        Some(StanzaKind::Message)
    );
    assert_eq!(StanzaKind::of(&Element::new("message", "urn:other")), None);
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

#[test]
fn a_stanza_carries_its_parsed_header() {
    let s = Stanza::parse(msg()).expect("stanza");
    assert_eq!(s.kind(), StanzaKind::Message);
    assert_eq!(s.message_type(), Some(MessageType::Chat));
    assert_eq!(s.id(), Some("m1"));
    assert_eq!(s.to().map(|j| j.as_str()), Some("b@example.org"));
    assert_eq!(s.from().map(|j| j.as_str()), Some("a@example.org/r"));
    let mut s = s;
    s.set_to(Jid::new("c@example.org/x").expect("jid"));
    assert_eq!(
        s.attr("to"),
        Some("c@example.org/x"),
        "attribute follows the header"
    );
    let bad = msg().with_attr("to", "@@");
    let rejected = Stanza::parse(bad).expect_err("malformed to");
    assert_eq!(rejected.reason, HeaderError::MalformedTo);
    assert_eq!(
        rejected.element.name(),
        "message",
        "the element is given back"
    );
}

#[test]
fn the_content_namespace_is_mapped_at_the_edge_and_on_output() {
    let server_ns = Element::new("message", ns::SERVER)
        .with_attr("to", "b@example.org")
        .with_attr("from", "x@remote.example")
        .with_child(Element::new("body", ns::SERVER).with_text("hi"))
        .with_child(
            Element::new("forwarded", "urn:xmpp:forward:0")
                .with_child(Element::new("message", ns::CLIENT)),
        );
    let s = Stanza::from_stream(server_ns, ns::SERVER).expect("stanza");
    assert_eq!(s.ns(), ns::CLIENT);
    assert!(s.has_child("body", ns::CLIENT));
    // A jabber:client stream refuses a jabber:server stanza, and names the namespaces.
    let err = Stanza::from_stream(Element::new("iq", ns::SERVER), ns::CLIENT).expect_err("ns");
    assert!(matches!(err.reason, HeaderError::WrongNamespace { .. }));
    let err = Stanza::from_stream(Element::new("foo", ns::CLIENT), ns::CLIENT).expect_err("kind");
    assert_eq!(err.reason, HeaderError::NotAStanza);

    // The same bytes go out on any stream: the server's namespace is the stream's default.
    let shared = SharedStanza::from(s);
    let mut on_client = Vec::new();
    let mut on_server = Vec::new();
    shared.write_to(&mut on_client, ns::CLIENT);
    shared.write_to(&mut on_server, ns::SERVER);
    assert_eq!(on_client, on_server);
    let text = String::from_utf8(on_client).expect("utf-8");
    assert!(text.starts_with("<message to="), "{text}");
    assert!(text.contains("<body>hi</body>"), "{text}");
    assert!(
        text.contains("<message xmlns=\"jabber:client\"/>"),
        "a forwarded stanza keeps its namespace: {text}"
    );
}

#[test]
fn a_shared_stanza_is_serialised_once_for_all_its_recipients() {
    let one = SharedStanza::from(msg());
    let mut out = Vec::new();
    one.write_to(&mut out, ns::CLIENT);
    assert!(
        !one.is_serialised(),
        "a stanza nobody else holds is written directly"
    );

    let many = SharedStanza::from(msg());
    let copies: Vec<SharedStanza> = (0..3).map(|_| many.clone()).collect();
    let mut first = Vec::new();
    copies[0].write_to(&mut first, ns::CLIENT);
    assert!(many.is_serialised());
    for c in &copies[1..] {
        let mut again = Vec::new();
        c.write_to(&mut again, ns::CLIENT);
        assert_eq!(again, first);
    }
    assert_eq!(first, out);
    drop(copies);
    assert_eq!(many.into_element(), msg());
}

#[test]
fn a_broadcast_is_one_element_serialised_once_with_each_recipients_address() {
    let presence = Element::new("presence", ns::CLIENT)
        .with_attr("from", "a@example.org/r")
        .with_child(Element::new("show", ns::CLIENT).with_text("away"));
    let stanza = Stanza::parse(presence).expect("stanza");
    let copies: Vec<SharedStanza> = (0..1000)
        .map(|i| {
            let to = Jid::new(&format!("c{i}@example.org")).expect("jid");
            SharedStanza::from(stanza.readdressed(to))
        })
        .collect();
    drop(stanza);
    for (i, copy) in copies.iter().enumerate() {
        assert!(copy.shares_element_with(&copies[0]));
        let mut out = Vec::new();
        copy.write_to(&mut out, ns::CLIENT);
        let text = String::from_utf8(out).expect("utf-8");
        // An address the element lacks is written first.
        let expected = Element::new("presence", ns::CLIENT)
            .with_attr("to", format!("c{i}@example.org"))
            .with_attr("from", "a@example.org/r")
            .with_child(Element::new("show", ns::CLIENT).with_text("away"));
        assert_eq!(text, expected.to_xml(ns::CLIENT));
    }
    assert_eq!(copies[0].serialisations(), 1, "one serialisation for 1,000");
    assert_eq!(copies[7].to(), Some("c7@example.org"));
    assert_eq!(
        copies[7].clone().into_element().attr("to"),
        Some("c7@example.org")
    );
}

#[test]
fn a_readdressed_stanza_declares_its_namespace_with_its_own_address() {
    let stanza = Stanza::parse(msg()).expect("stanza");
    let copy = SharedStanza::from(stanza.readdressed(Jid::new("c@example.org").expect("jid")));
    let mut out = Vec::new();
    copy.write_declared(&mut out, "");
    let mut expected = msg();
    expected.set_attr("to", "c@example.org");
    assert_eq!(String::from_utf8(out).expect("utf-8"), expected.to_xml(""));
    assert!(
        expected.to_xml("").contains("xmlns=\"jabber:client\"")
            || expected.to_xml("").contains("xmlns='jabber:client'")
    );
    // The shared element itself keeps the first recipient's address.
    let mut plain = Vec::new();
    SharedStanza::from(stanza).write_declared(&mut plain, "");
    assert_eq!(String::from_utf8(plain).expect("utf-8"), msg().to_xml(""));
}

#[test]
fn a_readdressed_stanza_is_copied_with_its_address_when_changed() {
    let original = Stanza::parse(msg()).expect("stanza");
    let mut other = original.readdressed(Jid::new("c@example.org").expect("jid"));
    assert_eq!(other.to().map(Jid::as_str), Some("c@example.org"));
    // The answer goes by the header, not by the shared element's attribute.
    let reply = other
        .error_reply(&StanzaError::service_unavailable())
        .expect("reply");
    assert_eq!(reply.attr("from"), Some("c@example.org"));
    assert_eq!(reply.attr("to"), Some("a@example.org/r"));
    // Changing the payload copies the element, with the header's address written into it.
    other
        .element_mut()
        .push_child(Element::new("x", "urn:example"));
    assert_eq!(other.attr("to"), Some("c@example.org"));
    assert_eq!(original.attr("to"), Some("b@example.org"));
    assert!(!original.has_child("x", "urn:example"));
    let mut out = Vec::new();
    SharedStanza::from(other.clone()).write_to(&mut out, ns::CLIENT);
    assert_eq!(out, other.into_element().to_xml(ns::CLIENT).into_bytes());
    // One recipient: written directly, nothing kept.
    let one = SharedStanza::from(original);
    let mut out = Vec::new();
    one.write_to(&mut out, ns::CLIENT);
    assert!(!one.is_serialised());
    assert_eq!(one.serialisations(), 1);
}

#[test]
fn random_ids_have_the_length_asked_and_every_character_equally_likely() {
    for len in [0, 1, 16, 33, 100] {
        let id = crate::random_id(len);
        assert_eq!(id.len(), len);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    }
    assert_ne!(crate::random_id(16), crate::random_id(16));
    // 62,000 characters: each of the 62 about 1,000 times (standard deviation about 31).
    let mut counts = std::collections::HashMap::new();
    for _ in 0..1000 {
        for c in crate::random_id(62).chars() {
            *counts.entry(c).or_insert(0u32) += 1;
        }
    }
    assert_eq!(counts.len(), 62);
    assert!(
        counts.values().all(|&n| (800..1200).contains(&n)),
        "{counts:?}"
    );
}

/// The borrowed bare part is the bare JID's string, with or without a node or a resource,
/// and with a resource that holds `/` and `@`.
#[test]
fn bare_str_is_the_bare_jid() {
    for s in [
        "juliet@example.com/balcony",
        "juliet@example.com",
        "example.com/res",
        "example.com",
        "juliet@example.com/a/b@c",
        "[::1]/x",
    ] {
        let jid = Jid::new(s).expect("valid");
        assert_eq!(bare_str(&jid), jid.to_bare().as_str(), "{s}");
    }
}
