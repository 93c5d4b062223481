//! XEP-0030 Service Discovery for the server itself: identities, the features the enabled
//! modules registered, items, and XEP-0128 extension forms of enabled modules; and for the
//! accounts it hosts, answered on their behalf (RFC 6121 §8.5.2.1.3, §8.5.2.2.3): identity
//! `account/registered` and the account features enabled modules registered, to anyone, and
//! what modules publishing on the account's behalf add (PEP's identity, nodes and items).

use rookery_core::events::{AccountDiscoInfo, AccountDiscoItems, HostDiscoInfo, HostDiscoItems};
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
        host.iq_handler(NS_INFO, IqScope::Account, iq_fn(account_info))?;
        host.iq_handler(NS_ITEMS, IqScope::Account, iq_fn(account_items))?;
        Ok(())
    }
}

fn no_such_node() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::ItemNotFound).with_text("no such node")
}

async fn info(req: IqRequest) -> IqResult {
    req.require_get()?;
    let host = req
        .server
        .host(req.to.domain().as_str())
        .ok_or_else(StanzaError::service_unavailable)?;
    // A node (§3.2) is answered by the module that owns it ([`HostDiscoInfo`]).
    if let Some(node) = req.payload.attr("node") {
        let event = HostDiscoInfo {
            requester: req.from.clone(),
            node: node.to_owned(),
            query: Element::new("query", NS_INFO).with_attr("node", node),
            found: false,
        };
        return match host.hooks().fold(&req.server, event).await {
            Some(done) if done.found => Ok(Some(done.query)),
            _ => Err(no_such_node()),
        };
    }
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
    // XEP-0128: the forms enabled modules registered (HostBuilder::add_info_form).
    for form in host.info_forms() {
        query.push_child(form.clone());
    }
    Ok(Some(query))
}

async fn items(req: IqRequest) -> IqResult {
    req.require_get()?;
    let host = req
        .server
        .host(req.to.domain().as_str())
        .ok_or_else(StanzaError::service_unavailable)?;
    if let Some(node) = req.payload.attr("node") {
        let event = HostDiscoItems {
            requester: req.from.clone(),
            node: node.to_owned(),
            query: Element::new("query", NS_ITEMS).with_attr("node", node),
            found: false,
        };
        return match host.hooks().fold(&req.server, event).await {
            Some(done) if done.found => Ok(Some(done.query)),
            _ => Err(no_such_node()),
        };
    }
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

/// disco#info of an account's bare JID or one of its nodes. The core has already answered
/// `service-unavailable` for an account that does not exist (and the blocking module's
/// delivery filter for a requester the account blocked). Modules publishing on the account's
/// behalf complete the answer through the [`AccountDiscoInfo`] filter.
async fn account_info(req: IqRequest) -> IqResult {
    req.require_get()?;
    let node = req.payload.attr("node").map(str::to_owned);
    let mut query = Element::new("query", NS_INFO);
    if let Some(n) = &node {
        query.set_attr("node", n.clone());
    } else {
        query.push_child(
            Element::new("identity", NS_INFO)
                .with_attr("category", "account")
                .with_attr("type", "registered"),
        );
        query.push_child(Element::new("feature", NS_INFO).with_attr("var", NS_INFO));
        query.push_child(Element::new("feature", NS_INFO).with_attr("var", NS_ITEMS));
    }
    let Some(host) = req.server.host(req.to.domain().as_str()) else {
        return Err(StanzaError::service_unavailable());
    };
    if node.is_none() {
        // What enabled modules do on the accounts' behalf (HostBuilder::add_account_feature).
        for f in host.account_features() {
            query.push_child(Element::new("feature", NS_INFO).with_attr("var", f.clone()));
        }
    }
    let event = AccountDiscoInfo {
        account: req.to.to_bare(),
        requester: req.from.clone(),
        found: node.is_none(),
        node,
        query,
    };
    match host.hooks().fold(&req.server, event).await {
        Some(done) if done.found => Ok(Some(done.query)),
        _ => Err(no_such_node()),
    }
}

/// disco#items of an account's bare JID or one of its nodes, completed by the modules that
/// publish on its behalf ([`AccountDiscoItems`]); empty without them.
async fn account_items(req: IqRequest) -> IqResult {
    req.require_get()?;
    let node = req.payload.attr("node").map(str::to_owned);
    let mut query = Element::new("query", NS_ITEMS);
    if let Some(n) = &node {
        query.set_attr("node", n.clone());
    }
    let Some(host) = req.server.host(req.to.domain().as_str()) else {
        return Err(StanzaError::service_unavailable());
    };
    let event = AccountDiscoItems {
        account: req.to.to_bare(),
        requester: req.from.clone(),
        found: node.is_none(),
        node,
        query,
    };
    match host.hooks().fold(&req.server, event).await {
        Some(done) if done.found => Ok(Some(done.query)),
        _ => Err(no_such_node()),
    }
}
