//! XEP-0357 Push Notifications: an account registers app push services (a JID and a node);
//! when a message reaches the account while no client of it can see it, the server publishes
//! a notification to each of them, so the app's server can wake the phone.
//!
//! * Enabling and disabling (§5, §6) is an IQ set to the account's own bare JID; anyone else
//!   gets `forbidden`. `<enable/>` needs `jid` and `node` (pubsub publishes to a node); an
//!   optional data form whose FORM_TYPE is `pubsub#publish-options` is kept and sent with
//!   every notification. Enabling the same JID and node again replaces the options (§5).
//!   `<disable/>` with a `node` removes that pair, without one every node of the JID (§6).
//!   A registration is stored in the account's user data, so it survives restarts, at most
//!   [`MAX_REGISTRATION_BYTES`] each and `push.max_registrations` per account
//!   (`policy-violation` beyond). The session that enabled it remembers it: that client is
//!   the one to wake when the stream layer holds a message for it. The push service is
//!   whatever the router reaches: an app server's PubSub service on another server (over
//!   federation), a component, or a client of this server; an address nothing reaches is
//!   refused at enable time (`remote-server-not-found` for a domain without a route,
//!   `service-unavailable` for a local bare JID or domain).
//! * Triggers: a message with a body or a Jingle call proposal (XEP-0353; not a chat state or
//!   receipt alone, which are not worth waking a phone for) for an account with no available resource (`UndeliverableMessage`,
//!   before offline storage keeps it) notifies every registration of the account; one held
//!   for a session whose connection is gone while stream management keeps it (`HeldMessage`)
//!   notifies the registrations that session enabled.
//! * A notification (§7) is an IQ set from the account's bare JID: a pubsub publish of a
//!   `<notification/>` carrying a `urn:xmpp:push:summary` form with `message-count` (messages
//!   since a client of the account last connected), `last-message-sender` and, only when
//!   `push.include_body` is set, `last-message-body` (bodies pass through third parties, §9),
//!   a high priority and, for a call proposal, the call marker ([`call_marker`]; both the
//!   Tigase extensions app servers read, advertised on the account); then the stored
//!   publish options.
//! * At most one notification per registration is in flight: messages that arrive meanwhile
//!   are counted and sent as one notification once the service has answered, so a flood of
//!   messages can't make the server flood the push service.
//! * An error answer disables the registration (§7.1), unless its type is `wait` (temporary,
//!   RFC 6120 §8.3.2). No answer within `push.request_timeout_secs` keeps it. A registration
//!   disabled while a notification is queued is not published to (§6).

use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::events::{HeldMessage, SessionBound, UndeliverableMessage};
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqRequestError, IqResult, IqScope, Module, ModuleError,
    Server, Spec,
};
use rookery_core::{Order, Place, Section, SectionDecl};
use rookery_stanza::{ns, BareJid, ErrorType, Jid, MessageType, StanzaError, StanzaErrorCondition};
use rookery_storage::StorageError;
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "urn:xmpp:push:0";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const FORM_SUMMARY: &str = "urn:xmpp:push:summary";
/// The user-data store; keys are `"<jid>\n<node>"` (a JID holds no line feed).
pub const STORE: &str = "push";
/// Largest stored registration (the `<enable/>` with its form, serialized).
pub const MAX_REGISTRATION_BYTES: usize = 4096;
/// A body in a notification is cut to this many characters: it is a preview.
pub const MAX_BODY_CHARS: usize = 256;

pub struct Push;

/// The `[push]` section of the configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Put the body of the last message in notifications. Off by default: notifications pass
    /// through the app's push service and the platform's (XEP-0357 §9).
    pub include_body: bool,
    /// Push services (JID and node) one account may enable.
    pub max_registrations: usize,
    /// How long to wait for the push service to answer a notification.
    pub request_timeout_secs: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            include_body: false,
            max_registrations: 10,
            request_timeout_secs: 30,
        }
    }
}

impl Section for PushConfig {
    const KEY: &'static str = "push";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"[push]
# Push notifications (XEP-0357, the "push" module). Put the body of the last message in
# notifications: off, since they pass through the app's push service and the phone
# platform's.
include_body = false
# Push services (JID and node) one account may enable; more are refused (policy-violation).
max_registrations = 10
# Seconds to wait for a push service to answer a notification. A service that answers with
# an error is disabled for the account; one that does not answer stays enabled.
request_timeout_secs = 30
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_registrations == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_registrations"),
                "must be greater than 0 (disable the push module instead)",
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.request_timeout_secs"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

/// One enabled push service of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub jid: Jid,
    pub node: String,
    /// The publish-options data form, as the client sent it.
    pub options: Option<Element>,
}

impl Registration {
    pub fn key(&self) -> String {
        key(&self.jid, &self.node)
    }
    fn to_xml(&self) -> String {
        let mut el = Element::new("enable", NS)
            .with_attr("jid", self.jid.as_str())
            .with_attr("node", self.node.clone());
        if let Some(form) = &self.options {
            el.push_child(form.clone());
        }
        el.to_xml("")
    }
    fn from_xml(xml: &str) -> Option<Registration> {
        let el = rookery_xml::parse_element(xml).ok()?;
        if !el.is("enable", NS) {
            return None;
        }
        Some(Registration {
            jid: Jid::new(el.attr("jid")?).ok()?,
            node: el.attr("node")?.to_owned(),
            options: el.get_child("x", NS_DATA).cloned(),
        })
    }
}

fn key(jid: &Jid, node: &str) -> String {
    format!("{jid}\n{node}")
}

/// The registrations a session enabled (their keys): the client to wake for held messages.
#[derive(Default)]
struct EnabledHere(Mutex<Vec<String>>);

/// One registration's notifications: what is counted and whether one is being sent.
#[derive(Default)]
struct Slot {
    in_flight: bool,
    /// Something happened since the last notification was sent.
    dirty: bool,
    count: u64,
    last_sender: String,
    last_body: Option<String>,
    /// The call marker of the last call proposal not yet notified ([`call_marker`]).
    call: Option<Element>,
}

/// (account, registration key)
type SlotKey = (BareJid, String);

struct State {
    include_body: bool,
    max_registrations: usize,
    timeout: Duration,
    slots: Mutex<HashMap<SlotKey, Slot>>,
}

impl Module for Push {
    const NAME: &'static str = "push";
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0357",
            title: "Push Notifications",
            version: "0.4.1",
        },
        Spec {
            id: "XEP-0353",
            title: "Jingle Message Initiation (server side: proposals wake a phone; delivered, carbon-copied and archived like chat)",
            version: "0.6.0",
        },
    ];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<PushConfig>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let cfg = host.section::<PushConfig>();
        let state = Arc::new(State {
            include_body: cfg.include_body,
            max_registrations: cfg.max_registrations,
            timeout: Duration::from_secs(cfg.request_timeout_secs),
            slots: Mutex::new(HashMap::new()),
        });
        // Push is something the server does for the account: advertised on the account's
        // JID (§4), where clients look for it.
        host.add_account_feature(NS);
        host.add_account_feature(NS_PUSH_PRIORITY);
        host.add_account_feature(NS_PUSH_JINGLE);
        let s = state.clone();
        host.iq_handler(
            NS,
            IqScope::Account,
            iq_fn(move |req| {
                let s = s.clone();
                async move { handle(&s, req).await }
            }),
        )?;
        // Before offline storage, which stops the event; after the carbons module's copies.
        let s = state.clone();
        host.hook::<UndeliverableMessage, _, _>(
            Order::normal().before("offline").after("carbons"),
            move |server, ev| {
                let s = s.clone();
                async move {
                    if worth_waking(&ev.stanza) {
                        match load(&server, &ev.to).await {
                            Ok(regs) => {
                                for r in regs {
                                    let sender = ev.stanza.from().map(Jid::as_str);
                                    s.notify(&server, &ev.to, r.key(), sender, &ev.stanza);
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "push registrations unreadable"),
                        }
                    }
                    Flow::Continue
                }
            },
        );
        let s = state.clone();
        host.hook::<HeldMessage, _, _>(Order::normal(), move |server, ev| {
            let s = s.clone();
            async move {
                let Some(here) = ev.session.extension::<EnabledHere>() else {
                    return Flow::Continue;
                };
                let keys = here.0.lock().clone();
                if keys.is_empty() || !worth_waking(&ev.stanza) {
                    return Flow::Continue;
                }
                let account = ev.session.jid().to_bare();
                // Only what is still enabled (another session may have disabled it).
                match load(&server, &account).await {
                    Ok(regs) => {
                        for r in regs.into_iter().filter(|r| keys.contains(&r.key())) {
                            // A held stanza's `from` is never rewritten per recipient.
                            let sender = ev.stanza.attr("from");
                            s.notify(&server, &account, r.key(), sender, &ev.stanza);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "push registrations unreadable"),
                }
                Flow::Continue
            }
        });
        // A client of the account is back: the count of unseen messages starts again.
        host.hook::<SessionBound, _, _>(Order::normal(), move |_server, ev| {
            state.reset(&ev.session.jid().to_bare());
            async { Flow::Continue }
        });
        Ok(())
    }
}

/// Jingle Message Initiation (XEP-0353): a call proposal.
const NS_JMI: &str = "urn:xmpp:jingle-message:0";
/// The RTP application of a proposed call (XEP-0167), whose `media` names audio or video.
const NS_JINGLE_RTP: &str = "urn:xmpp:jingle:apps:rtp:1";
/// A notification's priority, read by app push servers (Tigase's extension to XEP-0357).
pub const NS_PUSH_PRIORITY: &str = "tigase:push:priority:0";
/// A notification's call marker ([`call_marker`]; Tigase's extension to XEP-0357).
pub const NS_PUSH_JINGLE: &str = "tigase:push:jingle:0";

/// A message with a body, or a call proposal (XEP-0353 §3.2: an incoming call must ring a
/// phone whose app is asleep); not chat states or receipts alone.
fn worth_waking(stanza: &Element) -> bool {
    matches!(
        MessageType::of(stanza),
        MessageType::Chat | MessageType::Normal
    ) && (stanza.has_child("body", ns::CLIENT) || stanza.has_child("propose", NS_JMI))
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("not an account")]
    NoAccount,
}

fn account_parts(account: &BareJid) -> Result<(&str, &str), LoadError> {
    let node = account.node().ok_or(LoadError::NoAccount)?;
    Ok((account.domain().as_str(), node.as_str()))
}

/// The account's registrations; an unreadable stored one is logged and skipped.
async fn load(server: &Server, account: &BareJid) -> Result<Vec<Registration>, LoadError> {
    let (domain, node) = account_parts(account)?;
    let store = &server.storage().user_data;
    let mut out = Vec::new();
    for k in store.data_keys(domain, node, STORE).await? {
        if let Some(r) = load_one(server, account, &k).await? {
            out.push(r);
        }
    }
    Ok(out)
}

async fn load_one(
    server: &Server,
    account: &BareJid,
    key: &str,
) -> Result<Option<Registration>, LoadError> {
    let (domain, node) = account_parts(account)?;
    let Some(xml) = server
        .storage()
        .user_data
        .get_data(domain, node, STORE, key)
        .await?
    else {
        return Ok(None);
    };
    let reg = Registration::from_xml(&xml);
    if reg.is_none() {
        tracing::error!(account = %account, "stored push registration is corrupt");
    }
    Ok(reg)
}

async fn remove(server: &Server, account: &BareJid, key: &str) -> Result<(), LoadError> {
    let (domain, node) = account_parts(account)?;
    server
        .storage()
        .user_data
        .set_data(domain, node, STORE, key, None, MAX_REGISTRATION_BYTES)
        .await?;
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> StanzaError {
    tracing::error!(error = %e, "push storage failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

fn service_jid(payload: &Element) -> Result<Jid, StanzaError> {
    let jid = payload
        .attr("jid")
        .ok_or_else(|| StanzaError::bad_request("the 'jid' of the push service is required"))?;
    Jid::new(jid).map_err(|_| StanzaError::bad_request("the 'jid' is not a valid JID"))
}

/// Whether notifications could reach a push service at `jid` today; refused at enable time
/// rather than stored and disabled by the first notification's error. The router says
/// whether the domain has a route (a service domain, a component, a remote server); on a
/// host of this server only a client (a full JID) can receive the publish.
fn reachable(server: &Server, jid: &Jid) -> Result<(), StanzaError> {
    server
        .check_route(jid.domain().as_str())
        .map_err(|e| e.with_text("the push service's domain cannot be reached"))?;
    if server.serves(jid.domain().as_str()) && jid.resource().is_none() {
        return Err(StanzaError::service_unavailable()
            .with_text("no push service at this address: only a client's full JID"));
    }
    Ok(())
}

/// The FORM_TYPE of a data form, if it has one.
fn form_type(form: &Element) -> Option<String> {
    form.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}

async fn handle(state: &State, req: IqRequest) -> IqResult {
    let account = req.from.to_bare();
    if req.to.to_bare() != account {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
            .with_text("push notifications are enabled by the account itself"));
    }
    req.require_set()?;
    let server = &req.server;
    match req.payload.name() {
        "enable" => {
            let jid = service_jid(&req.payload)?;
            let node = match req.payload.attr("node") {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => {
                    return Err(StanzaError::bad_request(
                        "a 'node' is required: notifications are published to it",
                    ))
                }
            };
            let mut forms = req.payload.children().filter(|c| c.is("x", NS_DATA));
            let options = forms.next().cloned();
            if forms.next().is_some() {
                return Err(StanzaError::bad_request("at most one publish-options form"));
            }
            if let Some(form) = &options {
                if form_type(form).as_deref() != Some(FORM_PUBLISH_OPTIONS) {
                    return Err(StanzaError::bad_request(format!(
                        "the form's FORM_TYPE must be {FORM_PUBLISH_OPTIONS}"
                    )));
                }
                if form.attr("type").is_some_and(|t| t != "submit") {
                    return Err(StanzaError::bad_request(
                        "the form must be of type 'submit'",
                    ));
                }
            }
            reachable(server, &jid)?;
            let reg = Registration { jid, node, options };
            let xml = reg.to_xml();
            if xml.len() > MAX_REGISTRATION_BYTES {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("the registration is too large"));
            }
            let existing = load(server, &account).await.map_err(internal)?;
            let k = reg.key();
            if !existing.iter().any(|r| r.key() == k) && existing.len() >= state.max_registrations {
                return Err(StanzaError::new(StanzaErrorCondition::PolicyViolation)
                    .with_text("too many push services enabled for this account"));
            }
            let (domain, user) = account_parts(&account).map_err(internal)?;
            server
                .storage()
                .user_data
                .set_data(domain, user, STORE, &k, Some(&xml), MAX_REGISTRATION_BYTES)
                .await
                .map_err(internal)?;
            if let Some(session) = req.session() {
                let here = session.extension_or_insert_with(EnabledHere::default);
                let mut keys = here.0.lock();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            Ok(None)
        }
        "disable" => {
            let jid = service_jid(&req.payload)?;
            let node = req.payload.attr("node");
            let existing = load(server, &account).await.map_err(internal)?;
            for r in existing
                .iter()
                .filter(|r| r.jid == jid && node.is_none_or(|n| n == r.node))
            {
                let k = r.key();
                remove(server, &account, &k).await.map_err(internal)?;
                state.forget(&(account.clone(), k.clone()));
                for s in server.sessions().resources(&account) {
                    if let Some(here) = s.extension::<EnabledHere>() {
                        here.0.lock().retain(|x| *x != k);
                    }
                }
            }
            // Disabling what is not enabled leaves it disabled: not an error.
            Ok(None)
        }
        _ => Err(StanzaError::bad_request("expected <enable/> or <disable/>")),
    }
}

impl State {
    /// Counts a message for a registration and sends a notification unless one is in
    /// flight (then the one after it carries this message too). `sender` is the message's
    /// `from`.
    fn notify(
        self: &Arc<Self>,
        server: &Arc<Server>,
        account: &BareJid,
        key: String,
        sender: Option<&str>,
        msg: &Element,
    ) {
        let slot_key = (account.clone(), key);
        {
            let mut slots = self.slots.lock();
            let slot = slots.entry(slot_key.clone()).or_default();
            slot.count += 1;
            slot.dirty = true;
            slot.last_sender = sender.unwrap_or_default().to_owned();
            slot.last_body = self.include_body.then(|| {
                let body = msg
                    .get_child("body", ns::CLIENT)
                    .map(|b| b.text())
                    .unwrap_or_default();
                body.chars().take(MAX_BODY_CHARS).collect()
            });
            if let Some(marker) = call_marker(msg) {
                slot.call = Some(marker);
            }
            if slot.in_flight {
                return;
            }
            slot.in_flight = true;
        }
        // Spawned: the hook runs in the sender's task, which must not wait for the service.
        let state = self.clone();
        let server = server.clone();
        tokio::spawn(async move { state.publish_loop(&server, slot_key).await });
    }

    async fn publish_loop(&self, server: &Arc<Server>, slot_key: SlotKey) {
        let (account, key) = &slot_key;
        loop {
            let (count, sender, body, call) = {
                let mut slots = self.slots.lock();
                let Some(slot) = slots.get_mut(&slot_key) else {
                    return;
                };
                if !slot.dirty {
                    slot.in_flight = false;
                    return;
                }
                slot.dirty = false;
                (
                    slot.count,
                    slot.last_sender.clone(),
                    slot.last_body.clone(),
                    slot.call.take(),
                )
            };
            // Still enabled? (§6: never publish to a service that is not.)
            let reg = match load_one(server, account, key).await {
                Ok(Some(r)) => r,
                Ok(None) => return self.forget(&slot_key),
                Err(e) => {
                    tracing::error!(error = %e, "push registration unreadable");
                    return self.forget(&slot_key);
                }
            };
            let iq = notification(account, &reg, count, &sender, body.as_deref(), call);
            match server.send_iq_request(iq, self.timeout).await {
                Ok(_) => {}
                Err(IqRequestError::Error(e)) if e.error_type != ErrorType::Wait => {
                    tracing::info!(account = %account, service = %reg.jid, error = %e,
                        "push service refused a notification: disabled");
                    if let Err(e) = remove(server, account, key).await {
                        tracing::error!(error = %e, "could not disable a push registration");
                    }
                    return self.forget(&slot_key);
                }
                Err(IqRequestError::Error(e)) => {
                    tracing::debug!(account = %account, service = %reg.jid, error = %e,
                        "push service busy: kept");
                }
                Err(IqRequestError::Timeout(_)) => {
                    tracing::debug!(account = %account, service = %reg.jid,
                        "push service did not answer: kept");
                }
                Err(e @ IqRequestError::NotARequest) => {
                    tracing::error!(error = %e, "push notification not sendable");
                    return self.forget(&slot_key);
                }
            }
        }
    }

    fn forget(&self, slot_key: &SlotKey) {
        self.slots.lock().remove(slot_key);
    }

    /// A client of the account connected: it sees its messages now.
    fn reset(&self, account: &BareJid) {
        self.slots.lock().retain(|(a, _), slot| {
            if a != account {
                return true;
            }
            slot.count = 0;
            slot.dirty = false;
            slot.call = None;
            slot.in_flight
        });
    }
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_child(Element::new("value", NS_DATA).with_text(value))
}

/// The marker that tells an app's push server a notification is an incoming call, so it
/// wakes the phone at once and rings (a VoIP push on iOS, a high-priority message on
/// Android) instead of showing a message: `<jingle xmlns='tigase:push:jingle:0'
/// action='propose' sid='…'>` with a `<media/>` per proposed RTP description, the form
/// Tigase's push component and the apps that speak to it (Siskin, Monal, Conversations' own
/// app servers read the summary only and ignore it) use. `None` for anything but a call
/// proposal (XEP-0353 §3.2).
fn call_marker(msg: &Element) -> Option<Element> {
    let propose = msg.get_child("propose", NS_JMI)?;
    let mut marker = Element::new("jingle", NS_PUSH_JINGLE).with_attr("action", "propose");
    if let Some(id) = propose.attr("id") {
        marker.set_attr("sid", id);
    }
    for media in propose
        .children()
        .filter(|d| d.name() == "description" && d.ns() == NS_JINGLE_RTP)
        .filter_map(|d| d.attr("media"))
        .take(4)
    {
        marker.push_child(Element::new("media", NS_PUSH_JINGLE).with_text(media));
    }
    Some(marker)
}

/// The publish of §7 for one registration. Every notification is sent with high priority
/// (`tigase:push:priority:0`): it is only ever sent for a message with a body or a call, the
/// things a person waits for, and a push server delivers a normal-priority one to a sleeping
/// phone late or not at all. `call` is a [`call_marker`].
pub fn notification(
    account: &BareJid,
    reg: &Registration,
    count: u64,
    sender: &str,
    body: Option<&str>,
    call: Option<Element>,
) -> Element {
    let mut form = Element::new("x", NS_DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", FORM_SUMMARY).with_attr("type", "hidden"))
        .with_child(field("message-count", &count.to_string()))
        .with_child(field("last-message-sender", sender));
    if let Some(b) = body {
        form.push_child(field("last-message-body", b));
    }
    let mut payload = Element::new("notification", NS)
        .with_child(form)
        .with_child(Element::new("priority", NS_PUSH_PRIORITY).with_text("high"));
    if let Some(marker) = call {
        payload.push_child(marker);
    }
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(
        Element::new("publish", NS_PUBSUB)
            .with_attr("node", reg.node.clone())
            .with_child(Element::new("item", NS_PUBSUB).with_child(payload)),
    );
    if let Some(options) = &reg.options {
        pubsub.push_child(Element::new("publish-options", NS_PUBSUB).with_child(options.clone()));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("from", account.as_str())
        .with_attr("to", reg.jid.as_str())
        .with_child(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_call_proposals_wake_a_phone() {
        let parse = |x: &str| rookery_xml::parse_element(x).expect("xml");
        let body = parse("<message xmlns='jabber:client' type='chat'><body>hi</body></message>");
        let call = parse(
            "<message xmlns='jabber:client' type='chat'><propose xmlns='urn:xmpp:jingle-message:0' id='c1'>\
             <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/></propose>\
             <store xmlns='urn:xmpp:hints'/></message>",
        );
        let retract = parse(
            "<message xmlns='jabber:client' type='chat'><retract xmlns='urn:xmpp:jingle-message:0' id='c1'/></message>",
        );
        let state = parse(
            "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        assert!(worth_waking(&body));
        assert!(worth_waking(&call));
        assert!(!worth_waking(&retract));
        assert!(!worth_waking(&state));
    }

    #[test]
    fn registrations_round_trip_through_storage_form() {
        let form = rookery_xml::parse_element(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3</value></field></x>",
        )
        .expect("xml");
        let r = Registration {
            jid: Jid::new("push.example/app").expect("jid"),
            node: "n 1".into(),
            options: Some(form),
        };
        assert_eq!(Registration::from_xml(&r.to_xml()), Some(r.clone()));
        assert_eq!(r.key(), "push.example/app\nn 1");
        assert_eq!(
            Registration::from_xml("<enable xmlns='urn:xmpp:push:0'/>"),
            None
        );
        assert_eq!(Registration::from_xml("not xml"), None);
    }

    #[test]
    fn notification_carries_the_summary_and_options() {
        let r = Registration {
            jid: Jid::new("push@x/app").expect("jid"),
            node: "N".into(),
            options: Some(Element::new("x", NS_DATA).with_attr("type", "submit")),
        };
        let account = BareJid::new("a@x").expect("jid");
        let iq = notification(&account, &r, 3, "b@x/r", None, None);
        assert_eq!(iq.attr("from"), Some("a@x"));
        assert_eq!(iq.attr("to"), Some("push@x/app"));
        let pubsub = iq.get_child("pubsub", NS_PUBSUB).expect("pubsub");
        let publish = pubsub.get_child("publish", NS_PUBSUB).expect("publish");
        assert_eq!(publish.attr("node"), Some("N"));
        let form = publish
            .get_child("item", NS_PUBSUB)
            .and_then(|i| i.get_child("notification", NS))
            .and_then(|n| n.get_child("x", NS_DATA))
            .expect("form");
        assert_eq!(form_type(form).as_deref(), Some(FORM_SUMMARY));
        let vars: Vec<_> = form.children().filter_map(|f| f.attr("var")).collect();
        assert_eq!(vars, ["FORM_TYPE", "message-count", "last-message-sender"]);
        assert!(pubsub.has_child("publish-options", NS_PUBSUB));
        let with_body = notification(&account, &r, 1, "b@x/r", Some("hi"), None);
        assert!(with_body.to_string().contains("last-message-body"));
        let notification_of = |iq: &Element| {
            iq.get_child("pubsub", NS_PUBSUB)
                .and_then(|p| p.get_child("publish", NS_PUBSUB))
                .and_then(|p| p.get_child("item", NS_PUBSUB))
                .and_then(|i| i.get_child("notification", NS))
                .cloned()
                .expect("notification")
        };
        let plain = notification_of(&iq);
        assert_eq!(
            plain
                .get_child("priority", NS_PUSH_PRIORITY)
                .map(|p| p.text()),
            Some("high".to_owned())
        );
        assert!(!plain.has_child("jingle", NS_PUSH_JINGLE));
    }

    #[test]
    fn a_call_proposal_carries_the_call_marker() {
        let parse = |x: &str| rookery_xml::parse_element(x).expect("xml");
        let call = parse(
            "<message xmlns='jabber:client' type='chat'><propose xmlns='urn:xmpp:jingle-message:0' id='c1'>\
             <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='audio'/>\
             <description xmlns='urn:xmpp:jingle:apps:rtp:1' media='video'/></propose></message>",
        );
        let marker = call_marker(&call).expect("a call");
        assert_eq!(marker.attr("action"), Some("propose"));
        assert_eq!(marker.attr("sid"), Some("c1"));
        let media: Vec<String> = marker.children().map(|m| m.text()).collect();
        assert_eq!(media, ["audio", "video"]);
        let body = parse("<message xmlns='jabber:client' type='chat'><body>hi</body></message>");
        assert!(call_marker(&body).is_none());
        let r = Registration {
            jid: Jid::new("push@x/app").expect("jid"),
            node: "N".into(),
            options: None,
        };
        let account = BareJid::new("a@x").expect("jid");
        let iq = notification(&account, &r, 1, "b@x/r", None, Some(marker));
        let s = iq.to_string();
        assert!(
            s.contains("tigase:push:jingle:0") && s.contains("c1"),
            "{s}"
        );
    }
}
