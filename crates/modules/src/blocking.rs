//! XEP-0191 Blocking Command: an account's blocklist, its pushes, and its enforcement.
//!
//! * `<blocklist/>` get (§3.2) answers the list and marks the resource as interested: block
//!   and unblock pushes (§3.3, §3.4, §3.5) go to every resource of the account that asked.
//! * `<block/>` with one or more items (none: `bad-request`), `<unblock/>` with items or empty
//!   (everything). Items are JIDs of the four forms of §6 (full, bare, domain/resource,
//!   domain); each is stored normalised (RFC 7622). An account cannot block itself
//!   (`not-allowed`): §5 forbids blocking between its own resources anyway. The list holds at
//!   most `limits.max_roster_items` JIDs (beyond: `not-allowed`).
//! * Inbound (§3.3): a `LocalDelivery` filter drops what a blocked JID sends to the account;
//!   messages are answered `service-unavailable` here, IQ requests by the core, presence is
//!   dropped silently. The same filter drops what the server would send *on behalf of* a
//!   local account to a JID that account blocked (presence broadcasts, probes and their
//!   answers), so the blocked contact stops seeing the account.
//! * Outbound (§3.3): a `ClientStanza` filter refuses what the account sends to a blocked JID
//!   with `not-acceptable` and `<blocked xmlns='urn:xmpp:blocking:errors'/>`.
//! * Blocking sends unavailable presence from each available resource to every blocked
//!   contact with a `from`/`both` subscription (§3.3). Unblocking sends the account's current
//!   presence to those contacts again (§3.4): the server routes a presence probe on the
//!   contact's behalf to the account, which the presence module answers exactly as RFC 6121
//!   §4.3.2 says (only to contacts with a subscription, one presence per available
//!   resource); this keeps the presence module's per-session state its own.
//!   Contacts that got directed presence only (RFC 6121 §4.6) are not told on block: that
//!   state belongs to the presence module.
//!
//! # The cache
//!
//! Every stanza delivered to a local account passes the `LocalDelivery` filter, so the
//! blocklist of each account with a bound session is kept in memory (loaded when a session
//! is bound, dropped when the last one ends; empty lists share one `Arc`) and the filter
//! costs one hash-map look-up and, only for a non-empty list, one JID parse. Measured on the
//! SQLite backend (release build), a `get_data` through the blocking pool takes about 27 µs
//! and a cache look-up about 30 ns: a presence broadcast to 100 contacts would pay 2.7 ms
//! uncached. Accounts without a session (stanzas to offline accounts, server-generated
//! stanzas for them) are read from storage each time. Changes go to storage first and then replace the cached list, one
//! change at a time per host (an async mutex), so the cache never holds an older list than
//! storage. If the list cannot be read, the stanza is not delivered (the block fails closed).

use crate::roster::RosterLimits;
use parking_lot::RwLock;
use rookery_core::events::{ClientStanza, LocalDelivery, SessionBound, SessionClosed};
use rookery_core::Order;
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, SectionDecl,
    Server, Spec,
};
use rookery_stanza::{
    random_id, BareJid, ErrorType, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind,
};
use rookery_storage::{StorageError, Subscription};
use rookery_xml::Element;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:blocking";
pub const NS_ERRORS: &str = "urn:xmpp:blocking:errors";
/// The user-data store holding one list per account under the key "".
pub const STORE: &str = "blocklist";
/// Longest JID (RFC 7622 §3.1: three parts of at most 1023 bytes each) plus the markup of an item.
const ITEM_BYTES: usize = 3 * 1023 + 2 + 16;

pub struct Blocking;

/// Session state: the resource requested the blocklist, so it gets pushes (§3.3).
#[derive(Default)]
struct Interested(AtomicBool);

impl Module for Blocking {
    const NAME: &'static str = "blocking";
    /// A blocklist holds at most as many JIDs as a roster (`limits.max_roster_items`).
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<RosterLimits>()];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0191",
        title: "Blocking Command",
        version: "1.3",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let state = Arc::new(State::default());
        host.add_feature(NS);
        let s = state.clone();
        host.iq_handler(
            NS,
            IqScope::Account,
            iq_fn(move |req| {
                let s = s.clone();
                async move { handle(&s, req).await }
            }),
        )?;
        let s = state.clone();
        host.filter::<LocalDelivery, _, _>(Order::normal(), move |server, d| {
            let s = s.clone();
            async move { filter_delivery(&server, &s, d).await }
        });
        let s = state.clone();
        host.filter::<ClientStanza, _, _>(Order::normal(), move |server, c| {
            let s = s.clone();
            async move { filter_outbound(&server, &s, c).await }
        });
        let s = state.clone();
        host.hook::<SessionBound, _, _>(Order::first(), move |server, ev| {
            let s = s.clone();
            async move {
                s.load_for_session(&server, &ev.session.jid().to_bare())
                    .await;
                Flow::Continue
            }
        });
        // After everything else that runs when a session ends (the presence module's
        // unavailable broadcast passes the delivery filter and reads the list).
        host.hook::<SessionClosed, _, _>(Order::last(), move |server, ev| {
            state.evict_if_offline(&server, &ev.session.jid().to_bare());
            async { Flow::Continue }
        });
        Ok(())
    }
}

/// One account's blocked JIDs, normalised, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocklist {
    items: BTreeSet<String>,
}

impl Blocklist {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn items(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(String::as_str)
    }
    pub fn contains(&self, item: &Jid) -> bool {
        self.items.contains(item.as_str())
    }

    /// Whether stanzas from or to `jid` are blocked, by the matching rules of §6: a full JID
    /// item matches only that JID; a bare JID any of its resources; `domain/resource` only
    /// that JID; a domain the domain itself and every JID at it.
    pub fn blocks(&self, jid: &Jid) -> bool {
        if self.items.is_empty() {
            return false;
        }
        let domain = jid.domain().as_str();
        if self.items.contains(domain) || self.items.contains(jid.as_str()) {
            return true;
        }
        // The bare JID (for a JID with a resource).
        jid.resource().is_some() && jid.node().is_some() && {
            let bare = jid.to_bare();
            self.items.contains(bare.as_str())
        }
    }

    /// Parses the stored form, `<blocklist xmlns='urn:xmpp:blocking'><item jid='...'/>...`.
    pub fn from_xml(xml: &str) -> Result<Blocklist, StorageError> {
        let el =
            rookery_xml::parse_element(xml).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        if !el.is("blocklist", NS) {
            return Err(StorageError::Corrupt("not a blocklist".into()));
        }
        let mut items = BTreeSet::new();
        for item in el.children() {
            let jid = item
                .attr("jid")
                .ok_or_else(|| StorageError::Corrupt("blocklist item without a jid".into()))?;
            items.insert(jid.to_owned());
        }
        Ok(Blocklist { items })
    }

    /// `<blocklist/>` with one `<item/>` per JID: the stored form and the get answer.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("blocklist", NS);
        for jid in &self.items {
            el.push_child(item_element(jid));
        }
        el
    }
}

fn item_element(jid: &str) -> Element {
    Element::new("item", NS).with_attr("jid", jid)
}

/// The per-host cache and the lock that orders changes.
#[derive(Default)]
struct State {
    /// Keyed by bare JID; present exactly for accounts with a bound session (see the module
    /// documentation for how the races are closed).
    cache: RwLock<HashMap<String, Arc<Blocklist>>>,
    /// Shared by every account with an empty list (most of them), so caching those costs
    /// no allocation beyond the key.
    empty: Arc<Blocklist>,
    edit: tokio::sync::Mutex<()>,
}

impl State {
    fn shared(&self, list: Blocklist) -> Arc<Blocklist> {
        if list.is_empty() {
            self.empty.clone()
        } else {
            Arc::new(list)
        }
    }

    /// The list of the account `user` belongs to (a bare JID, or one of its full JIDs): from
    /// the cache, else from storage. The cache is read without building the bare JID.
    async fn list(&self, server: &Server, user: &Jid) -> Result<Arc<Blocklist>, StorageError> {
        if let Some(l) = self.cache.read().get(rookery_stanza::bare_str(user)) {
            return Ok(l.clone());
        }
        load(server, &user.to_bare()).await.map(Arc::new)
    }

    async fn load_for_session(&self, server: &Server, user: &BareJid) {
        if self.cache.read().contains_key(user.as_str()) {
            return;
        }
        match load(server, user).await {
            Ok(l) => {
                let mut cache = self.cache.write();
                // The session may have ended while the list was read: then there is nobody
                // to cache it for (the eviction ran already).
                if server.sessions().is_online(user) {
                    // A change stored meanwhile has put the newer list in already: keep that.
                    cache
                        .entry(user.to_string())
                        .or_insert_with(|| self.shared(l));
                }
            }
            Err(e) => tracing::error!(error = %e, account = %user, "blocklist not loaded"),
        }
    }

    /// Called with the session registry already updated; the check and the removal are one
    /// step under the cache lock, so a session bound after the check finds no entry and
    /// loads its own.
    fn evict_if_offline(&self, server: &Server, user: &BareJid) {
        let mut cache = self.cache.write();
        if !server.sessions().is_online(user) {
            cache.remove(user.as_str());
        }
    }

    /// After a change was stored: the new list replaces the cached one (while the account has
    /// a session).
    fn replace(&self, server: &Server, user: &BareJid, list: Blocklist) {
        let mut cache = self.cache.write();
        if server.sessions().is_online(user) {
            cache.insert(user.to_string(), self.shared(list));
        } else {
            cache.remove(user.as_str());
        }
    }
}

/// Reads an account's list from storage (empty when there is none).
async fn load(server: &Server, user: &BareJid) -> Result<Blocklist, StorageError> {
    let Some(node) = user.node() else {
        return Ok(Blocklist::default());
    };
    let stored = server
        .storage()
        .user_data
        .get_data(user.domain().as_str(), node.as_str(), STORE, "")
        .await?;
    match stored {
        Some(xml) => Blocklist::from_xml(&xml),
        None => Ok(Blocklist::default()),
    }
}

/// A local account that may have a blocklist: on a served host that has this module.
fn local_account(server: &Server, jid: &Jid) -> bool {
    jid.node().is_some()
        && server
            .host(jid.domain().as_str())
            .is_some_and(|host| host.modules().contains(&Blocking::NAME))
}

// ---- Enforcement ------------------------------------------------------------------------

async fn filter_delivery(
    server: &Arc<Server>,
    state: &State,
    d: LocalDelivery,
) -> Option<LocalDelivery> {
    // Read in place (this runs on every delivery to a local account): no copy of the
    // address, no bare JID built for the own-resources check.
    let Some(from) = d.stanza.from() else {
        return Some(d);
    };
    if from.node().is_some() && from.node() == d.to.node() && from.domain() == d.to.domain() {
        return Some(d); // §5: never between an account's own resources.
    }
    let recipient = &d.to;
    let inbound = match state.list(server, recipient).await {
        Ok(list) => list.blocks(from),
        Err(e) => {
            let account = rookery_stanza::bare_str(recipient);
            tracing::error!(error = %e, account, "blocklist unreadable: not delivering");
            true
        }
    };
    if inbound {
        // §3.3: messages get an error, IQ requests are answered by the core, presence and
        // everything else is dropped without a word.
        if d.stanza.kind() == StanzaKind::Message {
            server.bounce(&d.stanza, StanzaError::service_unavailable());
        }
        return None;
    }
    // Sent on behalf of a local account that blocked the recipient (presence broadcast,
    // probe, probe answer...): the blocked entity must not get it.
    if !local_account(server, from) {
        return Some(d);
    }
    // This filter runs on the recipient's host, whose cache this is; the cache of another
    // local host is out of reach, its storage is not.
    let blocked_by_sender = if from.domain() == recipient.domain() {
        state.list(server, from).await
    } else {
        load(server, &from.to_bare()).await.map(Arc::new)
    };
    match blocked_by_sender {
        Ok(list) if list.blocks(&d.to) => None,
        Ok(_) => Some(d),
        Err(e) => {
            let account = rookery_stanza::bare_str(from);
            tracing::error!(error = %e, account, "blocklist unreadable: not delivering");
            None
        }
    }
}

fn blocked_error() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable)
        .with_type(ErrorType::Cancel)
        .with_app_specific(Element::new("blocked", NS_ERRORS))
}

async fn filter_outbound(
    server: &Arc<Server>,
    state: &State,
    c: ClientStanza,
) -> Option<ClientStanza> {
    let Some(to) = c.stanza.to() else {
        return Some(c);
    };
    let user = rookery_stanza::bare_str(&c.from);
    let list = match state.list(server, &c.from).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, account = user, "blocklist unreadable");
            server.bounce(
                &c.stanza,
                StanzaError::new(StanzaErrorCondition::InternalServerError),
            );
            return None;
        }
    };
    if list.is_empty() {
        return Some(c);
    }
    if (to.node().is_some() && rookery_stanza::bare_str(to) == user) || !list.blocks(to) {
        return Some(c);
    }
    server.bounce(&c.stanza, blocked_error());
    None
}

// ---- The protocol -----------------------------------------------------------------------

async fn handle(state: &State, req: IqRequest) -> IqResult {
    let user = req.from.to_bare();
    if req.to.to_bare() != user {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
            .with_text("a blocklist is only its account's business"));
    }
    match (req.iq_type, req.payload.name()) {
        (IqType::Get, "blocklist") => {
            if let Some(session) = req.session() {
                session
                    .extension_or_insert_with(Interested::default)
                    .0
                    .store(true, Ordering::Relaxed);
            }
            let list = state.list(&req.server, &user).await.map_err(internal)?;
            Ok(Some(list.to_element()))
        }
        (IqType::Set, "block") => block(state, &req, &user).await,
        (IqType::Set, "unblock") => unblock(state, &req, &user).await,
        _ => Err(StanzaError::bad_request(
            "expected a get of <blocklist/> or a set of <block/> or <unblock/>",
        )),
    }
}

fn internal(e: StorageError) -> StanzaError {
    tracing::error!(error = %e, "blocklist storage failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

/// The JIDs of the `<item/>` children, normalised.
fn parse_items(payload: &Element) -> Result<Vec<Jid>, StanzaError> {
    payload
        .children()
        .map(|item| {
            if !item.is("item", NS) {
                return Err(StanzaError::bad_request(
                    "only <item/> elements are allowed",
                ));
            }
            let jid = item
                .attr("jid")
                .ok_or_else(|| StanzaError::bad_request("an item needs a jid"))?;
            Jid::new(jid).map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))
        })
        .collect()
}

async fn store(server: &Server, user: &BareJid, list: &Blocklist) -> Result<(), StanzaError> {
    let Some(node) = user.node() else {
        return Err(StanzaError::service_unavailable());
    };
    let max_items = server.config().section::<RosterLimits>().max_roster_items;
    let xml = (!list.is_empty()).then(|| list.to_element().to_xml(""));
    server
        .storage()
        .user_data
        .set_data(
            user.domain().as_str(),
            node.as_str(),
            STORE,
            "",
            xml.as_deref(),
            max_items.saturating_mul(ITEM_BYTES).saturating_add(64),
        )
        .await
        .map_err(internal)
}

async fn block(state: &State, req: &IqRequest, user: &BareJid) -> IqResult {
    let items = parse_items(&req.payload)?;
    if items.is_empty() {
        return Err(StanzaError::bad_request("a block needs at least one item"));
    }
    if items
        .iter()
        .any(|j| j.node().is_some() && j.to_bare() == *user)
    {
        return Err(StanzaError::new(StanzaErrorCondition::NotAllowed)
            .with_text("an account cannot block itself"));
    }
    let server = &req.server;
    let _edit = state.edit.lock().await;
    let mut list = load(server, user).await.map_err(internal)?;
    let added: Vec<Jid> = items
        .iter()
        .filter(|j| !list.contains(j))
        .cloned()
        .collect();
    for j in &added {
        list.items.insert(j.to_string());
    }
    if list.len() > server.config().section::<RosterLimits>().max_roster_items {
        return Err(
            StanzaError::new(StanzaErrorCondition::NotAllowed).with_text("the blocklist is full")
        );
    }
    // §3.3: withdraw presence first — once the list is stored, the delivery filter would
    // drop the unavailable presence too.
    for target in presence_targets(server, user, &added, |_| true).await {
        send_unavailable(server, user, &target).await;
    }
    store(server, user, &list).await?;
    state.replace(server, user, list);
    push(server, user, "block", &items);
    Ok(None)
}

async fn unblock(state: &State, req: &IqRequest, user: &BareJid) -> IqResult {
    let items = parse_items(&req.payload)?;
    let server = &req.server;
    let _edit = state.edit.lock().await;
    let mut list = load(server, user).await.map_err(internal)?;
    let removed: Vec<Jid> = if items.is_empty() {
        // §3.5: everything.
        list.items.iter().filter_map(|s| Jid::new(s).ok()).collect()
    } else {
        items.iter().filter(|j| list.contains(j)).cloned().collect()
    };
    if removed.is_empty() {
        push(server, user, "unblock", &items);
        return Ok(None);
    }
    for j in &removed {
        list.items.remove(j.as_str());
    }
    store(server, user, &list).await?;
    let remaining = list.clone();
    state.replace(server, user, list);
    push(server, user, "unblock", &items);
    // §3.4: the current presence, to contacts allowed to see it and not blocked otherwise.
    let targets = presence_targets(server, user, &removed, |t| !remaining.blocks(t)).await;
    let account = Jid::from(user.clone());
    for target in targets {
        let probe = Element::new("presence", "jabber:client")
            .with_attr("type", "probe")
            .with_attr("from", target.as_str())
            .with_attr("to", user.as_str());
        let probe = Stanza::from_parts(
            StanzaKind::Presence,
            probe,
            Some(account.clone()),
            Some(target),
        );
        Box::pin(server.route_stanza(probe)).await;
    }
    Ok(None)
}

/// The addresses that get presence changes caused by (un)blocking `items`: for each contact
/// with a `from`/`both` subscription that an item covers, the item itself when it names a
/// resource, else the contact's bare JID; only while the account has an available resource.
async fn presence_targets(
    server: &Server,
    user: &BareJid,
    items: &[Jid],
    keep: impl Fn(&Jid) -> bool,
) -> Vec<Jid> {
    if items.is_empty()
        || !server
            .sessions()
            .resources(user)
            .iter()
            .any(|s| s.priority().is_some())
    {
        return Vec::new();
    }
    let Some(node) = user.node() else {
        return Vec::new();
    };
    let roster = match server
        .storage()
        .roster
        .roster(user.domain().as_str(), node.as_str())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, account = %user, "roster read failed");
            return Vec::new();
        }
    };
    let mut targets: Vec<Jid> = Vec::new();
    for contact in roster
        .items
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .filter_map(|i| BareJid::new(&i.jid).ok())
    {
        for item in items {
            let covered = if item.node().is_none() && item.resource().is_none() {
                contact.domain() == item.domain()
            } else {
                item.to_bare() == contact
            };
            if !covered {
                continue;
            }
            let target = if item.resource().is_some() {
                item.clone()
            } else {
                Jid::from(contact.clone())
            };
            if keep(&target) && !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
}

async fn send_unavailable(server: &Arc<Server>, user: &BareJid, to: &Jid) {
    for s in server.sessions().resources(user) {
        if s.priority().is_some() {
            let p = Element::new("presence", "jabber:client")
                .with_attr("type", "unavailable")
                .with_attr("from", s.jid().as_str())
                .with_attr("to", to.as_str());
            let p = Stanza::from_parts(
                StanzaKind::Presence,
                p,
                Some(to.clone()),
                Some(Jid::from(s.jid().clone())),
            );
            Box::pin(server.route_stanza(p)).await;
        }
    }
}

/// A `<block/>` or `<unblock/>` push with these items to every interested resource.
fn push(server: &Server, user: &BareJid, command: &str, items: &[Jid]) {
    for session in server.sessions().resources(user) {
        let interested = session
            .extension::<Interested>()
            .is_some_and(|i| i.0.load(Ordering::Relaxed));
        if !interested {
            continue;
        }
        let mut payload = Element::new(command, NS);
        for j in items {
            payload.push_child(item_element(j.as_str()));
        }
        let iq = Element::new("iq", "jabber:client")
            .with_attr("type", "set")
            .with_attr("id", format!("push-{}", random_id(10)))
            .with_attr("to", session.jid().as_str())
            .with_child(payload);
        let _ = session.deliver(iq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("jid")
    }

    #[test]
    fn matching_follows_section_6() {
        let mut list = Blocklist::default();
        for i in [
            "romeo@montague.lit/orchard",
            "iago@shakespeare.lit",
            "capulet.lit/balcony",
            "evil.lit",
        ] {
            list.items.insert(jid(i).to_string());
        }
        let cases = [
            ("romeo@montague.lit/orchard", true),
            ("romeo@montague.lit/garden", false),
            ("romeo@montague.lit", false),
            ("iago@shakespeare.lit", true),
            ("iago@shakespeare.lit/any", true),
            ("Iago@Shakespeare.lit/x", true),
            ("othello@shakespeare.lit", false),
            ("capulet.lit/balcony", true),
            ("capulet.lit", false),
            ("juliet@capulet.lit/balcony", false),
            ("evil.lit", true),
            ("evil.lit/r", true),
            ("x@evil.lit/r", true),
            ("x@notevil.lit", false),
        ];
        for (j, expected) in cases {
            assert_eq!(list.blocks(&jid(j)), expected, "{j}");
        }
        let round = Blocklist::from_xml(&list.to_element().to_xml("")).expect("parse");
        assert_eq!(round, list);
        assert!(Blocklist::from_xml("<nope/>").is_err());
    }
}
