//! The events and filter values the core emits. Modules hook these; the core never needs to
//! know which modules listen.

use rookery_stanza::{BareJid, FullJid};
use rookery_xml::Element;

/// A resource was bound (RFC 6120 §7): the session can now send and receive stanzas.
#[derive(Debug, Clone)]
pub struct SessionBound {
    pub jid: FullJid,
}

/// A bound session ended, for whatever reason (logout, dropped connection, conflict, shutdown).
#[derive(Debug, Clone)]
pub struct SessionClosed {
    pub jid: FullJid,
    /// The session had sent available presence and not withdrawn it.
    pub was_available: bool,
}

/// Filter: a stanza from a local client, after its `from` was stamped and before it is routed.
/// A filter may rewrite it or drop it (returning `None`).
#[derive(Debug, Clone)]
pub struct ClientStanza {
    pub from: FullJid,
    pub stanza: Element,
}

/// Presence without a `to` from a client (RFC 6121 §4.2, §4.4): the core has recorded the
/// session's availability and priority; presence modules broadcast it.
#[derive(Debug, Clone)]
pub struct PresenceBroadcast {
    pub from: FullJid,
    pub stanza: Element,
}

/// A presence addressed to a local account's bare JID (subscriptions, probes, directed
/// presence). A module that handles it returns `Flow::Stop`; otherwise the core delivers it to
/// every available resource.
#[derive(Debug, Clone)]
pub struct InboundPresence {
    pub to: BareJid,
    pub stanza: Element,
}

/// A message for an existing local account that has no resource able to take it now
/// (RFC 6121 §8.5.2.2). A module (offline storage) that keeps it returns `Flow::Stop`;
/// otherwise the core answers `service-unavailable` for `normal`/`chat` and drops the rest.
#[derive(Debug, Clone)]
pub struct UndeliverableMessage {
    pub to: BareJid,
    pub stanza: Element,
}

/// Which point of stream negotiation features are being offered at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureStage {
    /// Authenticated, resource not yet bound.
    PostAuth,
}

/// Filter: the stream features offered at a stage; modules append theirs.
#[derive(Debug, Clone)]
pub struct StreamFeatures {
    pub stage: FeatureStage,
    pub features: Vec<Element>,
}
