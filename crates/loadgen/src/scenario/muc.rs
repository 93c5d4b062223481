//! Group chat fan-out (XEP-0045): ROOMS rooms of OCCUPANTS occupants each. In every room the
//! first occupant creates the room (accepting the default configuration, XEP-0045 §10.1.2)
//! and then speaks; the others join. Each round, every room's speaker sends one groupchat
//! message at the same moment; the round ends when every occupant of every room (the speaker
//! included, who gets its reflected copy) has it.
//!
//! Reports the completion time of a round, the server's CPU per delivered copy (the number
//! to compare between servers: copies per CPU-second), the server's memory per occupant
//! (RSS growth while the logged-in sessions joined their rooms), and the time the joins took.

use super::fanout::drain_elements;
use super::{login_many, Mark, Report, CLOSE_WAIT};
use crate::client::{self, Conn, LoginOpts, Target};
use crate::scan;
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::json;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

#[derive(Args, Debug, Clone)]
pub struct MucArgs {
    #[arg(long, default_value_t = 1)]
    pub rooms: u64,
    /// Occupants per room, the speaker included (accounts FIRST ... FIRST + ROOMS*OCCUPANTS-1).
    #[arg(long, default_value_t = 50)]
    pub occupants: u64,
    /// Rounds measured (one message per room each).
    #[arg(long, default_value_t = 50)]
    pub repeats: u64,
    /// Pause between rounds, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// The chat service's domain (default `conference.<domain>`).
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Longest wait for one round to reach everyone, in seconds.
    #[arg(long, default_value_t = 30)]
    pub round_timeout: u64,
    /// Logins (and joins) in progress at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

struct Shared {
    base: Instant,
    /// The round being measured (u64::MAX: none).
    round: AtomicU64,
    t0_ns: AtomicU64,
    arrivals: Mutex<Vec<u64>>,
    expected: AtomicU64,
    all_arrived: Notify,
    /// Occupants whose own presence (status 110) came back: they are in their room.
    joined: AtomicU64,
    /// Rooms whose configuration was accepted.
    configured: AtomicU64,
    progress: Notify,
    /// Join refusals seen (the error condition).
    refused: Mutex<Vec<String>>,
}

fn round_of(el: &[u8]) -> Option<u64> {
    let body = scan::child_text(el, b"body")?;
    std::str::from_utf8(body.strip_prefix(b"muc-")?)
        .ok()?
        .parse()
        .ok()
}

/// Whether the element has `<status code='CODE'/>` (in the MUC `<x/>` of a presence).
fn has_status(el: &[u8], code: &[u8]) -> bool {
    scan::tokens(el).any(|t| match t {
        scan::Token::Start { name, tag, .. } => {
            name == b"status" && scan::tag_attr(tag, b"code") == Some(code)
        }
        _ => false,
    })
}

/// One occupant: joins when told, reports its join, answers IQs, records the arrival of each
/// measured round's message; the speaker also creates the room and sends the rounds.
#[allow(clippy::too_many_arguments)]
async fn occupant(
    conn: Conn,
    room: Arc<str>,
    nick: String,
    speaker: bool,
    mut go: watch::Receiver<u64>,
    join_at: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Errors {
    let mut errors = Errors::default();
    let (mut rd, wr) = conn.split();
    let mut joined = false;
    let mut asked_to_join = false;
    let mut last_round_sent = u64::MAX;
    let mut els = Vec::new();
    loop {
        let mut out = Vec::new();
        let stage = *go.borrow();
        if !asked_to_join && stage >= join_at {
            let _ = write!(
                out,
                "<presence to='{room}/{nick}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
            );
            asked_to_join = true;
        }
        // Stages past the joins are rounds: stage = ROUND_BASE + round.
        if speaker && joined && stage >= ROUND_BASE && stage - ROUND_BASE != last_round_sent {
            let r = stage - ROUND_BASE;
            let _ = write!(
                out,
                "<message to='{room}' type='groupchat'><body>muc-{r}</body></message>"
            );
            last_round_sent = r;
        }
        if !out.is_empty() && !wr.send(std::mem::take(&mut out)) {
            errors.add("io", "an occupant's writer stopped");
            break;
        }
        tokio::select! {
            _ = stop.changed() => break,
            r = go.changed() => {
                if r.is_err() {
                    break;
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
                for el in &els {
                    match scan::root_name(el) {
                        b"message" if scan::attr(el, b"type") == Some(b"groupchat") => {
                            let current = shared.round.load(Ordering::SeqCst);
                            if round_of(el) == Some(current) {
                                let t0 = shared.t0_ns.load(Ordering::SeqCst);
                                let at = now.saturating_duration_since(shared.base).as_nanos() as u64;
                                let n = {
                                    let mut a = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
                                    a.push(at.saturating_sub(t0) / 1000);
                                    a.len() as u64
                                };
                                if n == shared.expected.load(Ordering::SeqCst) {
                                    shared.all_arrived.notify_one();
                                }
                            }
                        }
                        b"presence" => {
                            let from = scan::attr(el, b"from").unwrap_or(b"");
                            let mine = from.len() == room.len() + 1 + nick.len()
                                && from.starts_with(room.as_bytes())
                                && from.ends_with(nick.as_bytes());
                            if !mine || joined {
                                continue;
                            }
                            if scan::attr(el, b"type") == Some(b"error") {
                                let cond = scan::child_tag(el, b"error")
                                    .and_then(|_| find_condition(el))
                                    .unwrap_or_else(|| "?".into());
                                shared.refused.lock().unwrap_or_else(|p| p.into_inner()).push(cond);
                                shared.progress.notify_one();
                            } else if has_status(el, b"110") {
                                joined = true;
                                if speaker && has_status(el, b"201") {
                                    // A new room: accept the default configuration.
                                    let _ = write!(
                                        out,
                                        "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
                                    );
                                } else if speaker {
                                    shared.configured.fetch_add(1, Ordering::SeqCst);
                                }
                                shared.joined.fetch_add(1, Ordering::SeqCst);
                                shared.progress.notify_one();
                            }
                        }
                        b"iq" if scan::attr(el, b"id") == Some(b"cfg") => {
                            if scan::attr(el, b"type") == Some(b"result") {
                                shared.configured.fetch_add(1, Ordering::SeqCst);
                            } else {
                                errors.add("configure", "the room refused its default configuration");
                            }
                            shared.progress.notify_one();
                        }
                        b"iq" => client::write_iq_answer(el, &mut out),
                        _ => {}
                    }
                }
                if !out.is_empty() && !wr.send(out) {
                    errors.add("io", "an occupant's writer stopped");
                    break;
                }
                if !alive {
                    errors.add("stream-closed", "server ended an occupant's stream");
                    break;
                }
            }
        }
    }
    wr.close(rd, CLOSE_WAIT).await;
    errors
}

/// The defined condition of an error stanza (the first child of `<error/>` that is not text).
pub(super) fn find_condition(el: &[u8]) -> Option<String> {
    let mut in_error = false;
    for t in scan::tokens(el) {
        if let scan::Token::Start { name, .. } = t {
            if name == b"error" {
                in_error = true;
            } else if in_error && name != b"text" {
                return Some(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    None
}

/// Stage numbers: 1 = speakers join, 2 = everyone joins, ROUND_BASE + r = round r.
const ROUND_BASE: u64 = 1 << 32;

async fn wait_for(shared: &Shared, until: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if !shared
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return false;
        }
        let wait = tokio::time::timeout_at(until.into(), shared.progress.notified());
        if wait.await.is_err() {
            return done();
        }
    }
}

pub async fn run(t: Arc<Target>, a: &MucArgs, server_pid: Option<u32>) -> Report {
    let rooms = a.rooms.max(1);
    let per_room = a.occupants.max(1);
    let total = rooms * per_room;
    let service = a
        .service
        .clone()
        .unwrap_or_else(|| format!("conference.{}", t.domain));
    let params = json!({
        "rooms": rooms, "occupants_per_room": per_room, "repeats": a.repeats,
        "interval_ms": a.interval_ms, "service": service, "first": a.first,
    });
    let run_tag = format!("{:x}", std::process::id());
    let (sessions, mut errors) = login_many(
        &t,
        (0..total).map(|i| a.first + i).collect(),
        |_| "muc".to_owned(),
        a.concurrency,
        LoginOpts::default(),
    )
    .await;
    let online = sessions.iter().filter(|s| s.is_some()).count() as u64;
    if online < total {
        errors.add(
            "login",
            format!("{} of {total} could not log in", total - online),
        );
    }
    let shared = Arc::new(Shared {
        base: Instant::now(),
        round: AtomicU64::new(u64::MAX),
        t0_ns: AtomicU64::new(0),
        arrivals: Mutex::new(Vec::with_capacity(total as usize)),
        expected: AtomicU64::new(total),
        all_arrived: Notify::new(),
        joined: AtomicU64::new(0),
        configured: AtomicU64::new(0),
        progress: Notify::new(),
        refused: Mutex::new(Vec::new()),
    });
    let (go_tx, go_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        let Some((conn, _)) = s else { continue };
        let i = i as u64;
        let room: Arc<str> = Arc::from(format!("bench-{run_tag}-{}@{service}", i / per_room));
        let speaker = i.is_multiple_of(per_room);
        tasks.spawn(occupant(
            conn,
            room,
            format!("o{}", i % per_room),
            speaker,
            go_rx.clone(),
            if speaker { 1 } else { 2 },
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    let mut ok = online == total;
    let step = t.step_timeout.max(Duration::from_secs(30));
    let before_join = Mark::now(server_pid);
    let join_start = Instant::now();
    if ok {
        let _ = go_tx.send(1);
        ok = wait_for(&shared, Instant::now() + step, || {
            shared.configured.load(Ordering::SeqCst) >= rooms
        })
        .await;
        if !ok {
            errors.add(
                "setup",
                format!(
                    "{} of {rooms} rooms created and configured",
                    shared.configured.load(Ordering::SeqCst)
                ),
            );
        }
    }
    if ok {
        let _ = go_tx.send(2);
        ok = wait_for(&shared, Instant::now() + step * 4, || {
            shared.joined.load(Ordering::SeqCst) >= total
        })
        .await;
        if !ok {
            errors.add(
                "setup",
                format!(
                    "{} of {total} occupants joined",
                    shared.joined.load(Ordering::SeqCst)
                ),
            );
        }
    }
    for r in shared
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        errors.add("join-refused", r.clone());
    }
    let join_s = join_start.elapsed().as_secs_f64();
    // Let the join presence settle before measuring memory and rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_join = Mark::now(server_pid);
    let kib_per_occupant = match (before_join.server, after_join.server) {
        (Some(b), Some(a)) if ok => Some(stats::round3(
            (a.rss_kib as f64 - b.rss_kib as f64) / total as f64,
        )),
        _ => None,
    };

    let mut completion_us = Vec::new();
    let mut delivery_us: Vec<u64> = Vec::new();
    let mut incomplete = 0u64;
    let mut server = serde_json::Value::Null;
    let mut generator = serde_json::Value::Null;
    if ok {
        let m0 = Mark::now(server_pid);
        for round in 0..a.repeats {
            shared
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            shared.round.store(round, Ordering::SeqCst);
            shared
                .t0_ns
                .store(shared.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
            let _ = go_tx.send(ROUND_BASE + round);
            let deadline = Instant::now() + Duration::from_secs(a.round_timeout);
            let done = loop {
                let n = shared
                    .arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len() as u64;
                if n >= total {
                    break true;
                }
                let wait = tokio::time::timeout_at(deadline.into(), shared.all_arrived.notified());
                if wait.await.is_err() {
                    break false;
                }
            };
            let arr = shared
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if done {
                completion_us.push(arr.iter().copied().max().unwrap_or(0));
                delivery_us.extend(arr.iter().copied());
            } else {
                incomplete += 1;
                errors.add(
                    "incomplete",
                    format!("round {round}: {} of {total} copies arrived", arr.len()),
                );
            }
            tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
        }
        shared.round.store(u64::MAX, Ordering::SeqCst);
        let m1 = Mark::now(server_pid);
        (server, generator) = m0.until(&m1);
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(e) => errors.merge(e),
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    let measured = completion_us.len() as u64;
    let copies = measured * total;
    let cpu_s = server.get("cpu_s").and_then(|v| v.as_f64());
    let cpu_us_per_copy = cpu_s
        .filter(|_| copies > 0)
        .map(|c| stats::round3(c * 1e6 / copies as f64));
    let copies_per_cpu_s = cpu_s
        .filter(|c| *c > 0.0 && copies > 0)
        .map(|c| (copies as f64 / c).round());
    let completion = stats::percentiles_ms(&mut completion_us);
    let delivery = stats::percentiles_ms(&mut delivery_us);
    let summary = format!(
        "{measured}/{} rounds reached all {total} occupants of {rooms} room(s); completion p50 {} ms max {} ms; server CPU {} µs per delivered copy; {} KiB per occupant",
        a.repeats,
        completion["p50"],
        completion["max"],
        cpu_us_per_copy.map_or("?".to_owned(), |c| c.to_string()),
        kib_per_occupant.map_or("?".to_owned(), |k| k.to_string()),
    );
    Report {
        params,
        results: json!({
            "occupants_joined": shared.joined.load(Ordering::SeqCst),
            "join_s": stats::round3(join_s),
            "rounds_complete": measured,
            "rounds_incomplete": incomplete,
            "completion_ms": completion,
            // Each copy's time from the send to its arrival, over every complete round.
            "delivery_ms": delivery,
            "server_cpu_us_per_copy": cpu_us_per_copy,
            "copies_per_server_cpu_s": copies_per_cpu_s,
            "server_kib_per_occupant": kib_per_occupant,
        }),
        server,
        generator,
        ok: ok && incomplete == 0 && measured == a.repeats,
        errors,
        summary,
    }
}
