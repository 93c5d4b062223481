//! Property tests: the parser never panics and is insensitive to chunking;
//! serialization round-trips arbitrary element trees.

use proptest::prelude::*;
use rookery_xml::{parse_element, Element, Limits, StreamEvent, StreamParser, XmlError};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";

/// Feed `data` split at the given (sorted, deduplicated, in-range) points.
fn feed_split(
    limits: &Limits,
    data: &[u8],
    splits: &[usize],
) -> (Vec<StreamEvent>, Result<(), XmlError>) {
    let mut p = StreamParser::new(limits.clone());
    let mut evs = Vec::new();
    let mut last = 0;
    let mut points: Vec<usize> = splits.iter().map(|s| s % (data.len() + 1)).collect();
    points.sort_unstable();
    points.push(data.len());
    for pt in points {
        if pt < last {
            continue;
        }
        if let Err(e) = p.feed(&data[last..pt], &mut evs) {
            // the parser stays dead
            assert_eq!(p.feed(b"<a/>", &mut evs), Err(e.clone()));
            return (evs, Err(e));
        }
        last = pt;
    }
    (evs, Ok(()))
}

/// 512 cases unless `PROPTEST_CASES` says otherwise (for longer fuzz runs).
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 512;
    }
    c
}

fn small_limits() -> Limits {
    Limits {
        max_stanza_bytes: 300,
        max_depth: 4,
        max_attributes: 3,
        max_attribute_bytes: 40,
        max_header_bytes: 200,
    }
}

/// XML-ish fragments, so that random sequences get deep into the grammar.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let frags: Vec<&'static [u8]> = vec![
        b"<",
        b">",
        b"/",
        b"</",
        b"/>",
        b"a",
        b"b",
        b"stream",
        b":",
        b"=",
        b"'",
        b"\"",
        b"&",
        b";",
        b"&amp;",
        b"&lt;",
        b"&#",
        b"&#x",
        b"41",
        b"x",
        b"!",
        b"?",
        b"-",
        b"--",
        b"[",
        b"]",
        b"]]>",
        b"<![CDATA[",
        b"<!--",
        b"-->",
        b"<?xml",
        b"<!DOCTYPE",
        b" ",
        b"\n",
        b"\r",
        b"\t",
        b"xmlns",
        b"xmlns:a",
        b"a:b",
        b"'urn:a'",
        b"xml:lang",
        b"\xc3\xa9",
        b"\xc3",
        b"\xa9",
        b"\xff",
        b"\x00",
        b"\xf0\x9f\x98\x80",
        b"\xef\xbf\xbf",
        b"<message>",
        b"</message>",
        b"<body>",
        b"</body>",
        b"</stream:stream>",
        b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    ];
    prop_oneof![
        4 => prop::sample::select(frags).prop_map(|f| f.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ]
}

fn xmlish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..80).prop_map(|v| v.concat())
}

fn xml_text(min: usize) -> impl Strategy<Value = String> + Clone {
    let ch = prop_oneof![
        3 => prop::sample::select(vec![
            '&', '<', '>', '"', '\'', '\r', '\n', '\t', ' ', ']', ';', '#', 'a', 'Z', '\u{e9}',
            '\u{1F600}', '\u{FFFD}', '\u{85}', '\u{2028}',
        ]),
        // any character XML 1.0 can represent
        1 => prop_oneof![
            proptest::char::range(' ', '\u{D7FF}'),
            proptest::char::range('\u{E000}', '\u{FFFD}'),
            proptest::char::range('\u{10000}', '\u{10FFFF}'),
        ],
    ];
    prop::collection::vec(ch, min..12).prop_map(|v| v.into_iter().collect())
}

#[derive(Debug, Clone)]
enum GenNode {
    Text(String),
    El(Element),
}

fn element_tree() -> impl Strategy<Value = Element> {
    let name = prop::sample::select(vec![
        "a",
        "b",
        "message",
        "x-y",
        "_z",
        "\u{e9}t\u{e9}",
        "a.b1",
    ]);
    let ns = prop::sample::select(vec![
        "",
        "jabber:client",
        "urn:a",
        "urn:b&c<\"'>",
        "http://example.com/ns#x",
    ]);
    let attr_name = prop::sample::select(vec![
        "a",
        "b",
        "to",
        "xml:lang",
        "{urn:a}x",
        "{urn:b}x",
        "{urn:a}y",
        "{jabber:client}to",
    ]);
    let attrs = prop::collection::vec((attr_name, xml_text(0)), 0..4);
    let leaf = (name.clone(), ns.clone(), attrs.clone()).prop_map(|(n, ns, attrs)| {
        let mut e = Element::new(n, ns);
        for (k, v) in attrs {
            e.set_attr(k, v);
        }
        e
    });
    leaf.prop_recursive(4, 32, 4, move |inner| {
        let node = prop_oneof![
            xml_text(1).prop_map(GenNode::Text),
            inner.prop_map(GenNode::El),
        ];
        (
            name.clone(),
            ns.clone(),
            attrs.clone(),
            prop::collection::vec(node, 0..4),
        )
            .prop_map(|(n, ns, attrs, nodes)| {
                let mut e = Element::new(n, ns);
                for (k, v) in attrs {
                    e.set_attr(k, v);
                }
                for node in nodes {
                    match node {
                        GenNode::Text(t) => e.push_text(t),
                        GenNode::El(c) => e.push_child(c),
                    }
                }
                e
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes in arbitrary chunks: no panic, and the outcome does
    /// not depend on the chunking.
    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..600),
        splits in prop::collection::vec(any::<usize>(), 0..8),
        with_header in any::<bool>(),
    ) {
        let mut input = if with_header { HEADER.to_vec() } else { Vec::new() };
        input.extend_from_slice(&data);
        for limits in [Limits::default(), small_limits()] {
            let one = feed_split(&limits, &input, &[]);
            let many = feed_split(&limits, &input, &splits);
            prop_assert_eq!(&one.0, &many.0);
            prop_assert_eq!(one.1.is_ok(), many.1.is_ok());
        }
    }

    /// XML-shaped garbage gets much further into the grammar.
    #[test]
    fn xmlish_never_panics(
        data in xmlish(),
        splits in prop::collection::vec(any::<usize>(), 0..8),
        with_header in any::<bool>(),
    ) {
        let mut input = if with_header { HEADER.to_vec() } else { Vec::new() };
        input.extend_from_slice(&data);
        for limits in [Limits::default(), small_limits()] {
            let one = feed_split(&limits, &input, &[]);
            let bytewise: Vec<usize> = (0..input.len()).collect();
            let many = feed_split(&limits, &input, &splits);
            let each = feed_split(&limits, &input, &bytewise);
            prop_assert_eq!(&one.0, &many.0);
            prop_assert_eq!(&one.0, &each.0);
            prop_assert_eq!(one.1.is_ok(), many.1.is_ok());
            prop_assert_eq!(one.1.is_ok(), each.1.is_ok());
            if let Err(e) = &one.1 {
                // the error class must not depend on the chunking either
                prop_assert_eq!(e.stream_condition(), many.1.as_ref().unwrap_err().stream_condition());
            }
        }
        let _ = parse_element(&String::from_utf8_lossy(&data));
    }

    /// Valid streams with a few random mutations: exercises the deeper
    /// states of the parser (namespaces, limits, partial tags).
    #[test]
    fn mutated_stream_never_panics(
        elements in prop::collection::vec(element_tree(), 1..4),
        mutations in prop::collection::vec((any::<usize>(), 0usize..4, fragment()), 1..4),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut data = HEADER.to_vec();
        for e in &elements {
            e.write_to(&mut data, "jabber:client");
        }
        data.extend_from_slice(b"</stream:stream>");
        for (at, del, frag) in mutations {
            let at = at % (data.len() + 1);
            let end = (at + del).min(data.len());
            data.splice(at..end, frag);
        }
        for limits in [Limits::default(), small_limits()] {
            let one = feed_split(&limits, &data, &[]);
            let many = feed_split(&limits, &data, &splits);
            prop_assert_eq!(&one.0, &many.0);
            prop_assert_eq!(one.1.is_ok(), many.1.is_ok());
            if let Err(e) = &one.1 {
                prop_assert_eq!(e.stream_condition(), many.1.as_ref().unwrap_err().stream_condition());
            }
        }
    }

    /// parse(write(e)) == e for arbitrary trees.
    #[test]
    fn element_round_trip(e in element_tree()) {
        let xml = e.to_xml("");
        let back = parse_element(&xml);
        prop_assert_eq!(back.as_ref(), Ok(&e), "xml: {}", xml);
        // and written again, byte for byte identical
        prop_assert_eq!(back.map(|b| b.to_xml("")), Ok(xml));
    }

    /// Generated stanzas written into a stream (xmlns elided against the
    /// stream's default namespace) come back unchanged, however chunked.
    #[test]
    fn stream_round_trip(
        elements in prop::collection::vec(element_tree(), 1..5),
        splits in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut data = HEADER.to_vec();
        for e in &elements {
            e.write_to(&mut data, "jabber:client");
            data.extend_from_slice(b" ");
        }
        data.extend_from_slice(b"</stream:stream>");
        let (evs, r) = feed_split(&Limits::default(), &data, &splits);
        prop_assert_eq!(r, Ok(()));
        let got: Vec<&Element> = evs
            .iter()
            .filter_map(|ev| match ev {
                StreamEvent::Stanza(s) => Some(s),
                _ => None,
            })
            .collect();
        let want: Vec<&Element> = elements.iter().collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(evs.last(), Some(&StreamEvent::Close));
    }
}
