//! XEP-0280 Message Carbons: every resource of an account that enables carbons sees the
//! account's conversations, including messages another resource sent or received.
//!
//! * Enabling and disabling (§4, §5) is per session, an IQ set to the account; repeating
//!   either is answered with a result (§10.1). Only the account itself may change it.
//! * Eligibility (§6.1, the recommended rules): no `<private/>` (and no XEP-0334
//!   `<no-copy/>` hint, which asks for the same thing); then type `chat`, type `normal` with
//!   a body or with IM payloads (receipts, chat states, chat markers), XEP-0249 and mediated
//!   invitations, private messages *to* a MUC participant but not *from* one (recognised by
//!   the `muc#user` `<x/>`), never `groupchat` or `headline`. An `error` message is eligible
//!   when it answers a message that was carbon-copied: each session remembers the last
//!   [`RECENT`] (peer, id) pairs it sent or received while copies were made, and an error
//!   between the same peer and id is copied too.
//! * Sent copies (§8) go to the sender's other carbon-enabled resources, whether or not the
//!   sender enabled carbons. Received copies (§7) go to every carbon-enabled resource that
//!   did not get the message under RFC 6121 rules — for full-JID and bare-JID messages
//!   alike, and also when no resource could take it (then the copies go alongside offline
//!   storage to enabled resources with a negative priority or no presence).
//! * The server leaves `<private/>` in the message: §9 lifted the old requirement to strip
//!   it, since stripping let a sender silently change how a message is routed.
//! * Messages between resources of one account are not copied: they are not a conversation
//!   with a contact, and copying them would show the same message twice.
//! * Copies are `from` the account's bare JID and `to` the receiving full JID, wrapped per
//!   XEP-0297, keeping the original `type` (§7, §8).
//! * Forgery (§11): a carbon is only trustworthy because it comes from the account's bare JID,
//!   which only the server can use. A client that sends a message carrying `<sent/>` or
//!   `<received/>` of this namespace is refused with `not-acceptable` and nothing is
//!   delivered; and any such message reaching an account from someone other than the account
//!   itself (another server, later) is dropped before delivery.

use parking_lot::Mutex;
use rookery_core::events::{
    BindInline, ClientStanza, LocalDelivery, MessageDelivered, UndeliverableMessage,
};
use rookery_core::Order;
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Server,
    SessionHandle, Spec,
};
use rookery_stanza::{
    ns, BareJid, FullJid, Jid, MessageType, SharedStanza, Stanza, StanzaError,
    StanzaErrorCondition, StanzaKind,
};
use rookery_xml::Element;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const NS: &str = "urn:xmpp:carbons:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_CONFERENCE: &str = "jabber:x:conference";
/// Payload namespaces "typically used in IM" (§6.1): XEP-0184, XEP-0085, XEP-0333.
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
];
/// How many copied exchanges a session remembers to recognise errors answering them.
pub const RECENT: usize = 32;

pub struct Carbons;

/// Per-session state.
#[derive(Default)]
pub struct CarbonState {
    enabled: AtomicBool,
    /// (peer bare JID, message id) of recent copied messages this session sent or received.
    recent: Mutex<VecDeque<(String, String)>>,
}

impl CarbonState {
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    fn remember(&self, peer: &str, id: &str) {
        let mut r = self.recent.lock();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back((peer.to_owned(), id.to_owned()));
    }
    fn knows(&self, peer: &str, id: &str) -> bool {
        self.recent.lock().iter().any(|(p, i)| p == peer && i == id)
    }
}

impl Module for Carbons {
    const NAME: &'static str = "carbons";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0280",
        title: "Message Carbons",
        version: "1.0.1",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))?;
        // XEP-0386: <enable xmlns='urn:xmpp:carbons:2'/> inside a Bind 2 request.
        host.add_bind_inline_feature(NS);
        host.hook::<BindInline, _, _>(Order::normal(), |_server, ev| async move {
            if ev.request.ns() != NS || ev.request.name() != "enable" {
                return Flow::Continue;
            }
            ev.session
                .extension_or_insert_with(CarbonState::default)
                .enabled
                .store(true, Ordering::Relaxed);
            Flow::Stop
        });
        // Before everything else: a forged carbon is refused before any other module acts on it.
        host.filter::<ClientStanza, _, _>(
            Order::first().after("register"),
            |server, c| async move {
                if carries_carbon(&c.stanza) {
                    server.bounce(
                        &c.stanza,
                        StanzaError::new(StanzaErrorCondition::NotAcceptable)
                            .with_text("carbons are sent by the server only"),
                    );
                    return None;
                }
                Some(c)
            },
        );
        host.filter::<LocalDelivery, _, _>(Order::first(), |_server, d| async move {
            let from_account = || {
                d.stanza
                    .from()
                    .is_some_and(|f| f.resource().is_none() && f.to_bare() == d.to.to_bare())
            };
            (!carries_carbon(&d.stanza) || from_account()).then_some(d)
        });
        // Last: only what every other filter let through is copied.
        host.filter::<ClientStanza, _, _>(Order::last(), |server, c| async move {
            sent_copies(&server, &c.from, &c.stanza);
            Some(c)
        });
        host.hook::<MessageDelivered, _, _>(Order::normal(), |_server, ev| async move {
            received_copies(
                &ev.sessions,
                &ev.to,
                ev.from.as_ref(),
                &ev.stanza,
                &ev.delivered_to,
            );
            Flow::Continue
        });
        // Before offline storage, which stops the event.
        host.hook::<UndeliverableMessage, _, _>(
            Order::normal().before("offline"),
            |_server, ev| async move {
                received_copies(&ev.sessions, &ev.to, ev.stanza.from(), &ev.stanza, &[]);
                Flow::Continue
            },
        );
        Ok(())
    }
}

async fn handle(req: IqRequest) -> IqResult {
    if req.to.to_bare() != req.from.to_bare() {
        // §5: changing another account's carbons.
        return Err(StanzaError::new(StanzaErrorCondition::NotAllowed)
            .with_text("carbons are enabled by the account's own resources"));
    }
    req.require_set()?;
    let enable = match req.payload.name() {
        "enable" => true,
        "disable" => false,
        _ => return Err(StanzaError::bad_request("expected <enable/> or <disable/>")),
    };
    let session = req.session().ok_or_else(StanzaError::service_unavailable)?;
    session
        .extension_or_insert_with(CarbonState::default)
        .enabled
        .store(enable, Ordering::Relaxed);
    Ok(None)
}

/// A message with a `<sent/>` or `<received/>` of this namespace at the top level.
fn carries_carbon(stanza: &Element) -> bool {
    stanza.name() == "message" && (stanza.has_child("sent", NS) || stanza.has_child("received", NS))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sent,
    Received,
}

/// §6.1 for messages other than errors.
fn eligible(stanza: &Element, direction: Direction) -> bool {
    if stanza.name() != "message"
        || stanza.has_child("private", NS)
        || stanza.has_child("no-copy", NS_HINTS)
    {
        return false;
    }
    let mtype = MessageType::of(stanza);
    if !matches!(mtype, MessageType::Chat | MessageType::Normal) {
        return false;
    }
    if let Some(x) = stanza.get_child("x", NS_MUC_USER) {
        // A mediated invitation is copied; otherwise this is a MUC private message: copied
        // when a local user sends it, not when received (the MUC service already sends it
        // to every joined client).
        return x.has_child("invite", NS_MUC_USER) || direction == Direction::Sent;
    }
    mtype == MessageType::Chat
        || stanza.has_child("body", ns::CLIENT)
        || stanza.has_child("x", NS_CONFERENCE)
        || stanza.children().any(|c| IM_PAYLOADS.contains(&c.ns()))
}

/// The XEP-0297 wrapped copy, `from` the account, without a `to`: each resource gets it
/// [`readdressed`](SharedStanza::readdressed), so the copies share one element and one
/// serialisation.
fn wrap(kind: &str, account: &str, original: &Element) -> SharedStanza {
    let mut copy = Element::new("message", ns::CLIENT).with_attr("from", account);
    if let Some(t) = original.attr("type") {
        copy.set_attr("type", t);
    }
    SharedStanza::new(
        copy.with_child(
            Element::new(kind, NS)
                .with_child(Element::new("forwarded", NS_FORWARD).with_child(original.clone())),
        ),
    )
}

/// Delivers the wrapped copy of `original` to each of `targets`; whether any got one.
fn deliver_copies<'a>(
    kind: &str,
    account: &str,
    original: &Element,
    targets: impl Iterator<Item = &'a Arc<SessionHandle>>,
) -> bool {
    let mut copy = None;
    for s in targets {
        let copy = copy.get_or_insert_with(|| wrap(kind, account, original));
        let _ = s.deliver(copy.readdressed(Jid::from(s.jid().clone())));
    }
    copy.is_some()
}

fn enabled(s: &SessionHandle) -> bool {
    s.extension::<CarbonState>().is_some_and(|c| c.is_enabled())
}

/// §8: copies of what `from` sent to its other carbon-enabled resources.
fn sent_copies(server: &Server, from: &FullJid, stanza: &Stanza) {
    if stanza.kind() != StanzaKind::Message {
        return;
    }
    // Compared and looked up as borrowed strings: this runs on every message a client sends.
    let account = rookery_stanza::bare_str(from);
    // No 'to' means the account itself (RFC 6120 §10.3.1): nothing to copy.
    let Some(peer) = stanza.to().map(rookery_stanza::bare_str) else {
        return;
    };
    if peer == account {
        return;
    }
    let is_error = stanza.message_type() == Some(MessageType::Error);
    if !is_error && !eligible(stanza, Direction::Sent) {
        return;
    }
    // One registry look-up: the sender is among the account's sessions.
    let resources = server.sessions().resources(from);
    let Some(sender) = resources.iter().find(|s| s.jid() == from) else {
        return;
    };
    let id = stanza.id();
    // An error the client sends back about a message it got as a copied exchange.
    if is_error
        && !id
            .zip(sender.extension::<CarbonState>())
            .is_some_and(|(id, st)| st.knows(peer, id))
    {
        return;
    }
    let copied = deliver_copies(
        "sent",
        account,
        stanza,
        resources
            .iter()
            .filter(|s| s.id() != sender.id() && enabled(s)),
    );
    if let (true, Some(id), false) = (copied, id, is_error) {
        sender
            .extension_or_insert_with(CarbonState::default)
            .remember(peer, id);
    }
}

/// §7: copies of what the account received to its carbon-enabled resources that did not
/// get the message (`delivered_to`).
fn received_copies(
    resources: &[Arc<SessionHandle>],
    account: &BareJid,
    from: Option<&Jid>,
    stanza: &Element,
    delivered_to: &[u64],
) {
    let Some(peer) = from.map(rookery_stanza::bare_str) else {
        return;
    };
    if peer == account.as_str() {
        return;
    }
    let id = stanza.attr("id");
    let is_error = MessageType::of(stanza) == MessageType::Error;
    let ok = if is_error {
        // An error answering a message one of the recipients sent while copies were made.
        id.is_some_and(|id| {
            resources.iter().any(|s| {
                delivered_to.contains(&s.id())
                    && s.extension::<CarbonState>()
                        .is_some_and(|st| st.knows(peer, id))
            })
        })
    } else {
        eligible(stanza, Direction::Received)
    };
    if !ok {
        return;
    }
    let copied = deliver_copies(
        "received",
        account.as_str(),
        stanza,
        resources
            .iter()
            .filter(|s| !delivered_to.contains(&s.id()) && enabled(s)),
    );
    if let (true, Some(id), false) = (copied, id, is_error) {
        for s in resources.iter().filter(|s| delivered_to.contains(&s.id())) {
            s.extension_or_insert_with(CarbonState::default)
                .remember(peer, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::parse_element;

    fn el(xml: &str) -> Element {
        parse_element(xml).expect("xml")
    }

    #[test]
    fn eligibility_follows_section_6_1() {
        use Direction::*;
        let m = |body: &str| el(&format!("<message xmlns='jabber:client' {body}"));
        assert!(eligible(&m("type='chat'/>"), Received));
        assert!(eligible(&m("type='chat'/>"), Sent), "chat without body");
        assert!(eligible(&m("><body>hi</body></message>"), Received));
        assert!(!eligible(&m("/>"), Received), "normal without body");
        assert!(!eligible(
            &m("type='headline'><body>x</body></message>"),
            Sent
        ));
        assert!(!eligible(
            &m("type='groupchat'><body>x</body></message>"),
            Sent
        ));
        assert!(eligible(
            &m("><request xmlns='urn:xmpp:receipts'/></message>"),
            Sent
        ));
        assert!(eligible(
            &m("><active xmlns='http://jabber.org/protocol/chatstates'/></message>"),
            Sent
        ));
        assert!(eligible(
            &m("><displayed xmlns='urn:xmpp:chat-markers:0' id='1'/></message>"),
            Received
        ));
        assert!(eligible(
            &m("><x xmlns='jabber:x:conference' jid='room@muc.x'/></message>"),
            Received
        ));
        let private = "type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>";
        assert!(!eligible(&m(private), Sent));
        assert!(!eligible(&m(private), Received));
        let no_copy = "type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>";
        assert!(!eligible(&m(no_copy), Sent));
        let muc_pm =
            "type='chat'><body>x</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>";
        assert!(eligible(&m(muc_pm), Sent), "PM to a participant");
        assert!(!eligible(&m(muc_pm), Received), "PM from a participant");
        let invite =
            "><x xmlns='http://jabber.org/protocol/muc#user'><invite to='a@b'/></x></message>";
        assert!(eligible(&m(invite), Received), "mediated invitation");
        assert!(
            !eligible(&m("type='error'/>"), Received),
            "errors need context"
        );
    }

    #[test]
    fn copies_are_wrapped_per_xep_0297() {
        let account = BareJid::new("romeo@x").expect("jid");
        let to = FullJid::new("romeo@x/home").expect("jid");
        let original = el("<message xmlns='jabber:client' from='juliet@y/b' to='romeo@x/garden' type='chat'><body>hi</body></message>");
        let c = wrap("received", account.as_str(), &original)
            .readdressed(Jid::from(to))
            .into_element();
        assert_eq!(c.attr("from"), Some("romeo@x"));
        assert_eq!(c.attr("to"), Some("romeo@x/home"));
        assert_eq!(c.attr("type"), Some("chat"));
        let inner = c
            .get_child("received", NS)
            .and_then(|r| r.get_child("forwarded", NS_FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .expect("wrapped");
        assert_eq!(inner, &original);
        let xml = c.to_xml(ns::CLIENT);
        assert!(
            xml.contains(
                "<forwarded xmlns=\"urn:xmpp:forward:0\"><message xmlns=\"jabber:client\""
            ),
            "{xml}"
        );
    }

    #[test]
    fn recent_exchanges_are_bounded() {
        let st = CarbonState::default();
        for i in 0..(RECENT + 5) {
            st.remember("p@x", &i.to_string());
        }
        assert!(!st.knows("p@x", "0"), "oldest forgotten");
        assert!(st.knows("p@x", &(RECENT + 4).to_string()));
        assert!(!st.knows("q@x", &(RECENT + 4).to_string()));
        assert_eq!(st.recent.lock().len(), RECENT);
    }
}
