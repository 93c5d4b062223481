//! BOSH round trips at a fixed rate: SESSIONS logged-in BOSH sessions (XEP-0124, XEP-0206,
//! `hold='1'`), each keeping one request held as clients do; an IQ ping to the server is sent
//! at a fixed aggregate RATE, spread evenly over the sessions, and the time from its send
//! until its result arrives in a BOSH response is recorded.
//!
//! A ping is sent in a request of its own beside the held one (two requests in flight, as
//! `requests='2'` allows); the server answers the held one then, and the result comes back
//! in whichever response the server puts it. The round trip counts from the moment the
//! request carrying the ping is handed to the HTTP connection (as `rate` stamps a message
//! when it is written, so timer slack is not counted); a ping due while two requests are
//! already in flight waits for one to come back, and such waits are counted.

use super::{Mark, Report, CLOSE_WAIT};
use crate::client::{write_iq_answer, LoginOpts, Target};
use crate::scan;
use crate::stats::{self, Errors};
use crate::web::BoshConn;
use clap::Args;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct BoshRttArgs {
    /// BOSH sessions.
    #[arg(long, default_value_t = 50)]
    pub sessions: u64,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Pings per second over all sessions.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of measured sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of sending before the measured phase (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds allowed after the last send for the last answers.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Logins in progress at once while opening the sessions.
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
}

#[derive(Default)]
struct Outcome {
    latencies: Vec<u64>,
    sent: u64,
    answered: u64,
    requests: u64,
    /// Pings that were due while two requests were in flight, and waited for one.
    slot_waits: u64,
    errors: Errors,
}

/// Runs one session: keeps a request held, sends a ping each `period` from `first_tick`
/// until `send_until`, and records the round trips of those due after `measure_from`.
async fn drive(
    mut c: BoshConn,
    domain: String,
    period: Duration,
    first_tick: Instant,
    measure_from: Instant,
    send_until: Instant,
    end_by: Instant,
) -> Outcome {
    let mut o = Outcome::default();
    let mut inflight = tokio::task::JoinSet::new();
    let mut pending: Vec<String> = Vec::new();
    // Pings in `pending`: (number, measured).
    let mut pending_pings: Vec<(u64, bool)> = Vec::new();
    // Ping number -> (when its request was sent, measured).
    let mut due: HashMap<u64, (Instant, bool)> = HashMap::new();
    let mut next_tick = first_tick;
    let mut k = 0u64;
    loop {
        // One request always held; queued elements go out as soon as the window allows.
        if inflight.is_empty() || (!pending.is_empty() && inflight.len() < 2) {
            let payload = pending.concat();
            pending.clear();
            let sent_at = Instant::now();
            for (k, measured) in pending_pings.drain(..) {
                due.insert(k, (sent_at, measured));
            }
            inflight.spawn(c.begin("", &payload));
            o.requests += 1;
        }
        let sending = next_tick < send_until;
        if !sending && due.is_empty() && pending_pings.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick), if sending => {
                k += 1;
                pending.push(format!(
                    "<iq type='get' id='p{k}' to='{}' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>",
                    scan::escape(&domain)
                ));
                let measured = next_tick >= measure_from;
                if measured {
                    o.sent += 1;
                    if inflight.len() >= 2 {
                        o.slot_waits += 1;
                    }
                }
                pending_pings.push((k, measured));
                next_tick += period;
            }
            r = inflight.join_next() => {
                let Some(r) = r else { continue };
                let (http, res) = match r {
                    Ok(v) => v,
                    Err(e) => {
                        o.errors.add("task", e.to_string());
                        break;
                    }
                };
                c.finish(http);
                let body = match res {
                    Ok(b) => b,
                    Err(e) => {
                        o.errors.add(e.kind, e.detail);
                        break;
                    }
                };
                let now = Instant::now();
                for el in body.children {
                    if scan::root_name(&el) != b"iq" {
                        continue;
                    }
                    let ty = scan::attr(&el, b"type");
                    if ty == Some(b"get") || ty == Some(b"set") {
                        let mut answer = Vec::new();
                        write_iq_answer(&el, &mut answer);
                        pending.push(String::from_utf8_lossy(&answer).into_owned());
                        continue;
                    }
                    let id = scan::attr(&el, b"id").unwrap_or(b"");
                    let Some(n) = id
                        .strip_prefix(b"p")
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .and_then(|n| n.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    if let Some((at, measured)) = due.remove(&n) {
                        if ty != Some(b"result") {
                            o.errors.add("iq-error", format!("ping {n} answered with an error"));
                        } else if measured {
                            o.answered += 1;
                            o.latencies.push(now.duration_since(at).as_micros() as u64);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(end_by) => break,
        }
    }
    inflight.abort_all();
    c.close(CLOSE_WAIT).await;
    o
}

pub async fn run(t: Arc<Target>, a: &BoshRttArgs, server_pid: Option<u32>) -> Report {
    let params = json!({
        "transport": "bosh", "sessions": a.sessions, "first": a.first, "rate": a.rate,
        "duration_s": a.duration, "warmup_s": a.warmup, "drain_s": a.drain,
        "hold": 1, "wait_s": crate::web::BOSH_WAIT,
    });
    if a.sessions == 0 || a.rate == 0 {
        return Report::failed(params, Errors::default(), "nothing to do");
    }

    // Log the sessions in, CONCURRENCY at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.clamp(1, a.sessions as usize) {
        let (t, next, first, count) = (t.clone(), next.clone(), a.first, a.sessions as usize);
        set.spawn(async move {
            let mut done = Vec::new();
            let mut errors = Errors::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let n = first + i as u64;
                match BoshConn::login(&t, n, &format!("bosh{i}"), LoginOpts::default()).await {
                    Ok((c, _)) => done.push(c),
                    Err(e) => errors.add(e.kind, format!("account {n}: {}", e.detail)),
                }
            }
            (done, errors)
        });
    }
    let mut sessions = Vec::new();
    let mut errors = Errors::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((done, e)) => {
                sessions.extend(done);
                errors.merge(e);
            }
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    let established = sessions.len() as u64;
    if established == 0 {
        return Report::failed(params, errors, "no BOSH session could log in");
    }

    // Each session's pings are `period` apart; sessions are offset so that the pings of
    // all of them are evenly spread at RATE.
    let period = Duration::from_secs_f64(established as f64 / a.rate as f64);
    let step = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(a.warmup);
    let send_until = measure_from + Duration::from_secs(a.duration);
    let end_by = send_until + Duration::from_secs(a.drain);
    let mut drivers = tokio::task::JoinSet::new();
    for (i, c) in sessions.into_iter().enumerate() {
        drivers.spawn(drive(
            c,
            t.domain.clone(),
            period,
            start + step * i as u32,
            measure_from,
            send_until,
            end_by,
        ));
    }
    tokio::time::sleep_until(measure_from).await;
    let before = Mark::now(server_pid);
    tokio::time::sleep_until(send_until).await;
    let after = Mark::now(server_pid);
    let mut all = Outcome::default();
    while let Some(r) = drivers.join_next().await {
        match r {
            Ok(o) => {
                all.latencies.extend(o.latencies);
                all.sent += o.sent;
                all.answered += o.answered;
                all.requests += o.requests;
                all.slot_waits += o.slot_waits;
                all.errors.merge(o.errors);
            }
            Err(e) => all.errors.add("task", e.to_string()),
        }
    }
    errors.merge(all.errors);
    let lost = all.sent - all.answered;
    let (server, generator) = before.until(&after);
    let cpu_ms_per_ping = server
        .get("cpu_s")
        .and_then(|v| v.as_f64())
        .filter(|_| all.answered > 0)
        .map(|cpu| stats::round3(cpu * 1000.0 / all.answered as f64));
    let lat = stats::percentiles_ms(&mut all.latencies);
    let summary = format!(
        "{established}/{} BOSH sessions; {}/{} pings answered at {}/s; p50 {} ms p99 {} ms",
        a.sessions, all.answered, all.sent, a.rate, lat["p50"], lat["p99"]
    );
    Report {
        params,
        results: json!({
            "sessions": established,
            "sessions_failed": a.sessions - established,
            "sent": all.sent,
            "answered": all.answered,
            "lost": lost,
            "achieved_pings_per_s": stats::round3(all.answered as f64 / a.duration.max(1) as f64),
            "latency_ms": lat,
            "http_requests": all.requests,
            "pings_waiting_for_a_request_slot": all.slot_waits,
            "server_cpu_ms_per_ping": cpu_ms_per_ping,
        }),
        server,
        generator,
        ok: established == a.sessions && lost == 0 && errors.total() == 0,
        errors,
        summary,
    }
}
