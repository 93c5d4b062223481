//! The service side of a room's archive (XEP-0313 on the room's JID) and of moderated
//! retractions (XEP-0425): the storage work a room asks for in [`ArchiveOp`]s.
//!
//! One worker task per service takes every room's operations in the order the rooms made
//! them, so a room's archive holds its messages in the order they were sent, a query sees
//! every message broadcast before it, and a tombstone replaces a message already stored.
//! Rooms never wait for storage: a room hands its operations over and goes on with the
//! next stanza (the queue is bounded; a full queue makes the room wait, not lose them).
//! Queries run in tasks of their own once the operations before them are done, so a long
//! query does not hold up archiving.
//!
//! A message the room broadcast is not dropped from its archive because the database is
//! away for a while (PostgreSQL restarting): the worker retries the append with a growing
//! delay, for up to [`APPEND_RETRY_FOR`], keeping the operations behind it in order (the
//! queue fills meanwhile, and then the rooms wait). An append that did commit before its
//! answer was lost comes back as `AlreadyExists` (the id is unique per room) and counts as
//! stored.
//!
//! Archived messages are what the room broadcast, with the sender's real JID in a
//! `muc#user` `<item/>`: a result keeps it only for those who may see real JIDs (a
//! non-anonymous room, moderators, admins and owners).

use super::room::{ArchiveOp, Out, NS_OCCUPANT_ID};
use super::{send_all, send_one, NS_MUC_USER};
use crate::mam::config::ArchiveConfig;
use crate::mam::{query, NS as NS_MAM};
use rookery_core::ServiceHandle;
use rookery_stanza::{BareJid, Jid, StanzaError, StanzaErrorCondition};
use rookery_storage::{
    ArchiveEntry, ArchiveFilter, ArchiveQuery, ArchiveStore, PageRequest, StorageError,
};
use rookery_xml::Element;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Operations waiting for the worker, across the service's rooms.
const QUEUE: usize = 4096;

/// How long an append that fails for the backend's sake is retried before the message is
/// given up (and logged at error).
const APPEND_RETRY_FOR: Duration = Duration::from_secs(300);
/// The first delay between two tries, doubled each time up to [`APPEND_RETRY_MAX_DELAY`].
const APPEND_RETRY_DELAY: Duration = Duration::from_millis(100);
const APPEND_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// The newest `max` messages of a room's archive, oldest first (id, time, message): the
/// history of a room loaded after a restart. Unreadable entries are skipped.
pub async fn recent(
    store: &dyn ArchiveStore,
    room: &BareJid,
    max: usize,
) -> Result<Vec<(String, i64, Element)>, StorageError> {
    let (domain, node) = key(room);
    let page = store
        .query_archive(
            domain,
            node,
            &ArchiveQuery {
                filter: ArchiveFilter::default(),
                page: PageRequest::Last,
                max,
            },
        )
        .await?;
    Ok(page
        .entries
        .into_iter()
        .filter_map(|e| {
            let m = query::stored_message(&e).ok()?;
            Some((e.id, e.timestamp_us, m))
        })
        .collect())
}

/// A room's operation.
pub struct Job {
    pub room: BareJid,
    pub op: ArchiveOp,
}

/// Starts the worker of a service; it ends when every sender is gone, or at shutdown once
/// it has stored what the rooms had already handed over (a graceful stop waits for it:
/// messages the rooms broadcast are not lost from their archives).
pub fn start(
    service: ServiceHandle,
    store: Arc<dyn ArchiveStore>,
    cfg: Arc<ArchiveConfig>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    let server = service.server();
    // The task keeps the token, not the server (which owns the service that owns this).
    let shutdown = server.as_ref().map(|s| s.shutdown_token().clone());
    let worker = Worker {
        service,
        store,
        cfg,
        shutdown: shutdown.clone(),
    };
    let task = async move {
        let Some(shutdown) = shutdown else {
            while let Some(job) = rx.recv().await {
                worker.run(job.room, job.op).await;
            }
            return;
        };
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => worker.run(job.room, job.op).await,
                    None => return,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            // The clients are going: only what is stored matters now.
            if !matches!(job.op, ArchiveOp::Query { .. }) {
                worker.run(job.room, job.op).await;
            }
        }
    };
    match server {
        Some(server) => {
            server.tasks().spawn(task);
        }
        None => {
            tokio::spawn(task);
        }
    }
    tx
}

#[derive(Clone)]
struct Worker {
    service: ServiceHandle,
    store: Arc<dyn ArchiveStore>,
    cfg: Arc<ArchiveConfig>,
    /// The server's stop: retries end there (what could not be stored by then is logged).
    shutdown: Option<CancellationToken>,
}

/// The store's key of a room: its service's domain and its local part.
fn key(room: &BareJid) -> (&str, &str) {
    (
        room.domain().as_str(),
        room.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

impl Worker {
    async fn run(&self, room: BareJid, op: ArchiveOp) {
        match op {
            ArchiveOp::Append {
                id,
                at_us,
                nick,
                message,
            } => self.append(&room, id, at_us, nick, &message).await,
            ArchiveOp::Query {
                request,
                requester,
                real_jids,
            } => {
                let worker = self.clone();
                tokio::spawn(async move {
                    worker
                        .query(&room, &request, Jid::from(requester), real_jids)
                        .await;
                });
            }
            ArchiveOp::Retract {
                id,
                retracted,
                in_history,
                done,
                missing,
                notice,
            } => {
                match self.tombstone(&room, &id, retracted).await {
                    Ok(true) => {}
                    Ok(false) if in_history => {}
                    Ok(false) => return send_all(&self.service, missing).await,
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "cannot retract a message");
                        let internal: Vec<Out> = missing
                            .into_iter()
                            .map(|o| match o {
                                Out::One(to, el) => Out::One(to, internal_error(el)),
                                other => other,
                            })
                            .collect();
                        return send_all(&self.service, internal).await;
                    }
                }
                send_all(&self.service, done).await;
                if let ArchiveOp::Append {
                    id,
                    at_us,
                    nick,
                    message,
                } = *notice
                {
                    self.append(&room, id, at_us, nick, &message).await;
                }
            }
            ArchiveOp::Delete => {
                let (domain, node) = key(&room);
                match self.store.delete_archive(domain, node).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(room = %room, messages = n, "room archive deleted")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "cannot delete a room archive")
                    }
                }
            }
        }
    }

    async fn append(
        &self,
        room: &BareJid,
        id: String,
        at_us: i64,
        nick: String,
        message: &Element,
    ) {
        let (domain, node) = key(room);
        let entry = ArchiveEntry {
            id,
            timestamp_us: at_us,
            with_bare: room.to_string(),
            with_resource: nick,
            stanza: message.to_xml(""),
        };
        let started = Instant::now();
        let mut delay = APPEND_RETRY_DELAY;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let e = match self.store.append_archive(domain, node, &entry).await {
                Ok(_) => return,
                // Stored by an earlier try whose answer was lost.
                Err(StorageError::AlreadyExists) if tries > 1 => return,
                Err(e) => e,
            };
            let stopping = self.shutdown.as_ref().is_some_and(|t| t.is_cancelled());
            if !matches!(e, StorageError::Backend(_))
                || stopping
                || started.elapsed() >= APPEND_RETRY_FOR
            {
                tracing::error!(room = %room, error = %e, tries, "a room message was not archived");
                return;
            }
            if tries == 1 {
                tracing::warn!(room = %room, error = %e, "a room message could not be archived yet; retrying");
            }
            match &self.shutdown {
                Some(t) => {
                    tokio::select! {
                        _ = t.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
            delay = (delay * 2).min(APPEND_RETRY_MAX_DELAY);
        }
    }

    /// Replaces the message with id `id` with its tombstone: the message's attributes and
    /// occupant id, then `retracted` (XEP-0425 §5). Ok(false): no such message.
    async fn tombstone(
        &self,
        room: &BareJid,
        id: &str,
        retracted: Element,
    ) -> Result<bool, StorageError> {
        let (domain, node) = key(room);
        let found = self
            .store
            .query_archive(
                domain,
                node,
                &ArchiveQuery {
                    filter: ArchiveFilter {
                        ids: Some(vec![id.to_owned()]),
                        ..ArchiveFilter::default()
                    },
                    page: PageRequest::First,
                    max: 1,
                },
            )
            .await;
        let entry = match found {
            Ok(page) => match page.entries.into_iter().next() {
                Some(e) => e,
                None => return Ok(false),
            },
            Err(StorageError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut message = query::stored_message(&entry)?;
        // Everything that could tell what the message said goes; who sent it stays.
        message.retain_children(|c| c.is("occupant-id", NS_OCCUPANT_ID) || c.is("x", NS_MUC_USER));
        message.push_child(retracted);
        match self
            .store
            .replace_archived(domain, node, id, &message.to_xml(""))
            .await
        {
            Ok(()) => Ok(true),
            Err(StorageError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs a query (`<query/>` set or `<metadata/>` get) and answers `requester`: the
    /// results, then the IQ result with `<fin/>`, from the room's JID (XEP-0313 §4).
    async fn query(&self, room: &BareJid, request: &Element, requester: Jid, real_jids: bool) {
        let answer = self.answer(room, request, &requester, real_jids).await;
        let iq_id = request.attr("id").unwrap_or_default().to_owned();
        let reply = match answer {
            Ok(payload) => Element::new("iq", "jabber:client")
                .with_attr("type", "result")
                .with_attr("id", iq_id)
                .with_attr("from", room.to_string())
                .with_child(payload),
            Err(e) => match rookery_stanza::Stanza::parse(request.clone())
                .ok()
                .and_then(|s| s.error_reply(&e))
            {
                Some(mut el) => {
                    el.set_attr("from", room.to_string());
                    el
                }
                None => return,
            },
        };
        send_one(&self.service, Some(requester), reply).await;
    }

    async fn answer(
        &self,
        room: &BareJid,
        request: &Element,
        requester: &Jid,
        real_jids: bool,
    ) -> Result<Element, StanzaError> {
        let (domain, node) = key(room);
        let Some(payload) = request.children().next() else {
            return Err(StanzaError::bad_request("empty request"));
        };
        if payload.is("metadata", NS_MAM) {
            let bounds = self
                .store
                .archive_bounds(domain, node)
                .await
                .map_err(internal)?;
            return Ok(query::metadata_element(bounds));
        }
        let parsed = query::parse(payload, &self.cfg)?;
        let page = match self.store.query_archive(domain, node, &parsed.query).await {
            Ok(p) => p,
            Err(StorageError::NotFound) => {
                return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                    .with_text("no message with that id in the archive"))
            }
            Err(e) => return Err(internal(e)),
        };
        let room_jid = room.to_string();
        let mut results = Vec::with_capacity(page.entries.len());
        for entry in &page.entries {
            let mut message = query::stored_message(entry).map_err(internal)?;
            if !real_jids {
                message.retain_children(|c| !c.is("x", NS_MUC_USER));
            }
            results.push(query::result_for(
                &room_jid,
                requester,
                parsed.query_id.as_deref(),
                entry,
                message,
            ));
        }
        if parsed.flip_page {
            results.reverse();
        }
        // In order, before the IQ result that this task sends after them.
        for r in results {
            send_one(&self.service, Some(requester.clone()), r).await;
        }
        Ok(query::fin(&page, parsed.query_id.as_deref()))
    }
}

fn internal(e: StorageError) -> StanzaError {
    tracing::error!(error = %e, "room archive storage failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

/// An error answer made into an internal-server-error one (storage failed).
fn internal_error(mut el: Element) -> Element {
    if el.name() == "iq" {
        el.retain_children(|c| c.name() != "error");
        el.push_child(
            Element::new("error", "jabber:client")
                .with_attr("type", "wait")
                .with_child(Element::new(
                    "internal-server-error",
                    "urn:ietf:params:xml:ns:xmpp-stanzas",
                )),
        );
    }
    el
}
