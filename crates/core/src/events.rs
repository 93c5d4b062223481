//! The events and filter values the core emits. Modules hook these; the core never needs to
//! know which modules listen. Every handler gets the server as its context.

use crate::sessions::{Resources, SessionHandle};
use rookery_stanza::{BareJid, FullJid, Jid, SharedStanza, Stanza};
use rookery_xml::Element;
use std::sync::Arc;

/// A resource was bound (RFC 6120 §7): the session can now send and receive stanzas.
#[derive(Clone)]
pub struct SessionBound {
    pub session: Arc<SessionHandle>,
}

/// A bound session ended, for whatever reason (logout, dropped connection, conflict, shutdown).
#[derive(Clone)]
pub struct SessionClosed {
    /// Already removed from the session registry; its module state is still attached.
    pub session: Arc<SessionHandle>,
    /// The session had sent available presence and not withdrawn it.
    pub was_available: bool,
}

/// Filter: a stanza from a local client, after its `from` was stamped and before it is routed.
/// A filter may rewrite it or drop it (returning `None`). Its header (`to`, `from`, type) is
/// parsed: read it from the [`Stanza`] instead of the attributes.
#[derive(Debug, Clone)]
pub struct ClientStanza {
    pub from: FullJid,
    pub stanza: Stanza,
}

/// Filter: a stanza about to be delivered to a local account (bare or full JID), whoever
/// sent it (a local client, a module, a service domain, later a remote entity). Blocking
/// and privacy rules drop here.
#[derive(Debug, Clone)]
pub struct LocalDelivery {
    pub to: Jid,
    pub stanza: Stanza,
}

/// Presence without a `to` from a client (RFC 6121 §4.2, §4.4): the core has recorded the
/// session's availability and priority; presence modules broadcast it. `session` is the
/// sender's (no registry look-up needed); the stanza's header is parsed (`from` is the
/// session's full JID, no `to`).
#[derive(Clone)]
pub struct PresenceBroadcast {
    pub from: FullJid,
    pub session: Arc<SessionHandle>,
    pub stanza: Stanza,
}

/// Presence with a `to` from a local client: subscription requests and answers (RFC 6121
/// §3), directed presence (§4.6). A module that handled it returns `Flow::Stop`; otherwise
/// the core routes it as it is. `to` is the stanza's parsed `to`.
#[derive(Debug, Clone)]
pub struct OutboundPresence {
    pub from: FullJid,
    pub to: Jid,
    pub stanza: Stanza,
}

/// A presence addressed to an existing local account (its bare or full JID): subscriptions,
/// probes, directed presence. A module that handles it returns `Flow::Stop`; otherwise the
/// core delivers presence of type available/unavailable to the addressed resource, or to every
/// available resource for a bare JID, and drops the rest. `to` is the stanza's parsed `to`;
/// read the sender from the stanza's header. The stanza may share its element with the
/// same presence to other contacts (a broadcast): a handler that changes it gets a copy.
#[derive(Debug, Clone)]
pub struct InboundPresence {
    pub to: Jid,
    pub stanza: Stanza,
}

/// A message for an existing local account that has no resource able to take it now
/// (RFC 6121 §8.5.2.2). A module (offline storage) that keeps it returns `Flow::Stop`;
/// otherwise the core answers `service-unavailable` for `normal`/`chat` and drops the rest.
/// `sessions` are the account's sessions as routing found them (none available), so
/// listeners need no registry look-up.
#[derive(Clone)]
pub struct UndeliverableMessage {
    pub to: BareJid,
    pub stanza: Stanza,
    pub sessions: Resources,
}

/// A `chat` or `normal` message was handed to sessions of a local account (after the
/// [`LocalDelivery`] filters), or an `error` message to one of its full JIDs (errors to a
/// bare JID are dropped, RFC 6121 §8.5.2). `delivered_to` lists the sessions (ids) that got
/// it, so a feature that copies messages to other resources (carbons) can skip those.
/// The stanza is the one the sessions got (shared, not a copy), and `sessions` every
/// session the account had when it was routed, so listeners need no registry look-up.
#[derive(Clone)]
pub struct MessageDelivered {
    pub to: BareJid,
    /// The sender, as parsed where the message entered the server.
    pub from: Option<Jid>,
    pub stanza: SharedStanza,
    pub delivered_to: Vec<u64>,
    pub sessions: Resources,
}

/// A message was queued for a session whose connection is gone while stream management
/// keeps the session for resumption (XEP-0198 §5): the client will not see it until it
/// comes back. Push notifications (XEP-0357) hook this.
#[derive(Clone)]
pub struct HeldMessage {
    pub session: Arc<SessionHandle>,
    pub stanza: SharedStanza,
}

/// A Bind 2 request (XEP-0386) asked to enable a feature inline for a session that was just
/// bound; `request` is the client's element (e.g. `<enable xmlns='urn:xmpp:carbons:2'/>`).
/// The module that registered the namespace with `add_bind_inline_feature` handles it and
/// returns `Flow::Stop`.
#[derive(Clone)]
pub struct BindInline {
    pub session: Arc<SessionHandle>,
    pub request: Element,
}

/// Filter: a session was just bound through Bind 2 (XEP-0386 §2.2); modules add their part
/// of the answer to `bound` (the archive's `<metadata/>`) and do what binding this way
/// implies (the offline queue is left to the archive).
#[derive(Clone)]
pub struct Bind2Bound {
    pub session: Arc<SessionHandle>,
    pub bound: Element,
}

/// Filter: the `disco#info` answer of one of a host's nodes (XEP-0030 §3.2: the query to the
/// host's domain carries `node`). The module that owns the node (ad-hoc commands: the command
/// list and each command, XEP-0050 §2.2) fills `query` and sets `found`, answering for
/// `requester` (a command the requester may not run is not found); a node nobody claims is
/// answered `item-not-found`.
#[derive(Debug, Clone)]
pub struct HostDiscoInfo {
    pub requester: Jid,
    pub node: String,
    pub query: Element,
    pub found: bool,
}

/// Filter: the `disco#items` answer of one of a host's nodes, built like [`HostDiscoInfo`].
#[derive(Debug, Clone)]
pub struct HostDiscoItems {
    pub requester: Jid,
    pub node: String,
    pub query: Element,
    pub found: bool,
}

/// Filter: the `disco#info` answer of a local account's bare JID (XEP-0030 §3.1, answered by
/// the server on the account's behalf), or of one of its nodes when `node` is set. Modules
/// that publish on the account's behalf add to `query` (PEP its `pubsub/pep` identity and its
/// nodes' metadata) and set `found` for a node they know; a node nobody claimed is answered
/// `item-not-found`.
#[derive(Debug, Clone)]
pub struct AccountDiscoInfo {
    pub account: BareJid,
    pub requester: Jid,
    pub node: Option<String>,
    pub query: Element,
    pub found: bool,
}

/// Filter: the `disco#items` answer of a local account's bare JID or of one of its nodes
/// (XEP-0030 §4.1), built like [`AccountDiscoInfo`]: PEP lists the nodes the requester may
/// see.
#[derive(Debug, Clone)]
pub struct AccountDiscoItems {
    pub account: BareJid,
    pub requester: Jid,
    pub node: Option<String>,
    pub query: Element,
    pub found: bool,
}
