//! Addresses, stanza helpers and the error vocabulary of RFC 6120.
//!
//! JIDs come from the `jid` crate (xmpp-rs family), which implements the RFC 7622 preparation
//! profiles; everything else here is a thin, typed layer over [`rookery_xml::Element`] so that
//! unknown payloads are carried untouched.

pub mod error;
pub mod ns;
pub mod stanza;

pub use error::{ErrorType, StanzaError, StanzaErrorCondition, StreamErrorCondition};
pub use jid::{BareJid, FullJid, Jid};
use rookery_xml::Element;
pub use stanza::{
    Bounce, HeaderError, Rejected, SharedStanza, Stanza, StanzaType, CONTENT_NAMESPACES,
};

/// The three stanza kinds of RFC 6120 §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    Message,
    Presence,
    Iq,
}

impl StanzaKind {
    /// The kind of a top-level element, if it is a stanza: `<message/>`, `<presence/>` or
    /// `<iq/>` in any content namespace (which one a stream accepts is the transport's
    /// business, see [`Stanza::from_stream`]).
    pub fn of(el: &Element) -> Option<Self> {
        if !stanza::CONTENT_NAMESPACES.contains(&el.ns()) {
            return None;
        }
        match el.name() {
            "message" => Some(Self::Message),
            "presence" => Some(Self::Presence),
            "iq" => Some(Self::Iq),
            _ => None,
        }
    }
}

/// The `type` of an IQ (RFC 6120 §8.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn of(el: &Element) -> Option<Self> {
        match el.attr("type")? {
            "get" => Some(Self::Get),
            "set" => Some(Self::Set),
            "result" => Some(Self::Result),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
    pub fn is_request(self) -> bool {
        matches!(self, Self::Get | Self::Set)
    }
}

/// The `type` of a message (RFC 6121 §5.2.2); an absent or unknown type means `normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

impl MessageType {
    pub fn of(el: &Element) -> Self {
        match el.attr("type") {
            Some("chat") => Self::Chat,
            Some("groupchat") => Self::Groupchat,
            Some("headline") => Self::Headline,
            Some("error") => Self::Error,
            _ => Self::Normal,
        }
    }
}

/// The `type` of a presence (RFC 6121 §4.7.1); absent means available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    /// `None` for a type RFC 6121 does not define (the stanza is then invalid).
    pub fn of(el: &Element) -> Option<Self> {
        Some(match el.attr("type") {
            None => Self::Available,
            Some("unavailable") => Self::Unavailable,
            Some("subscribe") => Self::Subscribe,
            Some("subscribed") => Self::Subscribed,
            Some("unsubscribe") => Self::Unsubscribe,
            Some("unsubscribed") => Self::Unsubscribed,
            Some("probe") => Self::Probe,
            Some("error") => Self::Error,
            Some(_) => return None,
        })
    }
}

/// Builds the `result` answer to an IQ request, with an optional payload.
pub fn iq_result(request: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    copy_reply_addressing(request, &mut reply);
    if let Some(p) = payload {
        reply.push_child(p);
    }
    reply
}

/// Builds the error answer to a stanza (RFC 6120 §8.3.1): same kind and id, addresses swapped,
/// `type='error'`. Returns `None` for a stanza that is itself an error: an error is never
/// answered with an error (§8.3.1, rule 3), which is what keeps two entities from looping.
pub fn error_reply(stanza: &Element, error: &StanzaError) -> Option<Element> {
    if stanza.attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(stanza.name(), stanza.ns()).with_attr("type", "error");
    copy_reply_addressing(stanza, &mut reply);
    reply.push_child(error.to_element());
    Some(reply)
}

fn copy_reply_addressing(request: &Element, reply: &mut Element) {
    if let Some(id) = request.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(from) = request.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(to) = request.attr("to") {
        reply.set_attr("from", to);
    }
}

/// A random identifier of `len` URL-safe characters (stream ids, generated resources, ...).
pub fn random_id(len: usize) -> String {
    use rand::RngCore;
    const CHARS: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    let mut id = String::with_capacity(len);
    // Random bytes in bulk (one generator call, not one per character); six bits of a byte
    // pick a character and the two values past 61 are skipped, so every character is
    // equally likely (about 5.95 bits each).
    let mut bytes = [0u8; 32];
    while id.len() < len {
        rng.fill_bytes(&mut bytes);
        for b in bytes {
            if let Some(&c) = CHARS.get(usize::from(b & 63)) {
                if id.len() < len {
                    id.push(char::from(c));
                }
            }
        }
    }
    id
}

/// Parses an address as it appears in a `to`/`from` attribute, applying RFC 7622 preparation.
/// An address whose prepared form would prepare differently again is refused (see
/// [`is_stable`]).
pub fn parse_jid(s: &str) -> Result<Jid, StanzaError> {
    Jid::new(s)
        .ok()
        .filter(is_stable)
        .ok_or_else(|| StanzaError::new(StanzaErrorCondition::JidMalformed))
}

/// Whether preparing the address again leaves it unchanged. The `jid` crate lower-cases
/// before compatibility normalisation, so a compatibility character that normalises to
/// capitals (U+337A SQUARE IU → "IU", found by fuzzing) yields a form that a second
/// preparation lower-cases: "co\u{337a}ec" → "coIUec" → "coiuec". Such an address would
/// name one entity under two spellings; the places that establish identities (routing,
/// account creation) refuse it. RFC 7622 disallows these characters in localparts anyway
/// (PRECIS IdentifierClass excludes compatibility characters).
pub fn is_stable(jid: &Jid) -> bool {
    Jid::new(jid.as_str()).is_ok_and(|again| again == *jid)
}

/// The bare part of an address, borrowed: its string up to the resource. A node or a
/// domain holds no `/` (RFC 7622 §3.2, §3.3), so the first `/` starts the resource. The
/// message path asks this several times per message; `Jid::to_bare` formats a new string.
pub fn bare_str(jid: &Jid) -> &str {
    let s = jid.as_str();
    s.split_once('/').map_or(s, |(bare, _)| bare)
}

#[cfg(test)]
mod tests;
