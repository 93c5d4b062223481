//! Stream-level framing: what opens a stream, announces its features, ends it with an
//! error and closes it, written in one place for every kind of stream.
//!
//! * [`Framing::Stream`]: RFC 6120 §4, one XML document per stream (TCP, TLS). The
//!   `<stream:stream>` start tag stays open for the life of the stream and the elements
//!   below it inherit its content namespace, so stanzas go out without `xmlns`.
//! * [`Framing::WebSocket`]: RFC 7395 §3, every message is a complete document: the
//!   stream is opened and closed by `<open/>` and `<close/>` in
//!   `urn:ietf:params:xml:ns:xmpp-framing`, and every element declares its namespace.

use crate::escape::escape_attr_any_quote;
use crate::{Element, NS_STREAMS, STREAM_CLOSE};

/// The namespace of RFC 7395 `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// How a stream's framing is written on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6120 §4: `<stream:stream>` … `</stream:stream>` around the whole stream.
    Stream,
    /// RFC 7395 §3.3: `<open/>` and `<close/>`, each element a document of its own.
    WebSocket,
}

/// The receiving entity's stream header (RFC 6120 §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOpen<'a> {
    /// The content namespace (`jabber:client`, `jabber:server`, ...).
    pub content_ns: &'a str,
    /// The stream id (§4.7.3).
    pub id: &'a str,
    /// The domain this side speaks for.
    pub from: &'a str,
    /// The initiating entity's address, when it gave a valid one (§4.7.2).
    pub to: Option<&'a str>,
    /// The XMPP version (`1.0`).
    pub version: &'a str,
    /// The default language of what this side sends.
    pub lang: &'a str,
}

impl Framing {
    /// Writes the stream header (after a stream restart too).
    pub fn write_open(self, out: &mut Vec<u8>, open: &StreamOpen<'_>) {
        match self {
            Framing::Stream => {
                out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
                escape_attr_any_quote(open.content_ns, out);
                out.extend_from_slice(b"' xmlns:stream='");
                out.extend_from_slice(NS_STREAMS.as_bytes());
                out.push(b'\'');
            }
            Framing::WebSocket => {
                out.extend_from_slice(b"<open xmlns='");
                out.extend_from_slice(NS_FRAMING.as_bytes());
                out.push(b'\'');
            }
        }
        let attrs = [
            ("id", Some(open.id)),
            ("from", Some(open.from)),
            ("version", Some(open.version)),
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
            Framing::WebSocket => out.extend_from_slice(b"/>"),
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
            Framing::WebSocket => {
                out.extend_from_slice(b"<close xmlns='");
                out.extend_from_slice(NS_FRAMING.as_bytes());
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
            Framing::WebSocket => "",
        }
    }

    fn write_stream_child_open(self, out: &mut Vec<u8>, name: &[u8]) {
        out.extend_from_slice(b"<stream:");
        out.extend_from_slice(name);
        if self == Framing::WebSocket {
            out.extend_from_slice(b" xmlns:stream='");
            out.extend_from_slice(NS_STREAMS.as_bytes());
            out.push(b'\'');
        }
        out.push(b'>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, StreamEvent, StreamParser};

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
