//! Publish-Subscribe (XEP-0060) in two modules over one engine:
//!
//! * [`pep::Pep`] (`pep`): the Personal Eventing service of every account (XEP-0163) with
//!   publish-options (XEP-0223 semantics): what clients keep their bookmarks, avatars,
//!   nicknames and OMEMO keys in. Notifications follow presence and entity capabilities
//!   (the `caps` module's `+notify` interest).
//! * [`service::PubSub`] (`pubsub`): a PubSub service on its own domain (`pubsub.<host>`).
//!
//! The parts: [`config`] (a node's configuration and its forms, publish-options
//! preconditions), [`access`] (affiliations and access models, pure decisions), [`engine`]
//! (the requests of XEP-0060 §5–§8 over one service, notifications), and the two modules.
//! State lives in the `PubSubStore` (nodes, items, affiliations, subscriptions).

pub mod access;
pub mod config;
pub mod engine;
pub mod pep;
pub mod service;

use rookery_stanza::BareJid;
use rookery_xml::Element;

/// A PEP node of an account got an item (after it was stored and notified): modules that
/// keep other forms of the same data in step (bookmarks, avatars) hook this.
#[derive(Debug, Clone)]
pub struct PublishedItem {
    pub owner: BareJid,
    pub node: String,
    pub id: String,
    pub payload: Option<Element>,
}

/// An item was retracted from a PEP node of an account.
#[derive(Debug, Clone)]
pub struct RetractedItem {
    pub owner: BareJid,
    pub node: String,
    pub id: String,
}

/// The bounds of one service: what `[pep]` or `[host.pubsub]` set.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Nodes one service (one account's PEP, or the whole domain) holds.
    pub max_nodes: usize,
    /// The most items a node keeps (what `pubsub#max_items = max` means).
    pub max_items: usize,
    /// `pubsub#max_items` of a new node of a domain service.
    pub default_max_items: usize,
    /// Items one service holds across its nodes.
    pub max_service_items: usize,
    /// Bytes of one item's payload, serialised.
    pub max_item_bytes: usize,
    /// Bytes of one item of an avatar data node (XEP-0084 `urn:xmpp:avatar:data`).
    pub max_avatar_bytes: usize,
    /// Subscriptions one JID holds on one service.
    pub max_subscriptions: usize,
    /// Publications one publisher may make in a burst, then one per interval.
    pub publish_burst: u32,
    pub publish_interval_ms: u64,
}

/// XEP-0084's data node: its items are images, allowed beyond the ordinary item size.
pub const NODE_AVATAR_DATA: &str = "urn:xmpp:avatar:data";

impl ServiceLimits {
    /// The largest payload a node accepts.
    pub fn item_limit(&self, node: &str) -> usize {
        if node == NODE_AVATAR_DATA {
            self.max_avatar_bytes.max(self.max_item_bytes)
        } else {
            self.max_item_bytes
        }
    }
}

/// Namespaces and the pubsub-specific error conditions (XEP-0060 §7–§8, `pubsub#errors`).
pub mod errors {
    use rookery_stanza::{StanzaError, StanzaErrorCondition};
    use rookery_xml::Element;

    pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
    pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
    pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

    /// A stanza error with its pubsub-specific condition.
    pub fn with(condition: StanzaErrorCondition, specific: &str) -> StanzaError {
        StanzaError::new(condition).with_app_specific(Element::new(specific, NS_PUBSUB_ERRORS))
    }

    /// `feature-not-implemented` naming the unsupported feature (§7.1.3.2 and others).
    pub fn unsupported(feature: &str) -> StanzaError {
        StanzaError::new(StanzaErrorCondition::FeatureNotImplemented).with_app_specific(
            Element::new("unsupported", NS_PUBSUB_ERRORS).with_attr("feature", feature),
        )
    }
}

/// The features both services implement, for disco#info (XEP-0060 §10).
pub const FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#access-authorize",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#meta-data",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#outcast-affiliation",
    "http://jabber.org/protocol/pubsub#member-affiliation",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-only-affiliation",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#publisher-affiliation",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
    "http://jabber.org/protocol/pubsub#subscription-options",
    "http://jabber.org/protocol/pubsub#rsm",
];
