//! The PubSub store (XEP-0060): nodes with their configuration, items, affiliations and
//! subscriptions, for two kinds of service: an account's personal eventing service (PEP,
//! XEP-0163, [`PubSubService::Account`]) and a PubSub service domain
//! ([`PubSubService::Domain`], e.g. `pubsub.example.org`).
//!
//! # Model
//!
//! * A **node** belongs to one service and is named by a string unique in it. Its
//!   configuration is a document the PubSub module serialises (opaque here, like a room's).
//! * **Items** of a node are keyed by their id. Each publication gets the next value of a
//!   per-backend sequence: publishing an id again replaces its payload and makes it the
//!   newest. Items are returned **newest first**. A node holds at most the `max_items` given at
//!   each publication: the oldest beyond it are removed in the same atomic step (and their
//!   ids returned).
//! * **Affiliations** map a JID (bare, as the caller normalised it) to a name the module
//!   chooses (`owner`, `publisher`, `member`, `outcast`...); `none` is stored as absence.
//! * **Subscriptions** are keyed by (JID, subid); the JID may be bare or full. Each carries a
//!   state name (`subscribed`, `pending`, `unconfigured`) and its options document (opaque).
//!
//! # Invariants (checked by [`crate::conformance`])
//!
//! * Every write is atomic: a refused write (limit, missing node) changes nothing.
//! * An **account's service** exists only while the account does: writes to it fail with
//!   [`StorageError::NotFound`] when the account does not exist, reads of it return nothing,
//!   and deleting the account deletes its nodes with their items, affiliations and
//!   subscriptions — and every affiliation and subscription the account's JIDs (its bare JID
//!   and any full JID of it) hold on nodes of any other service of the backend.
//! * A **domain service** needs no account; its nodes live until deleted.
//! * Deleting a node deletes its items, affiliations and subscriptions.
//! * Quotas are exact under concurrency: `max_nodes` (nodes per service), `max_service_items`
//!   (items stored across all nodes of a service) and `max_per_jid` (subscriptions one JID
//!   holds on one service) are checked in the same atomic step as the write.

use crate::StorageError;

/// Whose nodes: an account's PEP service or a PubSub service domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PubSubService<'a> {
    /// The PEP service of the account `user@domain`.
    Account { domain: &'a str, user: &'a str },
    /// A PubSub service domain (`pubsub.example.org`).
    Domain(&'a str),
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: String,
    /// The configuration document, as the PubSub module wrote it.
    pub config: String,
}

/// One published item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    pub id: String,
    /// The publisher's JID as the module recorded it (XEP-0060 §7.1.2 `publisher`).
    pub publisher: String,
    /// The serialised payload: the children of `<item/>`, possibly empty.
    pub payload: String,
    /// When it was (last) published, microseconds since the Unix epoch.
    pub published_us: i64,
}

/// Which items to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemSelection<'a> {
    /// These ids, in the order given; unknown ids are skipped.
    Ids(&'a [String]),
    /// A page of the newest-first list (XEP-0059 over XEP-0060 §6.5.4): at most `max` items
    /// after (older than) the item `after`, or before (newer than) `before`, or from the
    /// newest. An `after`/`before` id not in the node gives [`StorageError::NotFound`].
    Page {
        after: Option<&'a str>,
        before: Option<&'a str>,
        max: usize,
    },
    /// The last page of the newest-first list: its `max` oldest items, still newest first
    /// (XEP-0059 §2.5, an empty `<before/>`).
    Oldest { max: usize },
}

/// A page of items, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemPage {
    pub items: Vec<ItemRecord>,
    /// How many items the node holds.
    pub count: usize,
    /// The position of the first returned item in the newest-first list (0 = the newest).
    pub first_index: usize,
}

/// What [`PubSubStore::publish_item`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Published {
    /// An item with this id existed and was replaced.
    pub replaced: bool,
    /// Ids of the oldest items removed to keep the node within `max_items`.
    pub evicted: Vec<String>,
}

/// A subscription to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The subscribed JID (bare or full, normalised by the caller).
    pub jid: String,
    pub subid: String,
    /// `subscribed`, `pending` or `unconfigured`.
    pub state: String,
    /// The subscription options document (opaque; empty for none).
    pub options: String,
}

/// Nodes, items, affiliations and subscriptions of PubSub services.
#[async_trait::async_trait]
pub trait PubSubStore: Send + Sync + 'static {
    /// One node.
    async fn get_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Option<NodeRecord>, StorageError>;

    /// Every node of a service, sorted by name (byte order).
    async fn list_nodes(&self, service: PubSubService<'_>)
        -> Result<Vec<NodeRecord>, StorageError>;

    /// Creates a node with its configuration and `owner` affiliated as `owner`.
    /// AlreadyExists if the node exists; LimitReached when the service already has
    /// `max_nodes` nodes; NotFound for the service of an account that doesn't exist.
    async fn create_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
        owner: &str,
        max_nodes: usize,
    ) -> Result<(), StorageError>;

    /// Replaces a node's configuration. NotFound if there is no such node.
    async fn set_node_config(
        &self,
        service: PubSubService<'_>,
        node: &str,
        config: &str,
    ) -> Result<(), StorageError>;

    /// Deletes a node with its items, affiliations and subscriptions; false if it didn't
    /// exist.
    async fn delete_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<bool, StorageError>;

    /// Stores an item as the node's newest (replacing one with the same id), then removes the
    /// oldest until the node holds at most `max_items` (at least 1 is kept: the one just
    /// published). LimitReached (nothing written) when the service would then hold more than
    /// `max_service_items` items. NotFound if there is no such node.
    async fn publish_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        item: &ItemRecord,
        max_items: usize,
        max_service_items: usize,
    ) -> Result<Published, StorageError>;

    /// Reads items. An unknown node has none (count 0).
    async fn get_items(
        &self,
        service: PubSubService<'_>,
        node: &str,
        selection: ItemSelection<'_>,
    ) -> Result<ItemPage, StorageError>;

    /// Removes one item; false if the node has no item with this id.
    async fn retract_item(
        &self,
        service: PubSubService<'_>,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageError>;

    /// Removes every item of a node; returns how many there were.
    async fn purge_node(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<usize, StorageError>;

    /// Sets (Some) or removes (None) a JID's affiliation with a node. NotFound if there is no
    /// such node.
    async fn set_affiliation(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError>;

    /// A node's affiliations `(jid, affiliation)`, sorted by JID.
    async fn affiliations(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<(String, String)>, StorageError>;

    /// The affiliations one JID holds on the nodes of a service: `(node, affiliation)`,
    /// sorted by node.
    async fn affiliations_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
    ) -> Result<Vec<(String, String)>, StorageError>;

    /// Inserts or replaces the subscription (`sub.jid`, `sub.subid`) on a node. LimitReached
    /// when it is new and `sub.jid` already holds `max_per_jid` subscriptions on the service.
    /// NotFound if there is no such node.
    async fn set_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        sub: &SubscriptionRecord,
        max_per_jid: usize,
    ) -> Result<(), StorageError>;

    /// Removes a JID's subscription with this subid, or all of the JID's subscriptions to
    /// the node when `subid` is None; returns how many were removed.
    async fn remove_subscription(
        &self,
        service: PubSubService<'_>,
        node: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<usize, StorageError>;

    /// A node's subscriptions, sorted by (jid, subid).
    async fn subscriptions(
        &self,
        service: PubSubService<'_>,
        node: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageError>;

    /// The subscriptions of one JID on a service: `(node, subscription)`, sorted by (node,
    /// subid). With `include_full`, a bare `jid` also matches the subscriptions of its full
    /// JIDs (`jid/...`).
    async fn subscriptions_of(
        &self,
        service: PubSubService<'_>,
        jid: &str,
        include_full: bool,
    ) -> Result<Vec<(String, SubscriptionRecord)>, StorageError>;
}
