//! Personal eventing (XEP-0163): account FIRST (the publisher) has CONTACTS contacts
//! (accounts FIRST+1 ...) with mutual subscriptions, all online. Each contact's available
//! presence carries entity capabilities (XEP-0115) whose features include
//! `http://jabber.org/protocol/tune+notify`, and it answers the server's disco#info query
//! for its `node#ver` with the identity and features that hash to `ver`. The publisher then
//! publishes User Tune items (XEP-0118: a plain PEP node that no server treats specially)
//! one after the other; each publish is done when every contact has its notification.
//!
//! Servers learn the contacts' `+notify` features asynchronously (a disco#info round trip
//! after their presence), so a warm-up publishes until one publish reaches every contact,
//! within a bounded time; if it never does, the run reports how many it reached. A server
//! that refuses the publish is reported as not supporting the scenario.
//!
//! Reports, per publish, the time until the last contact has the notification and until
//! the publisher has its IQ result, the delivery rate, and the server's CPU per publish.
//! Subscriptions are set up over XMPP when missing, as the `fanout` scenario does.

use super::fanout::{drain_elements, ensure_subscriptions, SetupArgs};
use super::muc::find_condition;
use super::{login_many, Mark, Report, CLOSE_WAIT};
use crate::caps::{Caps, Identity, NS_DISCO_INFO};
use crate::client::{self, Conn, LoginOpts, Target};
use crate::scan;
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// The PEP node published to, and the namespace of its payload (XEP-0118).
pub const NODE: &str = "http://jabber.org/protocol/tune";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// The caps node of the generator's contacts.
const CAPS_NODE: &str = "urn:rookery:load";

#[derive(Args, Debug, Clone)]
pub struct PepArgs {
    /// Contacts of the publisher (accounts FIRST+1 ... FIRST+CONTACTS).
    #[arg(long, default_value_t = 500)]
    pub contacts: u64,
    /// The publisher's account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Publishes measured.
    #[arg(long, default_value_t = 50)]
    pub repeats: u64,
    /// Pause between publishes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Longest wait for one measured publish to reach every contact, in seconds.
    #[arg(long, default_value_t = 30)]
    pub publish_timeout: u64,
    /// Longest time for the warm-up (until one publish reaches every contact), in seconds.
    #[arg(long, default_value_t = 60)]
    pub warmup_timeout: u64,
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Logins in progress at once while opening the sessions.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

/// Measured publishes that may fail in a row before the run stops measuring (each waits
/// `publish_timeout`).
const MAX_FAILED_IN_A_ROW: u32 = 3;
/// How long one warm-up publish waits for its notifications before the next one.
const WARMUP_ATTEMPT: Duration = Duration::from_secs(5);

struct Shared {
    base: Instant,
    /// Item ids are `TAG-N`: the tag keeps an earlier run's items (which servers send again
    /// as the last published item when a contact comes online) from being counted.
    tag: String,
    /// The publish being waited for (u64::MAX: none).
    current: AtomicU64,
    t0_ns: AtomicU64,
    /// Each contact's arrival for the current publish, µs after it was sent.
    arrivals: Mutex<Vec<u64>>,
    expected: AtomicU64,
    /// The publisher's answer to the current publish: µs after sending, or the error.
    answer: Mutex<Option<Result<u64, String>>>,
    /// Woken when the last expected arrival or the answer comes.
    progress: Notify,
    disco_answered: AtomicU64,
}

impl Shared {
    fn since_t0_us(&self, at: Instant) -> u64 {
        let at = at.saturating_duration_since(self.base).as_nanos() as u64;
        at.saturating_sub(self.t0_ns.load(Ordering::SeqCst)) / 1000
    }
}

/// The publish number of a PEP notification of this run's items on [`NODE`], if `el` is one.
fn notified_publish(el: &[u8], tag: &str) -> Option<u64> {
    let event = scan::child_tag(el, b"event")?;
    if scan::tag_attr(event, b"xmlns") != Some(NS_PUBSUB_EVENT.as_bytes()) {
        return None;
    }
    let items = scan::child_tag(el, b"items")?;
    if scan::tag_attr(items, b"node") != Some(NODE.as_bytes()) {
        return None;
    }
    let id = scan::tag_attr(scan::child_tag(el, b"item")?, b"id")?;
    let n = id.strip_prefix(tag.as_bytes())?.strip_prefix(b"-")?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// A contact: announces its capabilities, answers the server's disco#info queries (and
/// other IQs), and records when the current publish's notification arrives.
async fn contact(
    conn: Conn,
    caps: Arc<Caps>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    let (mut rd, wr) = conn.split();
    wr.send(format!("<presence>{}</presence>", caps.element()).into_bytes());
    // The last publish recorded: a notification counts once per contact.
    let mut last = u64::MAX;
    let mut els = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
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
                        b"message" => {
                            let current = shared.current.load(Ordering::SeqCst);
                            if notified_publish(el, &shared.tag) == Some(current) && last != current {
                                last = current;
                                let us = shared.since_t0_us(now);
                                let n = {
                                    let mut a = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
                                    a.push(us);
                                    a.len() as u64
                                };
                                if n == shared.expected.load(Ordering::SeqCst) {
                                    shared.progress.notify_one();
                                }
                            }
                        }
                        b"iq" => {
                            if caps.answer_disco_info(el, &mut out) {
                                shared.disco_answered.fetch_add(1, Ordering::SeqCst);
                            } else {
                                client::write_iq_answer(el, &mut out);
                            }
                        }
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

/// The publish of item `TAG-n`: a User Tune of about the size real clients publish.
fn publish_iq(n: u64, tag: &str) -> String {
    format!(
        "<iq type='set' id='pub-{n}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{NODE}'>\
         <item id='{tag}-{n}'><tune xmlns='{NODE}'><artist>The Rookery Ensemble</artist>\
         <length>{}</length><rating>{}</rating><source>Load Tests</source>\
         <title>Publish {n}</title><track>{n}</track></tune></item></publish></pubsub></iq>",
        180 + n % 120,
        1 + n % 10,
    )
}

/// The publisher: publishes when told, and hands over the answer to the current publish.
async fn publisher(conn: Conn, shared: Arc<Shared>, mut cmds: mpsc::Receiver<u64>) -> Errors {
    let mut errors = Errors::default();
    let (mut rd, wr) = conn.split();
    let mut els = Vec::new();
    loop {
        let mut out = Vec::new();
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(n) = cmd else { break };
                out = publish_iq(n, &shared.tag).into_bytes();
                shared.t0_ns.store(shared.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
            }
            r = rd.read_some() => {
                if let Err(e) = r {
                    errors.add(e.kind, e.detail);
                    break;
                }
                let now = Instant::now();
                els.clear();
                let alive = drain_elements(&mut rd, &mut els);
                for el in &els {
                    match scan::root_name(el) {
                        b"iq" => {
                            let ours = scan::attr(el, b"id")
                                .and_then(|id| id.strip_prefix(b"pub-"))
                                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok());
                            let Some(n) = ours else {
                                client::write_iq_answer(el, &mut out);
                                continue;
                            };
                            let answer = match scan::attr(el, b"type") {
                                Some(b"result") => Ok(shared.since_t0_us(now)),
                                _ => Err(find_condition(el).unwrap_or_else(|| "?".into())),
                            };
                            if n == shared.current.load(Ordering::SeqCst) {
                                *shared.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
                                shared.progress.notify_one();
                            } else if let Err(cond) = answer {
                                errors.add("publish", format!("publish {n} (late): {cond}"));
                            }
                        }
                        b"error" => errors.add("stream-error", String::from_utf8_lossy(scan::first_child_name(el).unwrap_or(b"?"))),
                        _ => {}
                    }
                }
                if !alive {
                    errors.add("stream-closed", "server ended the publisher's stream");
                    break;
                }
            }
        }
        if !out.is_empty() && !wr.send(out) {
            errors.add("io", "the publisher's writer stopped");
            break;
        }
    }
    wr.close(rd, CLOSE_WAIT).await;
    errors
}

/// What one publish brought before its deadline.
struct Outcome {
    arrivals: Vec<u64>,
    answer: Option<Result<u64, String>>,
}

/// Publishes item `n` and waits until every expected contact has it and the publisher has
/// its answer, an error comes back, or `deadline` passes.
async fn publish_and_wait(
    shared: &Shared,
    cmds: &mpsc::Sender<u64>,
    n: u64,
    deadline: Instant,
) -> Outcome {
    shared
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    *shared.answer.lock().unwrap_or_else(|p| p.into_inner()) = None;
    shared.current.store(n, Ordering::SeqCst);
    if cmds.send(n).await.is_err() {
        return Outcome {
            arrivals: Vec::new(),
            answer: Some(Err("the publisher's session ended".into())),
        };
    }
    let expected = shared.expected.load(Ordering::SeqCst);
    loop {
        let arrived = shared
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        let answer = shared
            .answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match answer {
            Some(Err(_)) => break,
            Some(Ok(_)) if arrived >= expected => break,
            _ => {}
        }
        let wait = tokio::time::timeout_at(deadline.into(), shared.progress.notified());
        if wait.await.is_err() {
            break;
        }
    }
    shared.current.store(u64::MAX, Ordering::SeqCst);
    Outcome {
        arrivals: std::mem::take(&mut *shared.arrivals.lock().unwrap_or_else(|p| p.into_inner())),
        answer: shared
            .answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    }
}

/// The contacts' capabilities: a client that wants User Tune notifications.
fn contact_caps() -> Caps {
    Caps::new(
        CAPS_NODE,
        vec![Identity {
            category: "client".into(),
            kind: "pc".into(),
            lang: String::new(),
            name: "rookery-load".into(),
        }],
        vec![
            NS_DISCO_INFO.to_owned(),
            crate::caps::NS_CAPS.to_owned(),
            format!("{NODE}+notify"),
        ],
    )
}

/// The report of a server that refuses the publish or has no rosters.
fn unsupported(params: Value, reason: String, extra: Value, errors: Errors) -> Report {
    let mut results = json!({ "supported": false, "reason": reason, "contacts_notified": 0 });
    if let (Value::Object(m), Value::Object(extra)) = (&mut results, extra) {
        m.extend(extra);
    }
    Report {
        params,
        summary: format!("not supported by this server ({reason})"),
        results,
        server: Value::Null,
        generator: Value::Null,
        errors,
        ok: false,
    }
}

pub async fn run(t: Arc<Target>, a: &PepArgs, server_pid: Option<u32>) -> Report {
    let k = a.contacts.max(1);
    let caps = Arc::new(contact_caps());
    let params = json!({
        "contacts": k, "publisher": a.first, "repeats": a.repeats, "interval_ms": a.interval_ms,
        "node": NODE, "caps_ver": caps.ver, "publish_timeout_s": a.publish_timeout,
        "warmup_timeout_s": a.warmup_timeout,
    });
    let mut errors = Errors::default();
    let contacts: Vec<u64> = (1..=k).map(|i| a.first + i).collect();
    let subs =
        match ensure_subscriptions(&t, a.first, &contacts, &a.setup, a.concurrency, &mut errors)
            .await
        {
            Ok(s) => s,
            Err(reason) => return unsupported(params, reason, json!({}), errors),
        };
    if !subs.complete {
        return Report::failed(
            params,
            errors,
            "the mutual subscriptions could not be set up",
        );
    }

    let (pub_sess, e) = login_many(
        &t,
        vec![a.first],
        |_| "publisher".to_owned(),
        1,
        LoginOpts::default(),
    )
    .await;
    errors.merge(e);
    let Some((pub_conn, _)) = pub_sess.into_iter().next().flatten() else {
        return Report::failed(params, errors, "the publisher could not log in");
    };
    let run_tag = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let shared = Arc::new(Shared {
        base: Instant::now(),
        tag: run_tag,
        current: AtomicU64::new(u64::MAX),
        t0_ns: AtomicU64::new(0),
        arrivals: Mutex::new(Vec::with_capacity(k as usize)),
        expected: AtomicU64::new(k),
        answer: Mutex::new(None),
        progress: Notify::new(),
        disco_answered: AtomicU64::new(0),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let pub_task = tokio::spawn(publisher(pub_conn, shared.clone(), cmd_rx));

    // The contacts log in without presence: their first presence is the one with caps.
    let (sessions, e) = login_many(
        &t,
        contacts,
        |_| "pep".to_owned(),
        a.concurrency,
        LoginOpts {
            presence: false,
            ..LoginOpts::default()
        },
    )
    .await;
    errors.merge(e);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut online = 0u64;
    for (conn, _) in sessions.into_iter().flatten() {
        online += 1;
        tasks.spawn(contact(conn, caps.clone(), shared.clone(), stop_rx.clone()));
    }
    shared.expected.store(online, Ordering::SeqCst);
    let mut ok = online == k;
    if !ok {
        errors.add(
            "login",
            format!("{} of {k} contacts could not log in", k - online),
        );
    }

    // Warm-up: publish until one publish reaches every contact.
    let mut n = 0u64;
    let mut best = 0u64;
    let mut refused: Option<String> = None;
    let warmup_start = Instant::now();
    let warm_until = warmup_start + Duration::from_secs(a.warmup_timeout);
    let mut warmed = false;
    while ok && !warmed && refused.is_none() {
        let o = publish_and_wait(
            &shared,
            &cmd_tx,
            n,
            (Instant::now() + WARMUP_ATTEMPT).min(warm_until),
        )
        .await;
        n += 1;
        best = best.max(o.arrivals.len() as u64);
        match o.answer {
            Some(Err(cond)) => refused = Some(format!("publish refused: {cond}")),
            Some(Ok(_)) if o.arrivals.len() as u64 >= online => warmed = true,
            None if Instant::now() >= warm_until => {
                refused = Some("no answer to the publish".into());
            }
            _ => {}
        }
        if Instant::now() >= warm_until {
            break;
        }
    }
    let warmup_s = warmup_start.elapsed().as_secs_f64();
    let warmup_publishes = n;
    if ok && !warmed && refused.is_none() {
        errors.add(
            "warmup",
            format!(
                "after {warmup_s:.0} s of warm-up a publish reached at most {best} of {online} contacts"
            ),
        );
    }

    let mut completion_us = Vec::new();
    let mut iq_us = Vec::new();
    let mut delivery_us: Vec<u64> = Vec::new();
    let mut sent = 0u64;
    let mut incomplete = 0u64;
    let mut server = Value::Null;
    let mut generator = Value::Null;
    if warmed {
        let m0 = Mark::now(server_pid);
        let mut failed_in_a_row = 0;
        for _ in 0..a.repeats {
            let deadline = Instant::now() + Duration::from_secs(a.publish_timeout);
            let o = publish_and_wait(&shared, &cmd_tx, n, deadline).await;
            sent += 1;
            let answered = match &o.answer {
                Some(Ok(us)) => {
                    iq_us.push(*us);
                    true
                }
                Some(Err(cond)) => {
                    errors.add("publish", format!("publish {n}: {cond}"));
                    false
                }
                None => {
                    errors.add("publish", format!("publish {n}: no answer"));
                    false
                }
            };
            if answered && o.arrivals.len() as u64 >= online {
                completion_us.push(o.arrivals.iter().copied().max().unwrap_or(0));
                delivery_us.extend(o.arrivals.iter().copied());
                failed_in_a_row = 0;
            } else {
                incomplete += 1;
                failed_in_a_row += 1;
                errors.add(
                    "incomplete",
                    format!(
                        "publish {n}: {} of {online} contacts notified",
                        o.arrivals.len()
                    ),
                );
            }
            n += 1;
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW {
                errors.add("incomplete", "stopped measuring: publishes keep failing");
                break;
            }
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        }
        let m1 = Mark::now(server_pid);
        (server, generator) = m0.until(&m1);
    }

    let _ = stop_tx.send(true);
    drop(cmd_tx);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(e) => errors.merge(e),
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    match pub_task.await {
        Ok(e) => errors.merge(e),
        Err(e) => errors.add("task", e.to_string()),
    }

    let common = json!({
        "contacts_online": online,
        "subscriptions_set_up": subs.set_up,
        "setup_s": subs.setup_s,
        "warmup_publishes": warmup_publishes,
        "warmup_s": stats::round3(warmup_s),
        "disco_info_answered": shared.disco_answered.load(Ordering::SeqCst),
    });
    if let Some(reason) = refused {
        return unsupported(params, reason, common, errors);
    }
    let measured = completion_us.len() as u64;
    let notifications = measured * online;
    let busy_s = completion_us.iter().sum::<u64>() as f64 / 1e6;
    let cpu_s = server.get("cpu_s").and_then(Value::as_f64);
    let cpu_ms_per_publish = cpu_s
        .filter(|_| sent > 0)
        .map(|c| stats::round3(c * 1000.0 / sent as f64));
    let cpu_us_per_notification = cpu_s
        .filter(|_| notifications > 0)
        .map(|c| stats::round3(c * 1e6 / notifications as f64));
    let per_cpu_s = cpu_s
        .filter(|c| *c > 0.0 && notifications > 0)
        .map(|c| (notifications as f64 / c).round());
    let completion = stats::percentiles_ms(&mut completion_us);
    let iq_result = stats::percentiles_ms(&mut iq_us);
    let delivery = stats::percentiles_ms(&mut delivery_us);
    let summary = if warmed {
        format!(
            "{measured}/{} publishes reached all {online} contacts; last contact p50 {} ms p99 {} ms; IQ result p50 {} ms; server CPU {} ms per publish",
            a.repeats,
            completion["p50"],
            completion["p99"],
            iq_result["p50"],
            cpu_ms_per_publish.map_or("?".to_owned(), |c| c.to_string()),
        )
    } else {
        format!("no publish reached every contact: at most {best} of {online} after {warmup_s:.0} s of warm-up")
    };
    ok = ok && warmed && incomplete == 0 && measured == a.repeats;
    let mut results = json!({
        "supported": true,
        // Contacts reached by the best warm-up publish (all of them when measured).
        "contacts_notified": best,
        "publishes_complete": measured,
        "publishes_incomplete": incomplete,
        // Per publish: until the last contact has the notification, and until the
        // publisher has its IQ result.
        "completion_ms": completion,
        "iq_result_ms": iq_result,
        // Each notification's time from the publish, over every complete publish.
        "delivery_ms": delivery,
        // Notifications delivered per second while a publish was being delivered (the sum
        // of the publishes' completion times), not counting the pauses between them.
        "notifications_per_s": if busy_s > 0.0 { Some((notifications as f64 / busy_s).round()) } else { None },
        "server_cpu_ms_per_publish": cpu_ms_per_publish,
        "server_cpu_us_per_notification": cpu_us_per_notification,
        "notifications_per_server_cpu_s": per_cpu_s,
    });
    if let (Value::Object(m), Value::Object(c)) = (&mut results, common) {
        m.extend(c);
    }
    Report {
        params,
        results,
        server,
        generator,
        ok,
        errors,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_this_runs_notifications() {
        let tag = "1a2b";
        let ejabberd = format!(
            "<message from='user0@localhost' to='user1@localhost/pep' type='headline'>\
             <event xmlns='{NS_PUBSUB_EVENT}'><items node='{NODE}'><item id='{tag}-17' \
             publisher='user0@localhost/publisher'><tune xmlns='{NODE}'><track>17</track></tune>\
             </item></items></event><addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='replyto' jid='user0@localhost/publisher'/></addresses></message>"
        );
        assert_eq!(notified_publish(ejabberd.as_bytes(), tag), Some(17));
        // An earlier run's last item, sent again when the contact came online.
        assert_eq!(notified_publish(ejabberd.as_bytes(), "ffff"), None);
        let other_node = ejabberd.replace(&format!("node='{NODE}'"), "node='urn:x'");
        assert_eq!(notified_publish(other_node.as_bytes(), tag), None);
        let chat = b"<message type='chat'><body>1a2b-3</body></message>";
        assert_eq!(notified_publish(chat, tag), None);
    }

    #[test]
    fn the_publish_carries_the_item_id() {
        let iq = publish_iq(5, "ab");
        assert_eq!(scan::attr(iq.as_bytes(), b"id"), Some(&b"pub-5"[..]));
        let item = scan::child_tag(iq.as_bytes(), b"item").expect("item");
        assert_eq!(scan::tag_attr(item, b"id"), Some(&b"ab-5"[..]));
        let publish = scan::child_tag(iq.as_bytes(), b"publish").expect("publish");
        assert_eq!(scan::tag_attr(publish, b"node"), Some(NODE.as_bytes()));
    }
}
