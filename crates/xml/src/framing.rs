//! Stream-level framing: what opens a stream, announces its features, ends it with an
//! error and closes it, written in one place for every kind of stream.
//!
//! * [`Framing::Stream`]: RFC 6120 §4, one XML document per stream (TCP, TLS). The
//!   `<stream:stream>` start tag stays open for the life of the stream and the elements
//!   below it inherit its content namespace, so stanzas go out without `xmlns`.
//! * [`Framing::WebSocket`]: RFC 7395 §3, every message is a complete document: the
//!   stream is opened and closed by `<open/>` and `<close/>` in
//!   `urn:ietf:params:xml:ns:xmpp-framing`, and every element declares its namespace.
//!   [`MessageParser`] reads such messages with the stream parser (and its limits), and
//!   [`websocket_messages`] cuts what a stream wrote into one message per element.
//! * [`Framing::Bosh`]: XEP-0206, the stream carried in the `<body/>` wrappers of BOSH
//!   (XEP-0124). Written exactly as [`Framing::WebSocket`] (each element declaring its
//!   namespace, `<open/>` and `<close/>` marking the stream's start and end), for the BOSH
//!   transport to take apart: the header becomes attributes of the session creation
//!   response (XEP-0206 §3), every other element goes into a response body, the end becomes
//!   a `type='terminate'` body (XEP-0206 §6, §7). The client's stream header is the
//!   request `<body/>` itself, in [`NS_HTTPBIND`].

use crate::escape::escape_attr_any_quote;
use crate::parser::{StreamHeader, StreamParser};
use crate::{Element, Limits, StreamEvent, XmlError, NS_STREAMS, STREAM_CLOSE};

/// The namespace of RFC 7395 `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The namespace of the BOSH `<body/>` wrapper (XEP-0124 §5).
pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// The namespace of XEP-0206's attributes on `<body/>` (`xmpp:version`, `xmpp:restart`).
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";

/// How a stream's framing is written on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6120 §4: `<stream:stream>` … `</stream:stream>` around the whole stream.
    Stream,
    /// RFC 7395 §3.3: `<open/>` and `<close/>`, each element a document of its own.
    WebSocket,
    /// XEP-0206: written as [`Framing::WebSocket`], for the BOSH transport to put into
    /// `<body/>` wrappers; the client's header is a request's `<body/>`.
    Bosh,
}

/// The receiving entity's stream header (RFC 6120 §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOpen<'a> {
    /// The content namespace (`jabber:client`, `jabber:server`, ...).
    pub content_ns: &'a str,
    /// The stream id (§4.7.3); empty for the initiating entity's header, which has none.
    pub id: &'a str,
    /// The domain this side speaks for.
    pub from: &'a str,
    /// The initiating entity's address, when it gave a valid one (§4.7.2).
    pub to: Option<&'a str>,
    /// The XMPP version (`1.0`); empty for none: a component stream (XEP-0114) predates
    /// versions and features, and its header carries none.
    pub version: &'a str,
    /// The default language of what this side sends.
    pub lang: &'a str,
}

impl Framing {
    /// Writes the stream header (after a stream restart too).
    pub fn write_open(self, out: &mut Vec<u8>, open: &StreamOpen<'_>) {
        self.write_open_declaring(out, open, &[])
    }

    /// [`write_open`](Self::write_open) declaring more namespace prefixes on the root, as
    /// `(prefix, namespace)`: a server-to-server stream declares `db` for Server Dialback
    /// (XEP-0220 §2.1: its presence says dialback is supported).
    pub fn write_open_declaring(
        self,
        out: &mut Vec<u8>,
        open: &StreamOpen<'_>,
        prefixes: &[(&str, &str)],
    ) {
        match self {
            Framing::Stream => {
                out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
                escape_attr_any_quote(open.content_ns, out);
                out.extend_from_slice(b"' xmlns:stream='");
                out.extend_from_slice(NS_STREAMS.as_bytes());
                out.push(b'\'');
                for (prefix, ns) in prefixes {
                    out.extend_from_slice(b" xmlns:");
                    out.extend_from_slice(prefix.as_bytes());
                    out.extend_from_slice(b"='");
                    escape_attr_any_quote(ns, out);
                    out.push(b'\'');
                }
            }
            Framing::WebSocket | Framing::Bosh => {
                out.extend_from_slice(b"<open xmlns='");
                out.extend_from_slice(NS_FRAMING.as_bytes());
                out.push(b'\'');
            }
        }
        let attrs = [
            // The initiating entity's header has no id (RFC 6120 §4.7.3): empty leaves it out.
            ("id", (!open.id.is_empty()).then_some(open.id)),
            ("from", Some(open.from)),
            ("version", Some(open.version).filter(|v| !v.is_empty())),
            ("xml:lang", Some(open.lang)),
            ("to", open.to),
        ];
        for (name, value) in attrs {
            let Some(value) = value else { continue };
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr_any_quote(value, out);
            out.push(b'\'');
        }
        match self {
            // The open tag stays open for the life of the stream.
            Framing::Stream => out.push(b'>'),
            Framing::WebSocket | Framing::Bosh => out.extend_from_slice(b"/>"),
        }
    }

    /// Writes `<stream:features>` with these features (RFC 6120 §4.3.2).
    pub fn write_features(self, out: &mut Vec<u8>, content_ns: &str, features: &[Element]) {
        self.write_stream_child_open(out, b"features");
        for f in features {
            f.write_to(out, self.parent_ns(content_ns));
        }
        out.extend_from_slice(b"</stream:features>");
    }

    /// Writes `<stream:error>` with the children of `error` (an `<error/>` in the streams
    /// namespace: the RFC 6120 §4.9.3 condition, optional text and application-specific
    /// condition). The stream must be closed after it ([`write_close`](Self::write_close)).
    pub fn write_error(self, out: &mut Vec<u8>, error: &Element) {
        self.write_stream_child_open(out, b"error");
        for child in error.children() {
            child.write_to(out, NS_STREAMS);
        }
        out.extend_from_slice(b"</stream:error>");
    }

    /// Writes the end of the stream (RFC 6120 §4.4, RFC 7395 §3.6).
    pub fn write_close(self, out: &mut Vec<u8>) {
        match self {
            Framing::Stream => out.extend_from_slice(STREAM_CLOSE.as_bytes()),
            Framing::WebSocket | Framing::Bosh => {
                out.extend_from_slice(b"<close xmlns='");
                out.extend_from_slice(NS_FRAMING.as_bytes());
                out.extend_from_slice(b"'/>");
            }
        }
    }

    /// Writes the end of the stream and asks the client to reconnect at `uri` (RFC 7395
    /// §3.6.1, `see-other-uri`; the `see-other-host` stream error's counterpart for a
    /// WebSocket, whose address is a URI). A stream framing has no such close: there it is
    /// the ordinary one. BOSH carries it the same way, as the `see-other-uri` terminal
    /// condition (XEP-0124 §17.2).
    pub fn write_close_see_other(self, out: &mut Vec<u8>, uri: &str) {
        match self {
            Framing::Stream => self.write_close(out),
            Framing::WebSocket | Framing::Bosh => {
                out.extend_from_slice(b"<close xmlns='");
                out.extend_from_slice(NS_FRAMING.as_bytes());
                out.extend_from_slice(b"' see-other-uri='");
                escape_attr_any_quote(uri, out);
                out.extend_from_slice(b"'/>");
            }
        }
    }

    /// Writes a top-level element (a stanza or a negotiation element) of a stream whose
    /// content namespace is `content_ns`.
    #[inline]
    pub fn write_element(self, out: &mut Vec<u8>, element: &Element, content_ns: &str) {
        element.write_to(out, self.parent_ns(content_ns));
    }

    /// The namespace a top-level element inherits: the stream's content namespace inside
    /// `<stream:stream>`, none in a WebSocket message.
    fn parent_ns(self, content_ns: &str) -> &str {
        match self {
            Framing::Stream => content_ns,
            Framing::WebSocket | Framing::Bosh => "",
        }
    }

    fn write_stream_child_open(self, out: &mut Vec<u8>, name: &[u8]) {
        out.extend_from_slice(b"<stream:");
        out.extend_from_slice(name);
        if self != Framing::Stream {
            out.extend_from_slice(b" xmlns:stream='");
            out.extend_from_slice(NS_STREAMS.as_bytes());
            out.push(b'\'');
        }
        out.push(b'>');
    }
}

/// The root the [`MessageParser`] feeds its stream parser before any message: every message
/// is then read as one child of it. No default namespace, so an element that does not
/// declare its namespace (as RFC 7395 §3.3.3 requires) is in none and is refused upstream.
const MESSAGE_ROOT: &[u8] = b"<rookery-websocket>";

fn nwf(msg: &str) -> XmlError {
    XmlError::NotWellFormed(msg.to_owned())
}

/// Reads the messages of an RFC 7395 WebSocket stream as [`StreamEvent`]s: `<open/>` becomes
/// [`StreamEvent::Open`] (a header named `open` in [`NS_FRAMING`]), `<close/>`
/// [`StreamEvent::Close`], any other element [`StreamEvent::Stanza`].
///
/// Each message goes through a [`StreamParser`], so the limits of a stream (stanza size,
/// depth, attributes) apply unchanged. A message must hold exactly one complete element
/// (RFC 7395 §3.3.3: each is a document of its own), and the first one of a stream must be
/// `<open/>` (§3.4); anything else is an error like a stream's bad XML.
#[derive(Debug)]
pub struct MessageParser {
    inner: StreamParser,
    /// `<open/>` was received on this stream (since the last restart).
    opened: bool,
    /// `<close/>` was received: nothing may follow.
    closed: bool,
}

impl MessageParser {
    /// A parser for a new WebSocket stream, enforcing `limits` on each message.
    pub fn new(limits: Limits) -> Self {
        let mut p = MessageParser {
            inner: StreamParser::new(limits),
            opened: false,
            closed: false,
        };
        p.reset();
        p
    }

    /// A new stream (a restart after SASL, RFC 7395 §3.7): `<open/>` is expected again.
    pub fn reset(&mut self) {
        self.inner.reset();
        let mut root = Vec::new();
        // Cannot fail: a constant, well-formed start tag.
        let _ = self.inner.feed(MESSAGE_ROOT, &mut root);
        self.opened = false;
        self.closed = false;
    }

    /// Reads one message (the text of one WebSocket message); appends its event, if it held
    /// an element (a message of whitespace only holds none).
    pub fn feed_message(
        &mut self,
        message: &[u8],
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), XmlError> {
        if self.closed {
            return Err(nwf("a message after <close/>"));
        }
        let before = events.len();
        let parsed = self.inner.feed(message, events);
        let mut got = events.split_off(before);
        parsed?;
        if self.inner.in_stanza() {
            // A stream would wait for the rest; a message is a whole document (§3.3.3).
            return Err(nwf("a WebSocket message must hold a whole element"));
        }
        let Some(event) = got.pop() else {
            return Ok(());
        };
        if !got.is_empty() {
            return Err(nwf("a WebSocket message must hold one element only"));
        }
        let StreamEvent::Stanza(el) = event else {
            // The root never closes or opens again inside a message's text.
            return Err(nwf("unexpected end of the message"));
        };
        let event = if el.is("open", NS_FRAMING) {
            if self.opened {
                return Err(nwf("<open/> on a stream already open"));
            }
            self.opened = true;
            StreamEvent::Open(StreamHeader {
                name: "open".to_owned(),
                ns: NS_FRAMING.to_owned(),
                default_ns: None,
                attrs: el
                    .attrs()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            })
        } else if !self.opened {
            return Err(nwf("a WebSocket stream starts with <open/>"));
        } else if el.is("close", NS_FRAMING) {
            self.closed = true;
            StreamEvent::Close
        } else {
            StreamEvent::Stanza(el)
        };
        events.push(event);
        Ok(())
    }
}

/// Cuts what a stream with [`Framing::WebSocket`] wrote into its top-level elements, one
/// WebSocket message each (RFC 7395 §3.3.3): a stream writes a batch of elements into one
/// buffer (the header with the features, a burst of stanzas).
///
/// The bytes are the server's own serialisation (well-formed, no comments, CDATA or
/// processing instructions; `<` only ever starts a tag), so tags are found by their `<` and
/// their end by the first `>` outside a quoted attribute value. Anything left after the last
/// complete element comes last, as it is.
pub fn websocket_messages(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = element_end(rest).unwrap_or(rest.len());
        let (msg, tail) = rest.split_at(end);
        rest = tail;
        Some(msg)
    })
}

/// The end (exclusive) of the first top-level element of `bytes`.
fn element_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let closing = bytes.get(i + 1) == Some(&b'/');
        // The end of this tag: the first '>' outside quotes.
        let mut quote = None;
        let mut j = i + 1;
        let close_at = loop {
            let b = *bytes.get(j)?;
            match quote {
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'\'' || b == b'"' => quote = Some(b),
                None if b == b'>' => break j,
                None => {}
            }
            j += 1;
        };
        let self_closing = !closing && bytes[close_at - 1] == b'/';
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            depth += 1;
        }
        i = close_at + 1;
        if depth == 0 {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: StreamOpen<'static> = StreamOpen {
        content_ns: "jabber:client",
        id: "abc'd",
        from: "example.com",
        to: Some("juliet@example.com/balcony"),
        version: "1.0",
        lang: "en",
    };

    fn error() -> Element {
        Element::new("error", NS_STREAMS)
            .with_child(Element::new(
                "conflict",
                "urn:ietf:params:xml:ns:xmpp-streams",
            ))
            .with_child(Element::new("handled-count-too-high", "urn:xmpp:sm:3").with_attr("h", "3"))
    }

    #[test]
    fn a_stream_is_one_document_that_our_parser_reads_back() {
        let f = Framing::Stream;
        let mut out = Vec::new();
        f.write_open(&mut out, &OPEN);
        f.write_features(
            &mut out,
            "jabber:client",
            &[Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind")],
        );
        f.write_element(
            &mut out,
            &Element::new("message", "jabber:client").with_attr("id", "1"),
            "jabber:client",
        );
        f.write_error(&mut out, &error());
        f.write_close(&mut out);
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(text.starts_with(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='abc&apos;d' \
             from='example.com' version='1.0' xml:lang='en' to='juliet@example.com/balcony'>"
        ));
        assert!(text.contains("<message id=\"1\"/>"), "{text}");
        assert!(text.ends_with("</stream:error></stream:stream>"), "{text}");

        let mut parser = StreamParser::new(Limits::default());
        let mut events = Vec::new();
        parser.feed(&out, &mut events).expect("well-formed");
        let StreamEvent::Open(header) = &events[0] else {
            panic!("no header: {events:?}")
        };
        assert_eq!(header.attr("id"), Some("abc'd"));
        assert_eq!(header.default_ns.as_deref(), Some("jabber:client"));
        let StreamEvent::Stanza(features) = &events[1] else {
            panic!("no features")
        };
        assert!(features.is("features", NS_STREAMS));
        let StreamEvent::Stanza(err) = &events[3] else {
            panic!("no error")
        };
        assert_eq!(err, &error());
        assert!(matches!(events[4], StreamEvent::Close));
    }

    #[test]
    fn websocket_messages_are_documents_of_their_own() {
        let f = Framing::WebSocket;
        let mut open = Vec::new();
        f.write_open(&mut open, &OPEN);
        let open = crate::parse_element(std::str::from_utf8(&open).expect("utf8")).expect("open");
        assert!(open.is("open", NS_FRAMING));
        assert_eq!(open.attr("from"), Some("example.com"));

        let mut msg = Vec::new();
        f.write_element(
            &mut msg,
            &Element::new("message", "jabber:client"),
            "jabber:client",
        );
        let msg = crate::parse_element(std::str::from_utf8(&msg).expect("utf8")).expect("stanza");
        assert!(msg.is("message", "jabber:client"));

        let mut err = Vec::new();
        f.write_error(&mut err, &error());
        let err = crate::parse_element(std::str::from_utf8(&err).expect("utf8")).expect("error");
        assert_eq!(err, error());

        let mut features = Vec::new();
        f.write_features(&mut features, "jabber:client", &[]);
        let features =
            crate::parse_element(std::str::from_utf8(&features).expect("utf8")).expect("features");
        assert!(features.is("features", NS_STREAMS));

        let mut close = Vec::new();
        f.write_close(&mut close);
        let close =
            crate::parse_element(std::str::from_utf8(&close).expect("utf8")).expect("close");
        assert!(close.is("close", NS_FRAMING));
    }
}

#[cfg(test)]
mod websocket_tests {
    use super::*;

    fn feed(p: &mut MessageParser, msg: &str) -> Result<Vec<StreamEvent>, XmlError> {
        let mut events = Vec::new();
        p.feed_message(msg.as_bytes(), &mut events).map(|()| events)
    }

    const OPEN: &str =
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>";

    #[test]
    fn messages_become_stream_events() {
        let mut p = MessageParser::new(Limits::default());
        let ev = feed(&mut p, OPEN).expect("open");
        let [StreamEvent::Open(h)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!((h.name.as_str(), h.ns.as_str()), ("open", NS_FRAMING));
        assert_eq!(h.attr("to"), Some("example.com"));
        let ev = feed(
            &mut p,
            " <message xmlns='jabber:client' to='a@b'><body>x</body></message>\n",
        )
        .expect("stanza");
        let [StreamEvent::Stanza(m)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert!(m.is("message", "jabber:client"));
        // A prefix declared in one message means nothing in the next.
        feed(&mut p, "<x:iq xmlns:x='jabber:client' type='get'/>").expect("prefixed");
        assert!(feed(&mut p, "<x:iq type='get'/>").is_err());
        let mut p = MessageParser::new(Limits::default());
        feed(&mut p, OPEN).expect("open");
        // An element that declares no namespace is in none (refused by the stream).
        let ev = feed(&mut p, "<message/>").expect("parsed");
        let [StreamEvent::Stanza(m)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(m.ns(), "");
        assert!(feed(&mut p, "   ").expect("whitespace").is_empty());
        let ev = feed(
            &mut p,
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        )
        .expect("close");
        assert!(matches!(ev.as_slice(), [StreamEvent::Close]));
        assert!(feed(&mut p, "<message xmlns='jabber:client'/>").is_err());
        // A restart expects <open/> again.
        p.reset();
        assert!(feed(&mut p, "<message xmlns='jabber:client'/>").is_err());
    }

    #[test]
    fn bad_messages_are_errors() {
        let bad = |first: &str, second: Option<&str>| {
            let mut p = MessageParser::new(Limits::default());
            match second {
                None => feed(&mut p, first).expect_err(first),
                Some(s) => {
                    feed(&mut p, first).expect("first");
                    feed(&mut p, s).expect_err(s)
                }
            }
        };
        // Text before <open/>, a stanza before it, two elements, half an element.
        assert!(matches!(bad("hello", None), XmlError::NotWellFormed(_)));
        assert!(matches!(
            bad("<message xmlns='jabber:client'/>", None),
            XmlError::NotWellFormed(_)
        ));
        bad(OPEN, Some("<a xmlns='x'/><b xmlns='x'/>"));
        bad(OPEN, Some("<message xmlns='jabber:client'>"));
        bad(OPEN, Some(OPEN));
        bad(OPEN, Some("<!DOCTYPE x>"));
        // The stream's limits apply to each message.
        let mut p = MessageParser::new(Limits {
            max_stanza_bytes: 100,
            ..Limits::default()
        });
        feed(&mut p, OPEN).expect("open");
        let big = format!(
            "<message xmlns='jabber:client'><body>{}</body></message>",
            "x".repeat(200)
        );
        assert!(matches!(feed(&mut p, &big), Err(XmlError::StanzaTooLarge)));
    }

    #[test]
    fn output_is_cut_into_one_message_per_element() {
        let f = Framing::WebSocket;
        let mut out = Vec::new();
        f.write_open(
            &mut out,
            &StreamOpen {
                content_ns: "jabber:client",
                id: "i>d",
                from: "example.com",
                to: None,
                version: "1.0",
                lang: "en",
            },
        );
        f.write_features(
            &mut out,
            "jabber:client",
            &[Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind")],
        );
        let msg = Element::new("message", "jabber:client")
            .with_attr("to", "a/>b")
            .with_child(Element::new("body", "jabber:client").with_text("1 > 0 <3"));
        f.write_element(&mut out, &msg, "jabber:client");
        out.extend_from_slice(b"<r xmlns='urn:xmpp:sm:3'/>");
        f.write_close_see_other(&mut out, "wss://other.example/ws?a='b'");
        let parts: Vec<&str> = websocket_messages(&out)
            .map(|m| std::str::from_utf8(m).expect("utf8"))
            .collect();
        assert_eq!(parts.len(), 5, "{parts:?}");
        assert!(parts[0].starts_with("<open ") && parts[0].ends_with("/>"));
        assert!(
            parts[1].starts_with("<stream:features") && parts[1].ends_with("</stream:features>")
        );
        assert_eq!(crate::parse_element(parts[2]).expect("message"), msg);
        assert_eq!(parts[3], "<r xmlns='urn:xmpp:sm:3'/>");
        let close = crate::parse_element(parts[4]).expect("close");
        assert!(close.is("close", NS_FRAMING));
        assert_eq!(
            close.attr("see-other-uri"),
            Some("wss://other.example/ws?a='b'")
        );
    }
}
