//! The `<body/>` wrapper of BOSH (XEP-0124 §5): reading a request, writing a response.
//!
//! A request is read with the stream parser, the `<body/>` as the root and each payload as
//! one of its children, so the limits of a stream (stanza size, depth, attributes, the
//! header's size) apply to every payload as it would on TCP.

use rookery_xml::{
    escape_attr, Element, Limits, StreamEvent, StreamParser, XmlError, NS_HTTPBIND, NS_STREAMS,
    NS_XBOSH,
};

/// The largest `rid` a client may use (XEP-0124 §14.1: 2^53 - 1, what a JavaScript number
/// holds exactly).
pub const MAX_RID: u64 = (1 << 53) - 1;

/// A request that is no BOSH request at all: answered with an HTTP error (XEP-0124 §17.1).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotBosh {
    #[error("not well-formed XML: {0}")]
    Xml(#[from] XmlError),
    #[error("the root element is not <body/> in http://jabber.org/protocol/httpbind")]
    Root,
    #[error("the <body/> element is not complete")]
    Incomplete,
}

/// A `<body/>` whose attributes are wrong: answered with the `bad-request` terminal
/// condition (XEP-0124 §17.2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad BOSH request: {0}")]
pub struct BadRequest(pub &'static str);

/// Why a request could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error(transparent)]
    NotBosh(#[from] NotBosh),
    /// `sid`: the session it named, if any (the error ends it).
    #[error("{error}")]
    Bad {
        error: BadRequest,
        sid: Option<String>,
    },
}

/// One request `<body/>`, its attributes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub rid: u64,
    /// `None`: a session creation request (XEP-0124 §7.1).
    pub sid: Option<String>,
    /// `type='terminate'` (§13).
    pub terminate: bool,
    /// `xmpp:restart='true'` (XEP-0206 §5).
    pub restart: bool,
    /// `pause` (§10), in seconds.
    pub pause: Option<u64>,
    /// `ack` (§9.2): the highest rid whose response the client received (on a session
    /// creation request, `1` asks for acknowledgements).
    pub ack: Option<u64>,
    /// Session creation: `to`, `xml:lang`, `wait`, `hold`, `ver`, `content`, `xmpp:version`.
    pub to: Option<String>,
    pub lang: Option<String>,
    pub wait: Option<u64>,
    pub hold: Option<u64>,
    pub ver: Option<String>,
    pub content: Option<String>,
    pub xmpp_version: Option<String>,
    /// The payloads, in order.
    pub payloads: Vec<Element>,
    /// The request's size, for the stream's input rate.
    pub bytes: usize,
}

impl Request {
    /// A request with nothing but a rid and sid (tests, and the handler's own checks).
    pub fn empty(rid: u64, sid: Option<&str>) -> Request {
        Request {
            rid,
            sid: sid.map(str::to_owned),
            terminate: false,
            restart: false,
            pause: None,
            ack: None,
            to: None,
            lang: None,
            wait: None,
            hold: None,
            ver: None,
            content: None,
            xmpp_version: None,
            payloads: Vec::new(),
            bytes: 0,
        }
    }

    /// Nothing for the stream (XEP-0124 §12: an "empty" request, as polls are).
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty() && !self.terminate && !self.restart && self.pause.is_none()
    }
}

/// Reads a request body, each payload within `limits`.
pub fn read(bytes: &[u8], limits: Limits) -> Result<Request, ReadError> {
    let mut parser = StreamParser::new(limits);
    let mut events = Vec::new();
    parser.feed(bytes, &mut events).map_err(NotBosh::Xml)?;
    if !parser.is_closed() {
        return Err(NotBosh::Incomplete.into());
    }
    let mut events = events.into_iter();
    let Some(StreamEvent::Open(header)) = events.next() else {
        return Err(NotBosh::Root.into());
    };
    if header.name != "body" || header.ns != NS_HTTPBIND {
        return Err(NotBosh::Root.into());
    }
    let sid = header.attr("sid").map(str::to_owned);
    let bad = |error| ReadError::Bad {
        error: BadRequest(error),
        sid: sid.clone(),
    };
    let number = |name: &str, what: &'static str| -> Result<Option<u64>, ReadError> {
        header
            .attr(name)
            .map(|v| v.trim().parse::<u64>().map_err(|_| bad(what)))
            .transpose()
    };
    let rid = number("rid", "rid must be a number")?.ok_or_else(|| bad("rid is required"))?;
    if rid == 0 || rid > MAX_RID {
        return Err(bad("rid must be between 1 and 2^53 - 1"));
    }
    let terminate = match header.attr("type") {
        None => false,
        Some("terminate") => true,
        Some(_) => return Err(bad("the only type a client sends is terminate")),
    };
    let restart = match header.attr(&format!("{{{NS_XBOSH}}}restart")) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(bad("xmpp:restart is a boolean")),
    };
    let mut payloads = Vec::new();
    for ev in events {
        match ev {
            StreamEvent::Stanza(el) => payloads.push(el),
            StreamEvent::Close => break,
            StreamEvent::Open(_) => return Err(NotBosh::Root.into()),
        }
    }
    if restart && !payloads.is_empty() {
        // XEP-0206 §5: a restart request carries nothing else.
        return Err(bad("a restart request has no payloads"));
    }
    Ok(Request {
        rid,
        sid: sid.clone(),
        terminate,
        restart,
        pause: number("pause", "pause must be a number of seconds")?,
        ack: number("ack", "ack must be a number")?,
        to: header.attr("to").map(str::to_owned),
        lang: header.attr("xml:lang").map(str::to_owned),
        wait: number("wait", "wait must be a number of seconds")?,
        hold: number("hold", "hold must be a number")?,
        ver: header.attr("ver").map(str::to_owned),
        content: header.attr("content").map(str::to_owned),
        xmpp_version: header
            .attr(&format!("{{{NS_XBOSH}}}version"))
            .map(str::to_owned),
        payloads,
        bytes: bytes.len(),
    })
}

/// A terminal binding condition (XEP-0124 §17.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    ItemNotFound,
    OtherRequest,
    PolicyViolation,
    RemoteConnectionFailed,
    RemoteStreamError,
    SeeOtherUri,
    SystemShutdown,
    UndefinedCondition,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::HostGone => "host-gone",
            Condition::HostUnknown => "host-unknown",
            Condition::ImproperAddressing => "improper-addressing",
            Condition::InternalServerError => "internal-server-error",
            Condition::ItemNotFound => "item-not-found",
            Condition::OtherRequest => "other-request",
            Condition::PolicyViolation => "policy-violation",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::RemoteStreamError => "remote-stream-error",
            Condition::SeeOtherUri => "see-other-uri",
            Condition::SystemShutdown => "system-shutdown",
            Condition::UndefinedCondition => "undefined-condition",
        }
    }
}

/// A response `<body/>` being written: attributes, then payloads, then [`finish`].
///
/// [`finish`]: ResponseBody::finish
pub struct ResponseBody {
    out: Vec<u8>,
}

impl ResponseBody {
    pub fn new() -> Self {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"<body xmlns='");
        out.extend_from_slice(NS_HTTPBIND.as_bytes());
        out.push(b'\'');
        ResponseBody { out }
    }

    /// Declares the `xmpp` and `stream` prefixes (XEP-0206 §3: the session creation
    /// response and a terminate wrapping a stream error use them).
    pub fn xmpp_prefixes(mut self) -> Self {
        self.out.extend_from_slice(b" xmlns:xmpp='");
        self.out.extend_from_slice(NS_XBOSH.as_bytes());
        self.out.extend_from_slice(b"' xmlns:stream='");
        self.out.extend_from_slice(NS_STREAMS.as_bytes());
        self.out.push(b'\'');
        self
    }

    pub fn attr(mut self, name: &str, value: &str) -> Self {
        self.out.push(b' ');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"='");
        escape_attr(value, &mut self.out);
        self.out.push(b'\'');
        self
    }

    pub fn num(self, name: &str, value: u64) -> Self {
        self.attr(name, &value.to_string())
    }

    /// `type='terminate'` with `condition`, if any (§13, §17.2).
    pub fn terminate(self, condition: Option<Condition>) -> Self {
        let b = self.attr("type", "terminate");
        match condition {
            Some(c) => b.attr("condition", c.name()),
            None => b,
        }
    }

    /// The body with these payloads (each declaring its namespace) inside.
    pub fn finish(mut self, payloads: &[u8]) -> Vec<u8> {
        if payloads.is_empty() {
            self.out.extend_from_slice(b"/>");
        } else {
            self.out.push(b'>');
            self.out.extend_from_slice(payloads);
            self.out.extend_from_slice(b"</body>");
        }
        self.out
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::new()
    }
}

/// A terminal binding error for a request outside any session (unknown sid, bad
/// attributes, limits): `<body type='terminate' condition='...'/>` (§17.2).
pub fn terminal(condition: Condition) -> Vec<u8> {
    ResponseBody::new().terminate(Some(condition)).finish(b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_session_creation_request_is_read() {
        let r = read(
            b"<body content='text/xml; charset=utf-8' hold='1' rid='1573741820' to='example.com' \
              ver='1.6' wait='60' ack='1' xml:lang='en' xmpp:version='1.0' \
              xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>",
            limits(),
        )
        .expect("read");
        assert_eq!(r.rid, 1573741820);
        assert_eq!(r.sid, None);
        assert_eq!((r.wait, r.hold, r.ack), (Some(60), Some(1), Some(1)));
        assert_eq!(r.to.as_deref(), Some("example.com"));
        assert_eq!(r.lang.as_deref(), Some("en"));
        assert_eq!(r.xmpp_version.as_deref(), Some("1.0"));
        assert!(r.is_empty());
    }

    #[test]
    fn payloads_and_flags_are_read() {
        let r = read(
            b"<body rid='2' sid='s' type='terminate' xmlns='http://jabber.org/protocol/httpbind'>\
              <presence type='unavailable' xmlns='jabber:client'/>\
              <message xmlns='jabber:client'><body>hi</body></message></body>",
            limits(),
        )
        .expect("read");
        assert!(r.terminate);
        assert_eq!(r.payloads.len(), 2);
        assert!(r.payloads[1].is("message", "jabber:client"));
        let r = read(
            b"<body rid='3' sid='s' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' \
              xmlns='http://jabber.org/protocol/httpbind'/>",
            limits(),
        )
        .expect("read");
        assert!(r.restart && !r.is_empty());
    }

    #[test]
    fn garbage_is_not_bosh_and_bad_attributes_are_bad_requests() {
        let not = |b: &[u8]| match read(b, limits()) {
            Err(ReadError::NotBosh(_)) => {}
            other => panic!("{other:?}"),
        };
        not(b"hello");
        not(b"<body rid='1'/>");
        not(b"<body xmlns='http://jabber.org/protocol/httpbind' rid='1'>");
        not(b"<html/>");
        let bad = |b: &str| match read(b.as_bytes(), limits()) {
            Err(ReadError::Bad { sid, .. }) => sid,
            other => panic!("{b}: {other:?}"),
        };
        const NS: &str = "xmlns='http://jabber.org/protocol/httpbind'";
        assert_eq!(bad(&format!("<body {NS}/>")), None);
        assert_eq!(
            bad(&format!("<body {NS} sid='x' rid='-1'/>")).as_deref(),
            Some("x")
        );
        bad(&format!("<body {NS} rid='0'/>"));
        bad(&format!("<body {NS} rid='9007199254740992'/>"));
        bad(&format!("<body {NS} rid='1' type='error'/>"));
        bad(&format!("<body {NS} rid='1' wait='soon'/>"));
        bad(&format!(
            "<body {NS} rid='1' xmlns:xmpp='urn:xmpp:xbosh' xmpp:restart='true'>\
             <message xmlns='jabber:client'/></body>"
        ));
    }

    #[test]
    fn payload_limits_are_the_streams() {
        let big = format!(
            "<body rid='1' sid='s' xmlns='http://jabber.org/protocol/httpbind'>\
             <message xmlns='jabber:client'><body>{}</body></message></body>",
            "x".repeat(5000)
        );
        let l = Limits {
            max_stanza_bytes: 4096,
            ..Limits::default()
        };
        assert_eq!(
            read(big.as_bytes(), l),
            Err(ReadError::NotBosh(NotBosh::Xml(XmlError::StanzaTooLarge)))
        );
    }

    #[test]
    fn responses_are_bodies() {
        assert_eq!(
            String::from_utf8(terminal(Condition::ItemNotFound)).expect("utf8"),
            "<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' \
             condition='item-not-found'/>"
        );
        let b = ResponseBody::new()
            .num("ack", 7)
            .finish(b"<message xmlns='jabber:client'/>");
        let el = rookery_xml::parse_element(std::str::from_utf8(&b).expect("utf8")).expect("xml");
        assert!(el.is("body", NS_HTTPBIND));
        assert_eq!(el.attr("ack"), Some("7"));
        assert!(el
            .children()
            .next()
            .is_some_and(|m| m.is("message", "jabber:client")));
    }
}
