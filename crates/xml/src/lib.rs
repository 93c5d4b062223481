//! Sans-I/O XML stream layer for XMPP (RFC 6120 §4 and §11).
//!
//! This crate turns bytes arriving in arbitrary chunks into [`StreamEvent`]s
//! ([`StreamParser`]), offers a small owned element tree ([`Element`],
//! [`Node`]) and serializes elements back to bytes ([`Element::write_to`]), and
//! writes stream framing (header, features, stream errors, close) for plain
//! streams and WebSocket ([`Framing`]).
//! It performs no I/O itself. The underlying XML tokenizer (currently
//! [`rxml`]) is an implementation detail and never appears in the public API.
//!
//! # Example
//!
//! ```
//! use rookery_xml::{Element, Limits, StreamEvent, StreamParser};
//!
//! let mut parser = StreamParser::new(Limits::default());
//! let mut events = Vec::new();
//! parser.feed(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
//!     xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>\
//!     <message to='juliet@example.com'><bo", &mut events)?;
//! assert!(parser.in_stanza());
//! parser.feed(b"dy>Hi!</body></message> ", &mut events)?;
//!
//! let StreamEvent::Open(header) = &events[0] else { unreachable!() };
//! assert_eq!(header.default_ns.as_deref(), Some("jabber:client"));
//! assert_eq!(header.attr("to"), Some("example.com"));
//!
//! let StreamEvent::Stanza(msg) = &events[1] else { unreachable!() };
//! assert!(msg.is("message", "jabber:client"));
//! assert_eq!(msg.get_child("body", "jabber:client").map(Element::text).as_deref(), Some("Hi!"));
//!
//! // Serialize for a stream whose content namespace is jabber:client:
//! assert_eq!(
//!     msg.to_xml("jabber:client"),
//!     "<message to=\"juliet@example.com\"><body>Hi!</body></message>"
//! );
//! # Ok::<(), rookery_xml::XmlError>(())
//! ```
//!
//! # Invariants
//!
//! * **Never panics on input.** No byte sequence, chunking or feeding order
//!   can make [`StreamParser::feed`] panic; malformed input yields an
//!   [`XmlError`]. After an error the parser is dead: every further `feed`
//!   returns the same error until [`StreamParser::reset`] is called.
//! * **Limits before allocation.** All [`Limits`] are checked before memory
//!   proportional to the offending input is spent:
//!   - the parser never hands the tokenizer more bytes than the remaining
//!     budget of the current stanza (or stream header) plus one, so an
//!     oversized stanza is refused after at most `max_stanza_bytes + 1`
//!     bytes of it were looked at, no matter how large the chunk passed to
//!     `feed` is;
//!   - the tokenizer's token buffer is bounded by `max_attribute_bytes`
//!     (text is delivered in chunks of at most that size, longer names or
//!     attribute values are refused while being read);
//!   - nesting depth is checked when an element opens, the attribute count
//!     when each attribute arrives, before it is stored.
//! * **Well-formedness.** Only namespace-well-formed, UTF-8, XML 1.0 input in
//!   the restricted XMPP profile is accepted: no DTDs, no entity declarations
//!   or references other than the five predefined ones (character references
//!   are fine), no processing instructions (the optional leading XML
//!   declaration is not one), no comments and no character data directly
//!   below the stream root except whitespace (keepalives).
//! * **Small idle footprint.** Between stanzas the parser holds no stanza
//!   data ([`StreamParser::buffered_bytes`] is 0) and releases the
//!   tokenizer's scratch buffers at the end of every [`StreamParser::feed`]
//!   call that leaves it idle.
//! * **Output is always well-formed** for elements whose names are valid XML
//!   names: text and attribute values are escaped, characters that XML 1.0
//!   cannot represent are replaced by U+FFFD, and namespace declarations are
//!   generated from the element's namespace (see [`Element::write_to`]).
//!
//! # Error → stream error condition mapping
//!
//! [`XmlError::stream_condition`] gives the RFC 6120 §4.9.3 condition:
//!
//! | error | condition |
//! |---|---|
//! | [`XmlError::NotWellFormed`] (syntax, namespace, undeclared prefix, duplicate attribute, text at stream level, ...) | `not-well-formed` |
//! | [`XmlError::RestrictedXml`] (DTD / `<!DOCTYPE`, `<!ENTITY` and other markup declarations, references to undeclared entities, processing instructions, comments, XML version ≠ 1.0, `standalone='no'`) | `restricted-xml` |
//! | [`XmlError::StanzaTooLarge`], [`XmlError::TooDeep`], [`XmlError::TooManyAttributes`], [`XmlError::AttributeTooLarge`], [`XmlError::HeaderTooLarge`] | `policy-violation` |
//! | [`XmlError::BadEncoding`] (invalid UTF-8, UTF-16 byte order mark, `encoding` other than UTF-8 in the XML declaration) | `unsupported-encoding` |
//!
//! Where the tokenizer cannot tell the cases apart, the following choices
//! are made (and covered by tests):
//! * `<!` followed by anything but `--` or `[CDATA[` is reported as
//!   `RestrictedXml` (it is a DTD or markup declaration, or garbage shaped
//!   like one); a malformed comment or CDATA opener (`<!-x`, `<![CDAX`) is
//!   `NotWellFormed`.
//! * An undeclared entity reference is `RestrictedXml`, even if its name is
//!   absurdly long. Directly below the stream root, however, any `&` is
//!   character data at stream level and refused as `NotWellFormed` before
//!   the reference is looked at.
//! * `<?target ...?>` is `RestrictedXml` everywhere, including a target
//!   starting with `xml` at the very beginning of the stream
//!   (`<?xml-stylesheet ...?>`); a malformed XML declaration (`<?xml?>`,
//!   `<?xml version='1.0'>`) is `NotWellFormed`.
//! * A UTF-8 byte order mark is U+FEFF, i.e. character data before the root
//!   (RFC 6120 §11.6), and therefore `NotWellFormed`.
//! * A name or attribute value longer than the tokenizer limit is refused by
//!   the tokenizer itself; it is reported as `AttributeTooLarge` inside an
//!   element's start tag, `HeaderTooLarge` while reading the stream header and
//!   `StanzaTooLarge` otherwise (all `policy-violation`).
//! * A byte that is not valid UTF-8 is usually `BadEncoding`; in a few
//!   positions of the grammar (e.g. directly after `<`) the tokenizer reports
//!   it as an unexpected byte, which surfaces as `NotWellFormed`.
//!
//! # Attribute naming convention
//!
//! Unnamespaced attributes are named by their local name (`to`), attributes
//! in the XML namespace by `xml:` plus their local name (`xml:lang`), all
//! other namespaced attributes as `{namespace-uri}localname`. Namespace
//! declarations (`xmlns`, `xmlns:p`) are never attributes; they are consumed
//! by namespace resolution.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod element;
mod escape;
mod framing;
mod ns;
mod parser;

#[cfg(test)]
mod tests;

pub use element::{Element, Node};
pub use framing::{
    websocket_messages, Framing, MessageParser, StreamOpen, NS_FRAMING, NS_HTTPBIND, NS_XBOSH,
};
pub use parser::{
    parse_element, parse_element_with_limits, StreamEvent, StreamHeader, StreamParser,
};

/// Appends `value` escaped for an attribute value in either quote character (for writers
/// outside this crate, such as the BOSH `<body/>` wrapper).
pub fn escape_attr(value: &str, out: &mut Vec<u8>) {
    escape::escape_attr_any_quote(value, out)
}

/// The namespace of the stream root and stream-level elements
/// (`<stream:stream>`, `<stream:features>`, `<stream:error>`).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";

/// The XML namespace, bound to the `xml` prefix (used by `xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Closing tag of an XMPP stream as it is sent on the wire.
pub const STREAM_CLOSE: &str = "</stream:stream>";

/// Resource limits applied by [`StreamParser`].
///
/// All limits are enforced before memory proportional to the offending input
/// is spent. Limits larger than the defaults are fine; note that
/// * the tokenizer keeps scratch buffers of `max_attribute_bytes` (clamped to
///   256 B ..= 16 MiB) while busy; they are released when the parser is idle;
/// * the tree built for a stanza costs more heap than its wire size: roughly
///   100 bytes per element plus the text and attribute strings, so a stanza
///   made only of `<a/>` children can take ~50× `max_stanza_bytes`;
/// * tree operations on elements (drop, clone, comparison, serialization)
///   recurse once per nesting level, so `max_depth` should stay in the
///   hundreds at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one top-level child element of the stream (a stanza),
    /// counted on the wire from its `<` to the final `>`, text included.
    pub max_stanza_bytes: usize,
    /// Nesting depth inside a stanza (the stanza itself is depth 1).
    pub max_depth: usize,
    /// Attributes per element (namespace declarations included).
    pub max_attributes: usize,
    /// Name + value bytes of one attribute (value after entity expansion).
    pub max_attribute_bytes: usize,
    /// Bytes of the `<stream:stream ...>` open tag, plus the optional XML
    /// declaration and whitespace before it.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attributes: 64,
            max_attribute_bytes: 8 * 1024,
            max_header_bytes: 4 * 1024,
        }
    }
}

/// Errors produced while parsing. All of them are fatal for the stream.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// The input is not well-formed (or not namespace-well-formed) XML, or
    /// violates the XMPP stream grammar (e.g. text directly below the root).
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// The input uses an XML feature XMPP forbids: DTD, entity declaration,
    /// reference to an entity other than the five predefined ones,
    /// processing instruction or comment.
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    /// A stanza exceeded [`Limits::max_stanza_bytes`].
    #[error("stanza too large")]
    StanzaTooLarge,
    /// Nesting exceeded [`Limits::max_depth`].
    #[error("elements nested too deeply")]
    TooDeep,
    /// An element has more than [`Limits::max_attributes`] attributes.
    #[error("too many attributes")]
    TooManyAttributes,
    /// An attribute exceeded [`Limits::max_attribute_bytes`].
    #[error("attribute too large")]
    AttributeTooLarge,
    /// The stream header exceeded [`Limits::max_header_bytes`].
    #[error("stream header too large")]
    HeaderTooLarge,
    /// The input is not UTF-8.
    #[error("unsupported encoding (input is not UTF-8)")]
    BadEncoding,
}

impl XmlError {
    /// The RFC 6120 §4.9.3 stream error condition (element name in
    /// `urn:ietf:params:xml:ns:xmpp-streams`) to send for this error.
    pub fn stream_condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::StanzaTooLarge
            | XmlError::TooDeep
            | XmlError::TooManyAttributes
            | XmlError::AttributeTooLarge
            | XmlError::HeaderTooLarge => "policy-violation",
            XmlError::BadEncoding => "unsupported-encoding",
        }
    }
}
