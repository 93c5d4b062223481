//! A stanza as the router sees it: the element and its header (kind, type, parsed `to` and
//! `from`), parsed once where the stanza enters the server; and the shared, serialise-once
//! form in which it leaves towards sessions.
//!
//! Inside the server every stanza is in the `jabber:client` namespace ([`ns::CLIENT`]),
//! whatever stream it came from: the stream's content namespace (`jabber:client`,
//! `jabber:server`, `jabber:component:accept`, RFC 6120 §4.8.2, XEP-0114) is the business of
//! the transport, which maps it on the way in ([`Stanza::from_stream`]) and writes the
//! internal namespace as the stream's default namespace on the way out
//! ([`SharedStanza::write_to`]), so one stanza can be written on any stream.

use crate::{ns, parse_jid, IqType, MessageType, PresenceType, StanzaError, StanzaKind};
use jid::Jid;
use rookery_xml::Element;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The namespaces a stream may declare as its content namespace.
pub const CONTENT_NAMESPACES: &[&str] = &[ns::CLIENT, ns::SERVER, ns::COMPONENT];

/// The `type` of a stanza, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaType {
    /// `None`: missing or unknown (invalid for an IQ, RFC 6120 §8.2.3).
    Iq(Option<IqType>),
    Message(MessageType),
    /// `None`: a type RFC 6121 §4.7.1 does not define.
    Presence(Option<PresenceType>),
}

impl StanzaType {
    fn of(kind: StanzaKind, el: &Element) -> Self {
        match kind {
            StanzaKind::Iq => Self::Iq(IqType::of(el)),
            StanzaKind::Message => Self::Message(MessageType::of(el)),
            StanzaKind::Presence => Self::Presence(PresenceType::of(el)),
        }
    }
}

/// Why an element read from a stream is not a stanza the server can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not `<message/>`, `<presence/>` or `<iq/>` in a content namespace.
    #[error("not a stanza")]
    NotAStanza,
    /// A stanza in a content namespace other than the stream's.
    #[error("a stanza in '{found}' on a stream whose content namespace is '{expected}'")]
    WrongNamespace { found: String, expected: String },
    /// The `to` attribute is not a valid JID (RFC 7622).
    #[error("malformed 'to'")]
    MalformedTo,
    /// The `from` attribute is not a valid JID (RFC 7622).
    #[error("malformed 'from'")]
    MalformedFrom,
}

/// An element that could not become a [`Stanza`], given back so its sender can be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejected {
    pub element: Box<Element>,
    pub reason: HeaderError,
}

fn rejected(element: Element, reason: HeaderError) -> Rejected {
    Rejected {
        element: Box::new(element),
        reason,
    }
}

/// A stanza with its parsed header.
///
/// The addresses are parsed once, where the stanza enters the server; whoever changes them
/// goes through [`set_to`](Self::set_to) / [`set_from`](Self::set_from). The header is the
/// truth about the addresses: read them with [`to`](Self::to) and [`from`](Self::from),
/// never from the element's attributes.
///
/// Cloning a stanza shares its element (reference-counted, copied on the first change of
/// its payload through [`element_mut`](Self::element_mut)). Giving a clone another `to`
/// ([`readdressed`](Self::readdressed)) keeps sharing it: the new address travels in the
/// header, and is written in the element's place when the stanza goes out, so one presence
/// sent to a thousand contacts is one element, serialised once
/// ([`SharedStanza::write_to`]). Such a stanza's element still holds the first address;
/// the element is brought in step when it is taken ([`into_element`](Self::into_element))
/// or changed.
#[derive(Debug, Clone)]
pub struct Stanza {
    kind: StanzaKind,
    stanza_type: StanzaType,
    to: Option<Jid>,
    from: Option<Jid>,
    body: Arc<Body>,
    /// `to` is not the element's `to` attribute (set while the element was shared).
    readdressed: bool,
}

impl Stanza {
    /// Parses the header of a stanza in the server's own namespace (`jabber:client`).
    /// On failure the element is given back, so its sender can be answered.
    pub fn parse(element: Element) -> Result<Stanza, Rejected> {
        if element.ns() != ns::CLIENT {
            return Err(rejected(element, HeaderError::NotAStanza));
        }
        let Some(kind) = StanzaKind::of(&element) else {
            return Err(rejected(element, HeaderError::NotAStanza));
        };
        let to = match element.attr("to").map(parse_jid) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(_)) => return Err(rejected(element, HeaderError::MalformedTo)),
        };
        let from = match element.attr("from").map(parse_jid) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(_)) => return Err(rejected(element, HeaderError::MalformedFrom)),
        };
        Ok(Self::from_parts(kind, element, to, from))
    }

    /// Checks that an element read from a stream whose content namespace is `content_ns` is a
    /// stanza of that namespace, moves it to the server's namespace, and parses its header.
    pub fn from_stream(mut element: Element, content_ns: &str) -> Result<Stanza, Rejected> {
        if element.ns() != content_ns {
            let err = if CONTENT_NAMESPACES.contains(&element.ns()) {
                HeaderError::WrongNamespace {
                    found: element.ns().to_owned(),
                    expected: content_ns.to_owned(),
                }
            } else {
                HeaderError::NotAStanza
            };
            return Err(rejected(element, err));
        }
        if content_ns != ns::CLIENT {
            element.rename_ns(content_ns, ns::CLIENT);
        }
        Self::parse(element)
    }

    /// A stanza whose header the caller already knows (`to` and `from` must be what the
    /// element's attributes say; the kind must be the element's).
    pub fn from_parts(
        kind: StanzaKind,
        element: Element,
        to: Option<Jid>,
        from: Option<Jid>,
    ) -> Stanza {
        Stanza {
            kind,
            stanza_type: StanzaType::of(kind, &element),
            to,
            from,
            body: Arc::new(Body::new(element)),
            readdressed: false,
        }
    }

    pub fn kind(&self) -> StanzaKind {
        self.kind
    }
    pub fn stanza_type(&self) -> StanzaType {
        self.stanza_type
    }
    /// The IQ type, for an IQ with a valid one.
    pub fn iq_type(&self) -> Option<IqType> {
        match self.stanza_type {
            StanzaType::Iq(t) => t,
            _ => None,
        }
    }
    /// The message type, for a message.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.stanza_type {
            StanzaType::Message(t) => Some(t),
            _ => None,
        }
    }
    /// The presence type, for a presence with a valid one.
    pub fn presence_type(&self) -> Option<PresenceType> {
        match self.stanza_type {
            StanzaType::Presence(t) => t,
            _ => None,
        }
    }
    /// Whether this is an error stanza (never answered with an error, RFC 6120 §8.3.1).
    pub fn is_error(&self) -> bool {
        matches!(
            self.stanza_type,
            StanzaType::Iq(Some(IqType::Error))
                | StanzaType::Message(MessageType::Error)
                | StanzaType::Presence(Some(PresenceType::Error))
        )
    }
    pub fn id(&self) -> Option<&str> {
        self.body.element.attr("id")
    }
    pub fn to(&self) -> Option<&Jid> {
        self.to.as_ref()
    }
    pub fn from(&self) -> Option<&Jid> {
        self.from.as_ref()
    }

    /// Sets the `to`. On an element nobody else holds the attribute changes in place; on a
    /// shared one the address is kept in the header and the element stays shared.
    pub fn set_to(&mut self, to: Jid) {
        match Arc::get_mut(&mut self.body) {
            Some(body) => {
                // The cached serialisation leaves `to` out, so it stays valid.
                body.element.set_attr("to", to.as_str());
                self.readdressed = false;
            }
            None => self.readdressed = true,
        }
        self.to = Some(to);
    }

    /// A copy of this stanza for another addressee, sharing the element (see the type's
    /// docs): what a broadcast gives each recipient.
    pub fn readdressed(&self, to: Jid) -> Stanza {
        Stanza {
            kind: self.kind,
            stanza_type: self.stanza_type,
            to: Some(to),
            from: self.from.clone(),
            body: self.body.clone(),
            readdressed: true,
        }
    }

    pub fn set_from(&mut self, from: Jid) {
        self.body_mut().element.set_attr("from", from.as_str());
        self.from = Some(from);
    }

    /// The element. Its `to` attribute may be that of the stanza this one was readdressed
    /// from: the addresses are [`to`](Self::to) and [`from`](Self::from).
    pub fn element(&self) -> &Element {
        &self.body.element
    }

    /// The element, to change its payload (not its addresses or type: see the type's docs).
    /// Copies it first if it is shared.
    pub fn element_mut(&mut self) -> &mut Element {
        &mut self.body_mut().element
    }

    /// The element with the header's addresses, without copying it if this was the last
    /// reference.
    pub fn into_element(self) -> Element {
        let mut element = match Arc::try_unwrap(self.body) {
            Ok(body) => body.element,
            Err(shared) => shared.element.clone(),
        };
        if self.readdressed {
            set_or_remove_to(&mut element, self.to.as_ref());
        }
        element
    }

    /// The stanza as XML text with its header's addresses, declaring its namespace (as
    /// `Element::to_xml("")` does), for storage: offline queues, pending requests.
    pub fn to_xml_string(&self) -> String {
        // A chat message is a few hundred bytes: one allocation instead of seven doublings.
        let mut out = Vec::with_capacity(512);
        let to = if self.readdressed {
            self.to.as_ref().map(Jid::as_str)
        } else {
            self.body.element.attr("to")
        };
        self.body.element.write_with_attr(&mut out, "", "to", to);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The answer to this stanza with `error` (RFC 6120 §8.3.1): its kind and id, the header's
    /// addresses swapped, `type='error'`. `None` for an error, which is never answered.
    pub fn error_reply(&self, error: &StanzaError) -> Option<Element> {
        if self.is_error() {
            return None;
        }
        let el = self.element();
        let mut reply = Element::new(el.name(), el.ns()).with_attr("type", "error");
        self.reply_addressing(&mut reply);
        reply.push_child(error.to_element());
        Some(reply)
    }

    /// The `result` answer to this IQ request, with an optional payload.
    pub fn iq_result(&self, payload: Option<Element>) -> Element {
        let mut reply = Element::new("iq", ns::CLIENT).with_attr("type", "result");
        self.reply_addressing(&mut reply);
        if let Some(p) = payload {
            reply.push_child(p);
        }
        reply
    }

    fn reply_addressing(&self, reply: &mut Element) {
        if let Some(id) = self.id() {
            reply.set_attr("id", id);
        }
        if let Some(from) = &self.from {
            reply.set_attr("to", from.as_str());
        }
        if let Some(to) = &self.to {
            reply.set_attr("from", to.as_str());
        }
    }

    /// The element to change, alone: copied if shared (with the header's `to` written into
    /// the copy), its cached serialisation dropped.
    fn body_mut(&mut self) -> &mut Body {
        let body = Arc::make_mut(&mut self.body);
        body.wire = OnceLock::new();
        if std::mem::take(&mut self.readdressed) {
            set_or_remove_to(&mut body.element, self.to.as_ref());
        }
        body
    }
}

/// What the server answers with an error: a stanza, addressed by its header, or a bare
/// element, by its attributes.
pub trait Bounce {
    /// The error answer (`None` for an error, never answered, RFC 6120 §8.3.1), and its
    /// addressee when it is known without parsing.
    fn error_answer(&self, error: &StanzaError) -> Option<(Element, Option<Jid>)>;
}

impl Bounce for Stanza {
    fn error_answer(&self, error: &StanzaError) -> Option<(Element, Option<Jid>)> {
        self.error_reply(error)
            .map(|reply| (reply, self.from.clone()))
    }
}

impl Bounce for Element {
    fn error_answer(&self, error: &StanzaError) -> Option<(Element, Option<Jid>)> {
        crate::error_reply(self, error).map(|reply| (reply, None))
    }
}

impl Bounce for SharedStanza {
    /// By the element's attributes, with this recipient's `to`.
    fn error_answer(&self, error: &StanzaError) -> Option<(Element, Option<Jid>)> {
        let mut reply = crate::error_reply(&self.body.element, error)?;
        if let Some(to) = &self.to {
            reply.set_attr("from", to.as_str());
        }
        Some((reply, None))
    }
}

fn set_or_remove_to(element: &mut Element, to: Option<&Jid>) {
    match to {
        Some(to) => element.set_attr("to", to.as_str()),
        None => {
            element.remove_attr("to");
        }
    }
}

impl Deref for Stanza {
    type Target = Element;
    /// The element, as [`Stanza::element`] (its `to` attribute is not to be read).
    fn deref(&self) -> &Element {
        &self.body.element
    }
}

impl From<Stanza> for Element {
    fn from(s: Stanza) -> Element {
        s.into_element()
    }
}

/// The element of a stanza and its serialisation, shared by every copy of the stanza.
#[derive(Debug)]
struct Body {
    element: Element,
    /// The serialisation without `to`, made by the first stream that writes an element
    /// other copies still hold, for all of them.
    wire: OnceLock<Wire>,
    /// How many times the element was serialised (for the tests that count them).
    serialisations: AtomicUsize,
}

#[derive(Debug)]
struct Wire {
    bytes: Box<[u8]>,
    /// Where the `to` attribute goes in `bytes`.
    to_at: usize,
}

impl Body {
    fn new(element: Element) -> Self {
        Body {
            element,
            wire: OnceLock::new(),
            serialisations: AtomicUsize::new(0),
        }
    }

    /// Writes the element with the `to` attribute `to` (`None`: the element's own). `alone`:
    /// no other copy holds the element, so a serialisation kept would serve no one.
    fn write(&self, out: &mut Vec<u8>, to: Option<&Jid>, alone: bool) {
        let to = to.map(Jid::as_str).or_else(|| self.element.attr("to"));
        let wire = match self.wire.get() {
            Some(wire) => wire,
            None if alone => {
                self.serialisations.fetch_add(1, Ordering::Relaxed);
                self.element.write_with_attr(out, ns::CLIENT, "to", to);
                return;
            }
            None => self.wire.get_or_init(|| {
                self.serialisations.fetch_add(1, Ordering::Relaxed);
                let mut bytes = Vec::new();
                let to_at = self
                    .element
                    .write_with_attr(&mut bytes, ns::CLIENT, "to", None);
                Wire {
                    bytes: bytes.into_boxed_slice(),
                    to_at,
                }
            }),
        };
        out.extend_from_slice(&wire.bytes[..wire.to_at]);
        if let Some(to) = to {
            Element::write_attr(out, "to", to);
        }
        out.extend_from_slice(&wire.bytes[wire.to_at..]);
    }
}

impl Clone for Body {
    /// A copy to change: the serialisation is not carried over.
    fn clone(&self) -> Self {
        Body::new(self.element.clone())
    }
}

/// A stanza on its way to one or more sessions: its element reference-counted and shared
/// with every other recipient (a message to several resources, presence to every resource of
/// a contact or to every contact, carbons, the copy the carbons hook looks at), with the
/// recipient's own `to` where it differs from the element's, and serialised at most once
/// whichever stream writes it first: each recipient's `to` is written into that one
/// serialisation.
#[derive(Debug, Clone)]
pub struct SharedStanza {
    body: Arc<Body>,
    /// The recipient's address, when it is not the element's `to` attribute.
    to: Option<Jid>,
}

impl SharedStanza {
    pub fn new(element: Element) -> Self {
        SharedStanza {
            body: Arc::new(Body::new(element)),
            to: None,
        }
    }

    /// The element. Its `to` may be another recipient's: see [`to`](Self::to).
    pub fn element(&self) -> &Element {
        &self.body.element
    }

    /// The `to` this recipient's copy is written with.
    pub fn to(&self) -> Option<&str> {
        match &self.to {
            Some(to) => Some(to.as_str()),
            None => self.body.element.attr("to"),
        }
    }

    /// A copy for another recipient, sharing the element and its serialisation.
    pub fn readdressed(&self, to: Jid) -> SharedStanza {
        SharedStanza {
            body: self.body.clone(),
            to: Some(to),
        }
    }

    /// Writes the stanza for a stream whose content namespace is `content_ns`.
    ///
    /// The server's namespace (`jabber:client`) is written as the stream's default namespace,
    /// whichever content namespace that is: the bytes are the same on every stream, so the
    /// first stream that writes a stanza that others still hold keeps its serialisation
    /// (without the `to`) for them, and each writes its own `to` into it. A stanza nobody
    /// else holds (the one-to-one case) is written directly.
    pub fn write_to(&self, out: &mut Vec<u8>, content_ns: &str) {
        let _ = content_ns;
        let alone = Arc::strong_count(&self.body) == 1;
        if alone && self.to.is_none() && self.body.wire.get().is_none() {
            self.body.serialisations.fetch_add(1, Ordering::Relaxed);
            self.body.element.write_to(out, ns::CLIENT);
        } else {
            self.body.write(out, self.to.as_ref(), alone);
        }
    }

    /// Writes the stanza declaring its namespace on itself (`parent_ns` is what the framing
    /// inherits, `""` in a WebSocket message), with this recipient's `to`. This second wire
    /// form is written per recipient, not kept.
    pub fn write_declared(&self, out: &mut Vec<u8>, parent_ns: &str) {
        match &self.to {
            Some(to) => {
                self.body
                    .element
                    .write_with_attr(out, parent_ns, "to", Some(to.as_str()));
            }
            None => self.body.element.write_to(out, parent_ns),
        }
    }

    /// Whether the serialised form was kept for other sessions (for tests and counters).
    pub fn is_serialised(&self) -> bool {
        self.body.wire.get().is_some()
    }

    /// How many times the element this copy shares was serialised, for every recipient
    /// together (for the tests that prove a broadcast is serialised once).
    pub fn serialisations(&self) -> usize {
        self.body.serialisations.load(Ordering::Relaxed)
    }

    /// Whether two copies share one element (and so one serialisation).
    pub fn shares_element_with(&self, other: &SharedStanza) -> bool {
        Arc::ptr_eq(&self.body, &other.body)
    }

    /// The element with this recipient's `to`, without copying it if this was the last
    /// reference.
    pub fn into_element(self) -> Element {
        let mut element = match Arc::try_unwrap(self.body) {
            Ok(body) => body.element,
            Err(shared) => shared.element.clone(),
        };
        if let Some(to) = self.to {
            element.set_attr("to", to.as_str());
        }
        element
    }
}

impl Deref for SharedStanza {
    type Target = Element;
    /// The element, as [`SharedStanza::element`].
    fn deref(&self) -> &Element {
        &self.body.element
    }
}

impl From<Element> for SharedStanza {
    fn from(element: Element) -> Self {
        SharedStanza::new(element)
    }
}

impl From<Stanza> for SharedStanza {
    /// No copy: the stanza's element, and its header's `to` if it differs from the element's.
    fn from(stanza: Stanza) -> Self {
        SharedStanza {
            to: if stanza.readdressed { stanza.to } else { None },
            body: stanza.body,
        }
    }
}

impl From<&Stanza> for SharedStanza {
    fn from(stanza: &Stanza) -> Self {
        SharedStanza {
            to: if stanza.readdressed {
                stanza.to.clone()
            } else {
                None
            },
            body: stanza.body.clone(),
        }
    }
}
