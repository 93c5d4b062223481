//! JID parsing and preparation (RFC 7622): never panics, and preparing twice changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rookery_stanza::Jid;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jid) = Jid::new(text) {
        let again = Jid::new(jid.as_str()).expect("a prepared JID parses");
        assert_eq!(again, jid);
        let _ = jid.to_bare();
    }
});
