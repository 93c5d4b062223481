//! Standalone element parsing, then everything the server derives from a stanza: kinds,
//! types, error replies and serialisation, which must round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rookery_stanza::{error_reply, IqType, MessageType, PresenceType, StanzaError, StanzaKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(el) = rookery_xml::parse_element(text) else {
        return;
    };
    let _ = StanzaKind::of(&el);
    let _ = IqType::of(&el);
    let _ = MessageType::of(&el);
    let _ = PresenceType::of(&el);
    let _ = StanzaError::from_stanza(&el);
    let _ = error_reply(&el, &StanzaError::service_unavailable());
    let again = rookery_xml::parse_element(&el.to_xml("")).expect("serialised output parses");
    assert_eq!(again, el);
});
