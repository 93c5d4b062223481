//! Incremental stream parser on top of rxml's raw (namespace-unaware)
//! parser. Namespace resolution is done here because it needs to see the
//! raw namespace declarations (for [`StreamHeader::default_ns`]) and because
//! it lets attribute limits be enforced per attribute, before the whole start
//! tag has been buffered.

use compact_str::CompactString;
use rxml::error::EndOrError;
use rxml::parser::CommentMode;
use rxml::{NcName, Options, Parse, RawEvent, RawParser, WithOptions};

use crate::element::{bytes_to_string, write_attrs, Element};
use crate::ns::Ns;
use crate::{Limits, XmlError, NS_XML};

/// Upper bound for rxml's token buffer (it is reserved eagerly).
const MAX_TOKEN_CAP: usize = 16 * 1024 * 1024;
/// Lower bound so that ordinary element names always fit.
const MIN_TOKEN_LEN: usize = 256;
/// Root element used by [`parse_element`].
const WRAPPER: &[u8] = b"<rookery-xml-wrapper>";

/// The root element's start tag (`<stream:stream ...>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Local name, `"stream"` for a valid stream.
    pub name: String,
    /// Resolved namespace of the root element (must be
    /// [`NS_STREAMS`](crate::NS_STREAMS) for a valid stream).
    pub ns: String,
    /// The default namespace (`xmlns="..."`) declared on the root, e.g.
    /// `"jabber:client"`, if any (an empty declaration counts as none).
    pub default_ns: Option<String>,
    /// Attributes (`to`, `from`, `version`, `id`, `xml:lang`, ...), without
    /// namespace declarations, in document order.
    pub attrs: Vec<(String, String)>,
}

impl StreamHeader {
    /// Value of an attribute (same naming convention as
    /// [`Element::attr`]).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Serialize as the opening of a stream: the XML declaration followed by
    /// the (unclosed) root start tag, the root bound to the `stream` prefix,
    /// e.g. `<?xml version='1.0'?><stream:stream xmlns="jabber:client"
    /// xmlns:stream="http://etherx.jabber.org/streams" ...>`.
    pub fn to_xml(&self) -> String {
        let mut out = Vec::with_capacity(192);
        out.extend_from_slice(b"<?xml version='1.0'?><");
        if !self.ns.is_empty() {
            out.extend_from_slice(b"stream:");
        }
        out.extend_from_slice(self.name.as_bytes());
        if let Some(d) = &self.default_ns {
            out.extend_from_slice(b" xmlns=\"");
            crate::escape::escape_attr(d, &mut out);
            out.push(b'"');
        }
        if !self.ns.is_empty() {
            out.extend_from_slice(b" xmlns:stream=\"");
            crate::escape::escape_attr(&self.ns, &mut out);
            out.push(b'"');
        }
        write_attrs(&self.attrs, &mut out);
        out.push(b'>');
        bytes_to_string(out)
    }
}

/// Something that happened on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The root element opened.
    Open(StreamHeader),
    /// A complete direct child of the root (any top-level element: stanzas,
    /// `<starttls/>`, `<auth/>`, `<stream:error/>`, ...).
    Stanza(Element),
    /// The root element closed (`</stream:stream>`).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the root start tag is complete.
    Header,
    /// Inside the root.
    Stream,
    /// After the root closed.
    Closed,
}

/// One namespace scope per open element.
#[derive(Debug)]
struct Scope {
    default_ns: Ns,
    /// `prefixes.len()` before this element's declarations were pushed.
    prefix_mark: usize,
}

/// A start tag being received (between `<name` and `>`).
#[derive(Debug)]
struct Head {
    prefix: Option<CompactString>,
    local: CompactString,
    default_decl: Option<String>,
    nattrs: usize,
}

#[derive(Debug)]
struct RawAttr {
    prefix: Option<CompactString>,
    local: CompactString,
    value: String,
}

#[inline]
fn cs(n: NcName) -> CompactString {
    let c: rxml::strings::CompactString = n.into();
    #[allow(clippy::useless_conversion)]
    CompactString::from(c)
}

fn lookup_prefix<'a>(prefixes: &'a [(CompactString, Ns)], prefix: &str) -> Option<&'a Ns> {
    prefixes
        .iter()
        .rev()
        .find(|(p, _)| p == prefix)
        .map(|(_, ns)| ns)
}

#[inline]
fn is_xml_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn nwf(msg: &str) -> XmlError {
    XmlError::NotWellFormed(msg.to_owned())
}

/// Estimated heap bytes of one parsed element beyond its wire bytes (name, namespace,
/// attribute and child vectors).
const ELEMENT_COST: usize = 96;
/// A stanza's estimated memory may be at most this many times `max_stanza_bytes`.
const MEMORY_FACTOR: usize = 4;

/// Incremental, sans-I/O XMPP stream parser.
///
/// Feed it bytes as they arrive with [`feed`](Self::feed); it appends
/// [`StreamEvent`]s. See the crate documentation for the guarantees.
#[derive(Debug)]
pub struct StreamParser {
    limits: Limits,
    raw: RawParser,
    phase: Phase,
    /// Open elements including the root and a start tag being received.
    depth: usize,
    head: Option<Head>,
    head_attrs: Vec<RawAttr>,
    head_decls: Vec<(CompactString, Ns)>,
    scopes: Vec<Scope>,
    prefixes: Vec<(CompactString, Ns)>,
    /// Elements of the current stanza that are still open.
    stack: Vec<Element>,
    header_bytes: usize,
    /// A `<` has been seen in the header phase: only whitespace may come before it.
    header_started: bool,
    stanza_bytes: usize,
    /// Elements in the stanza being built, for the memory bound (see [`ELEMENT_COST`]).
    stanza_elements: usize,
    /// Non-whitespace bytes seen at stream level since the last stanza
    /// ended (i.e. the start of the next stanza is in the tokenizer).
    idle_dirty: bool,
    /// Bytes since the `<` that made the parser dirty.
    idle_bytes: usize,
    /// The first bytes of the stream, to classify errors in the prolog.
    sniff: [u8; 6],
    error: Option<XmlError>,
}

impl StreamParser {
    /// Create a parser expecting a new stream (optional XML declaration,
    /// then the root start tag).
    pub fn new(limits: Limits) -> Self {
        let raw = Self::make_raw(&limits);
        StreamParser {
            limits,
            raw,
            phase: Phase::Header,
            depth: 0,
            head: None,
            head_attrs: Vec::new(),
            head_decls: Vec::new(),
            scopes: Vec::new(),
            prefixes: Vec::new(),
            stack: Vec::new(),
            header_bytes: 0,
            header_started: false,
            stanza_bytes: 0,
            stanza_elements: 0,
            idle_dirty: false,
            idle_bytes: 0,
            sniff: [0; 6],
            error: None,
        }
    }

    fn make_raw(limits: &Limits) -> RawParser {
        let opts = Options {
            // Bounds rxml's token scratch buffer: attribute values and names
            // longer than this are refused while being read, text is handed
            // out in pieces of at most this size.
            max_token_length: limits
                .max_attribute_bytes
                .clamp(MIN_TOKEN_LEN, MAX_TOKEN_CAP),
            // XMPP forbids comments (RFC 6120 §11.1); rxml rejects them in
            // this mode. Explicit rather than relying on rxml's default.
            comments: CommentMode::Reject,
            ..Options::default()
        };
        <RawParser as WithOptions>::with_options(opts)
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Start a new stream from scratch (RFC 6120 stream restart after
    /// STARTTLS / SASL success): a new XML declaration and root element are
    /// expected next. Also clears a previous error.
    pub fn reset(&mut self) {
        self.raw = Self::make_raw(&self.limits);
        self.phase = Phase::Header;
        self.depth = 0;
        self.head = None;
        self.head_attrs = Vec::new();
        self.head_decls = Vec::new();
        self.scopes = Vec::new();
        self.prefixes = Vec::new();
        self.stack = Vec::new();
        self.header_bytes = 0;
        self.header_started = false;
        self.stanza_bytes = 0;
        self.stanza_elements = 0;
        self.idle_dirty = false;
        self.idle_bytes = 0;
        self.sniff = [0; 6];
        self.error = None;
    }

    /// True while a top-level child is partially received.
    pub fn in_stanza(&self) -> bool {
        self.phase == Phase::Stream && (self.depth >= 2 || self.idle_dirty)
    }

    /// True once the root element has been closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Wire bytes of the incomplete stanza (or stream header) currently
    /// held by the parser; 0 between stanzas.
    pub fn buffered_bytes(&self) -> usize {
        match self.phase {
            Phase::Header => self.header_bytes,
            Phase::Stream if self.depth >= 2 => self.stanza_bytes,
            Phase::Stream if self.idle_dirty => self.idle_bytes,
            _ => 0,
        }
    }

    /// Feed the next chunk of bytes (any split point, even inside a UTF-8
    /// sequence or a tag).
    ///
    /// Complete events are appended to `events` in order; if an error
    /// occurs, the events that were complete before the error point are
    /// still appended, then `Err` is returned. After an error the parser is
    /// dead (further feeds return the same error) until
    /// [`reset`](Self::reset).
    pub fn feed(&mut self, data: &[u8], events: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.feed_inner(data, events) {
            Ok(()) => {
                if self.phase != Phase::Header && self.depth <= 1 && !self.idle_dirty {
                    self.release_idle_memory();
                }
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.clone());
                // drop partial data right away
                self.head = None;
                self.head_attrs = Vec::new();
                self.head_decls = Vec::new();
                self.stack = Vec::new();
                self.scopes = Vec::new();
                self.prefixes = Vec::new();
                self.raw = RawParser::new();
                Err(e)
            }
        }
    }

    /// Between stanzas nothing of a start tag or of a stanza's scopes is needed: an idle
    /// stream keeps only the stream root's scope and declarations (a few allocations per
    /// read under load, against a few hundred bytes held by every idle session).
    fn release_idle_memory(&mut self) {
        self.raw.release_temporaries();
        if self.stack.capacity() > 8 {
            self.stack = Vec::new();
        }
        if self.head_attrs.capacity() > 0 {
            self.head_attrs = Vec::new();
        }
        if self.head_decls.capacity() > 0 {
            self.head_decls = Vec::new();
        }
        if self.scopes.capacity() > self.scopes.len() {
            self.scopes.shrink_to_fit();
        }
        if self.prefixes.capacity() > self.prefixes.len() {
            self.prefixes.shrink_to_fit();
        }
    }

    fn feed_inner(&mut self, data: &[u8], events: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if self.phase == Phase::Header && self.header_bytes == 0 {
            // UTF-16 / UTF-32 input (with or without BOM) starts with one of
            // these; UTF-8 XML starts with '<' or whitespace.
            if let Some(0x00 | 0xFE | 0xFF) = data.first() {
                return Err(XmlError::BadEncoding);
            }
        }
        if self.phase == Phase::Header && !self.header_started {
            // The tokenizer would wait for more data on text before the root; refuse it at
            // once so a client sending garbage gets its error instead of a timeout.
            for &b in data {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'<' => {
                        self.header_started = true;
                        break;
                    }
                    _ => return Err(nwf("character data before the stream header")),
                }
            }
        }
        let mut input = data;
        loop {
            // Never let the tokenizer look at more than the remaining budget
            // (+1 to detect the overflow) of the current header / stanza.
            let cap = match self.phase {
                Phase::Header => self
                    .limits
                    .max_header_bytes
                    .saturating_sub(self.header_bytes)
                    .saturating_add(1),
                Phase::Stream if self.depth >= 2 => self
                    .limits
                    .max_stanza_bytes
                    .saturating_sub(self.stanza_bytes)
                    .saturating_add(1),
                _ => usize::MAX,
            };
            let offered = input.len().min(cap);
            let mut chunk = &input[..offered];
            let res = self.raw.parse(&mut chunk, false);
            // `chunk` only ever shrinks from the front, so this is in bounds
            let consumed = offered - chunk.len();
            let (used, remaining) = input.split_at(consumed);
            input = remaining;
            self.account(used)?;
            match res {
                Ok(Some(ev)) => self.handle(ev, events)?,
                // only reported with at_eof = true, which is never passed
                Ok(None) => return Ok(()),
                Err(EndOrError::NeedMoreData) => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    if consumed == 0 {
                        // the tokenizer refused to make progress on
                        // non-empty input; never spin
                        return Err(nwf("parser made no progress"));
                    }
                }
                Err(EndOrError::Error(e)) => return Err(self.map_error(e)),
            }
        }
    }

    /// Charge consumed bytes to the header or the current stanza.
    #[inline]
    fn account(&mut self, used: &[u8]) -> Result<(), XmlError> {
        match self.phase {
            Phase::Header => {
                if let Some(dst) = self.sniff.get_mut(self.header_bytes..) {
                    for (d, s) in dst.iter_mut().zip(used) {
                        *d = *s;
                    }
                }
                self.header_bytes = self.header_bytes.saturating_add(used.len());
                if self.header_bytes > self.limits.max_header_bytes {
                    return Err(XmlError::HeaderTooLarge);
                }
            }
            Phase::Stream if self.depth >= 2 => {
                self.stanza_bytes = self.stanza_bytes.saturating_add(used.len());
                if self.stanza_bytes > self.limits.max_stanza_bytes {
                    return Err(XmlError::StanzaTooLarge);
                }
            }
            Phase::Stream => {
                if self.idle_dirty {
                    self.idle_bytes = self.idle_bytes.saturating_add(used.len());
                } else if let Some(pos) = used.iter().position(|&b| !is_xml_ws(b)) {
                    // Between stanzas only whitespace or the `<` of the next
                    // element may follow; refuse text as soon as it shows up
                    // (the tokenizer would only report it at the next `<`).
                    if used.get(pos) != Some(&b'<') {
                        return Err(nwf("character data at stream level"));
                    }
                    self.idle_dirty = true;
                    self.idle_bytes = used.len() - pos;
                }
            }
            Phase::Closed => {}
        }
        Ok(())
    }

    /// The stream starts with `<?xml` directly followed by a name character,
    /// i.e. a processing instruction whose target starts with "xml".
    fn starts_with_xml_pi(&self) -> bool {
        self.header_bytes >= self.sniff.len()
            && self.sniff.starts_with(b"<?xml")
            && matches!(self.sniff[5], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
                | b'-' | b'_' | b'.' | b':' | 0x80..=0xFF)
    }

    fn map_error(&self, e: rxml::Error) -> XmlError {
        use rxml::Error as E;
        match e {
            E::RestrictedXml("long name or reference") => {
                if self.head.is_some() {
                    XmlError::AttributeTooLarge
                } else if self.phase == Phase::Header {
                    XmlError::HeaderTooLarge
                } else {
                    XmlError::StanzaTooLarge
                }
            }
            E::RestrictedXml("event too long") => XmlError::StanzaTooLarge,
            E::RestrictedXml("only utf-8 encoding is allowed") => XmlError::BadEncoding,
            E::RestrictedXml(msg) => XmlError::RestrictedXml(msg.to_owned()),
            E::UndeclaredEntity => {
                XmlError::RestrictedXml("reference to an undeclared entity".to_owned())
            }
            // `<!` not followed by `-` or `[`: <!DOCTYPE, <!ENTITY, ...
            E::InvalidSyntax("malformed cdata or comment section start") => {
                XmlError::RestrictedXml("DTD or markup declaration".to_owned())
            }
            E::InvalidUtf8Byte(_) => XmlError::BadEncoding,
            // `<?xml-stylesheet ...?>` at the very start looks like a broken
            // XML declaration to the tokenizer; it is a PI
            _ if self.phase == Phase::Header && self.starts_with_xml_pi() => {
                XmlError::RestrictedXml("processing instructions".to_owned())
            }
            // NUL bytes in the header: UTF-16 / UTF-32 without a BOM
            E::UnexpectedByte(_, 0, _) | E::InvalidChar(_, 0, _) if self.phase == Phase::Header => {
                XmlError::BadEncoding
            }
            other => XmlError::NotWellFormed(other.to_string()),
        }
    }

    fn handle(&mut self, ev: RawEvent, events: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(()),
            RawEvent::ElementHeadOpen(m, (prefix, local)) => {
                if self.phase == Phase::Closed {
                    return Err(nwf("data after the end of the stream"));
                }
                self.depth += 1;
                if self.depth >= 2 {
                    if self.depth - 1 > self.limits.max_depth {
                        return Err(XmlError::TooDeep);
                    }
                    if self.depth == 2 {
                        // `<name` plus the delimiter the tokenizer consumed
                        self.stanza_bytes = m.len().saturating_add(1);
                        self.idle_dirty = false;
                        self.idle_bytes = 0;
                        if self.stanza_bytes > self.limits.max_stanza_bytes {
                            return Err(XmlError::StanzaTooLarge);
                        }
                    }
                }
                self.head_attrs.clear();
                self.head_decls.clear();
                self.head = Some(Head {
                    prefix: prefix.map(cs),
                    local: cs(local),
                    default_decl: None,
                    nattrs: 0,
                });
                Ok(())
            }
            RawEvent::Attribute(_, (prefix, local), value) => self.attribute(prefix, local, value),
            RawEvent::ElementHeadClose(_) => self.finish_head(events),
            RawEvent::ElementFoot(_) => self.end_element(events),
            RawEvent::Text(_, text) => self.text(text),
        }
    }

    fn attribute(
        &mut self,
        prefix: Option<NcName>,
        local: NcName,
        value: String,
    ) -> Result<(), XmlError> {
        let Some(head) = self.head.as_mut() else {
            return Err(nwf("attribute outside of a start tag"));
        };
        head.nattrs += 1;
        if head.nattrs > self.limits.max_attributes {
            return Err(XmlError::TooManyAttributes);
        }
        let name_len = local.len() + prefix.as_ref().map_or(0, |p| p.len() + 1);
        if name_len.saturating_add(value.len()) > self.limits.max_attribute_bytes {
            return Err(XmlError::AttributeTooLarge);
        }
        match prefix {
            None if local == "xmlns" => {
                if head.default_decl.is_some() {
                    return Err(nwf("duplicate attribute xmlns"));
                }
                head.default_decl = Some(value);
            }
            Some(p) if p == "xmlns" => {
                let local = cs(local);
                if self.head_decls.iter().any(|(k, _)| *k == local) {
                    return Err(nwf("duplicate namespace declaration"));
                }
                self.head_decls.push((local, Ns::from_string(value)));
            }
            prefix => self.head_attrs.push(RawAttr {
                prefix: prefix.map(cs),
                local: cs(local),
                value,
            }),
        }
        Ok(())
    }

    fn finish_head(&mut self, events: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        let Some(head) = self.head.take() else {
            return Err(nwf("end of a start tag without a start"));
        };
        // open a namespace scope
        let default_ns = match head.default_decl {
            Some(d) => Ns::from_string(d),
            None => match self.scopes.last() {
                Some(s) => s.default_ns.clone(),
                None => Ns::EMPTY,
            },
        };
        let declared_default = self.scopes.is_empty();
        self.scopes.push(Scope {
            default_ns: default_ns.clone(),
            prefix_mark: self.prefixes.len(),
        });
        self.prefixes.append(&mut self.head_decls);

        let ns = match head.prefix.as_deref() {
            None => default_ns.clone(),
            Some("xml") => Ns::Static(NS_XML),
            Some(p) => match lookup_prefix(&self.prefixes, p) {
                Some(ns) => ns.clone(),
                None => return Err(nwf("undeclared namespace prefix on element")),
            },
        };

        let mut attrs: Vec<(CompactString, String)> = Vec::with_capacity(self.head_attrs.len());
        for a in self.head_attrs.iter_mut() {
            let value = std::mem::take(&mut a.value);
            let name = match a.prefix.as_deref() {
                None => a.local.clone(),
                Some("xml") => {
                    let mut n = CompactString::with_capacity(4 + a.local.len());
                    n.push_str("xml:");
                    n.push_str(&a.local);
                    n
                }
                Some(p) => {
                    let local = a.local.clone();
                    let Some(uri) = lookup_prefix(&self.prefixes, p) else {
                        return Err(nwf("undeclared namespace prefix on attribute"));
                    };
                    let uri = uri.as_str();
                    let mut n = CompactString::with_capacity(uri.len() + local.len() + 2);
                    if uri == NS_XML {
                        n.push_str("xml:");
                    } else {
                        n.push('{');
                        n.push_str(uri);
                        n.push('}');
                    }
                    n.push_str(&local);
                    n
                }
            };
            if attrs.iter().any(|(k, _)| *k == name) {
                return Err(nwf("duplicate attribute"));
            }
            attrs.push((name, value));
        }
        self.head_attrs.clear();

        if self.depth <= 1 {
            // the stream root
            let header = StreamHeader {
                name: head.local.into_string(),
                ns: ns.as_str().to_owned(),
                default_ns: if declared_default && !default_ns.as_str().is_empty() {
                    Some(default_ns.as_str().to_owned())
                } else {
                    None
                },
                attrs: attrs
                    .into_iter()
                    .map(|(k, v)| (k.into_string(), v))
                    .collect(),
            };
            self.phase = Phase::Stream;
            self.header_bytes = 0;
            events.push(StreamEvent::Open(header));
        } else {
            // A tree costs more than its wire form: `<a/>` is 4 bytes on the wire and about
            // a hundred in memory. Charging each element keeps a stanza's memory within
            // MEMORY_FACTOR times the stanza size limit, however it is shaped.
            self.stanza_elements += 1;
            let estimate = self
                .stanza_elements
                .saturating_mul(ELEMENT_COST)
                .saturating_add(self.stanza_bytes);
            if estimate > self.limits.max_stanza_bytes.saturating_mul(MEMORY_FACTOR) {
                return Err(XmlError::StanzaTooLarge);
            }
            self.stack.push(Element {
                name: head.local,
                ns,
                attrs,
                nodes: Vec::new(),
            });
        }
        Ok(())
    }

    fn end_element(&mut self, events: &mut Vec<StreamEvent>) -> Result<(), XmlError> {
        if let Some(scope) = self.scopes.pop() {
            self.prefixes.truncate(scope.prefix_mark);
        }
        self.depth = self.depth.saturating_sub(1);
        if self.depth == 0 {
            self.phase = Phase::Closed;
            self.prefixes.clear();
            events.push(StreamEvent::Close);
            return Ok(());
        }
        let Some(el) = self.stack.pop() else {
            return Err(nwf("end tag without an open element"));
        };
        match self.stack.last_mut() {
            Some(parent) => parent.push_child(el),
            None => {
                self.stanza_bytes = 0;
                self.stanza_elements = 0;
                events.push(StreamEvent::Stanza(el));
            }
        }
        Ok(())
    }

    fn text(&mut self, text: String) -> Result<(), XmlError> {
        if let Some(top) = self.stack.last_mut() {
            if !text.is_empty() {
                top.push_text_string(text);
            }
            Ok(())
        } else if text.bytes().all(is_xml_ws) {
            // whitespace keepalive between stanzas
            Ok(())
        } else {
            Err(nwf("character data at stream level"))
        }
    }
}

/// Parse one standalone element (no XML declaration) with default limits.
///
/// Surrounding whitespace is allowed; anything else besides exactly one
/// element is an error.
pub fn parse_element(xml: &str) -> Result<Element, XmlError> {
    parse_element_with_limits(xml, Limits::default())
}

/// [`parse_element`] with explicit limits (`max_stanza_bytes` applies to the
/// element).
pub fn parse_element_with_limits(xml: &str, limits: Limits) -> Result<Element, XmlError> {
    let mut p = StreamParser::new(limits);
    let mut events = Vec::with_capacity(2);
    p.feed(WRAPPER, &mut events)?;
    p.feed(xml.as_bytes(), &mut events)?;
    if p.in_stanza() {
        return Err(nwf("incomplete element"));
    }
    let mut it = events.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(StreamEvent::Open(_)), Some(StreamEvent::Stanza(e)), None) => Ok(e),
        (Some(StreamEvent::Open(_)), None, None) => Err(nwf("no element")),
        _ => Err(nwf("expected exactly one element")),
    }
}
