use crate::*;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

const SAMPLE: &str = concat!(
    "<?xml version='1.0'?>",
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' ",
    "to='example.com' version='1.0' xml:lang='en' id=\"s&amp;1\">\n  ",
    "<message to='juliet@example.com' id='m1' type='chat'>",
    "<body>Wherefore art thou &amp; &lt;Romeo&gt; \u{2014} \u{2764} \u{1F600}</body>",
    "<x xmlns='urn:x' a:b='1' xmlns:a='urn:a' c=\"&quot;\t&#x9;\"/></message>\n ",
    "<iq type='get' id='i1'><query xmlns='jabber:iq:roster'/></iq>",
    "<presence/> \r\n\t ",
    "<stream:features><starttls xmlns=\"urn:ietf:params:xml:ns:xmpp-tls\"><required/></starttls>",
    "</stream:features>",
    "<message><body><![CDATA[<cdata> & ]] stuff]]>&#x1F600;&#65;\u{e9}</body></message>",
    "<p:foo xmlns:p='urn:p'><p:bar/><baz>t1<q/>t2</baz></p:foo>",
    "\n</stream:stream>\n"
);

/// Feed `chunks` in order; return events and the first error.
fn run(limits: Limits, chunks: &[&[u8]]) -> (Vec<StreamEvent>, Result<(), XmlError>) {
    let mut p = StreamParser::new(limits);
    let mut evs = Vec::new();
    for c in chunks {
        if let Err(e) = p.feed(c, &mut evs) {
            return (evs, Err(e));
        }
    }
    (evs, Ok(()))
}

fn run_str(s: &str) -> (Vec<StreamEvent>, Result<(), XmlError>) {
    run(Limits::default(), &[s.as_bytes()])
}

fn stanzas(evs: &[StreamEvent]) -> Vec<&Element> {
    evs.iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn err_of(s: &str) -> XmlError {
    match run_str(s).1 {
        Err(e) => e,
        Ok(()) => panic!("expected an error for {s:?}"),
    }
}

fn stream_err(body: &str) -> XmlError {
    err_of(&format!("{HEADER}{body}"))
}

fn one_stanza(body: &str) -> Element {
    let (evs, r) = run_str(&format!("{HEADER}{body}"));
    r.expect("parse ok");
    let s = stanzas(&evs);
    assert_eq!(s.len(), 1, "{evs:?}");
    s[0].clone()
}

// ---------------------------------------------------------------- basics

#[test]
fn sample_stream_events() {
    let (evs, r) = run_str(SAMPLE);
    r.unwrap();
    assert_eq!(evs.len(), 8, "{evs:#?}");
    let StreamEvent::Open(h) = &evs[0] else {
        panic!("no open")
    };
    assert_eq!(h.name, "stream");
    assert_eq!(h.ns, NS_STREAMS);
    assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
    assert_eq!(
        h.attrs,
        vec![
            ("to".to_owned(), "example.com".to_owned()),
            ("version".to_owned(), "1.0".to_owned()),
            ("xml:lang".to_owned(), "en".to_owned()),
            ("id".to_owned(), "s&1".to_owned()),
        ]
    );
    assert_eq!(h.attr("xml:lang"), Some("en"));
    assert_eq!(h.attr("from"), None);
    assert_eq!(evs[7], StreamEvent::Close);

    let s = stanzas(&evs);
    let m = s[0];
    assert!(m.is("message", "jabber:client"));
    assert_eq!(m.attr("to"), Some("juliet@example.com"));
    let body = m.get_child("body", "jabber:client").unwrap();
    assert_eq!(
        body.text(),
        "Wherefore art thou & <Romeo> \u{2014} \u{2764} \u{1F600}"
    );
    let x = m.get_child("x", "urn:x").unwrap();
    assert_eq!(x.attr("{urn:a}b"), Some("1"));
    // literal TAB is normalized to a space, &#x9; is kept
    assert_eq!(x.attr("c"), Some("\" \t"));
    assert_eq!(x.attrs().count(), 2);

    assert!(s[1].is("iq", "jabber:client"));
    assert!(s[1].has_child("query", "jabber:iq:roster"));
    assert!(s[2].is("presence", "jabber:client"));
    assert!(s[2].nodes().is_empty());
    assert!(s[3].is("features", NS_STREAMS));
    let tls = s[3]
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .unwrap();
    assert!(tls.has_child("required", "urn:ietf:params:xml:ns:xmpp-tls"));
    let body = s[4].get_child("body", "jabber:client").unwrap();
    assert_eq!(body.text(), "<cdata> & ]] stuff\u{1F600}A\u{e9}");
    assert_eq!(body.nodes().len(), 1, "adjacent text merged");
    let foo = s[5];
    assert!(foo.is("foo", "urn:p"));
    assert!(foo.has_child("bar", "urn:p"));
    let baz = foo.get_child("baz", "jabber:client").unwrap();
    assert_eq!(baz.text(), "t1t2");
    assert_eq!(baz.nodes().len(), 3);
}

#[test]
fn chunked_at_every_split_point() {
    let data = SAMPLE.as_bytes();
    let (reference, r) = run(Limits::default(), &[data]);
    r.unwrap();
    for i in 0..=data.len() {
        let (evs, r) = run(Limits::default(), &[&data[..i], &data[i..]]);
        assert_eq!(r, Ok(()), "split at {i}");
        assert_eq!(evs, reference, "split at {i}");
    }
    // byte by byte
    let chunks: Vec<&[u8]> = data.chunks(1).collect();
    let (evs, r) = run(Limits::default(), &chunks);
    assert_eq!(r, Ok(()));
    assert_eq!(evs, reference);
    // three-way splits on a coarser grid
    for i in (0..data.len()).step_by(7) {
        for j in (i..data.len()).step_by(11) {
            let (evs, r) = run(Limits::default(), &[&data[..i], &data[i..j], &data[j..]]);
            assert_eq!(r, Ok(()), "split at {i},{j}");
            assert_eq!(evs, reference, "split at {i},{j}");
        }
    }
}

#[test]
fn events_are_delivered_per_feed() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    assert_eq!(evs.len(), 1);
    assert!(!p.in_stanza());
    p.feed(b"<presence/>", &mut evs).unwrap();
    assert_eq!(evs.len(), 2, "self-closed stanza delivered immediately");
    p.feed(b"<message><body>hi</body>", &mut evs).unwrap();
    assert_eq!(evs.len(), 2);
    assert!(p.in_stanza());
    assert!(p.buffered_bytes() > 0);
    p.feed(b"</message>", &mut evs).unwrap();
    assert_eq!(evs.len(), 3);
    assert!(!p.in_stanza());
    assert_eq!(p.buffered_bytes(), 0);
    p.feed(b"</stream:stream>", &mut evs).unwrap();
    assert_eq!(evs.last(), Some(&StreamEvent::Close));
    assert!(p.is_closed());
    // trailing whitespace after the end is harmless
    p.feed(b"\n", &mut evs).unwrap();
}

#[test]
fn in_stanza_tracks_partial_start_tag() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"  ", &mut evs).unwrap();
    assert!(!p.in_stanza());
    p.feed(b"<", &mut evs).unwrap();
    assert!(p.in_stanza());
    p.feed(b"mess", &mut evs).unwrap();
    assert!(p.in_stanza());
    p.feed(b"age/>", &mut evs).unwrap();
    assert!(!p.in_stanza());
    assert_eq!(stanzas(&evs).len(), 1);
}

#[test]
fn xml_declaration_variants() {
    for decl in [
        "",
        "<?xml version='1.0'?>",
        "<?xml version=\"1.0\"?>",
        "<?xml version='1.0' encoding='UTF-8'?>",
        "<?xml version='1.0' encoding='utf-8' standalone='yes'?>",
        "<?xml version='1.0'?>\n",
    ] {
        let s =
            format!("{decl}<stream:stream xmlns:stream='{NS_STREAMS}' xmlns='jabber:server'><a/>");
        let (evs, r) = run_str(&s);
        assert_eq!(r, Ok(()), "{decl}");
        assert_eq!(evs.len(), 2, "{decl}");
        let StreamEvent::Open(h) = &evs[0] else {
            panic!()
        };
        assert_eq!(h.default_ns.as_deref(), Some("jabber:server"));
        assert!(stanzas(&evs)[0].is("a", "jabber:server"));
    }
    assert_eq!(
        err_of("<?xml version='1.0' encoding='ISO-8859-1'?><a>"),
        XmlError::BadEncoding
    );
    assert_eq!(
        err_of("<?xml version='1.1'?><a>").stream_condition(),
        "restricted-xml"
    );
    // a second declaration inside the stream is a PI
    assert!(matches!(
        stream_err("<?xml version='1.0'?>"),
        XmlError::RestrictedXml(_)
    ));
}

#[test]
fn whitespace_keepalive() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    evs.clear();
    for ws in [" ", "\n", "\t \r\n", "\r", "\n\n\n"] {
        p.feed(ws.as_bytes(), &mut evs).unwrap();
        assert!(evs.is_empty());
        assert!(!p.in_stanza());
        assert_eq!(p.buffered_bytes(), 0);
    }
    // lots of keepalives: far more than any limit, no error, no events
    let ws = [b' '; 1000];
    for _ in 0..1000 {
        p.feed(&ws, &mut evs).unwrap();
    }
    assert!(evs.is_empty());
    p.feed(b"<presence/>", &mut evs).unwrap();
    assert_eq!(evs.len(), 1);
}

#[test]
fn text_at_stream_level_is_not_well_formed() {
    for body in [
        "hello",
        "  x  ",
        "\n&amp;",
        "<presence/>oops",
        "&#65;",
        "&#32;",
        // any reference at stream level is character data there, refused
        // before the entity is even looked at
        "&foo;",
        "<![CDATA[x]]>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{body}: {e:?}");
        assert_eq!(e.stream_condition(), "not-well-formed");
    }
    // refused as soon as the text arrives, not at the next `<`
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"<presence/>  ", &mut evs).unwrap();
    assert!(matches!(
        p.feed(b" GET / HTTP/1.1", &mut evs),
        Err(XmlError::NotWellFormed(_))
    ));
    // whitespace in a CDATA section is still whitespace
    let (_, r) = run_str(&format!("{HEADER}<![CDATA[ \n]]><a/>"));
    assert_eq!(r, Ok(()));
}

#[test]
fn self_closed_and_closed_root() {
    let (evs, r) = run_str(&format!(
        "<stream:stream xmlns:stream='{NS_STREAMS}' xmlns='jabber:client'/>"
    ));
    r.unwrap();
    assert!(matches!(evs[0], StreamEvent::Open(_)));
    assert_eq!(evs[1], StreamEvent::Close);
    // data after the end
    let e = err_of(&format!(
        "<stream:stream xmlns:stream='{NS_STREAMS}'></stream:stream><a/>"
    ));
    assert!(matches!(e, XmlError::NotWellFormed(_)));
    // mismatched root end tag
    assert!(matches!(
        stream_err("</stream:features>"),
        XmlError::NotWellFormed(_)
    ));
}

#[test]
fn header_without_default_namespace_or_other_root() {
    let (evs, r) = run_str(&format!(
        "<stream:stream xmlns:stream='{NS_STREAMS}' to='x'>"
    ));
    r.unwrap();
    let StreamEvent::Open(h) = &evs[0] else {
        panic!()
    };
    assert_eq!(h.default_ns, None);
    assert_eq!(h.attrs, vec![("to".to_owned(), "x".to_owned())]);
    // root in the wrong namespace is reported, not rejected (the caller
    // answers with invalid-namespace)
    let (evs, r) = run_str("<stream xmlns='jabber:client'>");
    r.unwrap();
    let StreamEvent::Open(h) = &evs[0] else {
        panic!()
    };
    assert_eq!(h.name, "stream");
    assert_eq!(h.ns, "jabber:client");
    assert_eq!(h.default_ns.as_deref(), Some("jabber:client"));
}

#[test]
fn stream_header_to_xml_round_trips() {
    let (evs, r) = run_str(SAMPLE);
    r.unwrap();
    let StreamEvent::Open(h) = &evs[0] else {
        panic!()
    };
    let xml = h.to_xml();
    assert!(
        xml.starts_with("<?xml version='1.0'?><stream:stream "),
        "{xml}"
    );
    let (evs2, r) = run_str(&xml);
    r.unwrap();
    assert_eq!(evs2[0], evs[0]);
    let (evs3, r) = run_str(&format!("{xml}{STREAM_CLOSE}"));
    r.unwrap();
    assert_eq!(evs3[1], StreamEvent::Close);
}

// ------------------------------------------------------------ namespaces

#[test]
fn namespace_default_inherited_and_redeclared() {
    let m = one_stanza("<message><body>x</body></message>");
    assert!(m.is("message", "jabber:client"));
    assert!(m.has_child("body", "jabber:client"));
    let m = one_stanza("<message xmlns='jabber:client'><body/></message>");
    assert!(m.is("message", "jabber:client"));
    assert!(m.has_child("body", "jabber:client"));
    let m = one_stanza("<message><x xmlns='urn:x'><y><z xmlns='urn:z'/></y></x><w/></message>");
    let x = m.get_child("x", "urn:x").unwrap();
    let y = x.get_child("y", "urn:x").unwrap();
    assert!(y.has_child("z", "urn:z"));
    assert!(m.has_child("w", "jabber:client"));
    // undeclaring the default namespace
    let m = one_stanza("<message><x xmlns=''><y/></x></message>");
    let x = m.get_child("x", "").unwrap();
    assert!(x.has_child("y", ""));
}

#[test]
fn namespace_prefixed() {
    let f = one_stanza(
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>",
    );
    assert!(f.is("features", NS_STREAMS));
    let e = one_stanza(
        "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    );
    assert!(e.is("error", NS_STREAMS));
    assert!(e.has_child("host-unknown", "urn:ietf:params:xml:ns:xmpp-streams"));
    // prefix redeclared to another namespace in an inner scope
    let m = one_stanza("<a:x xmlns:a='urn:1'><a:y xmlns:a='urn:2'><a:z/></a:y><a:w/></a:x>");
    assert!(m.is("x", "urn:1"));
    let y = m.get_child("y", "urn:2").unwrap();
    assert!(y.has_child("z", "urn:2"));
    assert!(m.has_child("w", "urn:1"));
    // stream prefix can be rebound inside a stanza
    let m = one_stanza("<stream:x xmlns:stream='urn:other'/>");
    assert!(m.is("x", "urn:other"));
    // and its scope ends with the element
    let (evs, r) = run_str(&format!(
        "{HEADER}<stream:x xmlns:stream='urn:other'/><stream:features/>"
    ));
    r.unwrap();
    assert!(stanzas(&evs)[1].is("features", NS_STREAMS));
}

#[test]
fn namespace_attributes() {
    let m = one_stanza(
        "<message xml:lang='de' xmlns:a='urn:a' a:x='1' x='2' xmlns:b='urn:b' b:x='3'/>",
    );
    assert_eq!(
        m.attrs().collect::<Vec<_>>(),
        vec![
            ("xml:lang", "de"),
            ("{urn:a}x", "1"),
            ("x", "2"),
            ("{urn:b}x", "3")
        ]
    );
    // a default namespace does not apply to attributes
    let m = one_stanza("<x xmlns='urn:x' y='1'/>");
    assert_eq!(m.attr("y"), Some("1"));
}

#[test]
fn namespace_errors() {
    for body in [
        "<foo:bar/>",
        "<message foo:bar='1'/>",
        "<a:x xmlns:a='urn:a'/><a:y/>",
        "<x><a:y xmlns:a='urn:a'/><a:z/></x>",
        "<xmlns:x/>",
        "<x a='1' a='2'/>",
        "<x xmlns='a' xmlns='b'/>",
        "<x xmlns:p='a' xmlns:p='b'/>",
        "<x xmlns:p='urn:s' xmlns:q='urn:s' p:a='1' q:a='2'/>",
        "<x xmlns:p=''/>",
        "<x xmlns:xml='urn:not-xml'/>",
        "<x xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        "<x xmlns:xmlns='urn:a'/>",
        "<a:b:c/>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{body}: {e:?}");
    }
    // undeclared prefix on the root
    assert!(matches!(
        err_of("<stream:stream xmlns='jabber:client'>"),
        XmlError::NotWellFormed(_)
    ));
}

#[test]
fn structural_errors() {
    for body in [
        "<a></b>",
        "<a><b></a></b>",
        "<a b=c/>",
        "<a b='1'c='2'/>",
        "<a \u{1}/>",
        "<a>\u{1}</a>",
        "<a>&#0;</a>",
        "<a>&#xFFFE;</a>",
        "<a>]]></a>",
        "<a>&#99999999;</a>",
        "<a>&#xFFFFFFFF;</a>",
        "<a>&#x110000;</a>",
        "<a>&#xD800;</a>",
        "<a b='&#0;'/>",
        "< a/>",
        "<1a/>",
        "<a b='<'/>",
        "<!-x-->",
        "<![CDAX[x]]>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{body}: {e:?}");
    }
}

// ------------------------------------------------------- restricted XML

#[test]
fn restricted_xml() {
    // DTD before the root
    let dtd = "<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM 'x.dtd'><stream:stream>";
    assert!(matches!(err_of(dtd), XmlError::RestrictedXml(_)));
    assert!(matches!(
        err_of("<!DOCTYPE foo><foo/>"),
        XmlError::RestrictedXml(_)
    ));
    // internal subset with an entity declaration
    let billion_laughs = concat!(
        "<?xml version='1.0'?><!DOCTYPE lolz [",
        "<!ENTITY lol 'lol'>",
        "<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>",
        "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>",
        "]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
        "<message><body>&lol3;</body></message>"
    );
    assert!(matches!(err_of(billion_laughs), XmlError::RestrictedXml(_)));
    // entity declaration / DTD inside the stream
    for body in [
        "<!ENTITY x 'y'>",
        "<!DOCTYPE x>",
        "<message><!ENTITY x 'y'></message>",
        "<!ATTLIST x y CDATA #IMPLIED>",
        "<!ELEMENT x ANY>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::RestrictedXml(_)), "{body}: {e:?}");
    }
    // entity references other than the predefined five
    for body in [
        "<message><body>&foo;</body></message>",
        "<message><body>&nbsp;</body></message>",
        "<message to='&foo;'/>",
        "<message><body>&averyveryveryveryveryveryveryverylongentityname;</body></message>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::RestrictedXml(_)), "{body}: {e:?}");
        assert_eq!(e.stream_condition(), "restricted-xml");
    }
    // processing instructions
    for body in [
        "<?php echo 1; ?>",
        "<message><?foo bar?></message>",
        "<?xml-stylesheet href='a'?>",
        "<message><?xml-stylesheet href='a'?></message>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::RestrictedXml(_)), "{body}: {e:?}");
    }
    for pre in [
        "<?foo?><stream:stream>",
        "<?xml-stylesheet href='a'?><stream:stream>",
        "<?xmlfoo?><stream:stream>",
        "<?xml version='1.0'?><?xml-stylesheet href='a'?><stream:stream>",
        "<?xml version='1.0'?><?foo?><stream:stream>",
    ] {
        let e = err_of(pre);
        assert!(matches!(e, XmlError::RestrictedXml(_)), "{pre}: {e:?}");
    }
    // a broken XML declaration is just not well-formed
    for pre in [
        "<?xml?><a>",
        "<?xml version='1.0'><a>",
        "<?xml foo='1.0'?><a>",
    ] {
        let e = err_of(pre);
        assert!(matches!(e, XmlError::NotWellFormed(_)), "{pre}: {e:?}");
    }
    // comments, everywhere
    for body in [
        "<!-- hi -->",
        "<message><!-- hi --></message>",
        "<message><body>a<!---->b</body></message>",
    ] {
        let e = stream_err(body);
        assert!(matches!(e, XmlError::RestrictedXml(_)), "{body}: {e:?}");
    }
    assert!(matches!(
        err_of("<!-- c --><stream:stream>"),
        XmlError::RestrictedXml(_)
    ));
    assert!(matches!(
        err_of("<?xml version='1.0'?><!-- c --><stream:stream>"),
        XmlError::RestrictedXml(_)
    ));
    // the five predefined entities and character references are fine
    let m = one_stanza(
        "<m a='&lt;&gt;&amp;&apos;&quot;&#x41;&#66;'>&lt;&gt;&amp;&apos;&quot;&#x41;&#66;</m>",
    );
    assert_eq!(m.attr("a"), Some("<>&'\"AB"));
    assert_eq!(m.text(), "<>&'\"AB");
}

#[test]
fn restricted_xml_chunked() {
    // the classification must not depend on where the chunks split
    for body in ["<!DOCTYPE x>", "<!-- c -->", "<?pi x?>", "<m>&foo;</m>"] {
        let data = format!("{HEADER}{body}");
        let d = data.as_bytes();
        for i in HEADER.len()..d.len() {
            let (_, r) = run(Limits::default(), &[&d[..i], &d[i..]]);
            assert!(
                matches!(r, Err(XmlError::RestrictedXml(_))),
                "{body} @{i}: {r:?}"
            );
        }
    }
}

// ----------------------------------------------------------------- limits

/// Feed `header`, then `prefix`, then `filler` `n` times; return the error,
/// the number of bytes fed when it occurred (after the header), and the
/// largest `buffered_bytes` seen.
fn feed_until_error(
    limits: Limits,
    prefix: &[u8],
    filler: &[u8],
    n: usize,
) -> (XmlError, usize, usize) {
    let mut p = StreamParser::new(limits);
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    let mut fed = 0;
    let mut max_buf = 0;
    let mut feed = |p: &mut StreamParser, d: &[u8]| -> Option<XmlError> {
        fed += d.len();
        let r = p.feed(d, &mut evs);
        max_buf = max_buf.max(p.buffered_bytes());
        r.err()
    };
    if let Some(e) = feed(&mut p, prefix) {
        return (e, fed, max_buf);
    }
    for _ in 0..n {
        if let Some(e) = feed(&mut p, filler) {
            return (e, fed, max_buf);
        }
    }
    panic!("no error after feeding everything");
}

#[test]
fn limit_stanza_size_100_mib() {
    let limits = Limits::default();
    let chunk = vec![b'a'; 64 * 1024];
    // 100 MiB of text in one stanza
    let (e, fed, max_buf) = feed_until_error(
        limits.clone(),
        b"<message><body>",
        &chunk,
        100 * 1024 * 1024 / chunk.len(),
    );
    assert_eq!(e, XmlError::StanzaTooLarge);
    assert_eq!(e.stream_condition(), "policy-violation");
    assert!(fed <= limits.max_stanza_bytes + chunk.len(), "fed {fed}");
    assert!(max_buf <= limits.max_stanza_bytes + 1, "buffered {max_buf}");

    // whitespace inside a start tag costs no memory but still counts
    let ws = vec![b' '; 64 * 1024];
    let (e, fed, _) = feed_until_error(limits.clone(), b"<message", &ws, 1600);
    assert_eq!(e, XmlError::StanzaTooLarge);
    assert!(fed <= limits.max_stanza_bytes + ws.len());

    // many small children
    let kids = b"<a/>".repeat(16 * 1024);
    let (e, fed, _) = feed_until_error(limits.clone(), b"<message>", &kids, 1600);
    assert_eq!(e, XmlError::StanzaTooLarge);
    assert!(fed <= limits.max_stanza_bytes + kids.len());
}

#[test]
fn limit_stanza_size_single_huge_chunk() {
    // 16 MiB in a single feed call: only max+1 bytes of it are looked at
    let limits = Limits::default();
    let mut data = HEADER.as_bytes().to_vec();
    data.extend_from_slice(b"<presence/><message><body>");
    data.resize(data.len() + 16 * 1024 * 1024, b'x');
    let mut p = StreamParser::new(limits);
    let mut evs = Vec::new();
    assert_eq!(p.feed(&data, &mut evs), Err(XmlError::StanzaTooLarge));
    // events before the error are delivered
    assert_eq!(evs.len(), 2);
    // dead afterwards
    assert_eq!(
        p.feed(b"</body></message>", &mut evs),
        Err(XmlError::StanzaTooLarge)
    );
}

#[test]
fn limit_stanza_size_exact_boundary() {
    let max = 1000;
    let limits = Limits {
        max_stanza_bytes: max,
        ..Limits::default()
    };
    let make = |n: usize| {
        let mut s = String::from("<m>");
        s.push_str(&"a".repeat(n - 7));
        s.push_str("</m>");
        assert_eq!(s.len(), n);
        s
    };
    let make_attr = |n: usize| {
        let mut s = String::from("<m a='");
        s.push_str(&"b".repeat(n - 9));
        s.push_str("'/>");
        assert_eq!(s.len(), n);
        s
    };
    let make_ws = |n: usize| {
        let mut s = String::from("<m");
        s.push_str(&" ".repeat(n - 4));
        s.push_str("/>");
        s
    };
    for mk in [&make as &dyn Fn(usize) -> String, &make_attr, &make_ws] {
        for (n, ok) in [(max - 1, true), (max, true), (max + 1, false)] {
            let stanza = mk(n);
            // whitespace before and after must not count
            let data = format!("{HEADER}   \n{stanza}\n  {stanza}  ");
            let d = data.as_bytes();
            for chunking in [d.len(), 1, 7, 100] {
                let chunks: Vec<&[u8]> = d.chunks(chunking).collect();
                let (evs, r) = run(limits.clone(), &chunks);
                if ok {
                    assert_eq!(r, Ok(()), "n={n} chunk={chunking}");
                    assert_eq!(stanzas(&evs).len(), 2);
                } else {
                    assert_eq!(r, Err(XmlError::StanzaTooLarge), "n={n} chunk={chunking}");
                    assert_eq!(stanzas(&evs).len(), 0);
                }
            }
        }
    }
}

#[test]
fn limit_depth_10000() {
    let limits = Limits::default();
    let chunk = b"<a>".repeat(1000);
    let (e, fed, _) = feed_until_error(limits.clone(), b"", &chunk, 10);
    assert_eq!(e, XmlError::TooDeep);
    assert_eq!(fed, chunk.len(), "refused within the first chunk");

    // exactly max_depth is fine, one more is not
    let ok = format!(
        "{HEADER}{}{}",
        "<a>".repeat(limits.max_depth),
        "</a>".repeat(limits.max_depth)
    );
    assert_eq!(run_str(&ok).1, Ok(()));
    let bad = format!("{HEADER}{}", "<a>".repeat(limits.max_depth + 1));
    assert_eq!(run_str(&bad).1, Err(XmlError::TooDeep));
    // self-closed innermost element counts too
    let bad = format!("{HEADER}{}<a/>", "<a>".repeat(limits.max_depth));
    assert_eq!(run_str(&bad).1, Err(XmlError::TooDeep));
    // 10,000 levels in one feed
    let bad = format!("{HEADER}{}", "<a>".repeat(10_000));
    assert_eq!(run_str(&bad).1, Err(XmlError::TooDeep));
}

#[test]
fn limit_attribute_count() {
    let limits = Limits::default();
    let mut attrs = String::new();
    for i in 0..100_000 {
        attrs.push_str(&format!(" a{i}='x'"));
    }
    let chunks: Vec<&[u8]> = attrs.as_bytes().chunks(4096).collect();
    let mut p = StreamParser::new(limits.clone());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"<message", &mut evs).unwrap();
    let mut err_at = None;
    for (i, c) in chunks.iter().enumerate() {
        if let Err(e) = p.feed(c, &mut evs) {
            assert_eq!(e, XmlError::TooManyAttributes);
            err_at = Some(i);
            break;
        }
    }
    assert_eq!(err_at, Some(0), "refused within the first chunk");

    let n = limits.max_attributes;
    let ok: String = (0..n).map(|i| format!(" a{i}='x'")).collect();
    assert_eq!(run_str(&format!("{HEADER}<m{ok}/>")).1, Ok(()));
    let bad: String = (0..=n).map(|i| format!(" a{i}='x'")).collect();
    assert_eq!(
        run_str(&format!("{HEADER}<m{bad}/>")).1,
        Err(XmlError::TooManyAttributes)
    );
    // namespace declarations count as attributes
    let decls: String = (0..=n).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect();
    assert_eq!(
        run_str(&format!("{HEADER}<m{decls}/>")).1,
        Err(XmlError::TooManyAttributes)
    );
}

#[test]
fn limit_attribute_size() {
    let limits = Limits::default();
    // one 10 MiB attribute
    let chunk = vec![b'x'; 64 * 1024];
    let (e, fed, _) = feed_until_error(limits.clone(), b"<message to='", &chunk, 160);
    assert_eq!(e, XmlError::AttributeTooLarge);
    assert!(
        fed <= limits.max_attribute_bytes + chunk.len() + 16,
        "fed {fed}"
    );

    // name + value counted; boundary
    let max = limits.max_attribute_bytes;
    let ok = format!("{HEADER}<m ab='{}'/>", "v".repeat(max - 2));
    assert_eq!(run_str(&ok).1, Ok(()));
    let bad = format!("{HEADER}<m ab='{}'/>", "v".repeat(max - 1));
    assert_eq!(run_str(&bad).1, Err(XmlError::AttributeTooLarge));
    // very long attribute name
    let bad = format!("{HEADER}<m {}='1'/>", "n".repeat(max * 2));
    assert_eq!(run_str(&bad).1, Err(XmlError::AttributeTooLarge));

    // small custom limit (below the tokenizer's minimum token size)
    let small = Limits {
        max_attribute_bytes: 100,
        ..Limits::default()
    };
    for len in [150, 1000, 100_000] {
        let bad = format!("{HEADER}<m a='{}'/>", "v".repeat(len));
        assert_eq!(
            run(small.clone(), &[bad.as_bytes()]).1,
            Err(XmlError::AttributeTooLarge),
            "{len}"
        );
    }
    let ok = format!("{HEADER}<m a='{}'/>", "v".repeat(99));
    assert_eq!(run(small.clone(), &[ok.as_bytes()]).1, Ok(()));
    // text is not limited by the attribute limit
    let ok = format!("{HEADER}<m>{}</m>", "t".repeat(10_000));
    let (evs, r) = run(small, &[ok.as_bytes()]);
    assert_eq!(r, Ok(()));
    assert_eq!(stanzas(&evs)[0].text().len(), 10_000);
}

#[test]
fn limit_header_size() {
    let limits = Limits::default();
    let open = format!("<stream:stream xmlns:stream='{NS_STREAMS}'");
    // endless whitespace in the header
    let mut p = StreamParser::new(limits.clone());
    let mut evs = Vec::new();
    p.feed(open.as_bytes(), &mut evs).unwrap();
    let ws = vec![b' '; 1024];
    let mut fed = open.len();
    let mut err = None;
    for _ in 0..100_000 {
        fed += ws.len();
        if let Err(e) = p.feed(&ws, &mut evs) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(XmlError::HeaderTooLarge));
    assert!(fed <= limits.max_header_bytes + ws.len());
    assert!(evs.is_empty());

    // a long attribute, fed in one piece
    let bad = format!("{open} to='{}'>", "x".repeat(limits.max_header_bytes));
    assert_eq!(run_str(&bad).1, Err(XmlError::HeaderTooLarge));
    // many attributes
    let many: String = (0..1000).map(|i| format!(" a{i}='1'")).collect();
    let e = run_str(&format!("{open}{many}>")).1.unwrap_err();
    assert!(
        matches!(e, XmlError::HeaderTooLarge | XmlError::TooManyAttributes),
        "{e:?}"
    );
    // 1 GiB-looking header name, fed in chunks
    let mut p = StreamParser::new(limits.clone());
    p.feed(b"<", &mut evs).unwrap();
    let name = vec![b'n'; 1024];
    let mut n = 0;
    let e = loop {
        n += 1;
        if let Err(e) = p.feed(&name, &mut evs) {
            break e;
        }
        assert!(n < 100);
    };
    assert_eq!(e, XmlError::HeaderTooLarge);
    // exact boundary including the XML declaration
    let decl = "<?xml version='1.0'?>";
    let base = format!("{decl}{open} a='");
    let pad = limits.max_header_bytes - base.len() - 2;
    let ok = format!("{base}{}'>", "p".repeat(pad));
    assert_eq!(ok.len(), limits.max_header_bytes);
    assert_eq!(run_str(&ok).1, Ok(()));
    let bad = format!("{base}{}'>", "p".repeat(pad + 1));
    assert_eq!(run_str(&bad).1, Err(XmlError::HeaderTooLarge));
    // the header limit does not apply to stanzas
    let big = format!("{HEADER}<m>{}</m>", "x".repeat(100_000));
    assert_eq!(run_str(&big).1, Ok(()));
}

#[test]
fn long_element_name_is_refused() {
    let e = stream_err(&format!("<{}/>", "n".repeat(100_000)));
    assert_eq!(e.stream_condition(), "policy-violation");
}

// ------------------------------------------------------------- encoding

#[test]
fn invalid_utf8() {
    let h = HEADER.as_bytes();
    let cases: Vec<Vec<u8>> = vec![
        [h, b"<m>\xff</m>"].concat(),
        [h, b"<m>ab\xc3\x28</m>"].concat(),
        [h, b"<m>\xed\xa0\x80</m>"].concat(), // surrogate
        [h, b"<m>\xf8\x88\x80\x80\x80</m>"].concat(),
        [h, b"<m a='\xfe'/>"].concat(),
        [h, b"<m\xc3\xa9\xc3/>"].concat(),
        [h, b"<m>\xe2\x82</m>"].concat(), // truncated sequence
        [h, b"<m>\xc0\xaf</m>"].concat(), // overlong
    ];
    for c in &cases {
        let (_, r) = run(Limits::default(), &[c]);
        let e = r.unwrap_err();
        assert!(
            e == XmlError::BadEncoding || matches!(e, XmlError::NotWellFormed(_)),
            "{e:?}"
        );
        // chunked identically
        for i in h.len()..c.len() {
            let (_, r2) = run(Limits::default(), &[&c[..i], &c[i..]]);
            assert!(r2.is_err());
        }
    }
    // the common cases are classified as encoding errors
    for c in &cases[..2] {
        assert_eq!(
            run(Limits::default(), &[c]).1,
            Err(XmlError::BadEncoding),
            "{c:?}"
        );
    }
    // UTF-16 streams
    let utf16: Vec<u8> = "<stream:stream>"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    assert_eq!(
        run(Limits::default(), &[&[0xFF, 0xFE], &utf16]).1,
        Err(XmlError::BadEncoding)
    );
    assert_eq!(
        run(Limits::default(), &[&utf16]).1,
        Err(XmlError::BadEncoding)
    );
    assert_eq!(
        XmlError::BadEncoding.stream_condition(),
        "unsupported-encoding"
    );
}

#[test]
fn utf8_split_across_chunks() {
    let text = "h\u{e9}llo \u{1F600} \u{4e16}\u{754c}";
    let data = format!("{HEADER}<m a='{text}'>{text}</m>");
    let d = data.as_bytes();
    for i in 0..d.len() {
        let (evs, r) = run(Limits::default(), &[&d[..i], &d[i..]]);
        assert_eq!(r, Ok(()));
        let m = stanzas(&evs)[0];
        assert_eq!(m.text(), text);
        assert_eq!(m.attr("a"), Some(text));
    }
}

// ----------------------------------------------------------- lifecycle

#[test]
fn reset_gives_fresh_parser() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"<message xmlns:q='urn:q'><body>partial", &mut evs)
        .unwrap();
    assert!(p.in_stanza());
    p.reset();
    assert!(!p.in_stanza());
    assert_eq!(p.buffered_bytes(), 0);
    evs.clear();
    // a new header is expected, including an XML declaration
    p.feed(SAMPLE.as_bytes(), &mut evs).unwrap();
    assert_eq!(evs, run_str(SAMPLE).0);
    // prefixes from before the reset are gone
    p.reset();
    evs.clear();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    assert!(matches!(
        p.feed(b"<q:x/>", &mut evs),
        Err(XmlError::NotWellFormed(_))
    ));
    // errors are cleared by reset
    assert!(p.feed(b"<x/>", &mut evs).is_err());
    p.reset();
    evs.clear();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"<x/>", &mut evs).unwrap();
    assert_eq!(evs.len(), 2);
    // reset in the middle of a start tag, after a header-only stream
    p.reset();
    p.feed(b"<stream:str", &mut evs).unwrap();
    p.reset();
    evs.clear();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    assert_eq!(evs.len(), 1);
}

#[test]
fn error_is_sticky_and_prior_events_delivered() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    let r = p.feed(
        format!("{HEADER}<presence/><message>&bogus;</message><presence/>").as_bytes(),
        &mut evs,
    );
    let e = r.unwrap_err();
    assert!(matches!(e, XmlError::RestrictedXml(_)));
    assert_eq!(evs.len(), 2);
    assert_eq!(p.feed(b"<presence/>", &mut evs), Err(e.clone()));
    assert_eq!(p.feed(b"", &mut evs), Err(e));
    assert_eq!(evs.len(), 2);
}

#[test]
fn empty_feeds_are_harmless() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(b"", &mut evs).unwrap();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    p.feed(b"", &mut evs).unwrap();
    p.feed(b"<a>", &mut evs).unwrap();
    p.feed(b"", &mut evs).unwrap();
    p.feed(b"</a>", &mut evs).unwrap();
    assert_eq!(evs.len(), 2);
}

#[test]
fn buffered_bytes_accounting() {
    let mut p = StreamParser::new(Limits::default());
    let mut evs = Vec::new();
    p.feed(b"<stream:stream xmlns:stream='", &mut evs).unwrap();
    assert!(p.buffered_bytes() > 0, "header bytes are reported");
    p.feed(NS_STREAMS.as_bytes(), &mut evs).unwrap();
    p.feed(b"'>", &mut evs).unwrap();
    assert_eq!(p.buffered_bytes(), 0);
    let stanza = b"<message><body>0123456789</body></message>";
    for (i, b) in stanza.iter().enumerate() {
        p.feed(&[*b], &mut evs).unwrap();
        if i + 1 < stanza.len() {
            assert_eq!(p.buffered_bytes(), i + 1, "at {i}");
        }
    }
    assert_eq!(p.buffered_bytes(), 0);
    assert_eq!(evs.len(), 2);
}

#[test]
fn long_lived_stream_does_not_drift() {
    // accounting must not accumulate across stanzas
    let limits = Limits {
        max_stanza_bytes: 64,
        ..Limits::default()
    };
    let mut p = StreamParser::new(limits);
    let mut evs = Vec::new();
    p.feed(HEADER.as_bytes(), &mut evs).unwrap();
    let stanza = b" <message to='a@b'><body>hello</body></message>\n";
    for _ in 0..10_000 {
        p.feed(stanza, &mut evs).unwrap();
    }
    for _ in 0..1000 {
        for c in stanza.chunks(5) {
            p.feed(c, &mut evs).unwrap();
        }
    }
    assert_eq!(evs.len(), 11_001);
}

// ------------------------------------------------------------ parse_element

#[test]
fn parse_element_basics() {
    let e = parse_element("<a xmlns='urn:a' x='1'><b/>text</a>").unwrap();
    assert!(e.is("a", "urn:a"));
    assert!(e.has_child("b", "urn:a"));
    assert_eq!(e.text(), "text");
    let e = parse_element("  <a/>\n").unwrap();
    assert!(e.is("a", ""));
    for bad in [
        "",
        "   ",
        "text",
        "<a/><b/>",
        "<a>",
        "<a/>x",
        "<a/><b",
        "<p:a/>",
        "</rookery-xml-wrapper>",
        "<a/></rookery-xml-wrapper>",
        "<?xml version='1.0'?><a/>",
        "<!-- c --><a/>",
    ] {
        assert!(parse_element(bad).is_err(), "{bad}");
    }
}

// -------------------------------------------------------------- serializer

#[test]
fn serializer_xmlns_elision() {
    let m = Element::new("message", "jabber:client")
        .with_attr("to", "a@b")
        .with_child(Element::new("body", "jabber:client").with_text("hi"))
        .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "urn:x")))
        .with_child(Element::new("free", ""));
    assert_eq!(
        m.to_xml("jabber:client"),
        "<message to=\"a@b\"><body>hi</body><x xmlns=\"urn:x\"><y/></x><free xmlns=\"\"/></message>"
    );
    assert_eq!(
        m.to_xml(""),
        "<message xmlns=\"jabber:client\" to=\"a@b\"><body>hi</body><x xmlns=\"urn:x\"><y/></x><free xmlns=\"\"/></message>"
    );
    assert_eq!(m.to_string(), m.to_xml(""));
    let mut buf = b"prefix".to_vec();
    m.write_to(&mut buf, "jabber:server");
    assert!(buf.starts_with(b"prefix<message xmlns=\"jabber:client\""));
    // unnamespaced root with "" parent: no xmlns at all
    assert_eq!(Element::new("a", "").to_xml(""), "<a/>");
    // stanza written for a stream and parsed back in that stream
    let xml = m.to_xml("jabber:client");
    assert_eq!(one_stanza(&xml), m);
}

#[test]
fn serializer_escaping_round_trip() {
    let nasty = "a&b<c>d\"e'f\r\ng\th]]>i&amp;\u{e9}\u{1F600}\r";
    let e = Element::new("m", "urn:m")
        .with_attr("a", nasty)
        .with_attr("xml:lang", "en")
        .with_attr("{urn:other}x", nasty)
        .with_attr("{urn:other}y", "2")
        .with_attr("{urn:third}x", "3")
        .with_text(nasty)
        .with_child(
            Element::new("n", "urn:n")
                .with_attr("{urn:other}z", "4")
                .with_text(" "),
        )
        .with_text("tail");
    let xml = e.to_xml("");
    assert!(!xml.contains('\r'), "{xml}");
    assert!(xml.contains("xmlns:ns0=\"urn:other\" ns0:x="), "{xml}");
    assert!(xml.contains("ns0:y=\"2\""), "{xml}");
    assert!(xml.contains("xmlns:ns1=\"urn:third\" ns1:x=\"3\""), "{xml}");
    assert!(xml.contains("xml:lang=\"en\""), "{xml}");
    let back = parse_element(&xml).unwrap();
    assert_eq!(back, e);
    assert_eq!(back.attr("a"), Some(nasty));
    assert_eq!(back.text(), format!("{nasty}tail"));
    // parse -> write -> parse for the whole sample
    let (evs, r) = run_str(SAMPLE);
    r.unwrap();
    for s in stanzas(&evs) {
        let again = parse_element(&s.to_xml("")).unwrap();
        assert_eq!(&again, s);
        assert_eq!(one_stanza(&s.to_xml("jabber:client")), *s);
    }
}

#[test]
fn serializer_replaces_unrepresentable_chars() {
    let e = Element::new("m", "")
        .with_attr("a", "x\u{0}y")
        .with_text("\u{1}\u{FFFF}");
    let xml = e.to_xml("");
    assert_eq!(xml, "<m a=\"x\u{FFFD}y\">\u{FFFD}\u{FFFD}</m>");
    assert!(parse_element(&xml).is_ok());
}

#[test]
fn serializer_skips_xmlns_attributes() {
    let mut e = Element::new("m", "urn:a");
    e.set_attr("xmlns", "urn:evil");
    e.set_attr("xmlns:p", "urn:evil");
    assert_eq!(e.to_xml(""), "<m xmlns=\"urn:a\"/>");
}

#[test]
fn attribute_name_normalization() {
    let e = Element::new("m", "")
        .with_attr("{http://www.w3.org/XML/1998/namespace}lang", "en")
        .with_attr("{}plain", "1");
    assert_eq!(e.attr("xml:lang"), Some("en"));
    assert_eq!(e.attr("plain"), Some("1"));
    assert_eq!(e.to_xml(""), "<m xml:lang=\"en\" plain=\"1\"/>");
}

// ---------------------------------------------------------------- Element API

#[test]
fn element_api() {
    let mut e = Element::new("iq", "jabber:client")
        .with_attr("type", "get")
        .with_attr("id", "1");
    assert_eq!(e.name(), "iq");
    assert_eq!(e.ns(), "jabber:client");
    e.set_attr("type", "result");
    assert_eq!(
        e.attrs().collect::<Vec<_>>(),
        vec![("type", "result"), ("id", "1")]
    );
    assert_eq!(e.remove_attr("id"), Some("1".to_owned()));
    assert_eq!(e.remove_attr("id"), None);
    assert_eq!(e.attr("id"), None);

    e.push_text("a");
    e.push_text("");
    e.push_text("b");
    assert_eq!(e.nodes().len(), 1);
    e.push_child(Element::new("q", "urn:q"));
    e.push_text("c");
    e.push_child(Element::new("r", "urn:r").with_text("inner"));
    assert_eq!(e.text(), "abc");
    assert_eq!(e.children().count(), 2);
    assert!(e.has_child("q", "urn:q"));
    assert!(!e.has_child("q", "urn:other"));
    e.get_child_mut("r", "urn:r").unwrap().set_attr("k", "v");
    assert_eq!(e.get_child("r", "urn:r").unwrap().attr("k"), Some("v"));
    for c in e.children_mut() {
        c.set_attr("seen", "1");
    }
    assert!(e.children().all(|c| c.attr("seen") == Some("1")));
    // removing q merges "ab" and "c"
    let q = e.remove_child("q", "urn:q").unwrap();
    assert!(q.is("q", "urn:q"));
    assert_eq!(e.nodes().len(), 2);
    assert_eq!(e.nodes()[0].as_text(), Some("abc"));
    assert!(e.nodes()[1].as_element().is_some());
    assert!(e.remove_child("q", "urn:q").is_none());
    // equality after round trip includes the merged text
    assert_eq!(parse_element(&e.to_xml("")).unwrap(), e);
}

#[test]
fn stream_condition_mapping() {
    assert_eq!(
        XmlError::NotWellFormed(String::new()).stream_condition(),
        "not-well-formed"
    );
    assert_eq!(
        XmlError::RestrictedXml(String::new()).stream_condition(),
        "restricted-xml"
    );
    for e in [
        XmlError::StanzaTooLarge,
        XmlError::TooDeep,
        XmlError::TooManyAttributes,
        XmlError::AttributeTooLarge,
        XmlError::HeaderTooLarge,
    ] {
        assert_eq!(e.stream_condition(), "policy-violation");
    }
}

#[test]
fn types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Element>();
    check::<StreamEvent>();
    check::<StreamParser>();
    check::<XmlError>();
}

#[test]
fn text_before_the_stream_header_fails_at_once() {
    let mut p = StreamParser::new(Limits::default());
    let mut ev = Vec::new();
    assert!(matches!(
        p.feed(b"  this is not XML\r\n", &mut ev),
        Err(XmlError::NotWellFormed(_))
    ));
    // Split in the middle of garbage: the first byte decides.
    let mut p = StreamParser::new(Limits::default());
    assert!(matches!(
        p.feed(b"x", &mut ev),
        Err(XmlError::NotWellFormed(_))
    ));
}

#[test]
fn many_tiny_elements_are_bounded_by_memory_not_only_wire_bytes() {
    let limits = Limits {
        max_stanza_bytes: 64 * 1024,
        ..Limits::default()
    };
    let header = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x' version='1.0'>";
    // 60 KiB of <a/> is under the wire limit but would be ~1.5 MiB as a tree.
    let mut body = b"<message>".to_vec();
    for _ in 0..(60 * 1024 / 4) {
        body.extend_from_slice(b"<a/>");
    }
    body.extend_from_slice(b"</message>");
    let mut p = StreamParser::new(limits.clone());
    let mut ev = Vec::new();
    p.feed(header, &mut ev).expect("header");
    assert_eq!(p.feed(&body, &mut ev), Err(XmlError::StanzaTooLarge));
    // A normal stanza of the same wire size, with a long text, is fine.
    let mut p = StreamParser::new(limits);
    let mut ev = Vec::new();
    p.feed(header, &mut ev).expect("header");
    let text = "x".repeat(60 * 1024);
    let msg = format!("<message><body>{text}</body></message>");
    p.feed(msg.as_bytes(), &mut ev).expect("accepted");
    assert!(matches!(ev.last(), Some(StreamEvent::Stanza(_))));
}

#[test]
fn an_attribute_can_be_written_apart_from_a_serialisation() {
    let m = Element::new("message", "jabber:client")
        .with_attr("from", "a@x/r")
        .with_attr("to", "b@x")
        .with_attr("type", "chat")
        .with_child(Element::new("body", "jabber:client").with_text("hi"));
    // Replaced in its place among the attributes.
    let mut out = Vec::new();
    m.write_with_attr(&mut out, "jabber:client", "to", Some("c@x/'q'"));
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "<message from=\"a@x/r\" to=\"c@x/'q'\" type=\"chat\"><body>hi</body></message>"
    );
    // An element without it gets it first.
    let mut out = Vec::new();
    let bare = Element::new("presence", "jabber:client").with_attr("id", "p");
    assert_eq!(
        bare.write_with_attr(&mut out, "jabber:client", "to", Some("c@x")),
        9
    );
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        "<presence to=\"c@x\" id=\"p\"/>"
    );
    // Left out, then inserted at the offset: the same bytes, whatever precedes in the buffer.
    let mut wire = b"prefix".to_vec();
    let at = m.write_with_attr(&mut wire, "", "to", None) + "prefix".len();
    let mut out = wire[..at].to_vec();
    Element::write_attr(&mut out, "to", "d@x");
    out.extend_from_slice(&wire[at..]);
    assert_eq!(
        std::str::from_utf8(&out).expect("utf8"),
        "prefix<message xmlns=\"jabber:client\" from=\"a@x/r\" to=\"d@x\" type=\"chat\">\
         <body>hi</body></message>"
    );
    // The same bytes as the element with that address.
    let mut with_d = m.clone();
    with_d.set_attr("to", "d@x");
    assert_eq!(&out["prefix".len()..], with_d.to_xml("").as_bytes());
    // Parsing it back gives the element with the new address.
    let mut expected = m.clone();
    expected.set_attr("to", "e@x");
    let mut out = Vec::new();
    m.write_with_attr(&mut out, "", "to", Some("e@x"));
    let parsed = parse_element(std::str::from_utf8(&out).expect("utf8")).expect("parses");
    assert_eq!(parsed.attr("to"), Some("e@x"));
    assert_eq!(parsed.children().count(), 1);
}
