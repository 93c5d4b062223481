//! Stream management (XEP-0198): stanza acknowledgements, resumption of a session whose
//! connection dropped, and what happens to stanzas a client never confirmed.
//!
//! * [`StreamState`]: the counters and the queue of unacknowledged stanzas of one session,
//!   a pure data structure (no I/O) that moves from connection to connection on resumption.
//! * [`Resumptions`]: the resumable sessions of the server, by SM-ID. Whoever currently owns
//!   a session's state (its live connection, or the task that keeps it after the connection
//!   dropped) holds the receiving end of its take-over channel; a resuming connection asks
//!   through it and gets the whole [`Detached`] state back. Ownership therefore never has two
//!   holders and no lock is held across an await.
//! * [`park`]: keeps a session whose connection dropped for the resumption timeout, holds
//!   the stanzas that arrive meanwhile, and ends it ([`end_session`]) if nobody resumes.

use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::events::{HeldMessage, SessionClosed};
use rookery_core::{Host, Outgoing, Place, Section, Server, SessionHandle, SessionInbox};
use rookery_stanza::{BareJid, IqType, SharedStanza, StanzaError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const NS: &str = "urn:xmpp:sm:3";

/// `[stream_management]`: acknowledgements and resumption after a dropped connection.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Offer stream management to clients.
    pub enabled: bool,
    /// How long a session whose connection dropped waits to be resumed, when the client does
    /// not ask for less. Messages for it meanwhile are held (and trigger push notifications).
    pub resume_timeout_secs: u64,
    /// The longest resumption time a client may ask for with `max`.
    pub max_resume_timeout_secs: u64,
    /// Stanzas sent to a client and not yet acknowledged (plus those held while it is away)
    /// before the session is ended and its messages handed to other resources or offline
    /// storage.
    pub max_unacked_stanzas: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            resume_timeout_secs: 300,
            max_resume_timeout_secs: 3600,
            max_unacked_stanzas: 8192,
        }
    }
}

impl Section for StreamManagementConfig {
    const KEY: &'static str = "stream_management";
    const PLACE: Place = Place::Server;
    // Read by the streams through `c2s::StreamContext`, refreshed on reload.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# Stream management (XEP-0198): acknowledgements, and resumption of a session whose
# connection dropped (phones changing networks).
[stream_management]
enabled = true
# How long a session with a dropped connection waits to be resumed (unless the client asks
# for less); messages meanwhile are held for it and trigger push notifications.
resume_timeout_secs = 300
# The longest resumption time a client may ask for.
max_resume_timeout_secs = 3600
# Stanzas sent and not acknowledged (plus those held while the client is away) before the
# session is ended and its messages go to other resources or offline storage.
max_unacked_stanzas = 8192
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, value) in [
            ("resume_timeout_secs", self.resume_timeout_secs),
            ("max_resume_timeout_secs", self.max_resume_timeout_secs),
            ("max_unacked_stanzas", self.max_unacked_stanzas as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

/// How many ended resumable sessions are remembered, so that a late `<resume/>` can be told
/// how many of its stanzas were handled (XEP-0198 §5, `<failed h=.../>`).
const EXPIRED_REMEMBERED: usize = 10_000;

/// A stanza written to the client and not yet acknowledged.
pub struct Unacked {
    pub stanza: SharedStanza,
    /// The sender's receipt (e.g. offline storage): resolved when the client acknowledges
    /// the stanza, dropped (so the sender keeps its copy) if the session ends first.
    pub written: Option<oneshot::Sender<()>>,
}

/// The client acknowledged more stanzas than were sent (XEP-0198 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("handled count {h} is higher than the {sent} stanzas sent")]
pub struct HandledTooHigh {
    pub h: u32,
    pub sent: u32,
}

/// The counters and unacknowledged queue of one stream-management session.
pub struct StreamState {
    /// The SM-ID when the session is resumable.
    pub id: Option<String>,
    /// Seconds the session waits for resumption after its connection drops.
    pub resume_timeout: Duration,
    /// Stanzas received from the client and handled ('h' we report), modulo 2^32.
    inbound: u32,
    /// Stanzas sent to the client, modulo 2^32. The queue holds the last `unacked.len()`.
    sent: u32,
    unacked: VecDeque<Unacked>,
    /// An `<r/>` is outstanding: don't ask again until it is answered.
    requested: bool,
}

impl StreamState {
    pub fn new(id: Option<String>, resume_timeout: Duration) -> Self {
        StreamState {
            id,
            resume_timeout,
            inbound: 0,
            sent: 0,
            unacked: VecDeque::new(),
            requested: false,
        }
    }

    /// One stanza from the client was handled (counts wrap at 2^32, XEP-0198 §4).
    pub fn handled(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// The 'h' to report to the client.
    pub fn inbound(&self) -> u32 {
        self.inbound
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Records a stanza written to the client.
    pub fn sent(&mut self, stanza: impl Into<SharedStanza>, written: Option<oneshot::Sender<()>>) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(Unacked {
            stanza: stanza.into(),
            written,
        });
    }

    /// Whether to send an `<r/>` now (one outstanding at a time, only with something to
    /// confirm); marks it sent.
    pub fn should_request(&mut self) -> bool {
        if self.requested || self.unacked.is_empty() {
            return false;
        }
        self.requested = true;
        true
    }

    /// Applies an acknowledgement: drops (and confirms to their senders) the stanzas up to
    /// 'h'. An 'h' behind the last one seen is stale and ignored; one ahead of what was sent
    /// is a protocol error.
    pub fn ack(&mut self, h: u32) -> Result<usize, HandledTooHigh> {
        self.requested = false;
        let acked_upto = self.sent.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_upto);
        if newly as usize > self.unacked.len() {
            // Distances over half the counter space mean 'h' is behind, not ahead.
            if acked_upto.wrapping_sub(h) < u32::MAX / 2 {
                return Ok(0);
            }
            return Err(HandledTooHigh { h, sent: self.sent });
        }
        for _ in 0..newly {
            if let Some(u) = self.unacked.pop_front() {
                if let Some(w) = u.written {
                    let _ = w.send(());
                }
            }
        }
        Ok(newly as usize)
    }

    /// The stanzas still unacknowledged, oldest first, to write again after resumption.
    /// They stay in the queue: the client counts them again as it receives them.
    pub fn unacked(&self) -> impl Iterator<Item = &SharedStanza> {
        self.unacked.iter().map(|u| &u.stanza)
    }

    /// The outstanding `<r/>` died with the old connection.
    pub fn connection_changed(&mut self) {
        self.requested = false;
    }

    /// Empties the queue (the session is ending).
    pub fn take_unacked(&mut self) -> VecDeque<Unacked> {
        std::mem::take(&mut self.unacked)
    }
}

/// Everything a session needs to continue on another connection.
pub struct Detached {
    pub handle: Arc<SessionHandle>,
    pub inbox: SessionInbox,
    pub state: StreamState,
    pub takeover: TakeoverReceiver,
    pub host: Arc<Host>,
    /// Stanzas that arrived while no connection was attached, in order; written after the
    /// unacknowledged ones on resumption.
    pub held: VecDeque<Box<Outgoing>>,
}

/// A resuming connection's request for a session's state.
pub type TakeoverRequest = oneshot::Sender<Detached>;
pub type TakeoverReceiver = mpsc::Receiver<TakeoverRequest>;

struct Entry {
    user: BareJid,
    takeover: mpsc::Sender<TakeoverRequest>,
}

/// Why a resumption was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// Unknown, expired or another account's session; `h` if it ended recently.
    NotFound { h: Option<u32> },
}

/// The resumable sessions of this server, by SM-ID.
#[derive(Default)]
pub struct Resumptions {
    live: Mutex<HashMap<String, Entry>>,
    expired: Mutex<Expired>,
}

#[derive(Default)]
struct Expired {
    h: HashMap<String, (BareJid, u32)>,
    order: VecDeque<String>,
}

impl Resumptions {
    /// Registers a resumable session; returns the SM-ID and the take-over receiver its
    /// owner must watch.
    pub fn register(&self, user: BareJid) -> (String, TakeoverReceiver) {
        let (tx, rx) = mpsc::channel(1);
        let mut live = self.live.lock();
        loop {
            // 192 random bits: guessing an SM-ID of another session is not feasible, and the
            // account check on resumption stops it anyway.
            let id = rookery_stanza::random_id(32);
            if live.contains_key(&id) {
                continue;
            }
            live.insert(
                id.clone(),
                Entry {
                    user: user.clone(),
                    takeover: tx,
                },
            );
            return (id, rx);
        }
    }

    /// Takes a session over for `user`, waiting (bounded) for its current owner to let go.
    pub async fn take(&self, id: &str, user: &BareJid) -> Result<Detached, ResumeError> {
        let sender = {
            let live = self.live.lock();
            match live.get(id) {
                Some(e) if e.user == *user => Some(e.takeover.clone()),
                _ => None,
            }
        };
        let Some(sender) = sender else {
            return Err(ResumeError::NotFound {
                h: self.expired_h(id, user),
            });
        };
        let (tx, rx) = oneshot::channel();
        if sender.send(tx).await.is_err() {
            return Err(ResumeError::NotFound {
                h: self.expired_h(id, user),
            });
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(d)) => Ok(d),
            _ => Err(ResumeError::NotFound {
                h: self.expired_h(id, user),
            }),
        }
    }

    /// The session ended for good: forget it, remembering its final count for a while.
    pub fn ended(&self, id: &str, inbound: u32) {
        let Some(entry) = self.live.lock().remove(id) else {
            return;
        };
        let mut exp = self.expired.lock();
        if exp.order.len() >= EXPIRED_REMEMBERED {
            if let Some(old) = exp.order.pop_front() {
                exp.h.remove(&old);
            }
        }
        exp.order.push_back(id.to_owned());
        exp.h.insert(id.to_owned(), (entry.user, inbound));
    }

    fn expired_h(&self, id: &str, user: &BareJid) -> Option<u32> {
        self.expired
            .lock()
            .h
            .get(id)
            .filter(|(u, _)| u == user)
            .map(|(_, h)| *h)
    }

    pub fn len(&self) -> usize {
        self.live.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a session whose connection dropped until it is resumed, kicked, the server stops,
/// or the resumption time runs out; then ends it.
pub async fn park(server: Arc<Server>, resumptions: Arc<Resumptions>, mut d: Detached) {
    let limit = server
        .config()
        .sections
        .get::<StreamManagementConfig>()
        .max_unacked_stanzas;
    let deadline = tokio::time::Instant::now() + d.state.resume_timeout;
    let shutdown = server.shutdown_token().clone();
    let handle = d.handle.clone();
    tracing::info!(jid = %handle.jid(), "connection lost; session kept for resumption");
    counters::incr(Counter::SmParked);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = handle.kicked() => break,
            req = d.takeover.recv() => {
                let Some(req) = req else { break };
                // The resumer owns the session from here.
                match req.send(d) {
                    Ok(()) => return,
                    Err(back) => d = back,
                }
            }
            out = d.inbox.stanzas.recv() => {
                let Some(out) = out else { break };
                let is_message = out.stanza.name() == "message";
                let copy = is_message.then(|| out.stanza.clone());
                d.held.push_back(out);
                if d.held.len() + d.state.unacked_len() > limit {
                    tracing::warn!(jid = %handle.jid(), "too many stanzas held for a detached session; ending it");
                    break;
                }
                if let Some(stanza) = copy {
                    let event = HeldMessage { session: handle.clone(), stanza };
                    d.host.hooks().run(&server, event).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!(jid = %handle.jid(), "resumption time ran out");
                counters::incr(Counter::SmExpired);
                break;
            }
        }
    }
    let mut d = d;
    end_session(
        &server,
        &resumptions,
        &d.host,
        &d.handle,
        Some(&mut d.inbox),
        Some(&mut d.state),
        std::mem::take(&mut d.held),
    )
    .await;
}

/// Ends a session for good: unregisters it, tells the modules, and gives back every stanza
/// it accepted and never confirmed (XEP-0198 §4, RFC 6121 §8.5.3.2.1): messages go to the
/// account's other resources or offline storage, IQ requests get `service-unavailable`,
/// the rest is dropped. A stanza whose sender holds its own copy until confirmed (offline
/// storage) is left to that sender, so nothing is stored twice.
pub async fn end_session(
    server: &Arc<Server>,
    resumptions: &Resumptions,
    host: &Arc<Host>,
    handle: &Arc<SessionHandle>,
    inbox: Option<&mut SessionInbox>,
    state: Option<&mut StreamState>,
    held: VecDeque<Box<Outgoing>>,
) {
    let was_available = handle.priority().is_some();
    let unbound = server.sessions().unbind(handle);
    let mut pending: Vec<(SharedStanza, bool)> = Vec::new();
    if let Some(state) = state {
        if let Some(id) = &state.id {
            resumptions.ended(id, state.inbound());
        }
        pending.extend(
            state
                .take_unacked()
                .into_iter()
                .map(|u| (u.stanza, u.written.is_some())),
        );
    }
    pending.extend(held.into_iter().map(|o| (o.stanza, o.written.is_some())));
    if let Some(inbox) = inbox {
        // Nobody can queue for it any more once it is unbound and the queue is closed.
        inbox.stanzas.close();
        while let Ok(o) = inbox.stanzas.try_recv() {
            pending.push((o.stanza, o.written.is_some()));
        }
    }
    if unbound {
        let event = SessionClosed {
            session: handle.clone(),
            was_available,
        };
        host.hooks().run(server, event).await;
    }
    for (stanza, sender_keeps_copy) in pending {
        if sender_keeps_copy {
            continue;
        }
        match stanza.name() {
            "message" => server.redeliver_message(stanza).await,
            "iq" if IqType::of(&stanza).is_some_and(IqType::is_request) => {
                server.bounce(&stanza, StanzaError::service_unavailable())
            }
            _ => {}
        }
    }
    tracing::info!(jid = %handle.jid(), "session ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_xml::Element;

    fn msg(n: u32) -> Element {
        Element::new("message", "jabber:client").with_attr("id", n.to_string())
    }

    fn ids(s: &StreamState) -> Vec<String> {
        s.unacked()
            .map(|e| e.attr("id").unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn acks_drop_confirmed_stanzas_and_resolve_receipts() {
        let mut s = StreamState::new(None, Duration::from_secs(1));
        let (tx, mut rx) = oneshot::channel();
        s.sent(msg(1), Some(tx));
        s.sent(msg(2), None);
        s.sent(msg(3), None);
        assert_eq!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert_eq!(s.ack(1), Ok(1));
        assert_eq!(rx.try_recv(), Ok(()));
        assert_eq!(ids(&s), ["2", "3"]);
        // Repeating an ack changes nothing.
        assert_eq!(s.ack(1), Ok(0));
        assert_eq!(s.ack(3), Ok(2));
        assert_eq!(s.unacked_len(), 0);
    }

    #[test]
    fn too_high_is_an_error_and_stale_is_ignored() {
        let mut s = StreamState::new(None, Duration::from_secs(1));
        s.sent(msg(1), None);
        s.sent(msg(2), None);
        assert_eq!(s.ack(3), Err(HandledTooHigh { h: 3, sent: 2 }));
        assert_eq!(s.ack(2), Ok(2));
        assert_eq!(s.ack(1), Ok(0), "an old h is stale, not too high");
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut s = StreamState::new(None, Duration::from_secs(1));
        // Start just below the wrap, as after 2^32 - 2 stanzas each way.
        s.sent = u32::MAX - 1;
        s.inbound = u32::MAX;
        s.handled();
        assert_eq!(s.inbound(), 0, "h goes from 2^32-1 back to 0");
        for n in 0..4 {
            s.sent(msg(n), None);
        }
        // Sent counter is now 2; the four unacked are u32::MAX, 0, 1, 2.
        assert_eq!(s.ack(u32::MAX), Ok(1));
        assert_eq!(s.ack(1), Ok(2));
        assert_eq!(ids(&s), ["3"]);
        assert_eq!(s.ack(3), Err(HandledTooHigh { h: 3, sent: 2 }));
        assert_eq!(s.ack(2), Ok(1));
    }

    #[test]
    fn one_outstanding_request_at_a_time() {
        let mut s = StreamState::new(None, Duration::from_secs(1));
        assert!(!s.should_request(), "nothing to confirm");
        s.sent(msg(1), None);
        assert!(s.should_request());
        s.sent(msg(2), None);
        assert!(!s.should_request(), "one <r/> is enough");
        let _ = s.ack(1);
        assert!(s.should_request());
        s.connection_changed();
        assert!(s.should_request());
    }

    #[tokio::test]
    async fn resumption_ids_are_per_account_and_remembered_after_the_end() {
        let r = Resumptions::default();
        let alice = BareJid::new("alice@x").expect("jid");
        let mallory = BareJid::new("mallory@x").expect("jid");
        let (id, _rx) = r.register(alice.clone());
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.take(&id, &mallory).await.err(),
            Some(ResumeError::NotFound { h: None })
        );
        r.ended(&id, 7);
        assert!(r.is_empty());
        assert_eq!(
            r.take(&id, &alice).await.err(),
            Some(ResumeError::NotFound { h: Some(7) })
        );
        assert_eq!(
            r.take(&id, &mallory).await.err(),
            Some(ResumeError::NotFound { h: None }),
            "another account learns nothing"
        );
    }
}
