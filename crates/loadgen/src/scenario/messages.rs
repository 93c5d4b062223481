//! One-to-one chat messages between PAIRS of sessions (accounts FIRST+2i and FIRST+2i+1),
//! both directions at once.
//!
//! - `messages` sends flat out: each direction keeps WINDOW messages in flight (sent, not yet
//!   received by the partner in this same process), which measures the server's sustained
//!   throughput without letting queues grow without bound.
//! - `rate` sends at a fixed aggregate RATE spread evenly over the directions and measures the
//!   latency of each message from the send timestamp carried in its body to its arrival.
//!
//! Each body is `SEQ TIMESTAMP` (+ padding). The receiver checks per-direction order (a
//! sequence number below or above the next expected counts as out of order) and, after the
//! sending phase, waits (bounded) until every direction has received what was sent: sent minus
//! received is reported as lost.

use super::{login_many, Mark, Report, CLOSE_WAIT};
use crate::client::{Conn, LoginOpts, Target};
use crate::scan::{self, Event};
use crate::stats::{self, Errors};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// The partner's bare JID (the server picks the resource).
    Bare,
    /// The partner's full JID as bound.
    Full,
}

#[derive(Args, Debug, Clone)]
pub struct PairArgs {
    /// Pairs of sessions (2 x PAIRS accounts from FIRST).
    #[arg(long, default_value_t = 100)]
    pub pairs: u64,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Measured phase, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Sending before the measured phase starts, in seconds (not counted).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Longest wait for messages still in flight after sending stops, in seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Address messages to the partner's bare or full JID.
    #[arg(long, value_enum, default_value_t = Address::Bare)]
    pub to: Address,
    /// Body length in bytes (at least what `SEQ TIMESTAMP` needs).
    #[arg(long, default_value_t = 32)]
    pub body_size: usize,
    /// Logins in progress at once while opening the sessions.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub struct MessagesArgs {
    #[command(flatten)]
    pub pairs: PairArgs,
    /// Messages in flight per direction.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RateArgs {
    #[command(flatten)]
    pub pairs: PairArgs,
    /// Aggregate messages per second over all directions.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// A direction with this many messages in flight skips its send (and counts it): the
    /// server is not keeping up with the rate.
    #[arg(long, default_value_t = 5000)]
    pub max_inflight: u64,
}

#[derive(Clone, Copy)]
pub(super) enum Mode {
    Flat {
        window: u64,
    },
    Rate {
        interval: Duration,
        offset: Duration,
        max_inflight: u64,
    },
}

/// One direction of a pair.
#[derive(Default)]
pub(super) struct Dir {
    sent: AtomicU64,
    received: AtomicU64,
    done: AtomicBool,
}

/// Everything one connection task needs.
pub(super) struct Side {
    pub(super) conn: Conn,
    pub(super) to: String,
    pub(super) partner_bare: Vec<u8>,
    pub(super) out: Arc<Dir>,
    pub(super) inn: Arc<Dir>,
    pub(super) wake_me: Arc<Notify>,
    pub(super) wake_partner: Arc<Notify>,
}

#[derive(Clone, Copy)]
pub(super) struct Schedule {
    pub(super) base: Instant,
    pub(super) start: Instant,
    pub(super) measure_from: Instant,
    pub(super) stop: Instant,
    pub(super) drain_until: Instant,
    pub(super) body_size: usize,
    /// Keep one latency sample in this many messages.
    pub(super) sample_every: u64,
}

#[derive(Default)]
pub(super) struct SideStats {
    pub(super) received: u64,
    pub(super) received_in_window: u64,
    pub(super) out_of_order: u64,
    pub(super) unexpected: u64,
    pub(super) skipped_sends: u64,
    pub(super) max_send_lag_us: u64,
    pub(super) latencies_us: Vec<u64>,
    pub(super) errors: Errors,
    pub(super) sent: u64,
}

fn ns_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_nanos() as u64
}

fn push_message(out: &mut Vec<u8>, to: &str, seq: u64, ts_ns: u64, body_size: usize) {
    let _ = write!(out, "<message to='{to}' type='chat' id='m{seq}'><body>");
    let body_start = out.len();
    let _ = write!(out, "{seq} {ts_ns} ");
    let written = out.len() - body_start;
    out.resize(out.len() + body_size.saturating_sub(written), b'x');
    out.extend_from_slice(b"</body></message>");
}

/// Parses `SEQ TIMESTAMP ...`.
fn parse_body(body: &[u8]) -> Option<(u64, u64)> {
    let mut it = body.split(|&c| c == b' ');
    let seq = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let ts = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    Some((seq, ts))
}

pub(super) async fn run_side(mut s: Side, mode: Mode, sch: Schedule) -> SideStats {
    let mut st = SideStats::default();
    let mut expected = 0u64;
    let mut seq = 0u64;
    let mut sending = true;
    let mut next_send = match mode {
        Mode::Rate { offset, .. } => sch.start + offset,
        Mode::Flat { .. } => sch.start,
    };
    let measure_from_ns = ns_since(sch.base, sch.measure_from);
    loop {
        let now = Instant::now();
        if sending && now >= sch.stop {
            sending = false;
            s.out.sent.store(seq, Ordering::SeqCst);
            s.out.done.store(true, Ordering::SeqCst);
            s.wake_partner.notify_one();
        }
        if sending && now >= sch.start {
            let inflight = seq - s.out.received.load(Ordering::SeqCst);
            let ts = ns_since(sch.base, Instant::now());
            match mode {
                Mode::Flat { window } => {
                    for _ in inflight..window {
                        push_message(&mut s.conn.out, &s.to, seq, ts, sch.body_size);
                        seq += 1;
                    }
                }
                Mode::Rate {
                    interval,
                    max_inflight,
                    ..
                } => {
                    let mut inflight = inflight;
                    while next_send <= now && next_send < sch.stop {
                        let lag = now.duration_since(next_send).as_micros() as u64;
                        st.max_send_lag_us = st.max_send_lag_us.max(lag);
                        if inflight >= max_inflight {
                            st.skipped_sends += 1;
                        } else {
                            push_message(&mut s.conn.out, &s.to, seq, ts, sch.body_size);
                            seq += 1;
                            inflight += 1;
                        }
                        next_send += interval;
                    }
                }
            }
            // Published before the write so the partner never sees more arrive than sent.
            s.out.sent.store(seq, Ordering::SeqCst);
            if let Err(e) = s.conn.flush().await {
                st.errors.add(e.kind, e.detail);
                break;
            }
        }
        if !sending
            && s.inn.done.load(Ordering::SeqCst)
            && st.received >= s.inn.sent.load(Ordering::SeqCst)
        {
            break;
        }
        if now >= sch.drain_until {
            break;
        }
        let wake_at = if !sending {
            sch.drain_until
        } else if now < sch.start {
            sch.start
        } else {
            match mode {
                Mode::Rate { .. } => next_send.min(sch.stop),
                Mode::Flat { .. } => sch.stop,
            }
        };
        tokio::select! {
            biased;
            r = s.conn.read_some() => {
                if let Err(e) = r {
                    st.errors.add(e.kind, e.detail);
                    break;
                }
                let now = Instant::now();
                let now_ns = ns_since(sch.base, now);
                let in_window = now >= sch.measure_from && now < sch.stop;
                let mut got = 0u64;
                let mut iqs = Vec::new();
                let mut fatal = None;
                loop {
                    let ev = match s.conn.scanner.next_event() {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break,
                        Err(e) => { fatal = Some(("xml", e.0.to_owned())); break; }
                    };
                    let r = match ev {
                        Event::Element(r) => r,
                        Event::StreamOpen(_) => continue,
                        Event::StreamClose => { fatal = Some(("stream-closed", "server closed the stream".into())); break; }
                    };
                    let el = s.conn.scanner.slice(r);
                    match scan::root_name(el) {
                        b"message" => {
                            if scan::attr(el, b"type") == Some(b"error") {
                                let cond = scan::first_child_name(el).unwrap_or(b"");
                                st.errors.add("message-error", String::from_utf8_lossy(cond));
                                continue;
                            }
                            let from_ok = scan::attr(el, b"from").map(scan::bare) == Some(&s.partner_bare[..]);
                            match scan::child_text(el, b"body").and_then(parse_body) {
                                Some((mseq, ts)) if from_ok => {
                                    got += 1;
                                    if mseq == expected {
                                        expected += 1;
                                    } else {
                                        st.out_of_order += 1;
                                        if mseq > expected {
                                            expected = mseq + 1;
                                        }
                                    }
                                    if in_window {
                                        st.received_in_window += 1;
                                    }
                                    if ts >= measure_from_ns && mseq % sch.sample_every == 0 {
                                        st.latencies_us.push(now_ns.saturating_sub(ts) / 1000);
                                    }
                                }
                                _ => st.unexpected += 1,
                            }
                        }
                        b"iq" => iqs.push(el.to_vec()),
                        b"error" => {
                            let cond = scan::first_child_name(el).unwrap_or(b"?");
                            fatal = Some(("stream-error", String::from_utf8_lossy(cond).into_owned()));
                            break;
                        }
                        _ => {}
                    }
                }
                if got > 0 {
                    st.received += got;
                    s.inn.received.fetch_add(got, Ordering::SeqCst);
                    s.wake_partner.notify_one();
                }
                if let Some((kind, detail)) = fatal {
                    st.errors.add(kind, detail);
                    break;
                }
                for iq in iqs {
                    s.conn.answer_server_iq(&iq);
                }
            }
            _ = s.wake_me.notified() => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
    }
    // If this side stopped early (an error), let the partner stop waiting for it.
    if sending {
        s.out.sent.store(seq, Ordering::SeqCst);
        s.out.done.store(true, Ordering::SeqCst);
        s.wake_partner.notify_one();
    }
    st.sent = seq;
    s.conn.close(CLOSE_WAIT).await;
    st
}

struct PairRun {
    params: serde_json::Value,
    stats: Vec<SideStats>,
    errors: Errors,
    measured_s: f64,
    server: serde_json::Value,
    generator: serde_json::Value,
    sessions_ok: bool,
}

async fn run_pairs(
    t: Arc<Target>,
    a: &PairArgs,
    mode_for: impl Fn(usize, usize) -> Mode,
    sample_every: u64,
    server_pid: Option<u32>,
    mut params: serde_json::Value,
) -> PairRun {
    let n = (a.pairs * 2) as usize;
    if let Some(m) = params.as_object_mut() {
        for (k, v) in [
            ("pairs", json!(a.pairs)),
            ("first", json!(a.first)),
            ("duration_s", json!(a.duration)),
            ("warmup_s", json!(a.warmup)),
            ("drain_max_s", json!(a.drain)),
            ("to", json!(format!("{:?}", a.to).to_lowercase())),
            ("body_size", json!(a.body_size)),
        ] {
            m.insert(k.into(), v);
        }
    }
    let indices: Vec<u64> = (a.first..a.first + n as u64).collect();
    let (sessions, errors) = login_many(
        &t,
        indices,
        |_| "msg".to_owned(),
        a.concurrency,
        LoginOpts::default(),
    )
    .await;
    if sessions.iter().any(Option::is_none) {
        let conns: Vec<Conn> = sessions.into_iter().flatten().map(|(c, _)| c).collect();
        super::close_all(conns).await;
        return PairRun {
            params,
            stats: Vec::new(),
            errors,
            measured_s: 0.0,
            server: serde_json::Value::Null,
            generator: serde_json::Value::Null,
            sessions_ok: false,
        };
    }
    let conns: Vec<Conn> = sessions.into_iter().flatten().map(|(c, _)| c).collect();
    let base = Instant::now();
    let start = base + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs(a.warmup);
    let stop = measure_from + Duration::from_secs(a.duration);
    let sch = Schedule {
        base,
        start,
        measure_from,
        stop,
        drain_until: stop + Duration::from_secs(a.drain),
        body_size: a.body_size,
        sample_every,
    };
    let mut set = tokio::task::JoinSet::new();
    let mut it = conns.into_iter();
    let mut k = 0usize;
    while let (Some(ca), Some(cb)) = (it.next(), it.next()) {
        let (ab, ba) = (Arc::new(Dir::default()), Arc::new(Dir::default()));
        let (wa, wb) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let bare_a = scan::bare(ca.jid.as_bytes()).to_vec();
        let bare_b = scan::bare(cb.jid.as_bytes()).to_vec();
        let (to_a, to_b) = match a.to {
            Address::Bare => (t.bare_jid(ca.index), t.bare_jid(cb.index)),
            Address::Full => (ca.jid.clone(), cb.jid.clone()),
        };
        let side_a = Side {
            conn: ca,
            to: scan::escape(&to_b).into_owned(),
            partner_bare: bare_b,
            out: ab.clone(),
            inn: ba.clone(),
            wake_me: wa.clone(),
            wake_partner: wb.clone(),
        };
        let side_b = Side {
            conn: cb,
            to: scan::escape(&to_a).into_owned(),
            partner_bare: bare_a,
            out: ba,
            inn: ab,
            wake_me: wb,
            wake_partner: wa,
        };
        set.spawn(run_side(side_a, mode_for(k, n), sch));
        set.spawn(run_side(side_b, mode_for(k + 1, n), sch));
        k += 2;
    }
    // Sample CPU at the edges of the measured phase.
    tokio::time::sleep_until(measure_from.into()).await;
    let m0 = Mark::now(server_pid);
    tokio::time::sleep_until(stop.into()).await;
    let m1 = Mark::now(server_pid);
    let (server, generator) = m0.until(&m1);
    let mut stats = Vec::new();
    let mut errors = errors;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => stats.push(s),
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    PairRun {
        params,
        stats,
        errors,
        measured_s: m1.at.duration_since(m0.at).as_secs_f64(),
        server,
        generator,
        sessions_ok: true,
    }
}

struct Totals {
    sent: u64,
    received: u64,
    in_window: u64,
    lost: u64,
    out_of_order: u64,
    unexpected: u64,
    skipped: u64,
    max_send_lag_us: u64,
    starved_directions: u64,
    latencies: Vec<u64>,
}

fn totals(run: &mut PairRun) -> Totals {
    let mut t = Totals {
        sent: 0,
        received: 0,
        in_window: 0,
        lost: 0,
        out_of_order: 0,
        unexpected: 0,
        skipped: 0,
        max_send_lag_us: 0,
        starved_directions: 0,
        latencies: Vec::new(),
    };
    // Sides were spawned a, b, a, b...; but joined in any order, so match by totals only:
    // lost = everything sent minus everything received (each message has one receiver).
    for s in &mut run.stats {
        t.sent += s.sent;
        t.received += s.received;
        t.in_window += s.received_in_window;
        t.out_of_order += s.out_of_order;
        t.unexpected += s.unexpected;
        t.skipped += s.skipped_sends;
        t.max_send_lag_us = t.max_send_lag_us.max(s.max_send_lag_us);
        if s.received_in_window == 0 {
            t.starved_directions += 1;
        }
        t.latencies.append(&mut s.latencies_us);
        let e = std::mem::take(&mut s.errors);
        run.errors.merge(e);
    }
    t.lost = t.sent.saturating_sub(t.received);
    t
}

pub(super) fn server_cpu_per_100k(server: &serde_json::Value, delivered: u64) -> serde_json::Value {
    match server.get("cpu_s").and_then(|v| v.as_f64()) {
        Some(cpu) if delivered > 0 => json!(stats::round3(cpu * 100_000.0 / delivered as f64)),
        _ => serde_json::Value::Null,
    }
}

pub async fn run_flat(t: Arc<Target>, a: &MessagesArgs, server_pid: Option<u32>) -> Report {
    let window = a.window.max(1);
    let mut run = run_pairs(
        t,
        &a.pairs,
        |_, _| Mode::Flat { window },
        16,
        server_pid,
        json!({ "window": window }),
    )
    .await;
    if !run.sessions_ok {
        return Report::failed(run.params, run.errors, "not every session could log in");
    }
    let mut tt = totals(&mut run);
    let rate = tt.in_window as f64 / run.measured_s.max(1e-9);
    let lat = stats::percentiles_ms(&mut tt.latencies);
    let ok = tt.lost == 0 && tt.out_of_order == 0 && run.errors.total() == 0;
    let summary = format!(
        "{rate:.0} msg/s delivered over {:.1}s ({} pairs, window {window}); sent {} received {} lost {} out-of-order {}",
        run.measured_s, a.pairs.pairs, tt.sent, tt.received, tt.lost, tt.out_of_order
    );
    Report {
        params: run.params,
        results: json!({
            "msgs_per_s": stats::round3(rate),
            "delivered_in_window": tt.in_window,
            "measured_s": stats::round3(run.measured_s),
            "sent": tt.sent,
            "received": tt.received,
            "lost": tt.lost,
            "out_of_order": tt.out_of_order,
            "unexpected_stanzas": tt.unexpected,
            "starved_directions": tt.starved_directions,
            "latency_ms_sampled": lat,
            "server_cpu_s_per_100k": server_cpu_per_100k(&run.server, tt.in_window),
        }),
        server: run.server,
        generator: run.generator,
        ok,
        errors: run.errors,
        summary,
    }
}

pub async fn run_rate(t: Arc<Target>, a: &RateArgs, server_pid: Option<u32>) -> Report {
    let dirs = (a.pairs.pairs * 2).max(1);
    let rate = a.rate.max(1);
    let interval = Duration::from_nanos(1_000_000_000 * dirs / rate);
    let max_inflight = a.max_inflight.max(1);
    let mut run = run_pairs(
        t,
        &a.pairs,
        move |k, n| Mode::Rate {
            interval,
            offset: interval * k as u32 / n.max(1) as u32,
            max_inflight,
        },
        1,
        server_pid,
        json!({ "rate": rate, "per_direction_interval_us": interval.as_micros() as u64,
                "max_inflight": max_inflight }),
    )
    .await;
    if !run.sessions_ok {
        return Report::failed(run.params, run.errors, "not every session could log in");
    }
    let mut tt = totals(&mut run);
    let achieved = tt.in_window as f64 / run.measured_s.max(1e-9);
    let lat = stats::percentiles_ms(&mut tt.latencies);
    let ok = tt.lost == 0 && tt.out_of_order == 0 && tt.skipped == 0 && run.errors.total() == 0;
    let summary = format!(
        "{achieved:.0} msg/s (target {rate}); latency p50 {} p99 {} p99.9 {} max {} ms; lost {} out-of-order {}",
        lat["p50"], lat["p99"], lat["p999"], lat["max"], tt.lost, tt.out_of_order
    );
    Report {
        params: run.params,
        results: json!({
            "target_rate": rate,
            "achieved_msgs_per_s": stats::round3(achieved),
            "measured_s": stats::round3(run.measured_s),
            "latency_ms": lat,
            "sent": tt.sent,
            "received": tt.received,
            "lost": tt.lost,
            "out_of_order": tt.out_of_order,
            "unexpected_stanzas": tt.unexpected,
            "skipped_sends": tt.skipped,
            "max_send_lag_ms": stats::round3(tt.max_send_lag_us as f64 / 1000.0),
            "server_cpu_s_per_100k": server_cpu_per_100k(&run.server, tt.in_window),
        }),
        server: run.server,
        generator: run.generator,
        ok,
        errors: run.errors,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_round_trip() {
        let mut out = Vec::new();
        push_message(&mut out, "b@localhost", 42, 123456789, 40);
        let s = String::from_utf8(out.clone()).expect("utf8");
        assert!(
            s.starts_with("<message to='b@localhost' type='chat' id='m42'><body>42 123456789 x")
        );
        let body = scan::child_text(&out, b"body").expect("body");
        assert_eq!(body.len(), 40);
        assert_eq!(parse_body(body), Some((42, 123456789)));
        assert_eq!(parse_body(b"x y"), None);
    }
}
