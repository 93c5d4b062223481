//! A PubSub service on its own domain (XEP-0060, `pubsub.<host>` by default): nodes anyone
//! may create (or only the administrators), owned by their creators, with the generic use
//! cases of §5–§8 over the engine. Leaf nodes only: collections (XEP-0248) are not offered,
//! so `pubsub#collections` is absent from disco and a `collection` node type is refused with
//! `feature-not-implemented`.

use super::engine::{Kind, Service as Engine, Shared};
use super::errors::{NS_PUBSUB, NS_PUBSUB_OWNER};
use super::{ServiceLimits, FEATURES};
use crate::form::Submitted;
use async_trait::async_trait;
use rookery_core::config::ConfigError;
use rookery_core::{
    HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Service, ServiceHandle, Spec,
};
use rookery_stanza::{BareJid, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_SUBSCRIBE_AUTHORIZATION: &str =
    "http://jabber.org/protocol/pubsub#subscribe_authorization";

pub struct PubSub;

/// `[host.pubsub]`: the PubSub service of a host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PubSubSettings {
    /// The service's domain; `pubsub.<host>` when empty.
    pub domain: String,
    /// Its name in disco.
    pub name: String,
    /// Who may create nodes: `local` (accounts of this server) or `admins`.
    pub create_nodes: String,
    /// Accounts that own every node of the service.
    pub admins: Vec<String>,
    /// Nodes the service holds.
    pub max_nodes: usize,
    /// The most items one node keeps (`pubsub#max_items = "max"`), and new nodes' default.
    pub max_items: usize,
    pub default_max_items: usize,
    /// Items the service holds across its nodes.
    pub max_service_items: usize,
    /// Bytes of one item, serialised.
    pub max_item_bytes: usize,
    /// Subscriptions one address holds on the service.
    pub max_subscriptions: usize,
    /// Publications one publisher may make in a burst, then one per interval.
    pub publish_burst: u32,
    pub publish_interval_ms: u64,
}

impl Default for PubSubSettings {
    fn default() -> Self {
        PubSubSettings {
            domain: String::new(),
            name: "Publish-Subscribe".into(),
            create_nodes: "local".into(),
            admins: Vec::new(),
            max_nodes: 10_000,
            max_items: 10_000,
            default_max_items: 100,
            max_service_items: 1_000_000,
            max_item_bytes: 256 * 1024,
            max_subscriptions: 1000,
            publish_burst: 100,
            publish_interval_ms: 100,
        }
    }
}

impl Section for PubSubSettings {
    const KEY: &'static str = "pubsub";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# A Publish-Subscribe service (XEP-0060, the "pubsub" module) on its own domain.
[host.pubsub]
# The service's domain; empty means pubsub.<host>.
domain = ""
name = "Publish-Subscribe"
# Who may create nodes: "local" (accounts of this server) or "admins" (the addresses below).
create_nodes = "local"
# Accounts that own every node of the service.
admins = []
# Nodes of the service, the most items a node keeps ("max"), a new node's default, and
# items across the service.
max_nodes = 10000
max_items = 10000
default_max_items = 100
max_service_items = 1000000
# Bytes of one item, and subscriptions one address holds.
max_item_bytes = 262144
max_subscriptions = 1000
# Publications per publisher: a burst, then one every publish_interval_ms.
publish_burst = 100
publish_interval_ms = 100
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !matches!(self.create_nodes.as_str(), "local" | "admins") {
            return Err(ConfigError::invalid(
                format!("{key}.create_nodes"),
                "must be \"local\" or \"admins\"",
            ));
        }
        for a in &self.admins {
            if BareJid::new(a).is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.admins"),
                    format!("'{a}' is not a bare JID"),
                ));
            }
        }
        if self.default_max_items > self.max_items {
            return Err(ConfigError::invalid(
                format!("{key}.default_max_items"),
                "must not exceed max_items",
            ));
        }
        for (name, v) in [
            ("max_nodes", self.max_nodes as u64),
            ("max_items", self.max_items as u64),
            ("default_max_items", self.default_max_items as u64),
            ("max_service_items", self.max_service_items as u64),
            ("max_item_bytes", self.max_item_bytes as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("publish_burst", u64::from(self.publish_burst)),
            ("publish_interval_ms", self.publish_interval_ms),
        ] {
            crate::require_positive(key, name, v)?;
        }
        Ok(())
    }
}

struct PubSubService {
    jid: Jid,
    name: String,
    admins: Arc<Vec<BareJid>>,
    admins_create: bool,
    limits: Arc<ServiceLimits>,
    shared: Arc<Shared>,
}

impl Module for PubSub {
    const NAME: &'static str = "pubsub";
    const DEPENDS: &'static [&'static str] = &["roster"];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<PubSubSettings>()];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0060",
        title: "Publish-Subscribe",
        version: "1.30.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let s = host.section::<PubSubSettings>();
        let domain = if s.domain.is_empty() {
            format!("pubsub.{}", host.domain())
        } else {
            s.domain.clone()
        };
        let jid = rookery_stanza::parse_jid(&domain)
            .ok()
            .filter(|j| j.node().is_none() && j.resource().is_none())
            .ok_or_else(|| ModuleError::Init {
                module: Self::NAME,
                message: format!("'{domain}' is not a domain"),
            })?;
        let service = PubSubService {
            jid,
            name: s.name.clone(),
            admins: Arc::new(
                s.admins
                    .iter()
                    .filter_map(|a| BareJid::new(a).ok())
                    .collect(),
            ),
            admins_create: s.create_nodes == "admins",
            limits: Arc::new(ServiceLimits {
                max_nodes: s.max_nodes,
                max_items: s.max_items,
                default_max_items: s.default_max_items,
                max_service_items: s.max_service_items,
                max_item_bytes: s.max_item_bytes,
                max_avatar_bytes: s.max_item_bytes,
                max_subscriptions: s.max_subscriptions,
                publish_burst: s.publish_burst,
                publish_interval_ms: s.publish_interval_ms,
            }),
            shared: Arc::new(Shared::default()),
        };
        host.service_domain(&domain, Some(&s.name), service)
    }
}

#[async_trait]
impl Service for PubSubService {
    async fn receive(&self, handle: &ServiceHandle, stanza: Stanza) {
        let Some(server) = handle.server() else {
            return;
        };
        let engine = Engine {
            kind: Kind::Domain {
                jid: self.jid.clone(),
                admins: self.admins.clone(),
                admins_create: self.admins_create,
            },
            limits: self.limits.clone(),
            caps: None,
            shared: self.shared.clone(),
            server,
        };
        let Some(from) = stanza.from().cloned() else {
            return;
        };
        // Only the domain itself is an entity here: JIDs in it are not.
        let to_domain = stanza
            .to()
            .is_some_and(|t| t.node().is_none() && t.resource().is_none());
        match stanza.kind() {
            StanzaKind::Iq if stanza.iq_type().is_some_and(IqType::is_request) => {
                let answer = if to_domain {
                    self.iq(&engine, &from, &stanza).await
                } else {
                    Err(StanzaError::service_unavailable())
                };
                let reply = match answer {
                    Ok(payload) => Some(stanza.iq_result(payload)),
                    Err(e) => stanza.error_reply(&e),
                };
                if let Some(reply) = reply {
                    if let Err(e) = handle.send(reply).await {
                        tracing::debug!(error = %e, "a pubsub answer was not sent");
                    }
                }
            }
            StanzaKind::Message if to_domain && !stanza.is_error() => {
                self.approval(&engine, &from, &stanza).await;
            }
            _ => {}
        }
    }
}

impl PubSubService {
    async fn iq(
        &self,
        engine: &Engine,
        from: &Jid,
        stanza: &Stanza,
    ) -> Result<Option<Element>, StanzaError> {
        let iq_type = stanza.iq_type().unwrap_or(IqType::Get);
        let Some(payload) = stanza.element().children().next() else {
            return Err(StanzaError::bad_request("an IQ request needs a payload"));
        };
        match (payload.ns(), iq_type) {
            (NS_PUBSUB | NS_PUBSUB_OWNER, _) => engine.handle(from, iq_type, payload).await,
            (NS_DISCO_INFO, IqType::Get) => self.disco_info(engine, from, payload).await,
            (NS_DISCO_ITEMS, IqType::Get) => self.disco_items(engine, from, payload).await,
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    /// §5.1 and §5.3: the service's identity and features, or a node's.
    async fn disco_info(
        &self,
        engine: &Engine,
        from: &Jid,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let mut query = Element::new("query", NS_DISCO_INFO);
        match payload.attr("node") {
            None => {
                query.push_child(
                    Element::new("identity", NS_DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "service")
                        .with_attr("name", self.name.clone()),
                );
                for f in [NS_DISCO_INFO, NS_DISCO_ITEMS]
                    .iter()
                    .chain(FEATURES)
                    .chain(&["http://jabber.org/protocol/pubsub#instant-nodes"])
                {
                    query.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", *f));
                }
            }
            Some(node) => {
                query.set_attr("node", node);
                let children = engine
                    .disco_node_info(from, node)
                    .await?
                    .ok_or_else(|| StanzaError::new(StanzaErrorCondition::ItemNotFound))?;
                for c in children {
                    query.push_child(c);
                }
            }
        }
        Ok(Some(query))
    }

    /// §5.2 and §5.5: the nodes the requester may see, or a node's item ids.
    async fn disco_items(
        &self,
        engine: &Engine,
        from: &Jid,
        payload: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let mut query = Element::new("query", NS_DISCO_ITEMS);
        let jid = self.jid.to_string();
        match payload.attr("node") {
            None => {
                for (node, title) in engine.disco_nodes(from).await {
                    let mut item = Element::new("item", NS_DISCO_ITEMS)
                        .with_attr("jid", jid.clone())
                        .with_attr("node", node);
                    if !title.is_empty() {
                        item.set_attr("name", title);
                    }
                    query.push_child(item);
                }
            }
            Some(node) => {
                query.set_attr("node", node);
                let ids = engine
                    .disco_node_items(from, node)
                    .await?
                    .ok_or_else(|| StanzaError::new(StanzaErrorCondition::ItemNotFound))?;
                for id in ids {
                    query.push_child(
                        Element::new("item", NS_DISCO_ITEMS)
                            .with_attr("jid", jid.clone())
                            .with_attr("name", id),
                    );
                }
            }
        }
        Ok(Some(query))
    }

    /// §8.6: an owner's answer to a subscription request, a submitted
    /// `pubsub#subscribe_authorization` form in a message.
    async fn approval(&self, engine: &Engine, from: &Jid, stanza: &Stanza) {
        let Some(form) = Submitted::find(stanza.element()) else {
            return;
        };
        if form.kind() != "submit"
            || form.form_type().as_deref() != Some(NS_SUBSCRIBE_AUTHORIZATION)
        {
            return;
        }
        let (Some(node), Some(jid)) = (
            form.value("pubsub#node"),
            form.value("pubsub#subscriber_jid"),
        ) else {
            return;
        };
        let Ok(allow) = form.boolean("pubsub#allow") else {
            return;
        };
        let Ok(subscriber) = rookery_stanza::parse_jid(&jid) else {
            return;
        };
        // The same checks and effects as the owner's subscription management (§8.8.2).
        let state = if allow == Some(true) {
            "subscribed"
        } else {
            "none"
        };
        let request = Element::new("pubsub", NS_PUBSUB_OWNER).with_child(
            Element::new("subscriptions", NS_PUBSUB_OWNER)
                .with_attr("node", node)
                .with_child(
                    Element::new("subscription", NS_PUBSUB_OWNER)
                        .with_attr("jid", subscriber.to_string())
                        .with_attr("subscription", state),
                ),
        );
        if let Err(e) = engine.handle(from, IqType::Set, &request).await {
            tracing::debug!(error = %e, "a subscription approval was refused");
        }
    }
}
