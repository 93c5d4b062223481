//! JID parsing and preparation (RFC 7622): never panics, and what the server accepts
//! (`parse_jid`) prepares to a form that preparing again leaves unchanged. The raw `jid`
//! crate is not idempotent for some compatibility characters (seed
//! `square-iu-non-idempotent`); `parse_jid` refuses those.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rookery_stanza::{parse_jid, Jid};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Jid::new(text);
    if let Ok(jid) = parse_jid(text) {
        let again = Jid::new(jid.as_str()).expect("a prepared JID parses");
        assert_eq!(again, jid);
        let _ = jid.to_bare();
    }
});
