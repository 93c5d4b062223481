//! The stream parser fed arbitrary bytes in arbitrary chunkings: it must never panic, and the
//! events it yields must not depend on where the input was split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rookery_xml::{Limits, StreamParser};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the chunk size, the rest is the stream.
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_stanza_bytes: 4096,
        max_depth: 16,
        max_attributes: 8,
        max_attribute_bytes: 256,
        max_header_bytes: 1024,
    };
    let mut whole = StreamParser::new(limits.clone());
    let mut whole_events = Vec::new();
    let whole_result = whole.feed(input, &mut whole_events);

    let mut chunked = StreamParser::new(limits);
    let mut chunked_events = Vec::new();
    let mut chunked_result = Ok(());
    for chunk in input.chunks(usize::from(split.max(1))) {
        chunked_result = chunked.feed(chunk, &mut chunked_events);
        if chunked_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_events, chunked_events);
    assert_eq!(whole_result.is_err(), chunked_result.is_err());
});
