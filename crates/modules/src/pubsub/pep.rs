//! Personal Eventing via PubSub (XEP-0163): every account is a PubSub service at its bare
//! JID, owning all its nodes.
//!
//! * Requests to the bare JID in the pubsub and pubsub#owner namespaces run the engine with
//!   the account as owner; only the account publishes, creates and configures, and a
//!   publication to a node that does not exist creates it (§4.1 auto-create), taking its
//!   configuration from publish-options (XEP-0223 semantics, XEP-0060 §7.1.5).
//! * Notifications go to explicit subscribers and to everyone whose presence the account
//!   received with capabilities asking for `<node>+notify` (the `caps` module), own
//!   resources included, as each node's access model allows (§4.3: `presence` by default,
//!   so contacts with a `from`/`both` subscription).
//! * When a contact's capabilities become known for a new presence, it gets the last item
//!   of each node it is interested in (§4.3.2, `send_last_published_item =
//!   on_sub_and_presence`).
//! * The account's disco#info carries the `pubsub/pep` identity and the features (§3);
//!   its disco#items lists the nodes the requester may see.
//!
//! Everything is stored in the `PubSubStore` under the account, and goes with it.

use super::config::{NodeConfig, NS_PUBLISH_OPTIONS};
use super::engine::{Kind, Service, Shared};
use super::errors::{NS_PUBSUB, NS_PUBSUB_OWNER};
use super::{ServiceLimits, FEATURES};
use crate::caps::{CapsState, CapsUpdated};
use crate::form::FormBuilder;
use rookery_core::config::ConfigError;
use rookery_core::events::{AccountDiscoInfo, AccountDiscoItems};
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqScope, Module, ModuleError, Order, Place, Section,
    SectionDecl, Server, Spec,
};
use rookery_stanza::{BareJid, IqType, StanzaError};
use rookery_storage::{ItemSelection, StorageError};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Pep;

/// `[pep]`: the bounds of every account's PEP service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PepSettings {
    /// Nodes one account holds.
    pub max_nodes: usize,
    /// The most items one node keeps (`pubsub#max_items = "max"`).
    pub max_items: usize,
    /// Items one account holds across its nodes.
    pub max_account_items: usize,
    /// Bytes of one item, serialised.
    pub max_item_bytes: usize,
    /// Bytes of one avatar image item (XEP-0084 data node), serialised.
    pub max_avatar_bytes: usize,
    /// Subscriptions one JID holds on one account's nodes.
    pub max_subscriptions: usize,
    /// Publications one account may make in a burst, then one per `publish_interval_ms`.
    pub publish_burst: u32,
    pub publish_interval_ms: u64,
}

impl Default for PepSettings {
    fn default() -> Self {
        PepSettings {
            max_nodes: 256,
            max_items: 1000,
            max_account_items: 10_000,
            max_item_bytes: 256 * 1024,
            max_avatar_bytes: 1024 * 1024,
            max_subscriptions: 256,
            publish_burst: 100,
            publish_interval_ms: 100,
        }
    }
}

impl Section for PepSettings {
    const KEY: &'static str = "pep";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# Personal Eventing (XEP-0163, the "pep" module): the PubSub nodes of every account, where
# clients keep bookmarks, avatars, nicknames and OMEMO keys.
[pep]
# Nodes per account, the most items a node keeps ("max" in pubsub#max_items), items per account.
max_nodes = 256
max_items = 1000
max_account_items = 10000
# Bytes of one item; avatar images (urn:xmpp:avatar:data) may be larger, up to max_avatar_bytes
# (the stream's limits.max_stanza_bytes still bounds what a client can send).
max_item_bytes = 262144
max_avatar_bytes = 1048576
# Subscriptions one address holds on one account's nodes.
max_subscriptions = 256
# Publications per account: a burst, then one every publish_interval_ms.
publish_burst = 100
publish_interval_ms = 100
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("max_nodes", self.max_nodes as u64),
            ("max_items", self.max_items as u64),
            ("max_account_items", self.max_account_items as u64),
            ("max_item_bytes", self.max_item_bytes as u64),
            ("max_avatar_bytes", self.max_avatar_bytes as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("publish_burst", u64::from(self.publish_burst)),
            ("publish_interval_ms", self.publish_interval_ms),
        ] {
            crate::require_positive(key, name, v)?;
        }
        Ok(())
    }
}

impl PepSettings {
    fn limits(&self) -> ServiceLimits {
        ServiceLimits {
            max_nodes: self.max_nodes,
            max_items: self.max_items,
            default_max_items: 1,
            max_service_items: self.max_account_items,
            max_item_bytes: self.max_item_bytes,
            max_avatar_bytes: self.max_avatar_bytes,
            max_subscriptions: self.max_subscriptions,
            publish_burst: self.publish_burst,
            publish_interval_ms: self.publish_interval_ms,
        }
    }
}

/// What every host's PEP shares: the limits, the capabilities the `caps` module tracks and
/// the publish buckets. Other modules reach an account's service through [`service`].
#[derive(Default)]
pub struct PepState {
    inner: OnceLock<(Arc<ServiceLimits>, Arc<CapsState>, Arc<Shared>)>,
}

/// An account's PEP service, for modules acting on the account's behalf (the server keeping
/// bookmarks or avatars in step publishes through the same checks as the client would).
/// `None` when no host runs the `pep` module.
pub fn service(server: &Arc<Server>, state: &PepState, owner: &BareJid) -> Option<Service> {
    let (limits, caps, shared) = state.inner.get()?;
    Some(Service {
        kind: Kind::Pep {
            owner: owner.clone(),
        },
        limits: limits.clone(),
        caps: Some(caps.clone()),
        shared: shared.clone(),
        server: server.clone(),
    })
}

/// A node's stored configuration, for a module deciding how to publish to it on the
/// account's behalf; `None` when the node does not exist.
pub async fn node_config(svc: &Service, node: &str) -> Result<Option<NodeConfig>, StorageError> {
    match svc
        .server
        .storage()
        .pubsub
        .get_node(svc.key(), node)
        .await?
    {
        None => Ok(None),
        Some(rec) => NodeConfig::from_doc(&rec.config)
            .map(Some)
            .ok_or_else(|| StorageError::Corrupt(format!("configuration of PEP node {node}"))),
    }
}

/// The items of a node as stored, newest first (at most the node's ceiling), with their
/// payloads parsed; an item whose payload does not parse is left out (and logged).
pub async fn stored_items(
    svc: &Service,
    node: &str,
    ids: Option<&[String]>,
) -> Result<Vec<(String, Option<Element>)>, StorageError> {
    let selection = match ids {
        Some(ids) => ItemSelection::Ids(ids),
        None => ItemSelection::Page {
            after: None,
            before: None,
            max: svc.limits.max_items,
        },
    };
    let page = svc
        .server
        .storage()
        .pubsub
        .get_items(svc.key(), node, selection)
        .await?;
    let mut out = Vec::with_capacity(page.items.len());
    for item in page.items {
        if item.payload.is_empty() {
            out.push((item.id, None));
            continue;
        }
        match rookery_xml::parse_element(&item.payload) {
            Ok(p) => out.push((item.id, Some(p))),
            Err(e) => {
                tracing::error!(error = %e, node, id = %item.id, "unreadable stored PEP item")
            }
        }
    }
    Ok(out)
}

/// Publishes one item to an account's node as the account itself would (the engine's checks,
/// notifications and [`PublishedItem`](super::PublishedItem)), with publish-options when
/// `options` has any (XEP-0060 §7.1.5). Without `id` the service picks one.
pub async fn publish_as_owner(
    svc: &Service,
    node: &str,
    id: Option<&str>,
    payload: Element,
    options: &[(&str, &str)],
) -> Result<(), StanzaError> {
    let mut item = Element::new("item", NS_PUBSUB).with_child(payload);
    if let Some(id) = id {
        item.set_attr("id", id);
    }
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(
        Element::new("publish", NS_PUBSUB)
            .with_attr("node", node)
            .with_child(item),
    );
    if !options.is_empty() {
        let mut form = FormBuilder::new("submit", NS_PUBLISH_OPTIONS);
        for (var, value) in options {
            form = form.field(var, None, None, &[value]);
        }
        pubsub.push_child(Element::new("publish-options", NS_PUBSUB).with_child(form.build()));
    }
    svc.handle(&svc.jid(), IqType::Set, &pubsub)
        .await
        .map(|_| ())
}

/// Retracts one item of an account's node as the account would, notifying (XEP-0060 §7.2.2.1
/// `notify`, which XEP-0402 §3.4 asks of clients too).
pub async fn retract_as_owner(svc: &Service, node: &str, id: &str) -> Result<(), StanzaError> {
    let pubsub = Element::new("pubsub", NS_PUBSUB).with_child(
        Element::new("retract", NS_PUBSUB)
            .with_attr("node", node)
            .with_attr("notify", "true")
            .with_child(Element::new("item", NS_PUBSUB).with_attr("id", id)),
    );
    svc.handle(&svc.jid(), IqType::Set, &pubsub)
        .await
        .map(|_| ())
}

impl Module for Pep {
    const NAME: &'static str = "pep";
    const DEPENDS: &'static [&'static str] = &["caps", "roster"];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<PepSettings>()];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0060",
            title: "Publish-Subscribe",
            version: "1.30.0",
        },
        Spec {
            id: "XEP-0163",
            title: "Personal Eventing Protocol",
            version: "1.2.2",
        },
        Spec {
            id: "XEP-0223",
            title: "Persistent Storage of Private Data via PubSub",
            version: "1.1.1",
        },
        Spec {
            id: "XEP-0172",
            title: "User Nickname",
            version: "1.1",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let settings = host.section::<PepSettings>();
        let caps = host.shared::<CapsState>();
        let state = host.shared::<PepState>();
        let _ = state.inner.set((
            Arc::new(settings.limits()),
            caps,
            Arc::new(Shared::default()),
        ));
        // The server says it supports PEP in its own disco#info too, as Prosody and ejabberd
        // do (clients look at either); the full feature list is on the accounts (XEP-0163 §3).
        host.add_identity("pubsub", "pep", None);
        host.add_feature("http://jabber.org/protocol/pubsub#publish");
        for ns in [NS_PUBSUB, NS_PUBSUB_OWNER] {
            let state = state.clone();
            host.iq_handler(
                ns,
                IqScope::Account,
                iq_fn(move |req: IqRequest| {
                    let state = state.clone();
                    async move {
                        let owner = req.to.to_bare();
                        let svc = service(&req.server, &state, &owner)
                            .ok_or_else(rookery_stanza::StanzaError::service_unavailable)?;
                        svc.handle(&req.from, req.iq_type, &req.payload).await
                    }
                }),
            )?;
        }
        let info_state = state.clone();
        host.filter::<AccountDiscoInfo, _, _>(Order::normal(), move |server, mut ev| {
            let state = info_state.clone();
            async move {
                let Some(svc) = service(&server, &state, &ev.account) else {
                    return Some(ev);
                };
                match ev.node.clone() {
                    None => {
                        ev.query.push_child(
                            Element::new("identity", NS_DISCO_INFO)
                                .with_attr("category", "pubsub")
                                .with_attr("type", "pep"),
                        );
                        for f in FEATURES.iter().chain(PEP_FEATURES) {
                            ev.query.push_child(
                                Element::new("feature", NS_DISCO_INFO).with_attr("var", *f),
                            );
                        }
                    }
                    Some(node) => {
                        if let Ok(Some(children)) = svc.disco_node_info(&ev.requester, &node).await
                        {
                            for c in children {
                                ev.query.push_child(c);
                            }
                            ev.found = true;
                        }
                    }
                }
                Some(ev)
            }
        });
        let items_state = state.clone();
        host.filter::<AccountDiscoItems, _, _>(Order::normal(), move |server, mut ev| {
            let state = items_state.clone();
            async move {
                let Some(svc) = service(&server, &state, &ev.account) else {
                    return Some(ev);
                };
                let owner = ev.account.to_string();
                match ev.node.clone() {
                    None => {
                        for (node, title) in svc.disco_nodes(&ev.requester).await {
                            let mut item = Element::new("item", NS_DISCO_ITEMS)
                                .with_attr("jid", owner.clone())
                                .with_attr("node", node);
                            if !title.is_empty() {
                                item.set_attr("name", title);
                            }
                            ev.query.push_child(item);
                        }
                    }
                    Some(node) => {
                        if let Ok(Some(ids)) = svc.disco_node_items(&ev.requester, &node).await {
                            for id in ids {
                                ev.query.push_child(
                                    Element::new("item", NS_DISCO_ITEMS)
                                        .with_attr("jid", owner.clone())
                                        .with_attr("name", id),
                                );
                            }
                            ev.found = true;
                        }
                    }
                }
                Some(ev)
            }
        });
        let caps_state = state;
        host.hook::<CapsUpdated, _, _>(Order::normal(), move |server, ev| {
            let state = caps_state.clone();
            async move {
                // A contact that came online (or changed its caps), or a new resource of
                // the owner's: not the answers to the owner's own probes at login, which
                // would send every contact the same items again.
                if ev.changed && !ev.direct {
                    if let Some(svc) = service(&server, &state, &ev.owner) {
                        let info = ev.info.clone();
                        svc.send_last_on_presence(&ev.contact, |node| info.notifies(node))
                            .await;
                    }
                }
                Flow::Continue
            }
        });
        Ok(())
    }
}

/// What PEP adds to the features of XEP-0060 (XEP-0163 §4: notifications by presence and
/// filtered by capabilities).
const PEP_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
];
