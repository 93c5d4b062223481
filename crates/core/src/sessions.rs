//! The registry of bound client sessions: who is online, under which resource, and how to
//! reach them. Delivery never blocks the sender: each session has a bounded queue, and a session
//! that does not drain it is disconnected instead of letting memory grow.

use crate::session_queue::{self, QueueReceiver, QueueSender, TrySendError};
use parking_lot::{Mutex, RwLock};
use rookery_stanza::{bare_str, BareJid, FullJid, Jid, SharedStanza, StreamErrorCondition};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

/// Presence state stored in one atomic: `UNAVAILABLE`, or the priority (-128..=127).
const UNAVAILABLE: i16 = i16::MIN;

/// Why a delivery did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// The session's queue was full: it has been told to close with `policy-violation`.
    Overflow,
    /// The session is closing.
    Gone,
}

/// A stanza queued for a session, with an optional receipt resolved once the stanza has been
/// written to the client's connection and flushed (used by features that must not drop
/// their copy of a stanza before that, such as offline storage). The stanza is shared with
/// every other session that gets it, each with its own `to` where they differ
/// ([`SharedStanza::readdressed`]), and serialised once for all of them.
pub struct Outgoing {
    pub stanza: SharedStanza,
    pub written: Option<oneshot::Sender<()>>,
}

/// How a session's client is connected (for metrics): set by the stream layer when the
/// session is bound, and again when it is resumed on another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientTransport {
    /// An XML stream over TCP (STARTTLS or direct TLS).
    Tcp,
    /// RFC 7395.
    WebSocket,
    /// XEP-0206.
    Bosh,
    /// Not said (sessions made by tests and tools).
    Other,
}

impl ClientTransport {
    pub const ALL: [ClientTransport; 4] = [
        ClientTransport::Tcp,
        ClientTransport::WebSocket,
        ClientTransport::Bosh,
        ClientTransport::Other,
    ];

    /// The name metrics label it with.
    pub fn name(self) -> &'static str {
        match self {
            ClientTransport::Tcp => "tcp",
            ClientTransport::WebSocket => "websocket",
            ClientTransport::Bosh => "bosh",
            ClientTransport::Other => "other",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(ClientTransport::Other)
    }
}

/// The router's side of one bound session.
pub struct SessionHandle {
    id: u64,
    jid: FullJid,
    queue: QueueSender<Box<Outgoing>>,
    presence: AtomicI16,
    kick: Mutex<Option<(StreamErrorCondition, String)>>,
    kicked: Notify,
    /// Per-session state of modules (e.g. "requested the roster", last presence), one value
    /// per type. Empty for most sessions, so it costs one pointer-sized vector when idle.
    extensions: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// The address the client connected from, when the transport knows it: for limits per
    /// address beyond the stream (a MUC service's joins).
    peer: Option<std::net::SocketAddr>,
    /// A [`ClientTransport`].
    transport: AtomicU8,
    /// Whether the client said it is inactive (XEP-0352), for the administration's active
    /// and idle user counts (XEP-0133 §4.15, §4.16).
    inactive: AtomicBool,
    /// When the session was bound, in seconds since the Unix epoch (the account's last
    /// login, XEP-0133 §4.12).
    bound_at: u64,
}

/// The session task's side: the stanzas to write and the kick signal.
pub struct SessionInbox {
    pub stanzas: QueueReceiver<Box<Outgoing>>,
    handle: Arc<SessionHandle>,
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

impl SessionHandle {
    /// A new handle and its inbox; `queue` bounds the stanzas waiting to be written.
    pub fn new(jid: FullJid, queue: usize) -> (Arc<SessionHandle>, SessionInbox) {
        Self::with_peer(jid, queue, None)
    }

    /// [`new`](Self::new) for a client connected from `peer`.
    pub fn with_peer(
        jid: FullJid,
        queue: usize,
        peer: Option<std::net::SocketAddr>,
    ) -> (Arc<SessionHandle>, SessionInbox) {
        let (tx, rx) = session_queue::channel(queue.max(1));
        let handle = Arc::new(SessionHandle {
            id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            jid,
            queue: tx,
            presence: AtomicI16::new(UNAVAILABLE),
            kick: Mutex::new(None),
            kicked: Notify::new(),
            extensions: Mutex::new(Vec::new()),
            peer,
            transport: AtomicU8::new(ClientTransport::Other as u8),
            inactive: AtomicBool::new(false),
            bound_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let inbox = SessionInbox {
            stanzas: rx,
            handle: handle.clone(),
        };
        (handle, inbox)
    }
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }
    /// The address the client connected from, if known.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }
    /// How the client is connected now.
    pub fn transport(&self) -> ClientTransport {
        ClientTransport::from_u8(self.transport.load(Ordering::Relaxed))
    }
    /// Records how the client is connected (when bound, and when resumed elsewhere).
    pub fn set_transport(&self, transport: ClientTransport) {
        self.transport.store(transport as u8, Ordering::Relaxed);
    }
    /// Whether the client said it is inactive (XEP-0352) and has not said active since.
    pub fn is_inactive(&self) -> bool {
        self.inactive.load(Ordering::Relaxed)
    }
    /// Records the client's state (XEP-0352 `<inactive/>` or `<active/>`).
    pub fn set_inactive(&self, inactive: bool) {
        self.inactive.store(inactive, Ordering::Relaxed);
    }
    /// When the session was bound, in seconds since the Unix epoch.
    pub fn bound_at(&self) -> u64 {
        self.bound_at
    }
    /// Queues a stanza for this session without waiting.
    pub fn deliver(&self, stanza: impl Into<SharedStanza>) -> Result<(), DeliveryError> {
        self.enqueue(Outgoing {
            stanza: stanza.into(),
            written: None,
        })
    }

    /// Queues a stanza and returns a receipt that resolves when it has been written and
    /// flushed to the connection (and errs if the session ends first).
    pub fn deliver_tracked(
        &self,
        stanza: impl Into<SharedStanza>,
    ) -> Result<oneshot::Receiver<()>, DeliveryError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Outgoing {
            stanza: stanza.into(),
            written: Some(tx),
        })?;
        Ok(rx)
    }

    fn enqueue(&self, out: Outgoing) -> Result<(), DeliveryError> {
        let kind = crate::counters::stanza_kind(out.stanza.name());
        match self.queue.try_send(Box::new(out)) {
            Ok(()) => {
                crate::counters::stanza_out(kind);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                crate::counters::incr(crate::counters::Counter::SendQueueOverflows);
                self.kick(
                    StreamErrorCondition::PolicyViolation,
                    "too many stanzas waiting to be read",
                );
                Err(DeliveryError::Overflow)
            }
            Err(TrySendError::Closed(_)) => Err(DeliveryError::Gone),
        }
    }
    /// Asks the session to close its stream with this error. The first reason wins.
    pub fn kick(&self, condition: StreamErrorCondition, text: &str) {
        let mut k = self.kick.lock();
        if k.is_none() {
            *k = Some((condition, text.to_owned()));
            self.kicked.notify_one();
        }
    }
    /// The module state of type `T` attached to this session, if any.
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.extensions
            .lock()
            .iter()
            .find_map(|e| e.clone().downcast::<T>().ok())
    }
    /// The module state of type `T`, created with `make` on first use.
    pub fn extension_or_insert_with<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut exts = self.extensions.lock();
        if let Some(found) = exts.iter().find_map(|e| e.clone().downcast::<T>().ok()) {
            return found;
        }
        let value = Arc::new(make());
        exts.push(value.clone());
        value
    }
    /// `Some(priority)` while the session has sent available presence (RFC 6121 §4.2).
    pub fn priority(&self) -> Option<i8> {
        match self.presence.load(Ordering::Relaxed) {
            UNAVAILABLE => None,
            p => i8::try_from(p).ok(),
        }
    }
    /// Resolves when the session has been kicked; returns the reason.
    pub async fn kicked(&self) -> (StreamErrorCondition, String) {
        loop {
            let notified = self.kicked.notified();
            if let Some(reason) = self.kick.lock().clone() {
                return reason;
            }
            notified.await;
        }
    }
    pub fn set_priority(&self, priority: Option<i8>) {
        self.presence
            .store(priority.map_or(UNAVAILABLE, i16::from), Ordering::Relaxed);
    }
}

impl SessionInbox {
    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }
}

/// The bound sessions of one account, in binding order: a shared, immutable list, so a
/// look-up takes a reference count instead of copying the list, and the list can be held
/// across awaits (a registration or removal replaces it). Iterating it by value yields each
/// session's handle (a reference count each), by reference borrows them.
/// An account with no session is `None`, so a miss allocates nothing.
#[derive(Clone, Default)]
pub struct Resources(Option<Arc<[Arc<SessionHandle>]>>);

impl Resources {
    fn new(list: Arc<[Arc<SessionHandle>]>) -> Self {
        Resources(Some(list))
    }
    /// The session bound to this full JID, if it is among them.
    pub fn find(&self, jid: &FullJid) -> Option<&Arc<SessionHandle>> {
        self.iter().find(|h| h.jid == *jid)
    }
}

impl std::ops::Deref for Resources {
    type Target = [Arc<SessionHandle>];
    fn deref(&self) -> &[Arc<SessionHandle>] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl<'a> IntoIterator for &'a Resources {
    type Item = &'a Arc<SessionHandle>;
    type IntoIter = std::slice::Iter<'a, Arc<SessionHandle>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Resources {
    type Item = Arc<SessionHandle>;
    type IntoIter = ResourcesIter;
    fn into_iter(self) -> ResourcesIter {
        ResourcesIter {
            list: self,
            next: 0,
        }
    }
}

/// The sessions of a [`Resources`], by value.
pub struct ResourcesIter {
    list: Resources,
    next: usize,
}

impl Iterator for ResourcesIter {
    type Item = Arc<SessionHandle>;
    fn next(&mut self) -> Option<Arc<SessionHandle>> {
        let item = self.list.get(self.next)?.clone();
        self.next += 1;
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.list.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for ResourcesIter {}

/// All bound sessions, by bare JID (its string: a full JID is looked up without building
/// its bare JID).
#[derive(Default)]
pub struct SessionRegistry {
    users: RwLock<HashMap<Box<str>, Resources>>,
    count: AtomicUsize,
}

impl SessionRegistry {
    /// Registers a bound session. If the same full JID was bound, that older session is
    /// returned (already removed): the caller kicks it with `conflict` (RFC 6120 §7.7.2.2).
    pub fn bind(&self, handle: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        let mut users = self.users.write();
        let list = users.entry(bare_str(&handle.jid).into()).or_default();
        let old = list.find(&handle.jid).cloned();
        let mut next: Vec<Arc<SessionHandle>> = list
            .iter()
            .filter(|h| h.jid != handle.jid)
            .cloned()
            .collect();
        next.push(handle);
        *list = Resources::new(next.into());
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Removes a session, if it is still the one registered under its JID.
    pub fn unbind(&self, handle: &SessionHandle) -> bool {
        let bare = bare_str(&handle.jid);
        let mut users = self.users.write();
        let Some(list) = users.get_mut(bare) else {
            return false;
        };
        if !list.iter().any(|h| h.id == handle.id) {
            return false;
        }
        if list.len() == 1 {
            users.remove(bare);
        } else {
            let next: Arc<[Arc<SessionHandle>]> =
                list.iter().filter(|h| h.id != handle.id).cloned().collect();
            *list = Resources::new(next);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        true
    }

    pub fn get(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        self.users.read().get(bare_str(jid))?.find(jid).cloned()
    }

    /// Every bound session of the account of `jid`, a bare JID or one of its full JIDs (no
    /// copy: see [`Resources`]).
    pub fn resources(&self, jid: &Jid) -> Resources {
        self.users
            .read()
            .get(bare_str(jid))
            .cloned()
            .unwrap_or_default()
    }

    pub fn is_online(&self, bare: &BareJid) -> bool {
        self.users.read().contains_key(bare.as_str())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The bound sessions by virtual host and transport (for metrics): counted under the
    /// read lock, without copying the sessions.
    pub fn count_by_host_and_transport(&self) -> HashMap<(String, ClientTransport), usize> {
        let mut out: HashMap<(String, ClientTransport), usize> = HashMap::new();
        for list in self.users.read().values() {
            for h in list.iter() {
                let key = (h.jid.domain().to_string(), h.transport());
                *out.entry(key).or_default() += 1;
            }
        }
        out
    }

    /// Every bound session (for admin listing and shutdown).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.users
            .read()
            .values()
            .flat_map(|r| r.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::Element;

    fn jid(s: &str) -> FullJid {
        FullJid::new(s).expect("valid")
    }

    #[test]
    fn sessions_are_counted_by_host_and_transport() {
        let reg = SessionRegistry::default();
        let (a, _ia) = SessionHandle::new(jid("u@x/a"), 4);
        let (b, _ib) = SessionHandle::new(jid("v@x/b"), 4);
        let (c, _ic) = SessionHandle::new(jid("u@y/c"), 4);
        assert_eq!(a.transport(), ClientTransport::Other);
        a.set_transport(ClientTransport::WebSocket);
        b.set_transport(ClientTransport::WebSocket);
        c.set_transport(ClientTransport::Bosh);
        for h in [&a, &b, &c] {
            reg.bind(h.clone());
        }
        let counts = reg.count_by_host_and_transport();
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[&("x".to_owned(), ClientTransport::WebSocket)], 2);
        assert_eq!(counts[&("y".to_owned(), ClientTransport::Bosh)], 1);
        c.set_transport(ClientTransport::Tcp);
        assert_eq!(c.transport(), ClientTransport::Tcp);
        let names: Vec<_> = ClientTransport::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["tcp", "websocket", "bosh", "other"]);
    }

    #[test]
    fn bind_replaces_same_resource() {
        let reg = SessionRegistry::default();
        let (a, _ia) = SessionHandle::new(jid("u@x/r"), 4);
        let (b, _ib) = SessionHandle::new(jid("u@x/r"), 4);
        let (c, _ic) = SessionHandle::new(jid("u@x/other"), 4);
        assert!(reg.bind(a.clone()).is_none());
        assert!(reg.bind(c.clone()).is_none());
        let old = reg.bind(b.clone()).expect("replaced");
        assert_eq!(old.id(), a.id());
        assert_eq!(reg.count(), 2);
        // The replaced session's late unbind must not remove its successor.
        assert!(!reg.unbind(&a));
        assert_eq!(reg.get(&jid("u@x/r")).map(|h| h.id()), Some(b.id()));
        assert!(reg.unbind(&b));
        assert!(reg.unbind(&c));
        assert_eq!(reg.count(), 0);
        assert!(!reg.is_online(&BareJid::new("u@x").expect("valid")));
    }

    #[test]
    fn look_ups_share_the_account_list() {
        let reg = SessionRegistry::default();
        let bare = BareJid::new("u@x").expect("valid");
        assert!(reg.resources(&bare).is_empty());
        let (a, _ia) = SessionHandle::new(jid("u@x/a"), 4);
        let (b, _ib) = SessionHandle::new(jid("u@x/b"), 4);
        reg.bind(a.clone());
        reg.bind(b.clone());
        let one = reg.resources(&bare);
        let two = reg.resources(&bare);
        let (Some(l1), Some(l2)) = (&one.0, &two.0) else {
            panic!("listed");
        };
        assert!(
            Arc::ptr_eq(l1, l2),
            "a look-up is a reference count, not a copy"
        );
        assert_eq!(one.find(&jid("u@x/b")).map(|h| h.id()), Some(b.id()));
        assert_eq!(reg.get(&jid("u@x/a")).map(|h| h.id()), Some(a.id()));
        // A list taken stays as it was; the registry's changes.
        assert!(reg.unbind(&a));
        assert_eq!(one.len(), 2);
        let ids: Vec<u64> = reg.resources(&bare).into_iter().map(|h| h.id()).collect();
        assert_eq!(ids, vec![b.id()]);
    }

    #[tokio::test]
    async fn full_queue_kicks_instead_of_growing() {
        let (h, mut inbox) = SessionHandle::new(jid("u@x/r"), 2);
        let el = Element::new("message", "jabber:client");
        assert_eq!(h.deliver(el.clone()), Ok(()));
        assert_eq!(h.deliver(el.clone()), Ok(()));
        assert_eq!(h.deliver(el.clone()), Err(DeliveryError::Overflow));
        let (cond, _) = h.kicked().await;
        assert_eq!(cond, StreamErrorCondition::PolicyViolation);
        assert!(inbox.stanzas.recv().await.is_some());
    }

    #[test]
    fn priority_round_trips() {
        let (h, _i) = SessionHandle::new(jid("u@x/r"), 1);
        assert_eq!(h.priority(), None);
        h.set_priority(Some(-5));
        assert_eq!(h.priority(), Some(-5));
        h.set_priority(Some(127));
        assert_eq!(h.priority(), Some(127));
        h.set_priority(None);
        assert_eq!(h.priority(), None);
    }
}
