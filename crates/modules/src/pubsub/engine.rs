//! The XEP-0060 protocol over one service (an account's PEP service or a PubSub domain): the
//! requests of §5–§8 in, the answer and the notifications out, the state in the
//! `PubSubStore`. PEP and the service domain differ only in what [`Service`] says: whose
//! nodes, who owns them, whose roster decides presence and roster access, and whether
//! notifications also go to those who announced interest through entity capabilities.

use super::access::{self, Affiliation, Requester, Subscribe};
use super::config::{
    ConfigError, Limits, NodeConfig, NS_META_DATA, NS_NODE_CONFIG, NS_PUBLISH_OPTIONS,
};
use super::errors::{self, NS_PUBSUB, NS_PUBSUB_EVENT, NS_PUBSUB_OWNER};
use super::{PublishedItem, RetractedItem, ServiceLimits};
use crate::budget::{Budget, Rate};
use crate::caps::CapsState;
use crate::form::{FormBuilder, Submitted};
use parking_lot::Mutex;
use rookery_core::{IqResult, Server};
use rookery_stanza::{
    random_id, BareJid, ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind,
};
use rookery_storage::{
    ItemRecord, ItemSelection, PubSubService, RosterItem, StorageError, SubscriptionRecord,
};
use rookery_xml::Element;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_DELAY: &str = "urn:xmpp:delay";
const NS_SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";
const NS_SUBSCRIBE_AUTHORIZATION: &str =
    "http://jabber.org/protocol/pubsub#subscribe_authorization";
/// The most items one retrieval returns without RSM (clients page beyond it).
const MAX_ITEMS_PER_PAGE: usize = 1000;
/// Longest node name and item id accepted.
const MAX_NAME_BYTES: usize = 1024;

/// What the service's modules keep between requests: the publish rate buckets.
#[derive(Default)]
pub struct Shared {
    budgets: Mutex<HashMap<String, Budget>>,
}

/// Whose nodes a request is about.
#[derive(Clone)]
pub enum Kind {
    /// The PEP service of an account (XEP-0163): the account owns every node.
    Pep { owner: BareJid },
    /// A PubSub service domain.
    Domain {
        jid: Jid,
        /// Service administrators: owners of every node.
        admins: Arc<Vec<BareJid>>,
        /// Only the administrators may create nodes.
        admins_create: bool,
    },
}

/// One service as a request sees it.
#[derive(Clone)]
pub struct Service {
    pub kind: Kind,
    pub limits: Arc<ServiceLimits>,
    pub caps: Option<Arc<CapsState>>,
    pub shared: Arc<Shared>,
    /// Hosts this server serves, so roster checks only look up local accounts.
    pub server: Arc<Server>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn internal(e: StorageError) -> StanzaError {
    match e {
        StorageError::LimitReached(what) => StanzaError::new(StanzaErrorCondition::NotAcceptable)
            .with_text(format!("limit reached: {what}")),
        StorageError::NotFound => StanzaError::new(StanzaErrorCondition::ItemNotFound),
        e => {
            tracing::error!(error = %e, "pubsub storage failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        }
    }
}

fn node_required() -> StanzaError {
    errors::with(StanzaErrorCondition::BadRequest, "nodeid-required")
}

fn no_node() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::ItemNotFound).with_text("no such node")
}

fn parse_bare(s: &str) -> Option<BareJid> {
    rookery_stanza::parse_jid(s).ok().map(|j| j.to_bare())
}

impl Service {
    pub fn key(&self) -> PubSubService<'_> {
        match &self.kind {
            Kind::Pep { owner } => PubSubService::Account {
                domain: owner.domain().as_str(),
                user: owner.node().map(|n| n.as_str()).unwrap_or(""),
            },
            Kind::Domain { jid, .. } => PubSubService::Domain(jid.as_str()),
        }
    }

    /// The address notifications come from.
    pub fn jid(&self) -> Jid {
        match &self.kind {
            Kind::Pep { owner } => Jid::from(owner.clone()),
            Kind::Domain { jid, .. } => jid.clone(),
        }
    }

    fn is_pep(&self) -> bool {
        matches!(self.kind, Kind::Pep { .. })
    }

    fn form_limits(&self) -> Limits {
        Limits {
            max_items: self.limits.max_items,
            max_item_bytes: self.limits.max_item_bytes,
        }
    }

    fn default_config(&self) -> NodeConfig {
        match self.kind {
            Kind::Pep { .. } => NodeConfig::pep(),
            Kind::Domain { .. } => NodeConfig::service(self.limits.default_max_items),
        }
    }

    fn config_of(&self, doc: &str) -> Result<NodeConfig, StanzaError> {
        NodeConfig::from_doc(doc).ok_or_else(|| {
            tracing::error!("unreadable pubsub node configuration");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })
    }

    /// The requester's affiliation with a node.
    async fn affiliation(&self, node: &str, who: &BareJid) -> Result<Affiliation, StanzaError> {
        match &self.kind {
            Kind::Pep { owner } if owner == who => return Ok(Affiliation::Owner),
            Kind::Domain { admins, .. } if admins.contains(who) => return Ok(Affiliation::Owner),
            _ => {}
        }
        let affs = self
            .server
            .storage()
            .pubsub
            .affiliations(self.key(), node)
            .await
            .map_err(internal)?;
        Ok(affs
            .iter()
            .find(|(j, _)| j == who.as_str())
            .and_then(|(_, a)| Affiliation::from_name(a))
            .unwrap_or(Affiliation::None))
    }

    /// The local account whose roster decides presence and roster access: the PEP owner, or
    /// the first owner of a service node that is an account of this server.
    async fn roster_owner(&self, node: &str) -> Option<BareJid> {
        match &self.kind {
            Kind::Pep { owner } => Some(owner.clone()),
            Kind::Domain { .. } => {
                let affs = self
                    .server
                    .storage()
                    .pubsub
                    .affiliations(self.key(), node)
                    .await
                    .ok()?;
                affs.iter()
                    .filter(|(_, a)| a == "owner")
                    .filter_map(|(j, _)| parse_bare(j))
                    .find(|j| j.node().is_some() && self.server.host(j.domain().as_str()).is_some())
            }
        }
    }

    /// The owner's whole roster, keyed by contact: one read for a decision about many.
    async fn roster(&self, node: &str) -> HashMap<String, RosterItem> {
        let Some(owner) = self.roster_owner(node).await else {
            return HashMap::new();
        };
        let Some(user) = owner.node() else {
            return HashMap::new();
        };
        match self
            .server
            .storage()
            .roster
            .roster(owner.domain().as_str(), user.as_str())
            .await
        {
            Ok(r) => r.items.into_iter().map(|i| (i.jid.clone(), i)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "roster read for pubsub access failed");
                HashMap::new()
            }
        }
    }

    async fn roster_item(&self, node: &str, who: &BareJid) -> Option<RosterItem> {
        let owner = self.roster_owner(node).await?;
        let user = owner.node()?;
        self.server
            .storage()
            .roster
            .roster_item(owner.domain().as_str(), user.as_str(), who.as_str())
            .await
            .ok()
            .flatten()
    }

    async fn is_subscribed(&self, node: &str, who: &Jid) -> Result<bool, StanzaError> {
        let subs = self
            .server
            .storage()
            .pubsub
            .subscriptions_of(self.key(), who.to_bare().as_str(), true)
            .await
            .map_err(internal)?;
        Ok(subs
            .iter()
            .any(|(n, s)| n == node && s.state == "subscribed"))
    }

    /// Everything one access decision needs about the requester.
    async fn requester(
        &self,
        node: &str,
        from: &Jid,
        config: &NodeConfig,
    ) -> Result<(Affiliation, Option<RosterItem>, bool), StanzaError> {
        let bare = from.to_bare();
        let affiliation = self.affiliation(node, &bare).await?;
        // Owners pass every check: no roster or subscription to read.
        if affiliation == Affiliation::Owner {
            return Ok((affiliation, None, false));
        }
        let roster = match config.access_model {
            super::config::AccessModel::Presence | super::config::AccessModel::Roster => {
                self.roster_item(node, &bare).await
            }
            _ => None,
        };
        let subscribed = self.is_subscribed(node, from).await?;
        Ok((affiliation, roster, subscribed))
    }

    /// Whether `from` may read the node (§6.5, and who gets its notifications): the access
    /// decision over what [`Self::requester`] looks up, refused with the XEP's error.
    async fn check_read(
        &self,
        node: &str,
        from: &Jid,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        let (affiliation, roster, subscribed) = self.requester(node, from, config).await?;
        let r = Requester {
            affiliation,
            roster: roster.as_ref(),
            subscribed,
        };
        access::may_read(config, &r).map_err(access::Denied::error)
    }

    async fn node(&self, node: &str) -> Result<Option<NodeConfig>, StanzaError> {
        match self
            .server
            .storage()
            .pubsub
            .get_node(self.key(), node)
            .await
            .map_err(internal)?
        {
            Some(rec) => Ok(Some(self.config_of(&rec.config)?)),
            None => Ok(None),
        }
    }

    // ---- requests --------------------------------------------------------------------

    /// Handles one IQ request addressed to the service (payload `<pubsub/>` in the pubsub or
    /// pubsub#owner namespace).
    pub async fn handle(&self, from: &Jid, iq_type: IqType, payload: &Element) -> IqResult {
        match payload.ns() {
            NS_PUBSUB => self.handle_pubsub(from, iq_type, payload).await,
            NS_PUBSUB_OWNER => self.handle_owner(from, iq_type, payload).await,
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    async fn handle_pubsub(&self, from: &Jid, iq_type: IqType, payload: &Element) -> IqResult {
        // `options`, `configure` and `publish-options` accompany another request (subscribe,
        // create, publish); alone, `options` is the request (§6.3: a subscription's options).
        let ours = || payload.children().filter(|c| c.ns() == NS_PUBSUB);
        let verb = ours()
            .find(|c| !matches!(c.name(), "options" | "configure" | "publish-options"))
            .or_else(|| ours().find(|c| c.name() == "options"));
        let Some(verb) = verb else {
            return Err(StanzaError::bad_request("no pubsub request"));
        };
        let rsm = payload.get_child("set", NS_RSM);
        match (iq_type, verb.name()) {
            (IqType::Set, "publish") => {
                self.publish(from, verb, payload.get_child("publish-options", NS_PUBSUB))
                    .await
            }
            (IqType::Set, "retract") => self.retract(from, verb).await,
            (IqType::Set, "create") => {
                self.create(from, verb, payload.get_child("configure", NS_PUBSUB))
                    .await
            }
            (IqType::Set, "subscribe") => {
                self.subscribe(from, verb, payload.get_child("options", NS_PUBSUB))
                    .await
            }
            (IqType::Set, "unsubscribe") => self.unsubscribe(from, verb).await,
            (IqType::Get, "items") => self.items(from, verb, rsm).await,
            (IqType::Get, "subscriptions") => self.own_subscriptions(from, verb).await,
            (IqType::Get, "affiliations") => self.own_affiliations(from, verb).await,
            (IqType::Get, "default") => Ok(Some(subscribe_options_payload(None, None, true))),
            (_, "options") => self.options(from, iq_type, verb).await,
            (_, name) => Err(errors::unsupported(name)),
        }
    }

    async fn handle_owner(&self, from: &Jid, iq_type: IqType, payload: &Element) -> IqResult {
        let Some(verb) = payload.children().find(|c| c.ns() == NS_PUBSUB_OWNER) else {
            return Err(StanzaError::bad_request("no pubsub#owner request"));
        };
        match (iq_type, verb.name()) {
            (IqType::Get, "configure") => self.get_configure(from, verb).await,
            (IqType::Set, "configure") => self.set_configure(from, verb).await,
            (IqType::Get, "default") => Ok(Some(
                Element::new("pubsub", NS_PUBSUB_OWNER).with_child(
                    Element::new("default", NS_PUBSUB_OWNER).with_child(
                        self.default_config()
                            .form("form", NS_NODE_CONFIG, &self.form_limits()),
                    ),
                ),
            )),
            (IqType::Set, "delete") => self.delete(from, verb).await,
            (IqType::Set, "purge") => self.purge(from, verb).await,
            (IqType::Get, "subscriptions") => self.node_subscriptions(from, verb).await,
            (IqType::Set, "subscriptions") => self.set_node_subscriptions(from, verb).await,
            (IqType::Get, "affiliations") => self.node_affiliations(from, verb).await,
            (IqType::Set, "affiliations") => self.set_node_affiliations(from, verb).await,
            (_, name) => Err(errors::unsupported(name)),
        }
    }

    fn node_attr<'e>(&self, verb: &'e Element) -> Result<&'e str, StanzaError> {
        match verb.attr("node") {
            Some(n) if !n.is_empty() && n.len() <= MAX_NAME_BYTES => Ok(n),
            Some(n) if n.len() > MAX_NAME_BYTES => {
                Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("node name too long"))
            }
            _ => Err(node_required()),
        }
    }

    /// The node's configuration for an owner operation: item-not-found, then forbidden.
    async fn owned_node(&self, from: &Jid, node: &str) -> Result<NodeConfig, StanzaError> {
        let config = self.node(node).await?.ok_or_else(no_node)?;
        if self.affiliation(node, &from.to_bare()).await? != Affiliation::Owner {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        }
        Ok(config)
    }

    fn may_create(&self, from: &Jid) -> bool {
        match &self.kind {
            Kind::Pep { owner } => from.to_bare() == *owner,
            Kind::Domain {
                admins,
                admins_create,
                ..
            } => {
                let bare = from.to_bare();
                admins.contains(&bare)
                    || (!admins_create
                        && bare.node().is_some()
                        && self.server.host(bare.domain().as_str()).is_some())
            }
        }
    }

    async fn create_node(
        &self,
        from: &Jid,
        node: &str,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        self.server
            .storage()
            .pubsub
            .create_node(
                self.key(),
                node,
                &config.to_doc(),
                from.to_bare().as_str(),
                self.limits.max_nodes,
            )
            .await
            .map_err(|e| match e {
                StorageError::AlreadyExists => {
                    StanzaError::new(StanzaErrorCondition::Conflict).with_text("the node exists")
                }
                StorageError::LimitReached(_) => {
                    errors::with(StanzaErrorCondition::NotAllowed, "max-nodes-exceeded")
                        .with_text("too many nodes")
                }
                e => internal(e),
            })
    }

    /// §8.1: create a node, instant (no name, a domain service makes one up) or named, with
    /// the default configuration or the submitted one (§8.1.3).
    async fn create(&self, from: &Jid, verb: &Element, configure: Option<&Element>) -> IqResult {
        if !self.may_create(from) {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        }
        let (node, instant) = match verb.attr("node") {
            Some(n) if !n.is_empty() => (self.node_attr(verb)?.to_owned(), false),
            _ if self.is_pep() => {
                return Err(errors::with(
                    StanzaErrorCondition::NotAcceptable,
                    "nodeid-required",
                ))
            }
            _ => (random_id(16), true),
        };
        let mut config = self.default_config();
        if let Some(form) = configure.and_then(Submitted::find) {
            check_form_type(&form, NS_NODE_CONFIG)?;
            config
                .apply_form(&form, &self.form_limits())
                .map_err(config_error)?;
        }
        self.create_node(from, &node, &config).await?;
        Ok(instant.then(|| {
            Element::new("pubsub", NS_PUBSUB)
                .with_child(Element::new("create", NS_PUBSUB).with_attr("node", node))
        }))
    }

    /// §7.1: publish, with auto-create (§7.1.4) and publish-options preconditions (§7.1.5).
    async fn publish(&self, from: &Jid, verb: &Element, options: Option<&Element>) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let mut items = verb
            .children()
            .filter(|c| c.name() == "item" && c.ns() == NS_PUBSUB);
        let item = items.next();
        if items.next().is_some() {
            return Err(StanzaError::bad_request("one item per publish request"));
        }
        let options = match options {
            Some(el) => {
                let form = Submitted::find(el)
                    .ok_or_else(|| StanzaError::bad_request("publish-options without a form"))?;
                check_form_type(&form, NS_PUBLISH_OPTIONS)?;
                Some(form)
            }
            None => None,
        };
        let limits = self.form_limits();
        // The node's configuration, or the one a node auto-created for this publication would
        // get: the node is only created once the publication is known to be acceptable, so a
        // refused one leaves nothing behind.
        let (config, create) = match self.node(&node).await? {
            Some(config) => {
                if let Some(form) = &options {
                    config.meets(form, &limits).map_err(|e| match e {
                        ConfigError::UnknownField(var) => {
                            errors::with(StanzaErrorCondition::Conflict, "precondition-not-met")
                                .with_text(format!("unknown publish option {var}"))
                        }
                        e => errors::with(StanzaErrorCondition::Conflict, "precondition-not-met")
                            .with_text(e.to_string()),
                    })?;
                }
                let (aff, roster, subscribed) = self.requester(&node, from, &config).await?;
                let r = Requester {
                    affiliation: aff,
                    roster: roster.as_ref(),
                    subscribed,
                };
                if !access::may_publish(&config, &r) {
                    return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
                }
                (config, false)
            }
            None => {
                if !self.may_create(from) {
                    return Err(if self.is_pep() {
                        StanzaError::new(StanzaErrorCondition::Forbidden)
                    } else {
                        no_node()
                    });
                }
                let config =
                    match &options {
                        Some(form) => self.default_config().with_options(form, &limits).map_err(
                            |e| match e {
                                ConfigError::UnknownField(var) => errors::with(
                                    StanzaErrorCondition::Conflict,
                                    "precondition-not-met",
                                )
                                .with_text(format!("unknown publish option {var}")),
                                e => config_error(e),
                            },
                        )?,
                        None => self.default_config(),
                    };
                (config, true)
            }
        };
        let (mut id, mut payload, mut serialised) = self.publication(&node, item, &config)?;
        self.take_budget(from)?;
        let config = if create {
            match self.create_node(from, &node, &config).await {
                Ok(()) => config,
                // Created meanwhile by a concurrent publish: use what is stored.
                Err(e) if e.condition == StanzaErrorCondition::Conflict => {
                    let stored = self.node(&node).await?.ok_or_else(no_node)?;
                    (id, payload, serialised) = self.publication(&node, item, &stored)?;
                    stored
                }
                Err(e) => return Err(e),
            }
        } else {
            config
        };
        let publisher = from.to_bare();
        let published_us = now_us();
        if config.persist_items {
            let record = ItemRecord {
                id: id.clone(),
                publisher: publisher.to_string(),
                payload: serialised,
                published_us,
            };
            self.server
                .storage()
                .pubsub
                .publish_item(
                    self.key(),
                    &node,
                    &record,
                    config.max_items.resolve(self.limits.max_items),
                    self.limits.max_service_items,
                )
                .await
                .map_err(|e| match e {
                    StorageError::LimitReached(_) => {
                        StanzaError::new(StanzaErrorCondition::NotAcceptable)
                            .with_app_specific(Element::new(
                                "quota-exceeded",
                                errors::NS_PUBSUB_ERRORS,
                            ))
                            .with_text("the service holds as many items as it may")
                    }
                    e => internal(e),
                })?;
        }
        if config.deliver_notifications {
            let mut item_el = Element::new("item", NS_PUBSUB_EVENT).with_attr("id", id.clone());
            if config.deliver_payloads {
                if let Some(p) = &payload {
                    item_el.push_child(p.clone());
                }
            }
            let event = Element::new("items", NS_PUBSUB_EVENT)
                .with_attr("node", node.clone())
                .with_child(item_el);
            let recipients = self.recipients(&node, &config).await;
            self.notify(&config, event, recipients, None).await;
        }
        if let Some(hook) = self.server.host(self.host_domain()) {
            if let Kind::Pep { owner } = &self.kind {
                hook.hooks()
                    .run(
                        &self.server,
                        PublishedItem {
                            owner: owner.clone(),
                            node: node.clone(),
                            id: id.clone(),
                            payload: payload.clone(),
                        },
                    )
                    .await;
            }
        }
        Ok(Some(
            Element::new("pubsub", NS_PUBSUB).with_child(
                Element::new("publish", NS_PUBSUB)
                    .with_attr("node", node)
                    .with_child(Element::new("item", NS_PUBSUB).with_attr("id", id)),
            ),
        ))
    }

    /// The item a publish request carries, checked against the node's configuration and the
    /// service's limits (§7.1.3): its id (made up when absent), its payload and the payload
    /// serialised.
    fn publication(
        &self,
        node: &str,
        item: Option<&Element>,
        config: &NodeConfig,
    ) -> Result<(String, Option<Element>, String), StanzaError> {
        let (id, payload) = match item {
            Some(item) => {
                let id = match item.attr("id") {
                    Some(id) if !id.is_empty() => {
                        if id.len() > MAX_NAME_BYTES {
                            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                                .with_text("item id too long"));
                        }
                        id.to_owned()
                    }
                    _ => random_id(20),
                };
                let mut payloads = item.children();
                let payload = payloads.next().cloned();
                if payloads.next().is_some() {
                    return Err(errors::with(
                        StanzaErrorCondition::BadRequest,
                        "invalid-payload",
                    ));
                }
                (id, payload)
            }
            None if config.persist_items => {
                return Err(errors::with(
                    StanzaErrorCondition::BadRequest,
                    "item-required",
                ))
            }
            None => (random_id(20), None),
        };
        if payload.is_none() && config.deliver_payloads && config.persist_items {
            return Err(errors::with(
                StanzaErrorCondition::BadRequest,
                "payload-required",
            ));
        }
        let serialised = payload.as_ref().map(|p| p.to_string()).unwrap_or_default();
        if serialised.len() > self.limits.item_limit(node) {
            return Err(errors::with(
                StanzaErrorCondition::NotAcceptable,
                "payload-too-big",
            ));
        }
        Ok((id, payload, serialised))
    }

    fn host_domain(&self) -> &str {
        match &self.kind {
            Kind::Pep { owner } => owner.domain().as_str(),
            Kind::Domain { jid, .. } => jid.domain().as_str(),
        }
    }

    fn take_budget(&self, from: &Jid) -> Result<(), StanzaError> {
        let rate = Rate {
            burst: self.limits.publish_burst,
            interval_ms: self.limits.publish_interval_ms,
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let key = from.to_bare().to_string();
        let mut budgets = self.shared.budgets.lock();
        // Full buckets carry no information: drop them so the table follows active publishers.
        if budgets.len() > 10_000 {
            budgets.retain(|_, b| !b.is_full(rate, now_ms));
        }
        let ok = budgets
            .entry(key)
            .or_insert_with(|| Budget::full(rate, now_ms))
            .take(rate, now_ms);
        if ok {
            Ok(())
        } else {
            Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                .with_text("publishing too fast"))
        }
    }

    /// §7.2: delete an item, notifying when `notify` is asked or configured.
    async fn retract(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let Some(id) = verb
            .children()
            .find(|c| c.name() == "item")
            .and_then(|i| i.attr("id"))
            .filter(|id| !id.is_empty())
        else {
            return Err(errors::with(
                StanzaErrorCondition::BadRequest,
                "item-required",
            ));
        };
        let config = self.node(&node).await?.ok_or_else(no_node)?;
        let (aff, roster, subscribed) = self.requester(&node, from, &config).await?;
        if !access::may_retract(&Requester {
            affiliation: aff,
            roster: roster.as_ref(),
            subscribed,
        }) {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        }
        let removed = self
            .server
            .storage()
            .pubsub
            .retract_item(self.key(), &node, id)
            .await
            .map_err(internal)?;
        if !removed {
            return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound));
        }
        let notify = matches!(verb.attr("notify"), Some("1" | "true")) || config.notify_retract;
        if notify && config.deliver_notifications {
            let event = Element::new("items", NS_PUBSUB_EVENT)
                .with_attr("node", node.clone())
                .with_child(Element::new("retract", NS_PUBSUB_EVENT).with_attr("id", id));
            let recipients = self.recipients(&node, &config).await;
            self.notify(&config, event, recipients, None).await;
        }
        if let (Some(host), Kind::Pep { owner }) =
            (self.server.host(self.host_domain()), &self.kind)
        {
            host.hooks()
                .run(
                    &self.server,
                    RetractedItem {
                        owner: owner.clone(),
                        node: node.clone(),
                        id: id.to_owned(),
                    },
                )
                .await;
        }
        Ok(None)
    }

    /// §6.5: retrieve items (all, latest N, by id, or a page with RSM).
    async fn items(&self, from: &Jid, verb: &Element, rsm: Option<&Element>) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let config = self.node(&node).await?.ok_or_else(no_node)?;
        self.check_read(&node, from, &config).await?;
        let ids: Vec<String> = verb
            .children()
            .filter(|c| c.name() == "item")
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect();
        let store = &self.server.storage().pubsub;
        let mut out = Element::new("items", NS_PUBSUB).with_attr("node", node.clone());
        let mut set = None;
        let page = if !ids.is_empty() {
            store
                .get_items(self.key(), &node, ItemSelection::Ids(&ids))
                .await
                .map_err(internal)?
        } else {
            let max_attr = match verb.attr("max_items") {
                Some(m) => Some(
                    m.parse::<usize>()
                        .map_err(|_| StanzaError::bad_request("max_items is not a number"))?,
                ),
                None => None,
            };
            let (after, before, rsm_max) =
                match rsm {
                    Some(set) => (
                        set.get_child("after", NS_RSM).map(Element::text),
                        set.get_child("before", NS_RSM).map(Element::text),
                        match set.get_child("max", NS_RSM).map(Element::text) {
                            Some(m) => Some(m.trim().parse::<usize>().map_err(|_| {
                                StanzaError::bad_request("RSM max is not a number")
                            })?),
                            None => None,
                        },
                    ),
                    None => (None, None, None),
                };
            let max = rsm_max
                .or(max_attr)
                .unwrap_or(MAX_ITEMS_PER_PAGE)
                .min(MAX_ITEMS_PER_PAGE);
            let page = store
                .get_items(
                    self.key(),
                    &node,
                    match before.as_deref() {
                        // `<before/>` empty asks for the last page (XEP-0059 §2.5).
                        Some("") if after.is_none() => ItemSelection::Oldest { max },
                        before => ItemSelection::Page {
                            after: after.as_deref(),
                            before,
                            max,
                        },
                    },
                )
                .await
                .map_err(|e| match e {
                    StorageError::NotFound => StanzaError::new(StanzaErrorCondition::ItemNotFound)
                        .with_text("no item with that id to page from"),
                    e => internal(e),
                })?;
            if rsm.is_some() || (max_attr.is_none() && page.count > page.items.len()) {
                let mut s = Element::new("set", NS_RSM);
                if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
                    s.push_child(
                        Element::new("first", NS_RSM)
                            .with_attr("index", page.first_index.to_string())
                            .with_text(first.id.clone()),
                    );
                    s.push_child(Element::new("last", NS_RSM).with_text(last.id.clone()));
                }
                s.push_child(Element::new("count", NS_RSM).with_text(page.count.to_string()));
                set = Some(s);
            }
            page
        };
        for item in &page.items {
            out.push_child(item_element(NS_PUBSUB, item));
        }
        let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(out);
        if let Some(s) = set {
            pubsub.push_child(s);
        }
        Ok(Some(pubsub))
    }

    /// §6.1: subscribe, with options (§6.3.7) and approval on authorize nodes (§6.1.5).
    async fn subscribe(&self, from: &Jid, verb: &Element, options: Option<&Element>) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let jid = verb
            .attr("jid")
            .and_then(|j| rookery_stanza::parse_jid(j).ok())
            .ok_or_else(|| errors::with(StanzaErrorCondition::BadRequest, "jid-required"))?;
        if jid.to_bare() != from.to_bare() {
            return Err(errors::with(
                StanzaErrorCondition::BadRequest,
                "invalid-jid",
            ));
        }
        let config = self.node(&node).await?.ok_or_else(no_node)?;
        if !config.subscribe {
            return Err(errors::unsupported("subscribe"));
        }
        let (aff, roster, subscribed) = self.requester(&node, &jid, &config).await?;
        let outcome = access::may_subscribe(
            &config,
            &Requester {
                affiliation: aff,
                roster: roster.as_ref(),
                subscribed,
            },
        )
        .map_err(access::Denied::error)?;
        let deliver = match options.and_then(Submitted::find) {
            Some(form) => {
                check_form_type(&form, NS_SUBSCRIBE_OPTIONS).map_err(|_| {
                    errors::with(StanzaErrorCondition::BadRequest, "invalid-options")
                })?;
                read_subscribe_options(&form)?
            }
            None => true,
        };
        let store = &self.server.storage().pubsub;
        // One subscription per JID and node: subscribing again answers the one that exists.
        let existing = store
            .subscriptions(self.key(), &node)
            .await
            .map_err(internal)?;
        let prior = existing.iter().find(|s| s.jid == jid.as_str());
        // §6.1.3.7: a request waiting for the owner is not made again (nor the owner asked
        // again); an approved subscription stays approved.
        let outcome = match prior.map(|p| p.state.as_str()) {
            Some("pending") => {
                return Err(errors::with(
                    StanzaErrorCondition::NotAuthorized,
                    "pending-subscription",
                ))
            }
            Some("subscribed") => Subscribe::Subscribed,
            _ => outcome,
        };
        let subid = prior
            .map(|s| s.subid.clone())
            .unwrap_or_else(|| random_id(16));
        let state = match outcome {
            Subscribe::Subscribed => "subscribed",
            Subscribe::Pending => "pending",
        };
        let record = SubscriptionRecord {
            jid: jid.to_string(),
            subid: subid.clone(),
            state: state.to_owned(),
            options: if deliver {
                String::new()
            } else {
                "nodeliver".to_owned()
            },
        };
        store
            .set_subscription(self.key(), &node, &record, self.limits.max_subscriptions)
            .await
            .map_err(|e| match e {
                StorageError::LimitReached(_) => {
                    // §6.1.3.9.
                    errors::with(
                        StanzaErrorCondition::PolicyViolation,
                        "too-many-subscriptions",
                    )
                    .with_type(ErrorType::Wait)
                }
                e => internal(e),
            })?;
        if outcome == Subscribe::Pending {
            self.ask_approval(&node, &jid).await;
        } else if config.send_last_published_item != super::config::SendLast::Never && deliver {
            // §6.1.7: the last item follows the subscription's result.
            let this = self.clone();
            let (node, to) = (node.clone(), jid.clone());
            tokio::spawn(async move {
                this.send_last_items(&node, &config, &to).await;
            });
        }
        Ok(Some(
            Element::new("pubsub", NS_PUBSUB).with_child(
                Element::new("subscription", NS_PUBSUB)
                    .with_attr("node", node)
                    .with_attr("jid", jid.to_string())
                    .with_attr("subid", subid)
                    .with_attr("subscription", state),
            ),
        ))
    }

    /// §8.6: the owners get a request to approve, as a form in a message.
    async fn ask_approval(&self, node: &str, jid: &Jid) {
        let affs = self
            .server
            .storage()
            .pubsub
            .affiliations(self.key(), node)
            .await
            .unwrap_or_default();
        let owners: Vec<Jid> = match &self.kind {
            Kind::Pep { owner } => vec![Jid::from(owner.clone())],
            Kind::Domain { .. } => affs
                .iter()
                .filter(|(_, a)| a == "owner")
                .filter_map(|(j, _)| rookery_stanza::parse_jid(j).ok())
                .collect(),
        };
        let form = FormBuilder::new("form", NS_SUBSCRIBE_AUTHORIZATION)
            .title("PubSub subscriber request")
            .field("pubsub#node", Some("text-single"), Some("Node ID"), &[node])
            .field(
                "pubsub#subscriber_jid",
                Some("jid-single"),
                Some("Subscriber Address"),
                &[jid.as_str()],
            )
            .boolean(
                "pubsub#allow",
                "Allow this JID to subscribe to this pubsub node?",
                false,
            )
            .build();
        for owner in owners {
            let msg = Element::new("message", "jabber:client")
                .with_attr("from", self.jid().to_string())
                .with_attr("to", owner.to_string())
                .with_attr("id", random_id(12))
                .with_child(form.clone());
            self.server.route(msg).await;
        }
    }

    /// §6.2: unsubscribe.
    async fn unsubscribe(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let jid = verb
            .attr("jid")
            .and_then(|j| rookery_stanza::parse_jid(j).ok())
            .ok_or_else(|| errors::with(StanzaErrorCondition::BadRequest, "jid-required"))?;
        if self.node(&node).await?.is_none() {
            return Err(no_node());
        }
        let owner = self.affiliation(&node, &from.to_bare()).await? == Affiliation::Owner;
        if jid.to_bare() != from.to_bare() && !owner {
            return Err(errors::with(
                StanzaErrorCondition::BadRequest,
                "invalid-jid",
            ));
        }
        let subid = verb.attr("subid");
        let removed = self
            .server
            .storage()
            .pubsub
            .remove_subscription(self.key(), &node, jid.as_str(), subid)
            .await
            .map_err(internal)?;
        if removed == 0 {
            return Err(if subid.is_some() {
                errors::with(StanzaErrorCondition::NotAcceptable, "invalid-subid")
            } else {
                // §6.2.3.2.
                errors::with(StanzaErrorCondition::UnexpectedRequest, "not-subscribed")
                    .with_type(ErrorType::Cancel)
            });
        }
        Ok(None)
    }

    /// §6.3: a subscription's options (delivery on or off).
    async fn options(&self, from: &Jid, iq_type: IqType, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let jid = verb
            .attr("jid")
            .and_then(|j| rookery_stanza::parse_jid(j).ok())
            .ok_or_else(|| errors::with(StanzaErrorCondition::BadRequest, "jid-required"))?;
        if jid.to_bare() != from.to_bare() {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        }
        if self.node(&node).await?.is_none() {
            return Err(no_node());
        }
        let store = &self.server.storage().pubsub;
        let subs = store
            .subscriptions(self.key(), &node)
            .await
            .map_err(internal)?;
        let Some(mut sub) = subs
            .into_iter()
            .find(|s| s.jid == jid.as_str() && verb.attr("subid").is_none_or(|id| id == s.subid))
        else {
            return Err(
                errors::with(StanzaErrorCondition::UnexpectedRequest, "not-subscribed")
                    .with_type(ErrorType::Modify),
            );
        };
        match iq_type {
            IqType::Get => Ok(Some(subscribe_options_payload(
                Some(&node),
                Some(&jid),
                sub.options != "nodeliver",
            ))),
            _ => {
                let form = Submitted::find(verb).ok_or_else(|| {
                    errors::with(StanzaErrorCondition::BadRequest, "invalid-options")
                })?;
                check_form_type(&form, NS_SUBSCRIBE_OPTIONS).map_err(|_| {
                    errors::with(StanzaErrorCondition::BadRequest, "invalid-options")
                })?;
                let deliver = read_subscribe_options(&form)?;
                sub.options = if deliver {
                    String::new()
                } else {
                    "nodeliver".to_owned()
                };
                store
                    .set_subscription(self.key(), &node, &sub, self.limits.max_subscriptions)
                    .await
                    .map_err(internal)?;
                Ok(None)
            }
        }
    }

    /// §5.6: the requester's own subscriptions (to one node or all).
    async fn own_subscriptions(&self, from: &Jid, verb: &Element) -> IqResult {
        let subs = self
            .server
            .storage()
            .pubsub
            .subscriptions_of(self.key(), from.to_bare().as_str(), true)
            .await
            .map_err(internal)?;
        let only = verb.attr("node");
        let mut out = Element::new("subscriptions", NS_PUBSUB);
        if let Some(n) = only {
            out.set_attr("node", n);
        }
        for (node, s) in subs.iter().filter(|(n, _)| only.is_none_or(|o| o == n)) {
            out.push_child(
                Element::new("subscription", NS_PUBSUB)
                    .with_attr("node", node.clone())
                    .with_attr("jid", s.jid.clone())
                    .with_attr("subid", s.subid.clone())
                    .with_attr("subscription", s.state.clone()),
            );
        }
        Ok(Some(Element::new("pubsub", NS_PUBSUB).with_child(out)))
    }

    /// §5.7: the requester's own affiliations.
    async fn own_affiliations(&self, from: &Jid, verb: &Element) -> IqResult {
        let store = &self.server.storage().pubsub;
        let only = verb.attr("node");
        let mut out = Element::new("affiliations", NS_PUBSUB);
        if let Some(n) = only {
            out.set_attr("node", n);
        }
        let own: Vec<(String, String)> = match &self.kind {
            // Every node of a PEP service is its owner's.
            Kind::Pep { owner } if *owner == from.to_bare() => store
                .list_nodes(self.key())
                .await
                .map_err(internal)?
                .into_iter()
                .map(|n| (n.node, "owner".to_owned()))
                .collect(),
            _ => store
                .affiliations_of(self.key(), from.to_bare().as_str())
                .await
                .map_err(internal)?,
        };
        for (node, aff) in own.iter().filter(|(n, _)| only.is_none_or(|o| o == n)) {
            out.push_child(
                Element::new("affiliation", NS_PUBSUB)
                    .with_attr("node", node.clone())
                    .with_attr("affiliation", aff.clone()),
            );
        }
        Ok(Some(Element::new("pubsub", NS_PUBSUB).with_child(out)))
    }

    // ---- owner use cases (§8) ---------------------------------------------------------

    async fn get_configure(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let config = self.owned_node(from, &node).await?;
        Ok(Some(
            Element::new("pubsub", NS_PUBSUB_OWNER).with_child(
                Element::new("configure", NS_PUBSUB_OWNER)
                    .with_attr("node", node)
                    .with_child(config.form("form", NS_NODE_CONFIG, &self.form_limits())),
            ),
        ))
    }

    async fn set_configure(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let mut config = self.owned_node(from, &node).await?;
        let form = Submitted::find(verb)
            .ok_or_else(|| StanzaError::bad_request("no configuration form"))?;
        if form.kind() == "cancel" {
            return Ok(None);
        }
        check_form_type(&form, NS_NODE_CONFIG)?;
        config
            .apply_form(&form, &self.form_limits())
            .map_err(config_error)?;
        self.server
            .storage()
            .pubsub
            .set_node_config(self.key(), &node, &config.to_doc())
            .await
            .map_err(internal)?;
        // Fewer items allowed now: trim at once rather than at the next publication, in
        // bounded batches (the oldest beyond the `keep` newest).
        let keep = config.max_items.resolve(self.limits.max_items);
        let store = &self.server.storage().pubsub;
        loop {
            let page = store
                .get_items(
                    self.key(),
                    &node,
                    ItemSelection::Page {
                        after: None,
                        before: None,
                        max: keep.saturating_add(500),
                    },
                )
                .await
                .map_err(internal)?;
            let extra: Vec<String> = page.items.iter().skip(keep).map(|i| i.id.clone()).collect();
            if extra.is_empty() {
                break;
            }
            for id in extra {
                store
                    .retract_item(self.key(), &node, &id)
                    .await
                    .map_err(internal)?;
            }
        }
        if config.notify_config && config.deliver_notifications {
            let mut event =
                Element::new("configuration", NS_PUBSUB_EVENT).with_attr("node", node.clone());
            if config.deliver_payloads {
                event.push_child(config.form("result", NS_NODE_CONFIG, &self.form_limits()));
            }
            let recipients = self.recipients(&node, &config).await;
            self.notify(&config, event, recipients, None).await;
        }
        Ok(None)
    }

    /// §8.4: delete a node, telling its subscribers (with the redirect, if any).
    async fn delete(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let config = self.owned_node(from, &node).await?;
        // The recipients before the subscriptions go with the node.
        let recipients = if config.notify_delete {
            self.recipients(&node, &config).await
        } else {
            Vec::new()
        };
        self.server
            .storage()
            .pubsub
            .delete_node(self.key(), &node)
            .await
            .map_err(internal)?;
        if config.notify_delete {
            let mut event = Element::new("delete", NS_PUBSUB_EVENT).with_attr("node", node.clone());
            if let Some(uri) = verb
                .get_child("redirect", NS_PUBSUB_OWNER)
                .and_then(|r| r.attr("uri"))
            {
                event.push_child(Element::new("redirect", NS_PUBSUB_EVENT).with_attr("uri", uri));
            }
            self.notify(&config, event, recipients, None).await;
        }
        Ok(None)
    }

    /// §8.5: purge every item.
    async fn purge(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let config = self.owned_node(from, &node).await?;
        if !config.persist_items {
            return Err(errors::unsupported("persistent-items"));
        }
        self.server
            .storage()
            .pubsub
            .purge_node(self.key(), &node)
            .await
            .map_err(internal)?;
        if config.notify_retract && config.deliver_notifications {
            let event = Element::new("purge", NS_PUBSUB_EVENT).with_attr("node", node.clone());
            let recipients = self.recipients(&node, &config).await;
            self.notify(&config, event, recipients, None).await;
        }
        Ok(None)
    }

    /// §8.8.1: the node's subscriptions.
    async fn node_subscriptions(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        self.owned_node(from, &node).await?;
        let subs = self
            .server
            .storage()
            .pubsub
            .subscriptions(self.key(), &node)
            .await
            .map_err(internal)?;
        let mut out = Element::new("subscriptions", NS_PUBSUB_OWNER).with_attr("node", node);
        for s in subs {
            out.push_child(
                Element::new("subscription", NS_PUBSUB_OWNER)
                    .with_attr("jid", s.jid)
                    .with_attr("subscription", s.state)
                    .with_attr("subid", s.subid),
            );
        }
        Ok(Some(
            Element::new("pubsub", NS_PUBSUB_OWNER).with_child(out),
        ))
    }

    /// §8.8.2: change subscriptions (`none` removes, `subscribed` approves a pending one).
    async fn set_node_subscriptions(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        let config = self.owned_node(from, &node).await?;
        let store = &self.server.storage().pubsub;
        let existing = store
            .subscriptions(self.key(), &node)
            .await
            .map_err(internal)?;
        // Checked in full first: a refused change changes nothing.
        let mut changes = Vec::new();
        for entry in verb.children().filter(|c| c.name() == "subscription") {
            let jid = entry
                .attr("jid")
                .and_then(|j| rookery_stanza::parse_jid(j).ok())
                .ok_or_else(|| errors::with(StanzaErrorCondition::BadRequest, "jid-required"))?;
            // §8.8.2.1: an entry without a state leaves that subscription as it is.
            let Some(state) = entry.attr("subscription") else {
                continue;
            };
            if !matches!(state, "none" | "subscribed" | "pending" | "unconfigured") {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("unknown subscription state"));
            }
            changes.push((
                jid,
                state.to_owned(),
                entry.attr("subid").map(str::to_owned),
            ));
        }
        for (jid, state, subid) in changes {
            if state == "none" {
                store
                    .remove_subscription(self.key(), &node, jid.as_str(), subid.as_deref())
                    .await
                    .map_err(internal)?;
                continue;
            }
            let prior = existing.iter().find(|s| s.jid == jid.as_str());
            let record = SubscriptionRecord {
                jid: jid.to_string(),
                subid: subid
                    .or_else(|| prior.map(|p| p.subid.clone()))
                    .unwrap_or_else(|| random_id(16)),
                state: state.clone(),
                options: prior.map(|p| p.options.clone()).unwrap_or_default(),
            };
            store
                .set_subscription(self.key(), &node, &record, self.limits.max_subscriptions)
                .await
                .map_err(internal)?;
            // §8.8.4: the entity hears of its new state.
            let note = Element::new("subscription", NS_PUBSUB_EVENT)
                .with_attr("node", node.clone())
                .with_attr("jid", jid.to_string())
                .with_attr("subscription", state.clone());
            self.notify(&config, note, vec![jid.clone()], None).await;
            if state == "subscribed" && prior.is_some_and(|p| p.state == "pending") {
                self.send_last_items(&node, &config, &jid).await;
            }
        }
        Ok(None)
    }

    /// §8.9.1: the node's affiliations.
    async fn node_affiliations(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        self.owned_node(from, &node).await?;
        let mut out = Element::new("affiliations", NS_PUBSUB_OWNER).with_attr("node", node.clone());
        let affs = self
            .server
            .storage()
            .pubsub
            .affiliations(self.key(), &node)
            .await
            .map_err(internal)?;
        if let Kind::Pep { owner } = &self.kind {
            if !affs.iter().any(|(j, _)| j == owner.as_str()) {
                out.push_child(
                    Element::new("affiliation", NS_PUBSUB_OWNER)
                        .with_attr("jid", owner.to_string())
                        .with_attr("affiliation", "owner"),
                );
            }
        }
        for (jid, aff) in affs {
            out.push_child(
                Element::new("affiliation", NS_PUBSUB_OWNER)
                    .with_attr("jid", jid)
                    .with_attr("affiliation", aff),
            );
        }
        Ok(Some(
            Element::new("pubsub", NS_PUBSUB_OWNER).with_child(out),
        ))
    }

    /// §8.9.2: change affiliations; the node keeps at least one owner (§8.9.2.4).
    async fn set_node_affiliations(&self, from: &Jid, verb: &Element) -> IqResult {
        let node = self.node_attr(verb)?.to_owned();
        self.owned_node(from, &node).await?;
        let store = &self.server.storage().pubsub;
        let mut affs: HashMap<String, String> = store
            .affiliations(self.key(), &node)
            .await
            .map_err(internal)?
            .into_iter()
            .collect();
        let mut changes = Vec::new();
        for entry in verb.children().filter(|c| c.name() == "affiliation") {
            let jid = entry
                .attr("jid")
                .and_then(parse_bare)
                .ok_or_else(|| errors::with(StanzaErrorCondition::BadRequest, "jid-required"))?;
            // §8.9.2.1: an entry without an affiliation leaves that affiliation as it is.
            let Some(name) = entry.attr("affiliation") else {
                continue;
            };
            let aff = Affiliation::from_name(name).ok_or_else(|| {
                StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("unknown affiliation")
            })?;
            if let Kind::Pep { owner } = &self.kind {
                if jid == *owner || aff == Affiliation::Owner {
                    return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                        .with_text("a PEP node has one owner, its account"));
                }
            }
            if aff == Affiliation::None {
                affs.remove(jid.as_str());
            } else {
                affs.insert(jid.to_string(), aff.as_str().to_owned());
            }
            changes.push((jid, aff));
        }
        if !self.is_pep() && !affs.values().any(|a| a == "owner") {
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("the node would have no owner"));
        }
        for (jid, aff) in changes {
            let value = (aff != Affiliation::None).then(|| aff.as_str());
            store
                .set_affiliation(self.key(), &node, jid.as_str(), value)
                .await
                .map_err(internal)?;
            // An outcast loses its subscriptions (§4.1).
            if aff == Affiliation::Outcast {
                let _ = store
                    .remove_subscription(self.key(), &node, jid.as_str(), None)
                    .await;
            }
        }
        Ok(None)
    }

    // ---- notifications ------------------------------------------------------------------

    /// Who gets a node's notifications (§12.2, XEP-0163 §4.3): approved subscribers that want
    /// delivery and still pass the access model, and — on PEP — the owner's resources and
    /// the contacts whose capabilities ask for `<node>+notify`, as the access model allows.
    pub async fn recipients(&self, node: &str, config: &NodeConfig) -> Vec<Jid> {
        let store = &self.server.storage().pubsub;
        let subs = store
            .subscriptions(self.key(), node)
            .await
            .unwrap_or_default();
        let affs: HashMap<String, String> = store
            .affiliations(self.key(), node)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let needs_roster = matches!(
            config.access_model,
            super::config::AccessModel::Presence | super::config::AccessModel::Roster
        );
        let roster = if needs_roster {
            self.roster(node).await
        } else {
            HashMap::new()
        };
        let subscribed: HashSet<String> = subs
            .iter()
            .filter(|s| s.state == "subscribed")
            .map(|s| s.jid.clone())
            .collect();
        let allowed = |bare: &BareJid, subscribed_now: bool| -> bool {
            let affiliation = match &self.kind {
                Kind::Pep { owner } if owner == bare => Affiliation::Owner,
                Kind::Domain { admins, .. } if admins.contains(bare) => Affiliation::Owner,
                _ => affs
                    .get(bare.as_str())
                    .and_then(|a| Affiliation::from_name(a))
                    .unwrap_or(Affiliation::None),
            };
            let r = Requester {
                affiliation,
                roster: roster.get(bare.as_str()),
                subscribed: subscribed_now,
            };
            access::may_read(config, &r).is_ok()
        };
        let mut out = Vec::new();
        let mut covered: HashSet<String> = HashSet::new();
        for s in subs
            .iter()
            .filter(|s| s.state == "subscribed" && s.options != "nodeliver")
        {
            let Ok(jid) = rookery_stanza::parse_jid(&s.jid) else {
                continue;
            };
            if !allowed(&jid.to_bare(), true) {
                continue;
            }
            if covered.insert(s.jid.clone()) {
                if jid.resource().is_none() {
                    covered.insert(format!("{}/", s.jid));
                }
                out.push(jid);
            }
        }
        if let (Kind::Pep { owner }, Some(caps)) = (&self.kind, &self.caps) {
            let feature = format!("{node}+notify");
            for jid in caps.interested(owner, &feature) {
                let bare = jid.to_bare();
                // Already reached through a subscription of its bare JID or itself.
                if covered.contains(jid.as_str()) || covered.contains(&format!("{bare}/")) {
                    continue;
                }
                if allowed(&bare, subscribed.contains(bare.as_str())) {
                    covered.insert(jid.to_string());
                    out.push(jid);
                }
            }
        }
        out
    }

    /// Sends one event to every recipient: one element, readdressed to each (serialised once
    /// per wire form). `delay` stamps a last-published item (XEP-0203).
    pub async fn notify(
        &self,
        config: &NodeConfig,
        event: Element,
        recipients: Vec<Jid>,
        delay: Option<i64>,
    ) {
        if recipients.is_empty() {
            return;
        }
        let from = self.jid();
        let mut message = Element::new("message", "jabber:client")
            .with_attr("from", from.to_string())
            .with_attr("id", random_id(12));
        if config.headline {
            message.set_attr("type", "headline");
        }
        message.push_child(Element::new("event", NS_PUBSUB_EVENT).with_child(event));
        if let Some(us) = delay {
            message.push_child(
                Element::new("delay", NS_DELAY)
                    .with_attr("from", from.to_string())
                    .with_attr("stamp", stamp(us)),
            );
        }
        let stanza = Stanza::from_parts(StanzaKind::Message, message, None, Some(from));
        for to in recipients {
            // §12.4: events are not for offline storage. A headline is never stored; a
            // `normal` one to a local account with no session would be, so it is not sent.
            if !config.headline
                && to.resource().is_none()
                && self.server.host(to.domain().as_str()).is_some()
                && !self.server.sessions().is_online(&to.to_bare())
            {
                continue;
            }
            self.server.route_stanza(stanza.readdressed(to)).await;
        }
    }

    /// The last published item(s) of a node to one entity (§6.1.7, XEP-0163 §4.3.2), if it
    /// may read them.
    pub async fn send_last_items(&self, node: &str, config: &NodeConfig, to: &Jid) {
        if !config.persist_items || !config.deliver_notifications {
            return;
        }
        let page = match self
            .server
            .storage()
            .pubsub
            .get_items(
                self.key(),
                node,
                ItemSelection::Page {
                    after: None,
                    before: None,
                    max: 1,
                },
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the last pubsub item failed");
                return;
            }
        };
        let Some(item) = page.items.into_iter().next() else {
            return;
        };
        let mut el = Element::new("item", NS_PUBSUB_EVENT).with_attr("id", item.id.clone());
        if config.deliver_payloads && !item.payload.is_empty() {
            if let Ok(p) = rookery_xml::parse_element(&item.payload) {
                el.push_child(p);
            }
        }
        let event = Element::new("items", NS_PUBSUB_EVENT)
            .with_attr("node", node)
            .with_child(el);
        self.notify(config, event, vec![to.clone()], Some(item.published_us))
            .await;
    }

    /// Every node's last item that `contact` asked for through its capabilities (XEP-0163
    /// §4.3.2: on presence from a contact with `+notify`), as each node's access model allows.
    pub async fn send_last_on_presence(&self, contact: &Jid, wants: impl Fn(&str) -> bool) {
        let nodes = match self.server.storage().pubsub.list_nodes(self.key()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "listing PEP nodes failed");
                return;
            }
        };
        for rec in nodes {
            if !wants(&rec.node) {
                continue;
            }
            let Some(config) = NodeConfig::from_doc(&rec.config) else {
                continue;
            };
            if config.send_last_published_item != super::config::SendLast::OnSubAndPresence {
                continue;
            }
            if self.check_read(&rec.node, contact, &config).await.is_ok() {
                self.send_last_items(&rec.node, &config, contact).await;
            }
        }
    }

    /// disco#items of the service (§5.2): the nodes the requester may see.
    pub async fn disco_nodes(&self, from: &Jid) -> Vec<(String, String)> {
        let nodes = self
            .server
            .storage()
            .pubsub
            .list_nodes(self.key())
            .await
            .unwrap_or_default();
        let mut out = Vec::new();
        for rec in nodes {
            let Some(config) = NodeConfig::from_doc(&rec.config) else {
                continue;
            };
            if self.check_read(&rec.node, from, &config).await.is_ok() {
                out.push((rec.node, config.title));
            }
        }
        out
    }

    /// disco#info of one node (§5.3, §5.4): its identity and meta-data, for whoever may
    /// read it; `None` for an unknown node or one the requester may not see.
    pub async fn disco_node_info(
        &self,
        from: &Jid,
        node: &str,
    ) -> Result<Option<Vec<Element>>, StanzaError> {
        let Some(config) = self.node(node).await? else {
            return Ok(None);
        };
        self.check_read(node, from, &config).await?;
        let ns = "http://jabber.org/protocol/disco#info";
        Ok(Some(vec![
            Element::new("identity", ns)
                .with_attr("category", "pubsub")
                .with_attr("type", "leaf"),
            Element::new("feature", ns).with_attr("var", NS_PUBSUB),
            config.form("result", NS_META_DATA, &self.form_limits()),
        ]))
    }

    /// disco#items of one node (§5.5): its item ids, for whoever may read it.
    pub async fn disco_node_items(
        &self,
        from: &Jid,
        node: &str,
    ) -> Result<Option<Vec<String>>, StanzaError> {
        let Some(config) = self.node(node).await? else {
            return Ok(None);
        };
        self.check_read(node, from, &config).await?;
        let page = self
            .server
            .storage()
            .pubsub
            .get_items(
                self.key(),
                node,
                ItemSelection::Page {
                    after: None,
                    before: None,
                    max: MAX_ITEMS_PER_PAGE,
                },
            )
            .await
            .map_err(internal)?;
        Ok(Some(page.items.into_iter().map(|i| i.id).collect()))
    }
}

fn stamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

fn item_element(ns: &str, item: &ItemRecord) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", item.id.clone());
    if !item.payload.is_empty() {
        match rookery_xml::parse_element(&item.payload) {
            Ok(p) => el.push_child(p),
            Err(e) => tracing::error!(error = %e, id = %item.id, "unreadable stored pubsub item"),
        }
    }
    el
}

fn check_form_type(form: &Submitted<'_>, expected: &str) -> Result<(), StanzaError> {
    if form.kind() != "submit" {
        return Err(StanzaError::bad_request("the form must be of type submit"));
    }
    match form.form_type() {
        Some(t) if t == expected => Ok(()),
        _ => Err(StanzaError::bad_request(format!(
            "the form's FORM_TYPE must be {expected}"
        ))),
    }
}

fn config_error(e: ConfigError) -> StanzaError {
    match e {
        ConfigError::Unsupported(what) => errors::unsupported(what),
        e => StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(e.to_string()),
    }
}

fn read_subscribe_options(form: &Submitted<'_>) -> Result<bool, StanzaError> {
    let mut deliver = true;
    for var in form.vars() {
        match var {
            "FORM_TYPE" => {}
            "pubsub#deliver" => {
                deliver = form
                    .boolean(var)
                    .map_err(|_| errors::with(StanzaErrorCondition::BadRequest, "invalid-options"))?
                    .unwrap_or(true)
            }
            _ => {
                return Err(errors::with(
                    StanzaErrorCondition::BadRequest,
                    "invalid-options",
                ))
            }
        }
    }
    Ok(deliver)
}

fn subscribe_options_payload(node: Option<&str>, jid: Option<&Jid>, deliver: bool) -> Element {
    let form = FormBuilder::new("form", NS_SUBSCRIBE_OPTIONS)
        .boolean("pubsub#deliver", "Enable delivery?", deliver)
        .build();
    let mut options = Element::new(if jid.is_some() { "options" } else { "default" }, NS_PUBSUB);
    if let Some(n) = node {
        options.set_attr("node", n);
    }
    if let Some(j) = jid {
        options.set_attr("jid", j.to_string());
    }
    options.push_child(form);
    Element::new("pubsub", NS_PUBSUB).with_child(options)
}
