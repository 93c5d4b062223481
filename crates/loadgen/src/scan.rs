//! A small hand-written scanner for the XMPP stream the server sends: it frames the byte
//! stream into the stream header, complete top-level elements and the stream close, and offers
//! a few look-ups (root name, root attributes, a child's text, repeated children) on a framed
//! element. It is not a validating XML parser and does not resolve namespaces (prefixes are
//! stripped from names): it knows just enough XML (quoted attribute values, empty elements,
//! comments, processing instructions, CDATA) to split what servers send and read the handful
//! of elements the load generator needs. That keeps the client's own cost low, so a
//! benchmark measures the server.

use std::borrow::Cow;
use std::ops::Range;

/// What framing found in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The `<stream:stream ...>` start tag (the bytes of the tag).
    StreamOpen(Range<usize>),
    /// One complete top-level element (a stanza, features, SASL or TLS element, stream error).
    Element(Range<usize>),
    /// `</stream:stream>`.
    StreamClose,
}

/// The input cannot be framed (not XML this scanner can follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError(pub &'static str);

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unparsable stream: {}", self.0)
    }
}

impl std::error::Error for ScanError {}

/// Largest element the scanner buffers before giving up (a server answering a 1,000-item
/// roster sends ~100 KiB; this leaves ample room).
pub const MAX_ELEMENT: usize = 8 << 20;

/// A growable buffer of received bytes and the framing state over it.
#[derive(Debug, Default)]
pub struct StreamScanner {
    buf: Vec<u8>,
    /// Next byte to examine.
    pos: usize,
    /// Element depth: 0 before the stream header, 1 between top-level elements.
    depth: usize,
    /// Start of the top-level element being assembled.
    elem_start: Option<usize>,
}

impl StreamScanner {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(4096),
            ..Self::default()
        }
    }

    /// Appends received bytes. Call [`Self::compact`] first so the buffer does not grow with
    /// consumed data.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The bytes of an event's range.
    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Forgets everything (a stream restart after STARTTLS or SASL).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.depth = 0;
        self.elem_start = None;
    }

    /// Bytes buffered but not yet framed into an event.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.elem_start.unwrap_or(self.pos)
    }

    /// Drops consumed bytes. Ranges returned earlier become invalid.
    pub fn compact(&mut self) {
        let keep_from = self.elem_start.unwrap_or(self.pos);
        if keep_from == 0 {
            return;
        }
        if keep_from >= self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..keep_from);
        }
        self.pos -= keep_from;
        if let Some(s) = self.elem_start.as_mut() {
            *s -= keep_from;
        }
    }

    /// The next complete event, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, ScanError> {
        loop {
            if self.pending() > MAX_ELEMENT {
                return Err(ScanError("element too large"));
            }
            let Some(lt) = find_byte(&self.buf[self.pos..], b'<').map(|i| self.pos + i) else {
                // Text (or whitespace between stanzas): consumed.
                self.pos = self.buf.len();
                return Ok(None);
            };
            self.pos = lt;
            let rest = &self.buf[lt..];
            if rest.len() < 2 {
                return Ok(None);
            }
            match rest[1] {
                b'?' => {
                    let Some(end) = find_seq(&rest[2..], b"?>") else {
                        return Ok(None);
                    };
                    self.pos = lt + 2 + end + 2;
                }
                b'!' => {
                    let (open, close): (&[u8], &[u8]) = if rest.starts_with(b"<!--") {
                        (b"<!--", b"-->")
                    } else if rest.starts_with(b"<![CDATA[") {
                        (b"<![CDATA[", b"]]>")
                    } else if rest.len() < 9
                        && (b"<![CDATA[".starts_with(rest) || b"<!--".starts_with(rest))
                    {
                        return Ok(None);
                    } else {
                        return Err(ScanError("unexpected markup declaration"));
                    };
                    if self.depth < 2 && close == b"]]>" {
                        return Err(ScanError("character data outside an element"));
                    }
                    let Some(end) = find_seq(&rest[open.len()..], close) else {
                        return Ok(None);
                    };
                    self.pos = lt + open.len() + end + close.len();
                }
                b'/' => {
                    let Some(gt) = find_byte(&rest[2..], b'>') else {
                        return Ok(None);
                    };
                    self.pos = lt + 2 + gt + 1;
                    match self.depth {
                        0 => return Err(ScanError("end tag before the stream header")),
                        1 => {
                            self.depth = 0;
                            return Ok(Some(Event::StreamClose));
                        }
                        2 => {
                            self.depth = 1;
                            let start = self.elem_start.take().unwrap_or(lt);
                            return Ok(Some(Event::Element(start..self.pos)));
                        }
                        _ => self.depth -= 1,
                    }
                }
                _ => {
                    let Some(gt) = find_tag_end(&rest[1..]) else {
                        return Ok(None);
                    };
                    let end = lt + 1 + gt + 1;
                    let empty = self.buf[end - 2] == b'/';
                    self.pos = end;
                    match (self.depth, empty) {
                        (0, false) => {
                            self.depth = 1;
                            return Ok(Some(Event::StreamOpen(lt..end)));
                        }
                        (0, true) => return Err(ScanError("empty stream header")),
                        (1, true) => return Ok(Some(Event::Element(lt..end))),
                        (1, false) => {
                            self.elem_start = Some(lt);
                            self.depth = 2;
                        }
                        (_, true) => {}
                        (_, false) => self.depth += 1,
                    }
                }
            }
        }
    }
}

fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    hay.iter().position(|&c| c == b)
}

fn find_seq(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Position of the `>` closing a start tag, skipping quoted attribute values.
fn find_tag_end(tag: &[u8]) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &c) in tag.iter().enumerate() {
        if quote != 0 {
            if c == quote {
                quote = 0;
            }
        } else if c == b'"' || c == b'\'' {
            quote = c;
        } else if c == b'>' {
            return Some(i);
        }
    }
    None
}

/// A token inside one framed element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A start tag: local name (prefix stripped), the whole tag, whether it is `<.../>`.
    Start {
        name: &'a [u8],
        tag: &'a [u8],
        empty: bool,
    },
    End {
        name: &'a [u8],
    },
    Text(&'a [u8]),
}

/// Iterates over the tokens of one complete element (as framed by [`StreamScanner`]).
pub struct Tokens<'a> {
    s: &'a [u8],
    pos: usize,
}

pub fn tokens(s: &[u8]) -> Tokens<'_> {
    Tokens { s, pos: 0 }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let rest = &self.s[self.pos..];
            if rest.is_empty() {
                return None;
            }
            if rest[0] != b'<' {
                let n = find_byte(rest, b'<').unwrap_or(rest.len());
                self.pos += n;
                return Some(Token::Text(&rest[..n]));
            }
            if rest.starts_with(b"<![CDATA[") {
                let n = find_seq(&rest[9..], b"]]>").map_or(rest.len(), |e| 9 + e + 3);
                self.pos += n;
                let inner = &rest[9..n.saturating_sub(3).max(9)];
                return Some(Token::Text(inner));
            }
            if rest.starts_with(b"<!--") {
                self.pos += find_seq(&rest[4..], b"-->").map_or(rest.len(), |e| 4 + e + 3);
                continue;
            }
            if rest.starts_with(b"<?") {
                self.pos += find_seq(&rest[2..], b"?>").map_or(rest.len(), |e| 2 + e + 2);
                continue;
            }
            if rest.starts_with(b"</") {
                let gt = find_byte(rest, b'>').unwrap_or(rest.len() - 1);
                self.pos += gt + 1;
                let name = trim(&rest[2..gt]);
                return Some(Token::End { name: local(name) });
            }
            let gt = find_tag_end(&rest[1..]).map_or(rest.len() - 1, |g| g + 1);
            self.pos += gt + 1;
            let tag = &rest[..=gt.min(rest.len() - 1)];
            let empty = gt >= 1 && rest[gt - 1] == b'/';
            let name_end = tag[1..]
                .iter()
                .position(|&c| c.is_ascii_whitespace() || c == b'/' || c == b'>')
                .map_or(tag.len(), |p| p + 1);
            return Some(Token::Start {
                name: local(&tag[1..name_end]),
                tag,
                empty,
            });
        }
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// A qualified name without its prefix.
fn local(name: &[u8]) -> &[u8] {
    match find_byte(name, b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// The local name of the root element.
pub fn root_name(el: &[u8]) -> &[u8] {
    match tokens(el).next() {
        Some(Token::Start { name, .. }) => name,
        _ => b"",
    }
}

/// The raw (still escaped) value of an attribute of a start tag.
pub fn tag_attr<'a>(tag: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut i = tag
        .iter()
        .position(|&c| c.is_ascii_whitespace() || c == b'/' || c == b'>')?;
    loop {
        while i < tag.len() && tag[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= tag.len() || tag[i] == b'/' || tag[i] == b'>' {
            return None;
        }
        let name_start = i;
        while i < tag.len() && tag[i] != b'=' && !tag[i].is_ascii_whitespace() {
            i += 1;
        }
        let attr_name = &tag[name_start..i];
        while i < tag.len() && (tag[i].is_ascii_whitespace() || tag[i] == b'=') {
            i += 1;
        }
        let quote = *tag.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let vstart = i + 1;
        let vlen = find_byte(&tag[vstart..], quote)?;
        if attr_name == name {
            return Some(&tag[vstart..vstart + vlen]);
        }
        i = vstart + vlen + 1;
    }
}

/// An attribute of the root element.
pub fn attr<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    match tokens(el).next() {
        Some(Token::Start { tag, .. }) => tag_attr(tag, name),
        _ => None,
    }
}

/// Whether an element with this local name occurs anywhere below the root.
pub fn has_child(el: &[u8], name: &[u8]) -> bool {
    tokens(el)
        .skip(1)
        .any(|t| matches!(t, Token::Start { name: n, .. } if n == name))
}

/// The first descendant start tag with this local name.
pub fn child_tag<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    tokens(el).skip(1).find_map(|t| match t {
        Token::Start { name: n, tag, .. } if n == name => Some(tag),
        _ => None,
    })
}

/// The raw text directly inside the first descendant with this local name (escaped; empty
/// for an empty element). For elements holding text only, which is all the generator reads.
pub fn child_text<'a>(el: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut it = tokens(el);
    it.next()?;
    while let Some(t) = it.next() {
        if let Token::Start { name: n, empty, .. } = t {
            if n == name {
                if empty {
                    return Some(b"");
                }
                return match it.next() {
                    Some(Token::Text(text)) => Some(text),
                    _ => Some(b""),
                };
            }
        }
    }
    None
}

/// The text of the root element (e.g. the base64 payload of a SASL element).
pub fn root_text(el: &[u8]) -> &[u8] {
    let mut it = tokens(el);
    match (it.next(), it.next()) {
        (Some(Token::Start { empty: false, .. }), Some(Token::Text(t))) => t,
        _ => b"",
    }
}

/// The texts of every descendant with this local name (e.g. SASL mechanisms).
pub fn child_texts<'a>(el: &'a [u8], name: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut it = tokens(el);
    it.next();
    while let Some(t) = it.next() {
        if let Token::Start { name: n, empty, .. } = t {
            if n == name {
                if empty {
                    out.push(&b""[..]);
                } else if let Some(Token::Text(text)) = it.next() {
                    out.push(text);
                } else {
                    out.push(&b""[..]);
                }
            }
        }
    }
    out
}

/// The start tags of every descendant with this local name (e.g. roster items).
pub fn child_tags<'a>(el: &'a [u8], name: &[u8]) -> Vec<&'a [u8]> {
    tokens(el)
        .skip(1)
        .filter_map(|t| match t {
            Token::Start { name: n, tag, .. } if n == name => Some(tag),
            _ => None,
        })
        .collect()
}

/// The local name of the first child element of the root (e.g. a stream error condition or
/// a SASL failure condition).
pub fn first_child_name(el: &[u8]) -> Option<&[u8]> {
    tokens(el).skip(1).find_map(|t| match t {
        Token::Start { name, .. } => Some(name),
        _ => None,
    })
}

/// Resolves the five predefined entities and character references.
pub fn unescape(s: &[u8]) -> Cow<'_, str> {
    if find_byte(s, b'&').is_none() {
        return String::from_utf8_lossy(s);
    }
    let text = String::from_utf8_lossy(s);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';') else {
            out.push_str(&rest[amp..]);
            return Cow::Owned(out);
        };
        let ent = &after[..semi];
        let ch = match ent {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => {
                u32::from_str_radix(&ent[2..], 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            _ if ent.starts_with('#') => ent[1..].parse::<u32>().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => out.push(c),
            None => {
                out.push('&');
                out.push_str(ent);
                out.push(';');
            }
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Escapes text for element content or a quoted attribute value.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s
        .bytes()
        .any(|b| matches!(b, b'<' | b'>' | b'&' | b'\'' | b'"'))
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The bare part of a JID (`user@domain/resource` → `user@domain`).
pub fn bare(jid: &[u8]) -> &[u8] {
    match find_byte(jid, b'/') {
        Some(i) => &jid[..i],
        None => jid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events(sc: &mut StreamScanner) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        while let Some(ev) = sc.next_event().expect("scan") {
            let text = match &ev {
                Event::StreamOpen(r) | Event::Element(r) => {
                    String::from_utf8_lossy(sc.slice(r.clone())).into_owned()
                }
                Event::StreamClose => String::new(),
            };
            out.push((text, ev));
        }
        out
    }

    const STREAM: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='x>y' from='localhost' version='1.0'>\
        <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
        </stream:features>\n <message from='a@localhost/r' to='b@localhost' type=\"chat\" id='m1'>\
        <body>12 3456 a&amp;b &lt;x&gt;</body></message><presence/><!-- note -->\
        <iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='c@localhost' \
        subscription='both'/><item jid='d@localhost' subscription='to'><group>g</group></item>\
        </query></iq></stream:stream>";

    #[test]
    fn frames_a_whole_stream() {
        let mut sc = StreamScanner::new();
        sc.push(STREAM.as_bytes());
        let evs = all_events(&mut sc);
        let kinds: Vec<&str> = evs
            .iter()
            .map(|(t, e)| match e {
                Event::StreamOpen(_) => "open",
                Event::StreamClose => "close",
                Event::Element(_) => {
                    if t.starts_with("<stream:features") {
                        "features"
                    } else if t.starts_with("<message") {
                        "message"
                    } else if t.starts_with("<presence") {
                        "presence"
                    } else {
                        "iq"
                    }
                }
            })
            .collect();
        assert_eq!(
            kinds,
            ["open", "features", "message", "presence", "iq", "close"]
        );
        assert!(evs[0].0.ends_with("version='1.0'>"));
        assert_eq!(attr(evs[0].0.as_bytes(), b"id"), Some(&b"x>y"[..]));
    }

    #[test]
    fn frames_the_same_stream_fed_one_byte_at_a_time() {
        let mut whole = StreamScanner::new();
        whole.push(STREAM.as_bytes());
        let expected: Vec<String> = all_events(&mut whole).into_iter().map(|e| e.0).collect();

        let mut sc = StreamScanner::new();
        let mut got = Vec::new();
        for b in STREAM.as_bytes() {
            sc.compact();
            sc.push(std::slice::from_ref(b));
            got.extend(all_events(&mut sc).into_iter().map(|e| e.0));
        }
        assert_eq!(got, expected);
        assert_eq!(sc.pending(), 0);
    }

    #[test]
    fn reads_names_attributes_and_text() {
        let msg = b"<message from='a@localhost/r' to='b@localhost' type=\"chat\" id='m1'>\
            <body>12 3456 a&amp;b &lt;x&gt;</body></message>";
        assert_eq!(root_name(msg), b"message");
        assert_eq!(attr(msg, b"type"), Some(&b"chat"[..]));
        assert_eq!(attr(msg, b"from").map(bare), Some(&b"a@localhost"[..]));
        assert_eq!(attr(msg, b"missing"), None);
        let body = child_text(msg, b"body").expect("body");
        assert_eq!(unescape(body), "12 3456 a&b <x>");
        assert!(has_child(msg, b"body"));
        assert!(!has_child(msg, b"message"));

        let features = b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
            <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>";
        assert_eq!(root_name(features), b"features");
        assert_eq!(
            child_texts(features, b"mechanism"),
            vec![&b"SCRAM-SHA-1"[..], &b"PLAIN"[..]]
        );
        assert!(has_child(features, b"optional"));

        let roster = b"<iq type='result' id='r'><query xmlns='jabber:iq:roster'><item jid='c@localhost' \
            subscription='both'/><item jid='d@localhost' subscription='to'><group>g</group></item></query></iq>";
        let items = child_tags(roster, b"item");
        assert_eq!(items.len(), 2);
        assert_eq!(tag_attr(items[1], b"subscription"), Some(&b"to"[..]));
        assert_eq!(tag_attr(items[0], b"jid"), Some(&b"c@localhost"[..]));

        let err =
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
        assert_eq!(first_child_name(err), Some(&b"conflict"[..]));
        let success = b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>dj1ybUY5</success>";
        assert_eq!(root_text(success), b"dj1ybUY5");
        assert_eq!(root_text(b"<success xmlns='x'/>"), b"");
    }

    #[test]
    fn escapes_and_unescapes() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
        assert_eq!(unescape(b"&#65;&#x42;&amp;&bogus;"), "AB&&bogus;");
        assert_eq!(unescape(b"no entities"), "no entities");
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let mut sc = StreamScanner::new();
        sc.push(b"</stream:stream>");
        assert!(sc.next_event().is_err());
        let mut sc = StreamScanner::new();
        sc.push(b"<stream:stream/>");
        assert!(sc.next_event().is_err());
        let mut sc = StreamScanner::new();
        sc.push(b"<!DOCTYPE x>");
        assert!(sc.next_event().is_err());
    }
}
