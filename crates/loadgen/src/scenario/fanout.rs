//! Presence fan-out: account FIRST (the owner) has CONTACTS contacts (accounts FIRST+1 ...)
//! with mutual subscriptions, all online. The owner changes its presence REPEATS times; each
//! time the run measures how long until every contact has received it.
//!
//! Subscriptions are set up over XMPP when the owner's roster lacks them (both sides send
//! `subscribe` and approve the other's request), so the scenario needs nothing but a server
//! with rosters. A server without rosters (the roster get is refused) is reported as not
//! supporting the scenario.

use super::{login_many, Mark, Report, CLOSE_WAIT};
use crate::client::{self, Conn, ConnReader, LoginOpts, Target};
use crate::scan::{self, Event};
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::json;
use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Contacts on the owner's roster (accounts FIRST+1 ... FIRST+CONTACTS).
    #[arg(long, default_value_t = 1000)]
    pub contacts: u64,
    /// The owner's account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Presence changes to measure.
    #[arg(long, default_value_t = 20)]
    pub repeats: u64,
    /// Pause between presence changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Longest wait for one change to reach every contact, in seconds.
    #[arg(long, default_value_t = 30)]
    pub broadcast_timeout: u64,
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Logins in progress at once while opening the sessions.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

/// How missing mutual subscriptions are set up (shared with the scenarios that need them).
#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    /// Longest time for setting up the subscriptions, in seconds.
    #[arg(long, default_value_t = 900)]
    pub setup_timeout: u64,
    /// Contacts whose subscriptions are set up at once (servers that rewrite a whole roster
    /// per change fall far behind when all of them come at once).
    #[arg(long, default_value_t = 50)]
    pub setup_batch: usize,
}

/// State the contacts report arrivals into.
struct Shared {
    base: Instant,
    /// Which broadcast is being measured (u64::MAX: none).
    rep: AtomicU64,
    t0_ns: AtomicU64,
    arrivals: Mutex<Vec<u64>>,
    expected: u64,
    all_arrived: Notify,
    /// Setup progress at the owner: `subscribed` answers received, contacts' requests approved.
    subscribed_in: AtomicU64,
    approved: AtomicU64,
    progress: Notify,
}

type Roster = Vec<(String, String)>;
type RosterReply = oneshot::Sender<Result<Roster, String>>;

enum OwnerCmd {
    Subscribe(Vec<String>),
    Broadcast(u64),
    Roster(RosterReply),
}

fn is_roster_push(el: &[u8]) -> bool {
    scan::attr(el, b"type") == Some(b"set")
        && scan::child_tag(el, b"query")
            .and_then(|q| scan::tag_attr(q, b"xmlns"))
            .is_some_and(|ns| ns == b"jabber:iq:roster")
}

/// Answers IQs from the server: roster pushes with a result (RFC 6121 §2.1.6), the rest as
/// [`client::write_iq_answer`] does.
fn answer_iq(out: &mut Vec<u8>, el: &[u8]) {
    if is_roster_push(el) {
        let id = scan::attr(el, b"id").unwrap_or(b"");
        out.extend_from_slice(b"<iq type='result' id='");
        out.extend_from_slice(id);
        out.extend_from_slice(b"'/>");
    } else {
        client::write_iq_answer(el, out);
    }
}

fn status_rep(el: &[u8]) -> Option<u64> {
    let status = scan::child_text(el, b"status")?;
    std::str::from_utf8(status.strip_prefix(b"fanout-")?)
        .ok()?
        .parse()
        .ok()
}

/// Drains framed elements into owned copies (so the connection can be written to while
/// handling them). Returns false when the stream ended.
pub(super) fn drain_elements(rd: &mut ConnReader, into: &mut Vec<Vec<u8>>) -> bool {
    loop {
        match rd.scanner.next_event() {
            Ok(Some(Event::Element(r))) => into.push(rd.scanner.slice(r).to_vec()),
            Ok(Some(Event::StreamOpen(_))) => {}
            Ok(Some(Event::StreamClose)) | Err(_) => return false,
            Ok(None) => return true,
        }
    }
}

/// A contact: approves the owner's subscription request, asks for its own (when its setup
/// batch is released), answers IQs, and reports when each measured presence change arrives.
async fn contact(
    conn: Conn,
    owner: Arc<str>,
    subscribe_in_batch: Option<u64>,
    mut batch: watch::Receiver<u64>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    let owner_b = owner.as_bytes();
    let (mut rd, wr) = conn.split();
    let mut to_subscribe = subscribe_in_batch;
    let mut els = Vec::new();
    loop {
        if let Some(b) = to_subscribe {
            if *batch.borrow() > b {
                wr.send(format!("<presence to='{owner}' type='subscribe'/>").into_bytes());
                to_subscribe = None;
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            r = batch.changed(), if to_subscribe.is_some() => {
                if r.is_err() {
                    to_subscribe = None;
                }
            }
            r = rd.read_some() => {
                if let Err(e) = r {
                    errors.add(e.kind, e.detail);
                    break;
                }
                let now = Instant::now();
                els.clear();
                let alive = drain_elements(&mut rd, &mut els);
                let mut out = Vec::new();
                for el in &els {
                    match scan::root_name(el) {
                        b"presence" => {
                            let from = scan::attr(el, b"from").map(scan::bare);
                            if from != Some(owner_b) {
                                continue;
                            }
                            match scan::attr(el, b"type") {
                                Some(b"subscribe") => {
                                    let _ = write!(out, "<presence to='{owner}' type='subscribed'/>");
                                }
                                None => {
                                    let rep = shared.rep.load(Ordering::SeqCst);
                                    if status_rep(el) == Some(rep) {
                                        let t0 = shared.t0_ns.load(Ordering::SeqCst);
                                        let at = now.saturating_duration_since(shared.base).as_nanos() as u64;
                                        let n = {
                                            let mut a = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
                                            a.push(at.saturating_sub(t0) / 1000);
                                            a.len() as u64
                                        };
                                        if n == shared.expected {
                                            shared.all_arrived.notify_one();
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        b"iq" => answer_iq(&mut out, el),
                        b"error" => errors.add("stream-error", String::from_utf8_lossy(scan::first_child_name(el).unwrap_or(b"?"))),
                        _ => {}
                    }
                }
                if !out.is_empty() && !wr.send(out) {
                    errors.add("io", "a contact's writer stopped");
                    break;
                }
                if !alive {
                    errors.add("stream-closed", "server ended a contact's stream");
                    break;
                }
            }
        }
    }
    wr.close(rd, CLOSE_WAIT).await;
    errors
}

fn parse_roster(el: &[u8]) -> Vec<(String, String)> {
    scan::child_tags(el, b"item")
        .into_iter()
        .map(|tag| {
            let jid = scan::tag_attr(tag, b"jid")
                .map(scan::unescape)
                .unwrap_or_default();
            let sub = scan::tag_attr(tag, b"subscription")
                .map(scan::unescape)
                .unwrap_or_default();
            (jid.to_lowercase(), sub.into_owned())
        })
        .collect()
}

async fn owner_task(conn: Conn, shared: Arc<Shared>, mut cmds: mpsc::Receiver<OwnerCmd>) -> Errors {
    let mut errors = Errors::default();
    let mut pending_roster: Vec<(String, RosterReply)> = Vec::new();
    let mut next_id = 0u64;
    let mut els = Vec::new();
    let (mut rd, wr) = conn.split();
    loop {
        let mut out = Vec::new();
        tokio::select! {
            cmd = cmds.recv() => {
                match cmd {
                    None => break,
                    Some(OwnerCmd::Subscribe(jids)) => {
                        for j in jids {
                            let _ = write!(out, "<presence to='{j}' type='subscribe'/>");
                        }
                    }
                    Some(OwnerCmd::Broadcast(rep)) => {
                        let show = if rep % 2 == 0 { "away" } else { "chat" };
                        let _ = write!(out, "<presence><show>{show}</show><status>fanout-{rep}</status></presence>");
                        let t0 = shared.base.elapsed().as_nanos() as u64;
                        shared.t0_ns.store(t0, Ordering::SeqCst);
                    }
                    Some(OwnerCmd::Roster(reply)) => {
                        next_id += 1;
                        let id = format!("roster{next_id}");
                        let _ = write!(out, "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>");
                        pending_roster.push((id, reply));
                    }
                }
            }
            r = rd.read_some() => {
                if let Err(e) = r {
                    errors.add(e.kind, e.detail);
                    break;
                }
                els.clear();
                let alive = drain_elements(&mut rd, &mut els);
                for el in &els {
                    match scan::root_name(el) {
                        b"presence" if scan::attr(el, b"type") == Some(b"subscribe") => {
                            if let Some(from) = scan::attr(el, b"from").map(scan::bare) {
                                out.extend_from_slice(b"<presence to='");
                                out.extend_from_slice(from);
                                out.extend_from_slice(b"' type='subscribed'/>");
                                shared.approved.fetch_add(1, Ordering::SeqCst);
                                shared.progress.notify_one();
                            }
                        }
                        b"presence" if scan::attr(el, b"type") == Some(b"subscribed") => {
                            shared.subscribed_in.fetch_add(1, Ordering::SeqCst);
                            shared.progress.notify_one();
                        }
                        b"iq" => {
                            let id = scan::attr(el, b"id").unwrap_or(b"");
                            if let Some(pos) = pending_roster.iter().position(|(p, _)| p.as_bytes() == id) {
                                let (_, reply) = pending_roster.swap_remove(pos);
                                let answer = if scan::attr(el, b"type") == Some(b"result") {
                                    Ok(parse_roster(el))
                                } else {
                                    let cond = scan::child_tag(el, b"error").map(|_| {
                                        scan::tokens(el).skip(1).filter_map(|t| match t {
                                            scan::Token::Start { name, .. } => Some(String::from_utf8_lossy(name).into_owned()),
                                            _ => None,
                                        }).filter(|n| n != "error" && n != "query").collect::<Vec<_>>().join(" ")
                                    }).unwrap_or_default();
                                    Err(format!("roster get refused: {cond}"))
                                };
                                let _ = reply.send(answer);
                            } else {
                                answer_iq(&mut out, el);
                            }
                        }
                        _ => {}
                    }
                }
                if !alive {
                    errors.add("stream-closed", "server ended the owner's stream");
                    break;
                }
            }
        }
        if !out.is_empty() && !wr.send(out) {
            errors.add("io", "the owner's writer stopped");
            break;
        }
    }
    wr.close(rd, CLOSE_WAIT).await;
    errors
}

async fn roster(
    cmds: &mpsc::Sender<OwnerCmd>,
    wait: Duration,
) -> Result<Vec<(String, String)>, String> {
    let (tx, rx) = oneshot::channel();
    cmds.send(OwnerCmd::Roster(tx))
        .await
        .map_err(|_| "the owner's session ended".to_owned())?;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the owner's session ended".into()),
        Err(_) => Err("roster get timed out".into()),
    }
}

/// Sets up the `missing` mutual subscriptions batch by batch (the contacts' sessions release
/// their own requests when `batch_tx` reaches their batch), then asks the owner's roster
/// until every one of `contact_jids` is `both`. False, with the reason in `errors`, when
/// that does not happen within the time allowed.
#[allow(clippy::too_many_arguments)]
async fn subscribe_in_batches(
    cmd_tx: &mpsc::Sender<OwnerCmd>,
    shared: &Shared,
    batch_tx: &watch::Sender<u64>,
    missing: &[String],
    contact_jids: &[String],
    setup: &SetupArgs,
    step: Duration,
    errors: &mut Errors,
) -> bool {
    let k = contact_jids.len() as u64;
    let until = Instant::now() + Duration::from_secs(setup.setup_timeout);
    // Batch by batch: the owner asks, the contacts of the batch ask too; each side
    // approves the other. Wait until the owner has the batch's answers and requests.
    let mut target = 0u64;
    for (b, chunk) in missing.chunks(setup.setup_batch.max(1)).enumerate() {
        target += chunk.len() as u64;
        let _ = batch_tx.send(b as u64 + 1);
        if cmd_tx
            .send(OwnerCmd::Subscribe(chunk.to_vec()))
            .await
            .is_err()
        {
            break;
        }
        // A server answers for a user who already approved (so no request reaches the
        // client): a batch also ends after 10 s without progress; the roster check below
        // decides.
        loop {
            let done = shared.subscribed_in.load(Ordering::SeqCst) >= target
                && shared.approved.load(Ordering::SeqCst) >= target;
            if done {
                break;
            }
            let stall = (Instant::now() + Duration::from_secs(10)).min(until);
            let wait = tokio::time::timeout_at(stall.into(), shared.progress.notified());
            if wait.await.is_err() {
                break;
            }
        }
        if Instant::now() >= until {
            break;
        }
    }
    // The owner's roster is the judge. A server may answer a subscription before its
    // roster write lands, or still be catching up: ask again for up to 30 s more.
    let until = until.min(Instant::now() + Duration::from_secs(30));
    loop {
        let left = until.saturating_duration_since(Instant::now()).max(step);
        match roster(cmd_tx, left).await {
            Ok(r) => {
                let n = contact_jids
                    .iter()
                    .filter(|j| r.iter().any(|(rj, s)| rj == *j && s == "both"))
                    .count() as u64;
                if n == k {
                    return true;
                }
                if Instant::now() >= until {
                    errors.add("setup", format!("only {n} of {k} subscriptions complete"));
                    return false;
                }
            }
            Err(e) => {
                errors.add("setup", e);
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Mutual subscriptions made sure of by [`ensure_subscriptions`].
pub struct Subscriptions {
    /// All of them are in place.
    pub complete: bool,
    /// How many were missing and set up (or tried).
    pub set_up: usize,
    pub setup_s: f64,
}

/// Makes sure account `owner` and each of `contacts` are subscribed to each other, setting
/// up what is missing as this scenario does, with sessions of their own (resource `setup`)
/// that are closed at the end: a scenario that needs its sessions in another state (with
/// other presence) logs in again afterwards. `Err` is the reason when the server refuses
/// the roster get (no rosters, so no scenario built on them).
pub async fn ensure_subscriptions(
    t: &Arc<Target>,
    owner: u64,
    contacts: &[u64],
    setup: &SetupArgs,
    concurrency: usize,
    errors: &mut Errors,
) -> Result<Subscriptions, String> {
    let owner_jid: Arc<str> = Arc::from(t.bare_jid(owner).to_lowercase());
    let contact_jids: Vec<String> = contacts
        .iter()
        .map(|&n| t.bare_jid(n).to_lowercase())
        .collect();
    let (owner_sess, e) = login_many(
        t,
        vec![owner],
        |_| "setup".to_owned(),
        1,
        LoginOpts::default(),
    )
    .await;
    errors.merge(e);
    let Some((owner_conn, _)) = owner_sess.into_iter().next().flatten() else {
        errors.add("setup", "the owner could not log in");
        return Ok(Subscriptions {
            complete: false,
            set_up: 0,
            setup_s: 0.0,
        });
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        rep: AtomicU64::new(u64::MAX),
        t0_ns: AtomicU64::new(0),
        arrivals: Mutex::new(Vec::new()),
        expected: u64::MAX,
        all_arrived: Notify::new(),
        subscribed_in: AtomicU64::new(0),
        approved: AtomicU64::new(0),
        progress: Notify::new(),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let owner_handle = tokio::spawn(owner_task(owner_conn, shared.clone(), cmd_rx));
    let step = t.step_timeout;
    let outcome = async {
        let before = roster(&cmd_tx, step).await?;
        let both: HashSet<&str> = before
            .iter()
            .filter(|(_, s)| s == "both")
            .map(|(j, _)| j.as_str())
            .collect();
        let missing: Vec<String> = contact_jids
            .iter()
            .filter(|j| !both.contains(j.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(Subscriptions {
                complete: true,
                set_up: 0,
                setup_s: 0.0,
            });
        }
        let started = Instant::now();
        // Only the contacts still missing a subscription need a session.
        let wanted: HashSet<&String> = missing.iter().collect();
        let indices: Vec<u64> = contacts
            .iter()
            .zip(&contact_jids)
            .filter(|(_, j)| wanted.contains(j))
            .map(|(&n, _)| n)
            .collect();
        let (sessions, e) = login_many(
            t,
            indices,
            |_| "setup".to_owned(),
            concurrency,
            LoginOpts::default(),
        )
        .await;
        errors.merge(e);
        let batch = setup.setup_batch.max(1);
        let (batch_tx, batch_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut online = 0;
        for (i, s) in sessions.into_iter().enumerate() {
            if let Some((conn, _)) = s {
                online += 1;
                tasks.spawn(contact(
                    conn,
                    owner_jid.clone(),
                    Some((i / batch) as u64),
                    batch_rx.clone(),
                    shared.clone(),
                    stop_rx.clone(),
                ));
            }
        }
        let complete = if online == missing.len() {
            subscribe_in_batches(
                &cmd_tx,
                &shared,
                &batch_tx,
                &missing,
                &contact_jids,
                setup,
                step,
                errors,
            )
            .await
        } else {
            errors.add(
                "setup",
                format!(
                    "{} of {} contacts could not log in",
                    missing.len() - online,
                    missing.len()
                ),
            );
            false
        };
        let _ = stop_tx.send(true);
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(e) => errors.merge(e),
                Err(e) => errors.add("task", e.to_string()),
            }
        }
        Ok(Subscriptions {
            complete,
            set_up: missing.len(),
            setup_s: stats::round3(started.elapsed().as_secs_f64()),
        })
    }
    .await;
    drop(cmd_tx);
    match owner_handle.await {
        Ok(e) => errors.merge(e),
        Err(e) => errors.add("task", e.to_string()),
    }
    outcome
}

pub async fn run(t: Arc<Target>, a: &FanoutArgs, server_pid: Option<u32>) -> Report {
    let k = a.contacts.max(1);
    let params = json!({
        "contacts": k, "owner": a.first, "repeats": a.repeats, "interval_ms": a.interval_ms,
        "broadcast_timeout_s": a.broadcast_timeout,
    });
    let owner_jid: Arc<str> = Arc::from(t.bare_jid(a.first).to_lowercase());
    let contact_jids: Vec<String> = (1..=k)
        .map(|i| t.bare_jid(a.first + i).to_lowercase())
        .collect();

    let (owner_sess, mut errors) = login_many(
        &t,
        vec![a.first],
        |_| "owner".to_owned(),
        1,
        LoginOpts::default(),
    )
    .await;
    let Some((owner_conn, _)) = owner_sess.into_iter().next().flatten() else {
        return Report::failed(params, errors, "the owner could not log in");
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        rep: AtomicU64::new(u64::MAX),
        t0_ns: AtomicU64::new(0),
        arrivals: Mutex::new(Vec::with_capacity(k as usize)),
        expected: k,
        all_arrived: Notify::new(),
        subscribed_in: AtomicU64::new(0),
        approved: AtomicU64::new(0),
        progress: Notify::new(),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let owner = tokio::spawn(owner_task(owner_conn, shared.clone(), cmd_rx));
    let step = t.step_timeout;

    // Does the server have rosters at all, and what is there already?
    let before_roster = match roster(&cmd_tx, step).await {
        Ok(r) => r,
        Err(reason) => {
            drop(cmd_tx);
            if let Ok(e) = owner.await {
                errors.merge(e);
            }
            return Report {
                params,
                results: json!({ "supported": false, "reason": reason }),
                server: serde_json::Value::Null,
                generator: serde_json::Value::Null,
                errors,
                ok: false,
                summary: format!("not supported by this server ({reason})"),
            };
        }
    };
    let both: HashSet<&str> = before_roster
        .iter()
        .filter(|(_, s)| s == "both")
        .map(|(j, _)| j.as_str())
        .collect();
    let missing: Vec<String> = contact_jids
        .iter()
        .filter(|j| !both.contains(j.as_str()))
        .cloned()
        .collect();
    // Setup batch of each contact still missing a mutual subscription.
    let batch_size = a.setup.setup_batch.max(1);
    let batch_of: std::collections::HashMap<&str, u64> = missing
        .iter()
        .enumerate()
        .map(|(i, j)| (j.as_str(), (i / batch_size) as u64))
        .collect();
    let (batch_tx, batch_rx) = watch::channel(0u64);

    let (sessions, e) = login_many(
        &t,
        (1..=k).map(|i| a.first + i).collect(),
        |_| "contact".to_owned(),
        a.concurrency,
        LoginOpts::default(),
    )
    .await;
    errors.merge(e);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut contacts = tokio::task::JoinSet::new();
    let mut online = 0u64;
    for (i, s) in sessions.into_iter().enumerate() {
        if let Some((conn, _)) = s {
            online += 1;
            let sub = batch_of.get(contact_jids[i].as_str()).copied();
            contacts.spawn(contact(
                conn,
                owner_jid.clone(),
                sub,
                batch_rx.clone(),
                shared.clone(),
                stop_rx.clone(),
            ));
        }
    }

    let mut setup_s = 0.0;
    let mut ok = online == k;
    if online < k {
        errors.add(
            "login",
            format!("{} of {k} contacts could not log in", k - online),
        );
    }
    if ok && !missing.is_empty() {
        let setup_start = Instant::now();
        ok = subscribe_in_batches(
            &cmd_tx,
            &shared,
            &batch_tx,
            &missing,
            &contact_jids,
            &a.setup,
            step,
            &mut errors,
        )
        .await;
        setup_s = setup_start.elapsed().as_secs_f64();
        // Let the presence exchanged by new subscriptions settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut completion_us = Vec::new();
    let mut median_arrival_us = Vec::new();
    let mut incomplete = 0u64;
    let mut server = serde_json::Value::Null;
    let mut generator = serde_json::Value::Null;
    if ok {
        let m0 = Mark::now(server_pid);
        for rep in 0..a.repeats {
            shared
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            shared.rep.store(rep, Ordering::SeqCst);
            if cmd_tx.send(OwnerCmd::Broadcast(rep)).await.is_err() {
                errors.add("owner", "the owner's session ended");
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(a.broadcast_timeout);
            let done = loop {
                let n = shared
                    .arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len() as u64;
                if n >= k {
                    break true;
                }
                let wait = tokio::time::timeout_at(deadline.into(), shared.all_arrived.notified());
                if wait.await.is_err() {
                    break false;
                }
            };
            let mut arr = shared
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if !done {
                incomplete += 1;
                errors.add(
                    "incomplete",
                    format!(
                        "change {rep}: {} of {k} contacts had it after the timeout",
                        arr.len()
                    ),
                );
            } else {
                completion_us.push(arr.iter().copied().max().unwrap_or(0));
                median_arrival_us.push(stats::median_us(&mut arr) as u64);
            }
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        }
        shared.rep.store(u64::MAX, Ordering::SeqCst);
        let m1 = Mark::now(server_pid);
        (server, generator) = m0.until(&m1);
    }

    let _ = stop_tx.send(true);
    drop(cmd_tx);
    while let Some(r) = contacts.join_next().await {
        match r {
            Ok(e) => errors.merge(e),
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    if let Ok(e) = owner.await {
        errors.merge(e);
    }
    let measured = completion_us.len() as u64;
    let cpu_ms = server
        .get("cpu_s")
        .and_then(|v| v.as_f64())
        .filter(|_| a.repeats > 0)
        .map(|c| stats::round3(c * 1000.0 / a.repeats as f64));
    let completion = stats::percentiles_ms(&mut completion_us);
    let median_arrival = stats::percentiles_ms(&mut median_arrival_us);
    let summary = format!(
        "{measured}/{} changes reached all {k} contacts; completion p50 {} ms max {} ms; server CPU {} ms/change",
        a.repeats,
        completion["p50"],
        completion["max"],
        cpu_ms.map_or("?".to_owned(), |c| c.to_string())
    );
    Report {
        params,
        results: json!({
            "supported": true,
            "contacts_online": online,
            "subscriptions_set_up": missing.len(),
            "setup_s": stats::round3(setup_s),
            "changes_complete": measured,
            "changes_incomplete": incomplete,
            "completion_ms": completion,
            "median_arrival_ms": median_arrival,
            "server_cpu_ms_per_change": cpu_ms,
        }),
        server,
        generator,
        ok: ok && incomplete == 0 && measured == a.repeats,
        errors,
        summary,
    }
}
