//! XEP-0030 Service Discovery for the server itself: identities, the features the enabled
//! modules registered, and items.

use rookery_core::{iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Spec};
use rookery_stanza::{StanzaError, StanzaErrorCondition};
use rookery_xml::Element;

pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub struct Disco;

impl Module for Disco {
    const NAME: &'static str = "disco";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0030",
        title: "Service Discovery",
        version: "2.5.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_identity("server", "im", Some("Rookery"));
        host.add_feature(NS_INFO);
        host.add_feature(NS_ITEMS);
        host.iq_handler(NS_INFO, IqScope::Host, iq_fn(info))?;
        host.iq_handler(NS_ITEMS, IqScope::Host, iq_fn(items))?;
        Ok(())
    }
}

fn no_such_node() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::ItemNotFound).with_text("no such node")
}

async fn info(req: IqRequest) -> IqResult {
    req.require_get()?;
    // No nodes are published yet (§3.2): a query for one is answered item-not-found.
    if req.payload.attr("node").is_some() {
        return Err(no_such_node());
    }
    let host = req
        .server
        .host(req.to.domain().as_str())
        .ok_or_else(StanzaError::service_unavailable)?;
    let mut query = Element::new("query", NS_INFO);
    for id in host.identities() {
        let mut el = Element::new("identity", NS_INFO)
            .with_attr("category", id.category.clone())
            .with_attr("type", id.kind.clone());
        if let Some(n) = &id.name {
            el.set_attr("name", n.clone());
        }
        query.push_child(el);
    }
    for f in host.features() {
        query.push_child(Element::new("feature", NS_INFO).with_attr("var", f.clone()));
    }
    Ok(Some(query))
}

async fn items(req: IqRequest) -> IqResult {
    req.require_get()?;
    if req.payload.attr("node").is_some() {
        return Err(no_such_node());
    }
    let host = req
        .server
        .host(req.to.domain().as_str())
        .ok_or_else(StanzaError::service_unavailable)?;
    let mut query = Element::new("query", NS_ITEMS);
    for (jid, name) in host.disco_items() {
        let mut el = Element::new("item", NS_ITEMS).with_attr("jid", jid.clone());
        if let Some(n) = name {
            el.set_attr("name", n.clone());
        }
        query.push_child(el);
    }
    Ok(Some(query))
}
