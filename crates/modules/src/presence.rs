//! RFC 6121 §3 and §4: presence subscriptions (the Appendix A state machine applied to stored
//! rosters, with pre-approval) and presence: broadcast to subscribers and to the account's own
//! resources, probes and their answers, directed presence and its clean-up, and unavailable
//! presence when a session ends for any reason.

use crate::roster::save_and_push;
use crate::roster::subscription::{Kind, State};
use parking_lot::Mutex;
use rookery_core::events::{InboundPresence, OutboundPresence, PresenceBroadcast, SessionClosed};
use rookery_core::Order;
use rookery_core::{Flow, HostBuilder, Module, ModuleError, Server, SessionHandle, Spec};
use rookery_stanza::PresenceType;
use rookery_stanza::{parse_jid, BareJid, Jid, SharedStanza, Stanza, StanzaKind};
use rookery_storage::{RosterItem, Subscription};
use rookery_xml::Element;
use std::collections::HashSet;
use std::sync::Arc;

pub const NS_PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";

pub struct Presence;

impl Module for Presence {
    const NAME: &'static str = "presence";
    const DEPENDS: &'static [&'static str] = &["roster"];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "RFC 6121 §3",
            title: "Managing presence subscriptions (with pre-approval)",
            version: "",
        },
        Spec {
            id: "RFC 6121 §4",
            title: "Exchanging presence information",
            version: "",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_stream_feature(Element::new("sub", NS_PRE_APPROVAL));
        host.hook::<PresenceBroadcast, _, _>(Order::normal(), |server, ev| async move {
            broadcast(&server, &ev.session, ev.stanza.clone(), true).await;
            Flow::Continue
        });
        host.hook::<SessionClosed, _, _>(Order::normal(), |server, ev| async move {
            let unavailable = unavailable_from(Jid::from(ev.session.jid().clone()));
            if ev.was_available {
                broadcast(&server, &ev.session, unavailable, false).await;
            } else {
                // Never broadcast, but directed presence still needs its unavailable (§4.6.3).
                let directed: Vec<Jid> = ev
                    .session
                    .extension::<SessionPresence>()
                    .map(|st| st.0.lock().directed.drain().collect())
                    .unwrap_or_default();
                for target in directed {
                    send(&server, unavailable.readdressed(target)).await;
                }
            }
            Flow::Continue
        });
        host.hook::<OutboundPresence, _, _>(Order::normal(), |server, ev| async move {
            outbound(&server, &ev).await
        });
        host.hook::<InboundPresence, _, _>(Order::normal(), |server, ev| async move {
            inbound(&server, &ev).await
        });
        Ok(())
    }
}

/// Presence state of one session.
#[derive(Default)]
struct SessionPresence(Mutex<PresenceInner>);

#[derive(Default)]
struct PresenceInner {
    /// The last available presence broadcast (from the session's full JID, no `to`),
    /// answered to probes: each answer shares its element.
    last: Option<Stanza>,
    /// Entities that got directed available presence (§4.6) and must get unavailable.
    directed: HashSet<Jid>,
}

fn parts(jid: &BareJid) -> Option<(&str, &str)> {
    Some((jid.domain().as_str(), jid.node()?.as_str()))
}

async fn roster_items(server: &Server, user: &BareJid) -> Vec<RosterItem> {
    let Some((d, u)) = parts(user) else {
        return Vec::new();
    };
    match server.storage().roster.roster(d, u).await {
        Ok(r) => r.items,
        Err(e) => {
            tracing::error!(error = %e, "roster read failed");
            Vec::new()
        }
    }
}

async fn item_and_state(
    server: &Server,
    user: &BareJid,
    contact: &str,
) -> Option<(Option<RosterItem>, State)> {
    let (d, u) = parts(user)?;
    let store = &server.storage().roster;
    let item = store.roster_item(d, u, contact).await.ok()?;
    let pending_in = store
        .pending_in(d, u)
        .await
        .ok()?
        .iter()
        .any(|(c, _)| c == contact);
    let state = State::new(
        item.as_ref().map_or(Subscription::None, |i| i.subscription),
        item.as_ref().is_some_and(|i| i.ask),
        pending_in,
    );
    Some((item, state))
}

fn has_from(s: Subscription) -> bool {
    matches!(s, Subscription::From | Subscription::Both)
}
fn has_to(s: Subscription) -> bool {
    matches!(s, Subscription::To | Subscription::Both)
}

/// Routes a stanza the server sends on an account's behalf.
async fn send(server: &Arc<Server>, stanza: Stanza) {
    Box::pin(server.route_stanza(stanza)).await;
}

/// A presence the server writes, from `from`, with no `to` yet: each recipient gets it
/// [`readdressed`](Stanza::readdressed), sharing one element.
fn presence_from(from: Jid, ptype: Option<&str>) -> Stanza {
    let mut el = Element::new("presence", "jabber:client").with_attr("from", from.as_str());
    if let Some(t) = ptype {
        el.set_attr("type", t);
    }
    Stanza::from_parts(StanzaKind::Presence, el, None, Some(from))
}

fn unavailable_from(from: Jid) -> Stanza {
    presence_from(from, Some("unavailable"))
}

/// A roster item's address (stored as written when the item was set; a stored address that
/// no longer parses is skipped).
fn item_jid(item: &RosterItem) -> Option<Jid> {
    parse_jid(&item.jid).ok()
}

/// §4.2–§4.5: a session's presence goes to the subscribers (`from`/`both`), to the account's
/// own available resources, and — when unavailable — to everyone that got directed presence.
/// Initial presence also probes the contacts the account is subscribed to and delivers the
/// subscription requests waiting for an answer. Every recipient gets the same element,
/// readdressed: one presence to a thousand contacts is serialised once.
async fn broadcast(
    server: &Arc<Server>,
    session: &Arc<SessionHandle>,
    mut stanza: Stanza,
    live: bool,
) {
    let from = session.jid().clone();
    let from_jid = Jid::from(from.clone());
    let user = from.to_bare();
    if stanza.from() != Some(&from_jid) {
        stanza.set_from(from_jid.clone());
    }
    let available = stanza.presence_type() == Some(PresenceType::Available);
    let state = session.extension_or_insert_with(SessionPresence::default);
    let (initial, directed) = {
        let mut s = state.0.lock();
        let initial = available && s.last.is_none();
        if available {
            s.last = Some(stanza.clone());
            (initial, Vec::new())
        } else {
            s.last = None;
            (false, s.directed.drain().collect())
        }
    };
    let items = roster_items(server, &user).await;
    let mut reached = HashSet::new();
    for item in items.iter().filter(|i| has_from(i.subscription)) {
        let Some(contact) = item_jid(item) else {
            continue;
        };
        reached.insert(item.jid.as_str());
        send(server, stanza.readdressed(contact)).await;
    }
    for target in directed {
        if !reached.contains(target.as_str()) {
            send(server, stanza.readdressed(target)).await;
        }
    }
    // The account is subscribed to itself (§4.2.2): every available resource, including the
    // sender, sees the change.
    let resources = server.sessions().resources(&user);
    for s in &resources {
        if s.priority().is_some() || (live && s.id() == session.id()) {
            let _ = s.deliver(stanza.readdressed(Jid::from(s.jid().clone())));
        }
    }
    if !initial {
        return;
    }
    // The probes go out from the full JID of the resource that just came online, not from
    // the bare JID of RFC 6121 §4.3.1, as Prosody and ejabberd do: the answers (§4.3.2, the
    // contacts' presence or their unavailable) are then addressed to this resource, the one
    // that lacks them. From the bare JID they would reach every available resource of the
    // account, replaying the contacts' presence to the others at each login. The contact's
    // side checks the subscription by the bare JID either way (`answer_probe`).
    let probe = presence_from(from_jid.clone(), Some("probe"));
    for item in items.iter().filter(|i| has_to(i.subscription)) {
        if let Some(contact) = item_jid(item) {
            send(server, probe.readdressed(contact)).await;
        }
    }
    for other in &resources {
        if other.id() == session.id() {
            continue;
        }
        let last = other
            .extension::<SessionPresence>()
            .and_then(|p| p.0.lock().last.clone());
        if let Some(p) = last {
            let _ = session.deliver(p.readdressed(from_jid.clone()));
        }
    }
    if let Some((d, u)) = parts(&user) {
        if let Ok(pending) = server.storage().roster.pending_in(d, u).await {
            for (_, xml) in pending {
                if let Ok(p) = rookery_xml::parse_element(&xml) {
                    let _ = session.deliver(p);
                }
            }
        }
    }
}

/// Presence with a `to` from a local client.
async fn outbound(server: &Arc<Server>, ev: &OutboundPresence) -> Flow {
    let ptype = ev.stanza.attr("type");
    let Some(kind) = ptype.and_then(Kind::of) else {
        // Directed presence (§4.6): remember who must hear about unavailability.
        if let Some(session) = server.sessions().get(&ev.from) {
            let st = session.extension_or_insert_with(SessionPresence::default);
            match ptype {
                None => {
                    st.0.lock().directed.insert(ev.to.clone());
                }
                Some("unavailable") => {
                    st.0.lock().directed.remove(&ev.to);
                }
                _ => {}
            }
        }
        return Flow::Continue;
    };
    let user = ev.from.to_bare();
    let contact = ev.to.to_bare();
    if contact == user {
        return Flow::Stop;
    }
    if let Err(e) = server.check_route(contact.domain().as_str()) {
        // The request can't reach the contact, so the roster must not show it as pending
        // (RFC 6120 §10.4).
        server.bounce(&ev.stanza, e);
        return Flow::Stop;
    }
    let contact_s = contact.to_string();
    // §3.1.2 and friends: subscription stanzas carry the account's bare JID.
    let mut out = ev.stanza.clone();
    out.set_from(Jid::from(user.clone()));
    out.set_to(Jid::from(contact.clone()));
    // The roster change happens under the account's lock; routing happens after it is
    // released, since the contact's side takes the contact's lock.
    let routed = {
        let _guard = crate::roster::lock_account(&user).await;
        let Some((item, state)) = item_and_state(server, &user, &contact_s).await else {
            return Flow::Stop;
        };
        let mut item = item.unwrap_or_else(|| new_item(&contact_s));
        match state.outbound(kind) {
            Some(next) => {
                apply(&mut item, next);
                if kind == Kind::Subscribed {
                    item.approved = false;
                }
                if state.pending_in && !next.pending_in {
                    remove_pending(server, &user, &contact_s).await;
                }
                if save_and_push(server, &user, &item).await.is_err() {
                    return Flow::Stop;
                }
                true
            }
            None => match kind {
                Kind::Subscribe | Kind::Unsubscribe => true,
                // §3.4: approving before being asked is a pre-approval, kept on the item.
                Kind::Subscribed if !state.has_from() && !item.approved => {
                    item.approved = true;
                    let _ = save_and_push(server, &user, &item).await;
                    return Flow::Stop;
                }
                Kind::Unsubscribed if item.approved => {
                    item.approved = false;
                    let _ = save_and_push(server, &user, &item).await;
                    return Flow::Stop;
                }
                _ => return Flow::Stop,
            },
        }
    };
    if routed {
        send(server, out).await;
        match kind {
            Kind::Subscribed => send_current_presence(server, &user, &contact).await,
            Kind::Unsubscribed => send_unavailable(server, &user, &contact).await,
            _ => {}
        }
    }
    Flow::Stop
}

fn new_item(jid: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_owned(),
        name: None,
        subscription: Subscription::None,
        ask: false,
        approved: false,
        groups: Vec::new(),
    }
}

fn apply(item: &mut RosterItem, state: State) {
    item.subscription = state.subscription;
    item.ask = state.pending_out;
}

async fn remove_pending(server: &Server, user: &BareJid, contact: &str) {
    if let Some((d, u)) = parts(user) {
        let _ = server
            .storage()
            .roster
            .remove_pending_in(d, u, contact)
            .await;
    }
}

/// Sends the last presence of each available resource of `user` to `to`.
async fn send_current_presence(server: &Arc<Server>, user: &BareJid, to: &BareJid) {
    for s in server.sessions().resources(user) {
        let last = s
            .extension::<SessionPresence>()
            .and_then(|p| p.0.lock().last.clone());
        if let Some(p) = last {
            send(server, p.readdressed(Jid::from(to.clone()))).await;
        }
    }
}

/// Sends unavailable from each available resource of `user` to `to`.
async fn send_unavailable(server: &Arc<Server>, user: &BareJid, to: &BareJid) {
    for s in server.sessions().resources(user) {
        if s.priority().is_some() {
            let p = unavailable_from(Jid::from(s.jid().clone()));
            send(server, p.readdressed(Jid::from(to.clone()))).await;
        }
    }
}

/// Delivers to every available resource of a local account (one element for all).
fn deliver_available(server: &Server, account: &BareJid, stanza: &Stanza) {
    let shared = SharedStanza::from(stanza);
    for s in &server.sessions().resources(account) {
        if s.priority().is_some() {
            let _ = s.deliver(shared.clone());
        }
    }
}

/// Presence addressed to a local account.
async fn inbound(server: &Arc<Server>, ev: &InboundPresence) -> Flow {
    let Some(from) = ev.stanza.from().cloned() else {
        return Flow::Continue;
    };
    let ptype = ev.stanza.attr("type");
    let account = ev.to.to_bare();
    if ptype == Some("probe") {
        answer_probe(server, &account, &from).await;
        return Flow::Stop;
    }
    let Some(kind) = ptype.and_then(Kind::of) else {
        return Flow::Continue;
    };
    let contact = from.to_bare();
    let contact_s = contact.to_string();
    // §3.1.3: the request as the account sees it, from the contact's bare JID.
    let mut delivered = ev.stanza.clone();
    delivered.set_from(Jid::from(contact.clone()));
    delivered.set_to(Jid::from(account.clone()));
    /// What to send once the account's roster lock is released.
    enum Then {
        Nothing,
        AutoReply,
        Granted,
        Changed(State),
    }
    let then = {
        let _guard = crate::roster::lock_account(&account).await;
        let Some((item, state)) = item_and_state(server, &account, &contact_s).await else {
            return Flow::Stop;
        };
        if kind == Kind::Subscribe {
            if state.has_from() {
                // Already approved: answer for the account (Appendix A.3.1, "auto-reply").
                Then::AutoReply
            } else if let Some(mut item) = item.clone().filter(|i| i.approved) {
                // §3.4: pre-approved, so the request is granted without asking the account.
                let granted = State::new(state.subscription, state.pending_out, true)
                    .outbound(Kind::Subscribed)
                    .unwrap_or(state);
                apply(&mut item, granted);
                item.approved = false;
                match save_and_push(server, &account, &item).await {
                    Ok(_) => Then::Granted,
                    Err(_) => Then::Nothing,
                }
            } else {
                if let Some((d, u)) = parts(&account) {
                    let _ = server
                        .storage()
                        .roster
                        .add_pending_in(d, u, &contact_s, &delivered.to_xml_string())
                        .await;
                }
                if state.inbound(kind).is_some() {
                    deliver_available(server, &account, &delivered);
                }
                Then::Nothing
            }
        } else {
            let Some(next) = state.inbound(kind) else {
                return Flow::Stop; // No state change: not delivered (Appendix A.3).
            };
            if state.pending_in && !next.pending_in {
                remove_pending(server, &account, &contact_s).await;
            }
            if let Some(mut item) = item {
                apply(&mut item, next);
                let _ = save_and_push(server, &account, &item).await;
            }
            deliver_available(server, &account, &delivered);
            Then::Changed(state)
        }
    };
    match then {
        Then::Nothing => {}
        Then::AutoReply => {
            crate::roster::send_presence(server, &account, &contact, "subscribed").await
        }
        Then::Granted => {
            crate::roster::send_presence(server, &account, &contact, "subscribed").await;
            send_current_presence(server, &account, &contact).await;
        }
        Then::Changed(state) => match kind {
            // The contact no longer sees the account: tell it the account is gone.
            Kind::Unsubscribe if state.has_from() => {
                send_unavailable(server, &account, &contact).await
            }
            // The account no longer sees the contact (§3.3.3).
            Kind::Unsubscribed if state.has_to() => {
                let p = unavailable_from(Jid::from(contact.clone()))
                    .readdressed(Jid::from(account.clone()));
                deliver_available(server, &account, &p);
            }
            _ => {}
        },
    }
    Flow::Stop
}

/// §4.3.2: a probe is answered with the last presence of each available resource, only for
/// contacts the account has approved; anyone else learns nothing. Subscriptions are between
/// bare JIDs, so a probe from a full JID is checked by its bare JID, and answered to the
/// full JID: only the probing resource asked.
async fn answer_probe(server: &Arc<Server>, account: &BareJid, prober: &Jid) {
    let contact = prober.to_bare().to_string();
    let approved = match parts(account) {
        Some((d, u)) => server
            .storage()
            .roster
            .roster_item(d, u, &contact)
            .await
            .ok()
            .flatten()
            .is_some_and(|i| has_from(i.subscription)),
        None => false,
    };
    if !approved {
        return;
    }
    let mut any = false;
    for s in server.sessions().resources(account) {
        let last = s
            .extension::<SessionPresence>()
            .and_then(|p| p.0.lock().last.clone());
        if let Some(p) = last {
            any = true;
            send(server, p.readdressed(prober.clone())).await;
        }
    }
    if !any {
        let p = unavailable_from(Jid::from(account.clone())).readdressed(prober.clone());
        send(server, p).await;
    }
}
