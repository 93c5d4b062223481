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

use crate::{ns, parse_jid, IqType, MessageType, PresenceType, StanzaKind};
use jid::Jid;
use rookery_xml::Element;
use std::ops::Deref;
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
/// goes through [`set_to`](Self::set_to) / [`set_from`](Self::set_from), which keep the
/// element's attributes and the header in step. [`element_mut`](Self::element_mut) is for
/// the payload only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    kind: StanzaKind,
    stanza_type: StanzaType,
    to: Option<Jid>,
    from: Option<Jid>,
    element: Element,
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
            element,
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
        self.element.attr("id")
    }
    pub fn to(&self) -> Option<&Jid> {
        self.to.as_ref()
    }
    pub fn from(&self) -> Option<&Jid> {
        self.from.as_ref()
    }
    pub fn set_to(&mut self, to: Jid) {
        self.element.set_attr("to", to.as_str());
        self.to = Some(to);
    }
    pub fn set_from(&mut self, from: Jid) {
        self.element.set_attr("from", from.as_str());
        self.from = Some(from);
    }
    pub fn element(&self) -> &Element {
        &self.element
    }
    /// The element, to change its payload (not its addresses or type: see the type's docs).
    pub fn element_mut(&mut self) -> &mut Element {
        &mut self.element
    }
    pub fn into_element(self) -> Element {
        self.element
    }
}

impl Deref for Stanza {
    type Target = Element;
    fn deref(&self) -> &Element {
        &self.element
    }
}

impl From<Stanza> for Element {
    fn from(s: Stanza) -> Element {
        s.element
    }
}

/// A stanza on its way to one or more sessions: reference-counted, so delivering it to many
/// sessions (a message to several resources, presence to every resource of a contact, the
/// copy the carbons hook looks at) shares one element, and serialised at most once
/// whichever stream writes it first.
#[derive(Debug, Clone)]
pub struct SharedStanza(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    element: Element,
    wire: OnceLock<Box<[u8]>>,
}

impl SharedStanza {
    pub fn new(element: Element) -> Self {
        SharedStanza(Arc::new(Shared {
            element,
            wire: OnceLock::new(),
        }))
    }

    pub fn element(&self) -> &Element {
        &self.0.element
    }

    /// Writes the stanza for a stream whose content namespace is `content_ns`.
    ///
    /// The server's namespace (`jabber:client`) is written as the stream's default namespace,
    /// whichever content namespace that is: the bytes are the same on every stream, so the
    /// first stream that writes a stanza that others still hold keeps its serialisation for
    /// them. A stanza nobody else holds (the one-to-one case) is written directly.
    pub fn write_to(&self, out: &mut Vec<u8>, content_ns: &str) {
        let _ = content_ns;
        if let Some(wire) = self.0.wire.get() {
            out.extend_from_slice(wire);
        } else if Arc::strong_count(&self.0) == 1 {
            self.0.element.write_to(out, ns::CLIENT);
        } else {
            let wire = self.0.wire.get_or_init(|| {
                let mut buf = Vec::new();
                self.0.element.write_to(&mut buf, ns::CLIENT);
                buf.into_boxed_slice()
            });
            out.extend_from_slice(wire);
        }
    }

    /// Whether the serialised form was kept for other sessions (for tests and counters).
    pub fn is_serialised(&self) -> bool {
        self.0.wire.get().is_some()
    }

    /// The element, without copying it if this was the last reference.
    pub fn into_element(self) -> Element {
        match Arc::try_unwrap(self.0) {
            Ok(shared) => shared.element,
            Err(shared) => shared.element.clone(),
        }
    }
}

impl Deref for SharedStanza {
    type Target = Element;
    fn deref(&self) -> &Element {
        &self.0.element
    }
}

impl From<Element> for SharedStanza {
    fn from(element: Element) -> Self {
        SharedStanza::new(element)
    }
}

impl From<Stanza> for SharedStanza {
    fn from(stanza: Stanza) -> Self {
        SharedStanza::new(stanza.element)
    }
}
