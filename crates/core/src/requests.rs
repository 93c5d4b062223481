//! IQ requests the server sends itself, on behalf of a host or of an account (RFC 6120
//! §8.2.3): each gets a server-chosen id and waits for the one result or error, or times out.
//!
//! An answer resolves a pending request only if it carries the request's id, comes from the
//! entity the request was sent to (the full JID, or any resource of a bare JID) and is
//! addressed to the entity the request was sent from; anything else is not an answer and is
//! dropped as before. The table is bounded by what modules ask and each entry lives at most
//! until its timeout: a request whose future is dropped removes its entry.

use parking_lot::Mutex;
use rookery_stanza::{Jid, StanzaError};
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a request sent with [`Server::send_iq_request`](crate::Server::send_iq_request) got
/// no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IqRequestError {
    /// The stanza is not an IQ get or set with a valid `from` and `to`.
    #[error("not an IQ request with a valid 'from' and 'to'")]
    NotARequest,
    /// The addressee (or the router on its behalf) answered with an error.
    #[error("answered with an error: {0}")]
    Error(StanzaError),
    /// No answer arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

struct Pending {
    from: Jid,
    to: Jid,
    reply: oneshot::Sender<Element>,
}

/// The requests waiting for an answer, by id.
#[derive(Default)]
pub(crate) struct PendingIqs {
    next: AtomicU64,
    table: Mutex<HashMap<String, Pending>>,
}

/// Removes its entry when the waiting future ends, whichever way it ends.
pub(crate) struct PendingGuard {
    table: Arc<PendingIqs>,
    id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.table.table.lock().remove(&self.id);
    }
}

impl PendingIqs {
    /// A fresh id for a request from `from` to `to`, and the receiver of its answer.
    pub(crate) fn register(
        self: &Arc<Self>,
        from: Jid,
        to: Jid,
    ) -> (String, oneshot::Receiver<Element>, PendingGuard) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("rookery-{n}");
        let (tx, rx) = oneshot::channel();
        self.table.lock().insert(
            id.clone(),
            Pending {
                from,
                to,
                reply: tx,
            },
        );
        let guard = PendingGuard {
            table: self.clone(),
            id: id.clone(),
        };
        (id, rx, guard)
    }

    /// Hands an IQ result or error from `from` to `to` to the request it answers.
    /// Returns whether it answered one.
    pub(crate) fn resolve(&self, from: &Jid, to: &Jid, stanza: Element) -> bool {
        let Some(id) = stanza.attr("id") else {
            return false;
        };
        let mut table = self.table.lock();
        let matches = table.get(id).is_some_and(|p| {
            let responder = match p.to.try_as_full() {
                Ok(_) => p.to == *from,
                Err(bare) => *bare == from.to_bare(),
            };
            responder && p.from == *to
        });
        if !matches {
            return false;
        }
        match table.remove(id) {
            Some(p) => p.reply.send(stanza).is_ok(),
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).expect("jid")
    }

    #[test]
    fn only_the_addressee_answering_the_requester_resolves() {
        let p = Arc::new(PendingIqs::default());
        let (id, mut rx, guard) = p.register(jid("a@x"), jid("push@x/app"));
        let answer = |id: &str| {
            Element::new("iq", "jabber:client")
                .with_attr("id", id)
                .with_attr("type", "result")
        };
        let other = jid("mallory@x/m");
        let addressee = jid("push@x/app");
        assert!(!p.resolve(&other, &jid("a@x"), answer(&id)), "wrong sender");
        assert!(
            !p.resolve(&addressee, &jid("b@x"), answer(&id)),
            "wrong addressee"
        );
        assert!(
            !p.resolve(&addressee, &jid("a@x"), answer("other")),
            "wrong id"
        );
        assert!(rx.try_recv().is_err());
        assert!(p.resolve(&addressee, &jid("a@x"), answer(&id)));
        assert_eq!(
            rx.try_recv()
                .ok()
                .and_then(|e| e.attr("id").map(str::to_owned)),
            Some(id.clone())
        );
        assert!(
            !p.resolve(&addressee, &jid("a@x"), answer(&id)),
            "answered once"
        );
        drop(guard);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_bare_addressee_may_answer_from_any_resource_and_drop_cleans_up() {
        let p = Arc::new(PendingIqs::default());
        let (id, _rx, guard) = p.register(jid("x"), jid("svc@x"));
        let (id2, _rx2, _g2) = p.register(jid("x"), jid("svc@x"));
        assert_ne!(id, id2, "ids are unique");
        assert_eq!(p.len(), 2);
        drop(guard);
        assert_eq!(p.len(), 1, "a dropped request leaves no entry");
        let el = Element::new("iq", "jabber:client").with_attr("id", id2);
        assert!(p.resolve(&jid("svc@x/any"), &jid("x"), el));
    }
}
