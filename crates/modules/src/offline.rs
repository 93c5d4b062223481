//! XEP-0160 offline messages: a `normal` or `chat` message with a body for an account with no
//! available resource is stored durably (stamped per XEP-0203) and delivered when the account
//! next sends available presence with a non-negative priority. A stored message is removed
//! only after the connection it was delivered on has written and flushed it, so a crash or a
//! dropped connection can repeat a message but never lose one.

use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::events::{Bind2Bound, PresenceBroadcast, UndeliverableMessage};
use rookery_core::Order;
use rookery_core::{
    Flow, HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Server, SessionHandle,
    Spec,
};
use rookery_stanza::{BareJid, MessageType, PresenceType, Stanza};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;

pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// Messages delivered per batch at login.
const BATCH: usize = 100;
/// How long a delivery may take to be written before the batch is left for next time.
const WRITE_WAIT: Duration = Duration::from_secs(60);

pub struct Offline;

/// `limits.max_offline_messages`, in the `[limits]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct OfflineLimits {
    /// Messages kept offline for one account; beyond, `service-unavailable`.
    pub max_offline_messages: usize,
}

impl Default for OfflineLimits {
    fn default() -> Self {
        Self {
            max_offline_messages: 1000,
        }
    }
}

impl Section for OfflineLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    // Read at each use: a reload applies a new value.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# Messages kept for an offline account; beyond, senders get service-unavailable.
max_offline_messages = 1000
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::require_positive(
            key,
            "max_offline_messages",
            self.max_offline_messages as u64,
        )
    }
}

impl Module for Offline {
    const NAME: &'static str = "offline";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<OfflineLimits>()];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0160",
            title: "Best Practices for Handling Offline Messages",
            version: "1.0.1",
        },
        Spec {
            id: "XEP-0203",
            title: "Delayed Delivery",
            version: "2.0",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature("msgoffline");
        let domain = host.domain().to_owned();
        host.hook::<UndeliverableMessage, _, _>(Order::normal(), move |server, ev| {
            let domain = domain.clone();
            async move { store(&server, &domain, &ev.to, &ev.stanza).await }
        });
        // After the presence module's broadcast, so contacts see the account come online
        // before its backlog is replayed.
        host.hook::<PresenceBroadcast, _, _>(
            Order::normal().after("presence"),
            |server, ev| async move {
                let non_negative = ev.stanza.presence_type() == Some(PresenceType::Available)
                    && ev.session.priority().is_some_and(|p| p >= 0);
                if non_negative {
                    start_delivery(server.clone(), ev.session.clone());
                }
                Flow::Continue
            },
        );
        // XEP-0386 §2.2: a client binding with Bind 2 gets what it missed from the archive,
        // so the offline messages the archive holds are cleared without being sent. Those
        // it does not hold (archiving off for that contact) stay and are delivered as usual.
        host.filter::<Bind2Bound, _, _>(Order::normal().after("mam"), |server, b| async move {
            if let Err(e) = clear_archived(&server, &b.session).await {
                tracing::warn!(jid = %b.session.jid(), why = e, "offline queue not cleared");
            }
            Some(b)
        });
        Ok(())
    }
}

const NS_SID: &str = "urn:xmpp:sid:0";

/// Removes the offline messages that carry the account's own archive id (XEP-0359).
async fn clear_archived(server: &Server, session: &SessionHandle) -> Result<(), &'static str> {
    let jid = session.jid();
    let bare = jid.to_bare();
    let domain = jid.domain().as_str();
    let node = jid.node().map(|n| n.as_str()).ok_or("no account")?;
    let store = &server.storage().offline;
    let mut after = 0usize;
    loop {
        let batch = store
            .peek_offline(domain, node, after + BATCH)
            .await
            .map_err(|_| "storage")?;
        let fetched = batch.len();
        let archived: Vec<i64> = batch
            .iter()
            .skip(after)
            .filter(|(_, xml)| {
                rookery_xml::parse_element(xml).is_ok_and(|m| {
                    m.children()
                        .any(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(bare.as_str()))
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let kept = fetched - after - archived.len();
        store
            .remove_offline(domain, node, &archived)
            .await
            .map_err(|_| "storage")?;
        if fetched < after + BATCH {
            return Ok(());
        }
        after += kept;
    }
}

fn worth_storing(stanza: &Element) -> bool {
    matches!(
        MessageType::of(stanza),
        MessageType::Normal | MessageType::Chat
    ) && stanza.has_child("body", "jabber:client")
        && !stanza.has_child("no-store", NS_HINTS)
}

async fn store(server: &Arc<Server>, domain: &str, to: &BareJid, stanza: &Stanza) -> Flow {
    let Some(node) = to.node() else {
        return Flow::Continue;
    };
    if !worth_storing(stanza) {
        // Chat states, receipts and the like are meaningless later: drop without an error.
        return if stanza.has_child("body", "jabber:client") {
            Flow::Continue
        } else {
            Flow::Stop
        };
    }
    let mut stored = stanza.clone();
    if !stored.has_child("delay", NS_DELAY) {
        let stamp = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        stored.element_mut().push_child(
            Element::new("delay", NS_DELAY)
                .with_attr("from", domain)
                .with_attr("stamp", stamp)
                .with_text("Offline Storage"),
        );
    }
    let max = server
        .config()
        .section::<OfflineLimits>()
        .max_offline_messages;
    match server
        .storage()
        .offline
        .push_offline(domain, node.as_str(), &stored.to_xml_string(), max)
        .await
    {
        Ok(Some(_)) => Flow::Stop,
        // Quota reached: the core answers service-unavailable (XEP-0160 §3).
        Ok(None) => Flow::Continue,
        Err(e) => {
            tracing::error!(error = %e, "offline store failed");
            Flow::Continue
        }
    }
}

/// One delivery at a time per session, so a repeated presence can't send a backlog twice.
#[derive(Default)]
struct Delivering(Mutex<bool>);

fn start_delivery(server: Arc<Server>, session: Arc<SessionHandle>) {
    let flag = session.extension_or_insert_with(Delivering::default);
    {
        let mut busy = flag.0.lock();
        if *busy {
            return;
        }
        *busy = true;
    }
    // Spawned: receipts are resolved by the session's own task, which is the one running
    // this hook, so waiting for them here would wait for ourselves.
    tokio::spawn(async move {
        if let Err(e) = deliver_backlog(&server, &session).await {
            tracing::debug!(jid = %session.jid(), why = e, "offline delivery stopped");
        }
        *flag.0.lock() = false;
    });
}

async fn deliver_backlog(server: &Server, session: &SessionHandle) -> Result<(), &'static str> {
    let jid = session.jid();
    let domain = jid.domain().as_str();
    let node = jid.node().map(|n| n.as_str()).ok_or("no account")?;
    let store = &server.storage().offline;
    loop {
        let batch = store
            .peek_offline(domain, node, BATCH)
            .await
            .map_err(|_| "storage")?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut pending = Vec::with_capacity(batch.len());
        for (id, xml) in &batch {
            let Ok(mut msg) = rookery_xml::parse_element(xml) else {
                tracing::error!(id, "unreadable offline message dropped");
                let _ = store.remove_offline(domain, node, &[*id]).await;
                continue;
            };
            msg.set_attr("to", jid.as_str());
            let receipt = session.deliver_tracked(msg).map_err(|_| "session gone")?;
            pending.push((*id, receipt));
        }
        let mut written = Vec::with_capacity(pending.len());
        for (id, receipt) in pending {
            match tokio::time::timeout(WRITE_WAIT, receipt).await {
                Ok(Ok(())) => written.push(id),
                _ => break,
            }
        }
        let complete = written.len() == batch.len();
        store
            .remove_offline(domain, node, &written)
            .await
            .map_err(|_| "storage")?;
        if !complete {
            return Err("not all written");
        }
    }
}
