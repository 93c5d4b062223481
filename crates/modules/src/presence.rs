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
use rookery_stanza::{BareJid, Jid};
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
            if let Some(session) = server.sessions().get(&ev.from) {
                broadcast(&server, &session, ev.stanza.clone(), true).await;
            }
            Flow::Continue
        });
        host.hook::<SessionClosed, _, _>(Order::normal(), |server, ev| async move {
            let unavailable = Element::new("presence", "jabber:client")
                .with_attr("type", "unavailable")
                .with_attr("from", ev.session.jid().as_str());
            if ev.was_available {
                broadcast(&server, &ev.session, unavailable, false).await;
            } else {
                // Never broadcast, but directed presence still needs its unavailable (§4.6.3).
                let directed: Vec<String> = ev
                    .session
                    .extension::<SessionPresence>()
                    .map(|st| st.0.lock().directed.drain().collect())
                    .unwrap_or_default();
                for target in directed {
                    send(&server, presence_to(&unavailable, &target)).await;
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
    /// The last available presence broadcast, answered to probes.
    last: Option<Element>,
    /// Entities that got directed available presence (§4.6) and must get unavailable.
    directed: HashSet<String>,
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
async fn send(server: &Arc<Server>, stanza: Element) {
    Box::pin(server.route(stanza)).await;
}

fn presence_to(stanza: &Element, to: &str) -> Element {
    let mut p = stanza.clone();
    p.set_attr("to", to);
    p
}

/// §4.2–§4.5: a session's presence goes to the subscribers (`from`/`both`), to the account's
/// own available resources, and — when unavailable — to everyone that got directed presence.
/// Initial presence also probes the contacts the account is subscribed to and delivers the
/// subscription requests waiting for an answer.
async fn broadcast(
    server: &Arc<Server>,
    session: &Arc<SessionHandle>,
    mut stanza: Element,
    live: bool,
) {
    let from = session.jid().clone();
    let user = from.to_bare();
    stanza.remove_attr("to");
    stanza.set_attr("from", from.as_str());
    let available = stanza.attr("type").is_none();
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
        reached.insert(item.jid.clone());
        send(server, presence_to(&stanza, &item.jid)).await;
    }
    for target in directed {
        if !reached.contains(&target) {
            send(server, presence_to(&stanza, &target)).await;
        }
    }
    // The account is subscribed to itself (§4.2.2): every available resource, including the
    // sender, sees the change.
    for s in server.sessions().resources(&user) {
        if s.priority().is_some() || (live && s.id() == session.id()) {
            let _ = s.deliver(presence_to(&stanza, s.jid().as_str()));
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
    for item in items.iter().filter(|i| has_to(i.subscription)) {
        let probe = Element::new("presence", "jabber:client")
            .with_attr("type", "probe")
            .with_attr("from", from.as_str())
            .with_attr("to", item.jid.clone());
        send(server, probe).await;
    }
    for other in server.sessions().resources(&user) {
        if other.id() == session.id() {
            continue;
        }
        let last = other
            .extension::<SessionPresence>()
            .and_then(|p| p.0.lock().last.clone());
        if let Some(p) = last {
            let _ = session.deliver(presence_to(&p, from.as_str()));
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
                    st.0.lock().directed.insert(ev.to.to_string());
                }
                Some("unavailable") => {
                    st.0.lock().directed.remove(ev.to.as_str());
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
    out.set_attr("from", user.as_str());
    out.set_attr("to", contact.as_str());
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
            send(server, presence_to(&p, to.as_str())).await;
        }
    }
}

/// Sends unavailable from each available resource of `user` to `to`.
async fn send_unavailable(server: &Arc<Server>, user: &BareJid, to: &BareJid) {
    for s in server.sessions().resources(user) {
        if s.priority().is_some() {
            let p = Element::new("presence", "jabber:client")
                .with_attr("type", "unavailable")
                .with_attr("from", s.jid().as_str())
                .with_attr("to", to.as_str());
            send(server, p).await;
        }
    }
}

/// Delivers to every available resource of a local account.
fn deliver_available(server: &Server, account: &BareJid, stanza: &Element) {
    for s in server.sessions().resources(account) {
        if s.priority().is_some() {
            let _ = s.deliver(stanza.clone());
        }
    }
}

/// Presence addressed to a local account.
async fn inbound(server: &Arc<Server>, ev: &InboundPresence) -> Flow {
    let Some(Ok(from)) = ev.stanza.attr("from").map(Jid::new) else {
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
    delivered.set_attr("from", contact.as_str());
    delivered.set_attr("to", account.as_str());
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
                        .add_pending_in(d, u, &contact_s, &delivered.to_xml(""))
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
                let p = Element::new("presence", "jabber:client")
                    .with_attr("type", "unavailable")
                    .with_attr("from", contact.as_str())
                    .with_attr("to", account.as_str());
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
            send(server, presence_to(&p, prober.as_str())).await;
        }
    }
    if !any {
        let p = Element::new("presence", "jabber:client")
            .with_attr("type", "unavailable")
            .with_attr("from", account.as_str())
            .with_attr("to", prober.as_str());
        send(server, p).await;
    }
}
