//! XEP-0313 Message Archive Management for user archives, with XEP-0359 stanza ids,
//! XEP-0059 paging and XEP-0441 preferences.
//!
//! * **What is archived** (XEP-0313 §"User Archives"): `chat` and `normal` messages with a
//!   body or another payload worth keeping (encrypted payloads, reactions, retractions, or
//!   an XEP-0334 `<store/>` hint); never errors, headlines or groupchat, never messages with
//!   `<no-store/>` or `<no-permanent-store/>`, never copies of other messages (archive
//!   results, carbons). The account's preferences decide per contact.
//! * **Where**: a message an account sends goes into its archive in the `ClientStanza`
//!   filter (after the blocking module's, so a refused message is not archived); a message
//!   an account receives goes into its archive in the `LocalDelivery` filter (after the
//!   blocking module's, before delivery and offline storage), once per message whatever
//!   the number of resources it reaches. A message to one's own bare JID is archived once,
//!   as received.
//! * **Stanza ids** (XEP-0359): the received message carries `<stanza-id by='account'
//!   id='archive id'/>` on its live (and offline) delivery, so clients can match it with
//!   the archive. Sent messages don't: the contact has no access to the sender's archive
//!   (XEP-0313 §"Communicating the archive ID"). Any `stanza-id` whose `by` is an address
//!   at a domain this server serves is removed from what clients send, and from what is
//!   delivered, before ours is added (XEP-0359 §3): clients cannot forge them.
//! * **Queries** are answered for the account's own resources only ([`query`]).
//! * **Retention**: with `archive.retention_days` > 0, a task deletes older messages every
//!   `archive.purge_interval_secs`, `archive.purge_batch` per transaction. It starts with
//!   the server and stops at shutdown. Deleting an account deletes its archive with it
//!   (storage cascade).

pub mod config;
pub mod prefs;
pub mod query;

use config::ArchiveConfig;
use rookery_core::events::{Bind2Bound, ClientStanza, LocalDelivery, SessionBound};
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Server,
    SessionHandle, Spec,
};
use rookery_core::{spawn_background, Order, SectionDecl};
use rookery_stanza::{
    random_id, IqType, Jid, MessageType, Stanza, StanzaError, StanzaErrorCondition,
};
use rookery_storage::{ArchiveEntry, ArchiveStore, StorageError};
use rookery_xml::Element;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "urn:xmpp:mam:2";
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_HINTS: &str = "urn:xmpp:hints";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";

/// The features account JIDs advertise in disco#info while the module is enabled.
pub const ACCOUNT_FEATURES: &[&str] = &[NS, NS_EXTENDED, NS_SID];

/// Payloads that make a message without a body worth archiving.
const CONTENT_NAMESPACES: &[&str] = &[
    "eu.siacs.conversations.axolotl", // OMEMO (XEP-0384 0.3)
    "urn:xmpp:omemo:2",               // OMEMO (XEP-0384 0.8+)
    "urn:xmpp:openpgp:0",             // XEP-0373
    "jabber:x:encrypted",             // XEP-0027
    "urn:xmpp:reactions:0",           // XEP-0444
    "urn:xmpp:message-retract:1",     // XEP-0424
];

/// Random characters of a stanza id: 16 of 62 are about 95 bits, so ids are unpredictable
/// and, in practice, never reused (XEP-0313 §"IDs").
const ID_RANDOM_LEN: usize = 16;

/// A new stanza id: the archiving time (`rookery_storage::id_time_prefix`: 11 base-62
/// digits of microseconds, so ids sort by time), then random characters. Clients treat ids
/// as opaque; the time prefix lets the store find an entry by its timestamp, which it
/// indexes anyway, instead of writing an index of ids on every append.
pub fn new_stanza_id(timestamp_us: i64) -> String {
    let mut id = rookery_storage::id_time_prefix(timestamp_us);
    id.push_str(&random_id(ID_RANDOM_LEN));
    id
}

pub struct Mam;

impl Module for Mam {
    const NAME: &'static str = "mam";
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0313",
            title: "Message Archive Management (user archives, #extended)",
            version: "1.1.3",
        },
        Spec {
            id: "XEP-0359",
            title: "Unique and Stable Stanza IDs",
            version: "0.7.0",
        },
        Spec {
            id: "XEP-0059",
            title: "Result Set Management (archive queries)",
            version: "1.0",
        },
        Spec {
            id: "XEP-0441",
            title: "Message Archive Management Preferences",
            version: "0.2.0",
        },
    ];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<ArchiveConfig>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))?;
        for f in ACCOUNT_FEATURES {
            host.add_account_feature(f);
        }
        // XEP-0386 §2.2: the archive's state at the moment of a Bind 2 binding, so the client
        // knows what to fetch.
        host.filter::<Bind2Bound, _, _>(Order::normal(), |server, mut b| async move {
            match query::metadata_of(&server, &b.session.jid().to_bare()).await {
                Ok(m) => b.bound.push_child(m),
                Err(e) => tracing::warn!(error = %e, "no archive metadata for Bind 2"),
            }
            Some(b)
        });
        // After the blocking module's filters: what it drops is not archived.
        host.filter::<ClientStanza, _, _>(
            Order::normal().after("blocking"),
            |server, c| async move { outbound(&server, c).await },
        );
        host.filter::<LocalDelivery, _, _>(
            Order::normal().after("blocking"),
            |server, d| async move { inbound(&server, d).await },
        );
        host.hook::<SessionBound, _, _>(Order::normal(), |server, ev| async move {
            cache_prefs(&server, &ev.session).await;
            Flow::Continue
        });
        Ok(())
    }

    fn start(server: &Arc<Server>) {
        start_purge(server);
    }
}

async fn handle(req: IqRequest) -> IqResult {
    // A user archive is exposed to its owner only (XEP-0313 §"User archives").
    if req.to.to_bare() != req.from.to_bare() {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
            .with_text("only the account itself may use its archive"));
    }
    let bare = req.from.to_bare();
    let (domain, user) = (
        bare.domain().as_str(),
        bare.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    match (req.payload.name(), req.iq_type) {
        ("query", IqType::Get) => Ok(Some(query::form())),
        ("query", IqType::Set) => query::run(&req).await.map(Some),
        ("metadata", IqType::Get) => query::metadata(&req).await.map(Some),
        ("prefs", IqType::Get) => prefs::load(&req.server, domain, user)
            .await
            .map(|p| Some(p.to_element()))
            .map_err(internal),
        ("prefs", IqType::Set) => {
            let new = prefs::Prefs::from_element(&req.payload)?;
            prefs::store(&req.server, domain, user, &new)
                .await
                .map_err(internal)?;
            let element = new.to_element();
            let new = Arc::new(new);
            for session in req.server.sessions().resources(&bare) {
                *session
                    .extension_or_insert_with(CachedPrefs::default)
                    .0
                    .write() = Some(new.clone());
            }
            Ok(Some(element))
        }
        _ => Err(StanzaError::bad_request(
            "expected <query/>, <prefs/> or <metadata/> with the right IQ type",
        )),
    }
}

/// An account's preferences, kept on each of its sessions: every message an online account
/// sends or receives needs them, and reading storage each time cost a blocking-pool hop
/// per message and side. Loaded when a session is bound, replaced on every session of the
/// account when it sets new ones; accounts without a session are read from storage.
#[derive(Default)]
struct CachedPrefs(parking_lot::RwLock<Option<Arc<prefs::Prefs>>>);

async fn cache_prefs(server: &Server, session: &SessionHandle) {
    let bare = session.jid().to_bare();
    let Some(node) = bare.node() else {
        return;
    };
    match prefs::load(server, bare.domain().as_str(), node.as_str()).await {
        Ok(p) => {
            let cached = session.extension_or_insert_with(CachedPrefs::default);
            let mut slot = cached.0.write();
            // A set that ran meanwhile already put the newer preferences here.
            if slot.is_none() {
                *slot = Some(Arc::new(p));
            }
        }
        Err(e) => tracing::error!(error = %e, "archive preferences unreadable"),
    }
}

/// The preferences of `owner`: from one of its sessions, else from storage.
async fn prefs_of(
    server: &Server,
    owner: &Jid,
    domain: &str,
    user: &str,
) -> Result<Arc<prefs::Prefs>, StorageError> {
    for session in server.sessions().resources(owner) {
        if let Some(p) = session
            .extension::<CachedPrefs>()
            .and_then(|c| c.0.read().clone())
        {
            return Ok(p);
        }
    }
    prefs::load(server, domain, user).await.map(Arc::new)
}

fn internal(e: StorageError) -> StanzaError {
    tracing::error!(error = %e, "archive storage failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

/// Removes every `<stanza-id/>` whose `by` is at a domain this server serves: only this
/// server may say what its archives hold (XEP-0359 §3). A stanza without one is not
/// touched: a broadcast (a room's message to each occupant, with the room's id) stays one
/// shared element instead of being copied for every recipient.
fn strip_local_stanza_ids(server: &Server, stanza: &mut Stanza) {
    let forged = |el: &Element| {
        el.is("stanza-id", NS_SID) && el.attr("by").is_some_and(|by| names_local(server, by))
    };
    if !stanza.element().children().any(forged) {
        return;
    }
    let stanza = stanza.element_mut();
    let mut others = Vec::new();
    while let Some(sid) = stanza.remove_child("stanza-id", NS_SID) {
        if !forged(&sid) {
            others.push(sid);
        }
    }
    for sid in others {
        stanza.push_child(sid);
    }
}

/// Whether `by` is an address at a domain this server serves. Every message a room sends
/// has a `by`, checked on each copy delivered, so an address whose domain is plain
/// lowercase ASCII (already in normal form) is not parsed as a JID.
fn names_local(server: &Server, by: &str) -> bool {
    let bare = by.split('/').next().unwrap_or_default();
    let domain = bare.rsplit('@').next().unwrap_or_default();
    if server.serves(domain) {
        return true;
    }
    let normal = domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if normal {
        return false;
    }
    // An unparsable 'by' names no one here; what isn't ours is left alone.
    Jid::new(by).is_ok_and(|j| server.serves(j.domain().as_str()))
}

/// Whether a message belongs in a user archive (module docs).
pub fn archivable(stanza: &Element) -> bool {
    if stanza.name() != "message"
        || !matches!(
            MessageType::of(stanza),
            MessageType::Normal | MessageType::Chat
        )
        || stanza.has_child("no-store", NS_HINTS)
        || stanza.has_child("no-permanent-store", NS_HINTS)
        || stanza.has_child("result", NS)
        || stanza.has_child("sent", NS_CARBONS)
        || stanza.has_child("received", NS_CARBONS)
    {
        return false;
    }
    worth_keeping(stanza)
}

/// Whether a message of an archived type has content worth keeping (a body, an encrypted
/// or other content payload, a `<store/>` hint) and no hint against storing it. The MUC
/// module archives groupchat messages by the same rule.
pub fn worth_keeping(stanza: &Element) -> bool {
    if stanza.has_child("no-store", NS_HINTS) || stanza.has_child("no-permanent-store", NS_HINTS) {
        return false;
    }
    stanza.has_child("body", "jabber:client")
        || stanza.has_child("store", NS_HINTS)
        || stanza
            .children()
            .any(|c| CONTENT_NAMESPACES.contains(&c.ns()))
}

/// Archives `stanza` in `owner`'s archive as exchanged with `with`, if the owner's
/// preferences allow; returns the archive id once the append is committed, None when the
/// message is not to be archived. Err when the storage failed (the database is unreachable,
/// say): the caller refuses the message rather than deliver one its archive would miss.
async fn archive(
    server: &Server,
    owner: &Jid,
    with: &Jid,
    stanza: &Stanza,
) -> Result<Option<String>, StorageError> {
    match archive_entry(server, owner, with, stanza).await? {
        Some((domain, user, entry)) => {
            append_journaled(server.storage().archive.clone(), domain, user, entry).await
        }
        None => Ok(None),
    }
}

/// The entry `stanza` makes in the archive of `owner` (the account's bare JID or one of its
/// full JIDs), None if the owner's preferences don't want it; Err when they (or the roster
/// they depend on) could not be read.
async fn archive_entry(
    server: &Server,
    owner: &Jid,
    with: &Jid,
    stanza: &Stanza,
) -> Result<Option<(String, String, ArchiveEntry)>, StorageError> {
    let Some(user) = owner.node() else {
        return Ok(None);
    };
    let (domain, user) = (owner.domain().as_str(), user.as_str());
    let prefs = match prefs_of(server, owner, domain, user).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "archive preferences unreadable; message refused");
            return Err(e);
        }
    };
    let contact = rookery_stanza::bare_str(with).to_owned();
    let in_roster = async {
        server
            .storage()
            .roster
            .roster_item(domain, user, &contact)
            .await
            .map(|i| i.is_some())
    };
    match prefs.allows(with, in_roster).await {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "roster unreadable; message refused");
            return Err(e);
        }
    }
    let now_us = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000)
        .unwrap_or(i64::MAX);
    let entry = ArchiveEntry {
        id: new_stanza_id(now_us),
        timestamp_us: now_us,
        with_bare: contact,
        with_resource: with.resource().map(|r| r.to_string()).unwrap_or_default(),
        stanza: stanza.to_xml_string(),
    };
    Ok(Some((domain.to_owned(), user.to_owned(), entry)))
}

/// Appends `entry` on the message path; its id once the entry survives a crash of the
/// server (journaled or committed, see `ArchiveStore::append_archive_journaled`), None when
/// the account does not exist.
async fn append_journaled(
    store: Arc<dyn ArchiveStore>,
    domain: String,
    user: String,
    entry: ArchiveEntry,
) -> Result<Option<String>, StorageError> {
    let id = entry.id.clone();
    match store.append_archive_journaled(&domain, &user, entry).await {
        Ok(()) => Ok(Some(id)),
        // No such account: the core answers the sender; nothing to archive.
        Err(StorageError::NotFound) => Ok(None),
        // A backend that commits before answering found the random id taken: a clash
        // of 95 random bits. The sender is told to send again rather than lose it.
        Err(e) => {
            tracing::error!(error = %e, "archiving failed; message refused");
            Err(e)
        }
    }
}

/// Appends `entry` without waiting for it: the append is started here (a backend that
/// queues appends, as SQLite's and PostgreSQL's writers do, has journaled or queued it when
/// this returns) and finishes in a task of its own.
///
/// Used for the sender's copy of a message to a local account: the recipient's copy is
/// appended after it, while the message is being delivered, and delivery waits for that
/// one (and is refused if it fails). The backend keeps appends in the order they were
/// first polled, so once the recipient's copy survives a crash the sender's does too (the
/// durability rule: a message a recipient has received is in both archives), and a message
/// costs its sender one wait instead of two. A failure of the sender's copy alone is logged.
async fn append_queued(
    store: Arc<dyn ArchiveStore>,
    domain: String,
    user: String,
    entry: ArchiveEntry,
) {
    let mut pending = Box::pin(append_journaled(store, domain, user, entry));
    // One poll: far enough for the append to be queued.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(pending.as_mut().poll(cx))).await;
    if first.is_pending() {
        tokio::spawn(pending);
    }
}

/// The answer to a message that could not be archived: the storage failed, so the server
/// takes no responsibility for it (RFC 6120 §8.3.3.8 internal-server-error), and the
/// sender knows to send it again.
fn archive_failed() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::InternalServerError)
        .with_text("the message archive is unavailable; the message was not delivered")
}

/// A stanza a local client sends: forged stanza ids go; a message goes into the sender's
/// archive (not marked: the recipient can't query the sender's archive). None (refused,
/// with an error to the sender) when the archive could not be written.
async fn outbound(server: &Server, mut c: ClientStanza) -> Option<ClientStanza> {
    if c.stanza.name() != "message" {
        return Some(c);
    }
    strip_local_stanza_ids(server, &mut c.stanza);
    if !archivable(&c.stanza) {
        return Some(c);
    }
    // No 'to' is the sender's own account (archived when delivered).
    let Some(to) = c.stanza.to() else {
        return Some(c);
    };
    if rookery_stanza::bare_str(to) == rookery_stanza::bare_str(&c.from) {
        return Some(c);
    }
    let entry = match archive_entry(server, &c.from, to, &c.stanza).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return Some(c),
        Err(_) => {
            server.bounce(&c.stanza, archive_failed());
            return None;
        }
    };
    let (domain, user, entry) = entry;
    let store = server.storage().archive.clone();
    // To a local account the recipient's copy follows on the same store (see
    // `append_queued`); to anyone else the sender's copy is the only one, so it is committed
    // before the message leaves.
    if to.node().is_some() && server.serves(to.domain().as_str()) {
        append_queued(store, domain, user, entry).await;
    } else if append_journaled(store, domain, user, entry).await.is_err() {
        server.bounce(&c.stanza, archive_failed());
        return None;
    }
    Some(c)
}

/// A stanza about to reach a local account: forged stanza ids go; a message goes into the
/// recipient's archive and carries its archive id.
async fn inbound(server: &Server, mut d: LocalDelivery) -> Option<LocalDelivery> {
    if d.stanza.name() != "message" {
        return Some(d);
    }
    strip_local_stanza_ids(server, &mut d.stanza);
    if !archivable(&d.stanza) {
        return Some(d);
    }
    let Some(from) = d.stanza.from() else {
        return Some(d);
    };
    match archive(server, &d.to, from, &d.stanza).await {
        Ok(Some(id)) => d.stanza.element_mut().push_child(
            Element::new("stanza-id", NS_SID)
                .with_attr("by", rookery_stanza::bare_str(&d.to))
                .with_attr("id", id),
        ),
        Ok(None) => {}
        // Not delivered: a message the recipient got must be in their archive.
        Err(_) => {
            server.bounce(&d.stanza, archive_failed());
            return None;
        }
    }
    Some(d)
}

/// The retention purge: every interval, delete what is older than the retention period,
/// one bounded transaction at a time, until the server shuts down. The settings are read
/// at each round, so a reload that sets, changes or clears `retention_days` (or the
/// interval) applies from the next one ([`ArchiveConfig`] is a live section).
fn start_purge(server: &Arc<Server>) {
    let weak = Arc::downgrade(server);
    spawn_background(server, "archive purge", async move {
        loop {
            let Some(server) = weak.upgrade() else { return };
            let cfg = server.config().section::<ArchiveConfig>();
            if cfg.retention_days > 0 {
                purge_once(&server, &cfg).await;
            }
            let wait = Duration::from_secs(cfg.purge_interval_secs.max(1));
            drop(server);
            tokio::time::sleep(wait).await;
        }
    });
}

/// One round of the retention purge.
async fn purge_once(server: &Server, cfg: &ArchiveConfig) {
    let retention_us = i64::from(cfg.retention_days) * 86_400 * 1_000_000;
    let now_us = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000)
        .unwrap_or(i64::MAX);
    let cutoff = now_us.saturating_sub(retention_us);
    let mut total = 0;
    loop {
        match server
            .storage()
            .archive
            .purge_archive(cutoff, cfg.purge_batch)
            .await
        {
            Ok(n) => {
                total += n;
                if n < cfg.purge_batch {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "archive purge failed");
                break;
            }
        }
        // Let archiving and queries in between batches.
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::info!(messages = total, "archive retention purge");
    }
}

#[cfg(test)]
mod tests {
    use super::new_stanza_id;

    #[test]
    fn stanza_ids_sort_by_time_and_differ() {
        let a = new_stanza_id(1_700_000_000_000_000);
        let b = new_stanza_id(1_700_000_000_000_001);
        let c = new_stanza_id(1_700_000_000_000_001);
        assert_eq!(a.len(), 11 + 16);
        assert!(a < b && a < c && b != c);
        assert!(a.bytes().all(|ch| ch.is_ascii_alphanumeric()));
        // 62^11 microseconds is over 16 million years: the prefix never wraps.
        assert!(new_stanza_id(0) < new_stanza_id(i64::MAX / 1000));
    }
}
