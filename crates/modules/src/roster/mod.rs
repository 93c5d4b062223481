//! RFC 6121 §2 roster management and XEP-0237 roster versioning: get, set and remove, with a
//! roster push to every interested resource of the account. Subscription states change only
//! through presence (the `presence` module), never through a roster set.

pub mod subscription;

use rookery_core::config::ConfigError;
use rookery_core::{
    iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Place, Section,
    SectionDecl, Server, Spec,
};
use rookery_stanza::{
    random_id, BareJid, Jid, Stanza, StanzaError, StanzaErrorCondition, StanzaKind,
};
use rookery_storage::{RosterItem, StorageError, Subscription};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const NS: &str = "jabber:iq:roster";
pub const NS_VER_FEATURE: &str = "urn:xmpp:features:rosterver";
/// Longest item name and group name accepted (RFC 6121 §2.1.2.4 lets the server limit them).
pub const MAX_NAME_BYTES: usize = 1023;
/// Most groups on one item.
pub const MAX_GROUPS: usize = 64;

pub struct Roster;

/// `limits.max_roster_items`: the roster's size limit, in the `[limits]` table. The blocking
/// module bounds a blocklist by the same number and reads it too.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct RosterLimits {
    /// Items in one roster; adding beyond gets `not-allowed`.
    pub max_roster_items: usize,
}

impl Default for RosterLimits {
    fn default() -> Self {
        Self {
            max_roster_items: 5000,
        }
    }
}

impl Section for RosterLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    // Read at each request: a reload applies a new value.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# Items in one roster; adding more is refused (not-allowed).
max_roster_items = 5000
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::require_positive(key, "max_roster_items", self.max_roster_items as u64)
    }
}

/// Roster changes of one account are made one at a time: every read-modify-write of an
/// account's roster (a roster set, a subscription change from either side) holds its lock.
/// Striped over a fixed set of locks, so nothing grows per account. Never route a stanza
/// while holding one: the other side's handler takes its own.
static ACCOUNT_LOCKS: [tokio::sync::Mutex<()>; 256] =
    [const { tokio::sync::Mutex::const_new(()) }; 256];

pub async fn lock_account(account: &BareJid) -> tokio::sync::MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    account.as_str().hash(&mut h);
    ACCOUNT_LOCKS[(h.finish() % 256) as usize].lock().await
}

/// Session state: the resource requested the roster, so it gets pushes (§2.1.6).
#[derive(Default)]
pub struct Interested(AtomicBool);

impl Module for Roster {
    const NAME: &'static str = "roster";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<RosterLimits>()];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "RFC 6121 §2",
            title: "Roster management",
            version: "",
        },
        Spec {
            id: "XEP-0237",
            title: "Roster Versioning",
            version: "1.3",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_stream_feature(Element::new("ver", NS_VER_FEATURE));
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))
    }
}

fn storage_error(e: StorageError) -> StanzaError {
    match e {
        StorageError::LimitReached(_) => {
            StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("the roster is full")
        }
        e => {
            tracing::error!(error = %e, "roster storage failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// The `<item/>` of a roster result or push.
pub fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", NS)
        .with_attr("jid", item.jid.clone())
        .with_attr("subscription", item.subscription.as_str());
    if let Some(n) = &item.name {
        el.set_attr("name", n.clone());
    }
    if item.ask {
        el.set_attr("ask", "subscribe");
    }
    if item.approved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", NS).with_text(g.clone()));
    }
    el
}

/// Sends a roster push (§2.1.6) for `item` to every resource of `user` that requested the
/// roster. `item` with subscription `remove` is a removal.
pub fn push(server: &Server, user: &BareJid, item: Element, version: u64) {
    for session in server.sessions().resources(user) {
        let interested = session
            .extension::<Interested>()
            .is_some_and(|i| i.0.load(Ordering::Relaxed));
        if !interested {
            continue;
        }
        let query = Element::new("query", NS)
            .with_attr("ver", version.to_string())
            .with_child(item.clone());
        let iq = Element::new("iq", "jabber:client")
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", random_id(10)))
            .with_attr("to", session.jid().as_str())
            .with_child(query);
        let _ = session.deliver(iq);
    }
}

/// Writes an item and pushes it; the roster size limit applies to additions.
pub async fn save_and_push(
    server: &Server,
    user: &BareJid,
    item: &RosterItem,
) -> Result<u64, StanzaError> {
    let (domain, node) = parts(user)?;
    let max = server.config().section::<RosterLimits>().max_roster_items;
    let version = server
        .storage()
        .roster
        .set_roster_item(domain, node, item, max)
        .await
        .map_err(storage_error)?;
    push(server, user, item_element(item), version);
    Ok(version)
}

/// Removes an item and pushes the removal; `Ok(false)` if there was none.
pub async fn remove_and_push(
    server: &Server,
    user: &BareJid,
    contact: &str,
) -> Result<bool, StanzaError> {
    let (domain, node) = parts(user)?;
    let removed = server
        .storage()
        .roster
        .remove_roster_item(domain, node, contact)
        .await
        .map_err(storage_error)?;
    if let Some(version) = removed {
        let el = Element::new("item", NS)
            .with_attr("jid", contact)
            .with_attr("subscription", "remove");
        push(server, user, el, version);
    }
    Ok(removed.is_some())
}

fn parts(user: &BareJid) -> Result<(&str, &str), StanzaError> {
    match user.node() {
        Some(n) => Ok((user.domain().as_str(), n.as_str())),
        None => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
    }
}

async fn handle(req: IqRequest) -> IqResult {
    let user = req.from.to_bare();
    // §2.1.5: a roster is only the account's own business.
    if req.to.to_bare() != user {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
    }
    match req.iq_type {
        rookery_stanza::IqType::Get => get(&req, &user).await,
        _ => set(&req, &user).await,
    }
}

async fn get(req: &IqRequest, user: &BareJid) -> IqResult {
    if req.payload.children().next().is_some() {
        return Err(StanzaError::bad_request("a roster get carries no items"));
    }
    if let Some(session) = req.session() {
        session
            .extension_or_insert_with(Interested::default)
            .0
            .store(true, Ordering::Relaxed);
    }
    let (domain, node) = parts(user)?;
    let roster = req
        .server
        .storage()
        .roster
        .roster(domain, node)
        .await
        .map_err(storage_error)?;
    let ver = roster.version.to_string();
    // XEP-0237 §2.3: an unchanged roster is answered with an empty result; pushes follow.
    if req.payload.attr("ver") == Some(ver.as_str()) {
        return Ok(None);
    }
    let mut query = Element::new("query", NS).with_attr("ver", ver);
    for item in &roster.items {
        query.push_child(item_element(item));
    }
    Ok(Some(query))
}

/// Validates the one `<item/>` of a roster set (§2.3.3, §2.1.2).
fn parse_set(payload: &Element, user: &BareJid) -> Result<(BareJid, Element), StanzaError> {
    let mut items = payload.children();
    let item = match (items.next(), items.next()) {
        (Some(i), None) if i.is("item", NS) => i.clone(),
        _ => {
            return Err(StanzaError::bad_request(
                "a roster set carries exactly one item",
            ))
        }
    };
    let jid = item
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request("the item has no jid"))?;
    let jid = Jid::new(jid).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
    if jid.resource().is_some() {
        return Err(StanzaError::bad_request("roster items are bare JIDs"));
    }
    let jid = jid.to_bare();
    if jid == *user {
        return Err(StanzaError::new(StanzaErrorCondition::NotAllowed)
            .with_text("an account is not its own contact"));
    }
    Ok((jid, item))
}

async fn set(req: &IqRequest, user: &BareJid) -> IqResult {
    let (contact, item) = parse_set(&req.payload, user)?;
    let contact_str = contact.to_string();
    if item.attr("subscription") == Some("remove") {
        return remove(req, user, &contact).await;
    }
    let name = item
        .attr("name")
        .map(str::to_owned)
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
        return Err(
            StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("the name is too long")
        );
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS)) {
        let g = g.text();
        // §2.3.3: empty or over-long group names are refused.
        if g.is_empty() || g.len() > MAX_NAME_BYTES {
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("group names must be 1 to 1023 bytes"));
        }
        // §2.3.3: the same group twice is a malformed request, not something to tidy up.
        if groups.contains(&g) {
            return Err(StanzaError::bad_request("a group is listed twice"));
        }
        groups.push(g);
    }
    if groups.len() > MAX_GROUPS {
        return Err(
            StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("too many groups")
        );
    }
    let (domain, node) = parts(user)?;
    let _guard = lock_account(user).await;
    let existing = req
        .server
        .storage()
        .roster
        .roster_item(domain, node, &contact_str)
        .await
        .map_err(storage_error)?;
    // The client sets name and groups; subscription, ask and approval are the server's.
    let updated = RosterItem {
        jid: contact_str,
        name,
        groups,
        ..existing.unwrap_or(RosterItem {
            jid: String::new(),
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        })
    };
    save_and_push(&req.server, user, &updated).await?;
    Ok(None)
}

/// §2.5: removing an item also ends the subscriptions both ways.
async fn remove(req: &IqRequest, user: &BareJid, contact: &BareJid) -> IqResult {
    let (domain, node) = parts(user)?;
    let contact_str = contact.to_string();
    let store = &req.server.storage().roster;
    let (item, pending_in) = {
        let _guard = lock_account(user).await;
        let item = store
            .roster_item(domain, node, &contact_str)
            .await
            .map_err(storage_error)?;
        let pending_in = store
            .remove_pending_in(domain, node, &contact_str)
            .await
            .map_err(storage_error)?;
        if item.is_some() {
            remove_and_push(&req.server, user, &contact_str).await?;
        }
        (item, pending_in)
    };
    let Some(item) = item else {
        if pending_in {
            send_presence(&req.server, user, contact, "unsubscribed").await;
            return Ok(None);
        }
        return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound));
    };
    let to = matches!(item.subscription, Subscription::To | Subscription::Both);
    let from = matches!(item.subscription, Subscription::From | Subscription::Both);
    if to || item.ask {
        send_presence(&req.server, user, contact, "unsubscribe").await;
    }
    if from || pending_in {
        send_presence(&req.server, user, contact, "unsubscribed").await;
    }
    Ok(None)
}

/// Routes a presence of `ptype` from the account's bare JID to a contact.
pub async fn send_presence(server: &Arc<Server>, from: &BareJid, to: &BareJid, ptype: &str) {
    let p = Element::new("presence", "jabber:client")
        .with_attr("from", from.as_str())
        .with_attr("to", to.as_str())
        .with_attr("type", ptype);
    let p = Stanza::from_parts(
        StanzaKind::Presence,
        p,
        Some(Jid::from(to.clone())),
        Some(Jid::from(from.clone())),
    );
    Box::pin(server.route_stanza(p)).await;
}
