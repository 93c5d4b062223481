//! XEP-0012 Last Activity, answered by the server:
//!
//! * to the server (§5): its uptime in seconds;
//! * to an account's bare JID (§3): the seconds since its last session ended, with the status
//!   text of the last unavailable presence that session sent, or `seconds='0'` while the
//!   account has an available resource. Only the account itself and contacts with a `from` or
//!   `both` subscription may ask (§3, §8: "MUST NOT return last activity information to an
//!   entity that is not authorized to view the user's presence"); others get `forbidden`.
//!   An account that never logged out since this module was enabled has no record:
//!   `service-unavailable` (what Prosody and ejabberd answer; the XEP names no condition).
//! * to a full JID (§4): routed to the client by the core, as the XEP says.
//!
//! When the last session of an account ends, `("last", "")` is set to
//! `<last xmlns='jabber:iq:last' stamp='UNIX seconds' login='UNIX seconds' status='...'/>`:
//! `login` is the latest bind among the sessions of that stretch online (a session closing
//! while others stay hands its bind time to them), for the administration's "last login
//! time" ([`last_login`], XEP-0133 §4.12).

use parking_lot::Mutex;
use rookery_core::events::{PresenceBroadcast, SessionClosed};
use rookery_core::Order;
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Server, Spec,
};
use rookery_stanza::{ns, BareJid, PresenceType, StanzaError, StanzaErrorCondition};
use rookery_storage::{StorageError, Subscription};
use rookery_xml::Element;
use std::time::{SystemTime, UNIX_EPOCH};

pub const NS: &str = "jabber:iq:last";
/// The user-data store holding one record per account under the key "".
pub const STORE: &str = "last";

pub struct Last;

/// Session state: the status text of the unavailable presence the session sent last, cleared
/// when it becomes available again.
#[derive(Default)]
struct LastStatus(Mutex<Option<String>>);

/// Session state: the latest bind time of the account's sessions that closed while this one
/// stayed (so the account's last login survives them).
#[derive(Default)]
struct LaterLogin(std::sync::atomic::AtomicU64);

/// The latest login `session` stands for: its own bind, or a later one it was handed.
fn latest_login(session: &rookery_core::SessionHandle) -> u64 {
    let handed = session
        .extension::<LaterLogin>()
        .map_or(0, |l| l.0.load(std::sync::atomic::Ordering::Relaxed));
    session.bound_at().max(handed)
}

/// When `user` last logged in (seconds since the Unix epoch): the latest bind of its
/// sessions while it is online, else the one recorded when it went offline; `None` when it
/// never logged out since the module was enabled.
pub async fn last_login(server: &Server, user: &BareJid) -> Result<Option<u64>, StorageError> {
    let online = server
        .sessions()
        .resources(user)
        .iter()
        .map(|s| latest_login(s))
        .max();
    if online.is_some() {
        return Ok(online);
    }
    let Some(node) = user.node() else {
        return Ok(None);
    };
    let stored = server
        .storage()
        .user_data
        .get_data(user.domain().as_str(), node.as_str(), STORE, "")
        .await?;
    Ok(stored
        .and_then(|xml| rookery_xml::parse_element(&xml).ok())
        .and_then(|r| r.attr("login").and_then(|l| l.parse().ok())))
}

impl Module for Last {
    const NAME: &'static str = "last";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0012",
        title: "Last Activity",
        version: "2.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Host, iq_fn(uptime))?;
        host.iq_handler(NS, IqScope::Account, iq_fn(account))?;
        // Before the presence module broadcasts (and so before offline replay); only observes.
        host.hook::<PresenceBroadcast, _, _>(
            Order::normal().before("presence").before("offline"),
            |_server, ev| async move {
                let session = &ev.session;
                if ev.stanza.presence_type() == Some(PresenceType::Unavailable) {
                    let status = ev
                        .stanza
                        .get_child("status", ns::CLIENT)
                        .map(Element::text)
                        .unwrap_or_default();
                    *session
                        .extension_or_insert_with(LastStatus::default)
                        .0
                        .lock() = Some(status);
                } else if let Some(last) = session.extension::<LastStatus>() {
                    // Available again: that status is not the one to keep. (Nothing is
                    // attached to sessions that never sent unavailable presence.)
                    *last.0.lock() = None;
                }
                Flow::Continue
            },
        );
        host.hook::<SessionClosed, _, _>(Order::normal(), |server, ev| async move {
            let user = ev.session.jid().to_bare();
            let login = latest_login(&ev.session);
            let remaining = server.sessions().resources(&user);
            if !remaining.is_empty() {
                for s in remaining.iter() {
                    s.extension_or_insert_with(LaterLogin::default)
                        .0
                        .fetch_max(login, std::sync::atomic::Ordering::Relaxed);
                }
                return Flow::Continue;
            }
            let status = ev
                .session
                .extension::<LastStatus>()
                .and_then(|s| s.0.lock().clone());
            record_logout(&server, &user, login, status.as_deref()).await;
            Flow::Continue
        });
        Ok(())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn record_logout(server: &Server, user: &BareJid, login: u64, status: Option<&str>) {
    let Some(node) = user.node() else {
        return;
    };
    let mut el = Element::new("last", NS)
        .with_attr("stamp", now().to_string())
        .with_attr("login", login.to_string());
    if let Some(s) = status.filter(|s| !s.is_empty()) {
        el.set_attr("status", s);
    }
    let xml = el.to_xml("");
    // The status came in one stanza, so the record is never larger than one.
    let max = server.config().limits.max_stanza_bytes.max(xml.len());
    let result = server
        .storage()
        .user_data
        .set_data(
            user.domain().as_str(),
            node.as_str(),
            STORE,
            "",
            Some(&xml),
            max,
        )
        .await;
    match result {
        Ok(()) => {}
        // The account was just deleted (its sessions end after that).
        Err(StorageError::NotFound) => {}
        Err(e) => tracing::error!(error = %e, account = %user, "last activity not recorded"),
    }
}

fn query(seconds: u64, status: Option<&str>) -> Element {
    let mut q = Element::new("query", NS).with_attr("seconds", seconds.to_string());
    if let Some(s) = status.filter(|s| !s.is_empty()) {
        q.push_text(s);
    }
    q
}

fn check_query(req: &IqRequest) -> Result<(), StanzaError> {
    req.require_get()?;
    if req.payload.name() != "query" {
        return Err(StanzaError::bad_request(
            "expected <query xmlns='jabber:iq:last'/>",
        ));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> StanzaError {
    tracing::error!(error = %e, "last activity look-up failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

async fn uptime(req: IqRequest) -> IqResult {
    check_query(&req)?;
    Ok(Some(query(req.server.uptime().as_secs(), None)))
}

async fn account(req: IqRequest) -> IqResult {
    check_query(&req)?;
    let user = req.to.to_bare();
    let Some(node) = user.node() else {
        return Err(StanzaError::service_unavailable());
    };
    let domain = user.domain().as_str();
    let requester = req.from.to_bare();
    if requester != user {
        let item = req
            .server
            .storage()
            .roster
            .roster_item(domain, node.as_str(), requester.as_str())
            .await
            .map_err(internal)?;
        let allowed =
            item.is_some_and(|i| matches!(i.subscription, Subscription::From | Subscription::Both));
        if !allowed {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("only contacts subscribed to the account's presence may ask"));
        }
    }
    let available = req
        .server
        .sessions()
        .resources(&user)
        .iter()
        .any(|s| s.priority().is_some());
    if available {
        return Ok(Some(query(0, None)));
    }
    let stored = req
        .server
        .storage()
        .user_data
        .get_data(domain, node.as_str(), STORE, "")
        .await
        .map_err(internal)?;
    let Some(xml) = stored else {
        return Err(StanzaError::service_unavailable());
    };
    let record = rookery_xml::parse_element(&xml).map_err(internal)?;
    let stamp: u64 = record
        .attr("stamp")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| internal("stored record has no valid stamp"))?;
    Ok(Some(query(
        now().saturating_sub(stamp),
        record.attr("status"),
    )))
}
