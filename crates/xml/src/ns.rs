//! Cheaply clonable namespace names.
//!
//! Every element carries its namespace URI. Namespaces repeat constantly
//! ("jabber:client" on nearly every element), so well-known URIs are stored
//! as `&'static str` (no allocation, no shared reference count that would
//! bounce between threads) and all others in an `Arc<str>` shared by all
//! elements of one parse scope.

use std::fmt;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) enum Ns {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Ns {
    pub(crate) const EMPTY: Ns = Ns::Static("");

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Ns::Static(s) => s,
            Ns::Shared(s) => s,
        }
    }

    pub(crate) fn from_string(s: String) -> Ns {
        match well_known(&s) {
            Some(st) => Ns::Static(st),
            None => Ns::Shared(Arc::from(s)),
        }
    }
}

impl PartialEq for Ns {
    #[inline]
    fn eq(&self, other: &Ns) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Ns {}

impl fmt::Debug for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

macro_rules! well_known {
    ($($ns:literal),* $(,)?) => {
        fn well_known(s: &str) -> Option<&'static str> {
            match s {
                $($ns => Some($ns),)*
                _ => None,
            }
        }
    };
}

well_known!(
    "",
    "jabber:client",
    "jabber:server",
    "jabber:component:accept",
    "http://etherx.jabber.org/streams",
    "http://www.w3.org/XML/1998/namespace",
    "urn:ietf:params:xml:ns:xmpp-streams",
    "urn:ietf:params:xml:ns:xmpp-stanzas",
    "urn:ietf:params:xml:ns:xmpp-tls",
    "urn:ietf:params:xml:ns:xmpp-sasl",
    "urn:ietf:params:xml:ns:xmpp-bind",
    "urn:ietf:params:xml:ns:xmpp-session",
    "urn:xmpp:sasl:2",
    "urn:xmpp:bind:0",
    "urn:xmpp:sm:3",
    "urn:xmpp:csi:0",
    "urn:xmpp:ping",
    "urn:xmpp:time",
    "urn:xmpp:delay",
    "urn:xmpp:receipts",
    "urn:xmpp:carbons:2",
    "urn:xmpp:forward:0",
    "urn:xmpp:mam:2",
    "urn:xmpp:sid:0",
    "urn:xmpp:hints",
    "urn:xmpp:chat-markers:0",
    "urn:xmpp:blocking",
    "urn:xmpp:features:rosterver",
    "urn:xmpp:features:pre-approval",
    "jabber:iq:roster",
    "jabber:iq:version",
    "jabber:iq:private",
    "jabber:iq:register",
    "jabber:iq:last",
    "jabber:iq:privacy",
    "jabber:x:data",
    "jabber:x:conference",
    "jabber:x:oob",
    "vcard-temp",
    "vcard-temp:x:update",
    "http://jabber.org/protocol/chatstates",
    "http://jabber.org/protocol/caps",
    "http://jabber.org/protocol/disco#info",
    "http://jabber.org/protocol/disco#items",
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/muc#user",
    "http://jabber.org/protocol/muc#admin",
    "http://jabber.org/protocol/muc#owner",
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#event",
    "http://jabber.org/protocol/pubsub#owner",
    "http://jabber.org/protocol/rsm",
    "http://jabber.org/protocol/nick",
    "http://jabber.org/protocol/address",
    "http://jabber.org/features/iq-register",
);
