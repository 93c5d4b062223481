//! One-to-one chat messages across a federation link: PAIRS senders logged in on server A
//! (the global `--host`/`--port`/`--domain`) and PAIRS receivers on server B (`--peer-port`,
//! `--peer-domain`), account FIRST+i on A sending to account FIRST+i on B. Both servers must
//! already federate with each other (server-to-server streams); the first messages of the
//! warm-up open the links.
//!
//! The measurement is the one of `messages` and `rate` (the same sending loop): flat out with
//! WINDOW messages in flight per direction, or with `--rate`, a fixed aggregate rate; the
//! delivered messages per second in the measured window, send-to-receive latency percentiles
//! (every 16th message flat out, every message at a fixed rate), loss and ordering per
//! direction after a bounded drain. With `--both-ways` the receivers send to their senders too
//! (every account both sends and receives; each server both sends and receives over
//! server-to-server streams).
//!
//! Server CPU over the measured phase is read for A (`--server-pid`) and B
//! (`--peer-server-pid`).

use super::messages::{run_side, server_cpu_per_100k, Dir, Mode, Schedule, Side, SideStats};
use super::{close_all, login_many, Mark, Report};
use crate::client::{self, Conn, LoginOpts, Target};
use crate::scan;
use crate::scram::KeyCache;
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Args, Debug, Clone)]
pub struct S2sArgs {
    /// Sender/receiver pairs (PAIRS accounts from FIRST on each server).
    #[arg(long, default_value_t = 100)]
    pub pairs: u64,
    /// First account number (the same numbers on both servers).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Server B's address (must resolve to loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub peer_host: String,
    /// Server B's c2s port (STARTTLS, or direct TLS with `--tls direct`, as for A).
    #[arg(long)]
    pub peer_port: u16,
    /// Server B's XMPP domain (the receivers' accounts).
    #[arg(long)]
    pub peer_domain: String,
    /// PID of server B's process: its CPU time and RSS are read around the measured phase.
    #[arg(long)]
    pub peer_server_pid: Option<u32>,
    /// Messages in flight per direction (flat out; ignored with `--rate`).
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// A fixed aggregate rate (messages per second over all directions) instead of flat out.
    #[arg(long)]
    pub rate: Option<u64>,
    /// With `--rate`: a direction with this many messages in flight skips its send.
    #[arg(long, default_value_t = 5000)]
    pub max_inflight: u64,
    /// Receivers send to their senders as well (two directions per pair).
    #[arg(long)]
    pub both_ways: bool,
    /// Measured phase, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Sending before the measured phase starts, in seconds (not counted; opens the links).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Longest wait for messages still in flight after sending stops, in seconds.
    #[arg(long, default_value_t = 20)]
    pub drain: u64,
    /// Body length in bytes (at least what `SEQ TIMESTAMP` needs).
    #[arg(long, default_value_t = 32)]
    pub body_size: usize,
    /// Logins in progress at once (per server) while opening the sessions.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
}

/// Server B as a target: A's settings (TLS, mechanism, account patterns) at B's address.
fn peer_target(t: &Target, a: &S2sArgs) -> Result<Target, String> {
    Ok(Target {
        addr: client::resolve_loopback(&a.peer_host, a.peer_port)?,
        domain: a.peer_domain.clone(),
        tls: t.tls,
        mechanism: t.mechanism,
        user_pattern: t.user_pattern.clone(),
        password_pattern: t.password_pattern.clone(),
        step_timeout: t.step_timeout,
        connector: t.connector.clone(),
        keys: KeyCache::new(),
        sources: t.sources.clone(),
        // The web transports are not used across a federation link: A's, unchanged.
        http_addr: t.http_addr,
        ws_path: t.ws_path.clone(),
        bosh_path: t.bosh_path.clone(),
    })
}

pub async fn run(t: Arc<Target>, a: &S2sArgs, server_pid: Option<u32>) -> Report {
    let directions = if a.both_ways { 2 * a.pairs } else { a.pairs }.max(1);
    let mode_name = if a.rate.is_some() { "rate" } else { "flat" };
    let mut params = json!({
        "pairs": a.pairs,
        "first": a.first,
        "peer_addr": format!("{}:{}", a.peer_host, a.peer_port),
        "peer_domain": a.peer_domain,
        "both_ways": a.both_ways,
        "directions": directions,
        "mode": mode_name,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "drain_max_s": a.drain,
        "body_size": a.body_size,
    });
    let send_mode = match a.rate {
        Some(rate) => {
            let rate = rate.max(1);
            let interval = Duration::from_nanos(1_000_000_000 * directions / rate);
            params["rate"] = json!(rate);
            params["per_direction_interval_us"] = json!(interval.as_micros() as u64);
            params["max_inflight"] = json!(a.max_inflight.max(1));
            Mode::Rate {
                interval,
                offset: Duration::ZERO,
                max_inflight: a.max_inflight.max(1),
            }
        }
        None => {
            params["window"] = json!(a.window.max(1));
            Mode::Flat {
                window: a.window.max(1),
            }
        }
    };
    // Direction d of `directions` starts sending at d/directions of the interval.
    let mode_for = |d: u64| match send_mode {
        Mode::Rate {
            interval,
            max_inflight,
            ..
        } => Mode::Rate {
            interval,
            offset: interval * d as u32 / directions as u32,
            max_inflight,
        },
        m => m,
    };
    let tb = match peer_target(&t, a) {
        Ok(tb) => Arc::new(tb),
        Err(e) => {
            let mut errors = Errors::default();
            errors.add("peer", e);
            return Report::failed(params, errors, "server B's address is not usable");
        }
    };
    let indices: Vec<u64> = (a.first..a.first + a.pairs).collect();
    let login = LoginOpts::default();
    let (senders, mut errors) = login_many(
        &t,
        indices.clone(),
        |_| "s2s-a".to_owned(),
        a.concurrency,
        login,
    )
    .await;
    let (receivers, errors_b) =
        login_many(&tb, indices, |_| "s2s-b".to_owned(), a.concurrency, login).await;
    errors.merge(errors_b);
    if senders.iter().chain(receivers.iter()).any(Option::is_none) {
        let conns: Vec<Conn> = senders
            .into_iter()
            .chain(receivers)
            .flatten()
            .map(|(c, _)| c)
            .collect();
        close_all(conns).await;
        return Report::failed(params, errors, "not every session could log in");
    }

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
        sample_every: if a.rate.is_some() { 1 } else { 16 },
    };
    // Receivers that do not send run the same loop with a window of nothing.
    let quiet = Mode::Flat { window: 0 };
    let mut set = tokio::task::JoinSet::new();
    let mut d = 0u64;
    for (sa, sb) in senders.into_iter().zip(receivers) {
        let (Some((ca, _)), Some((cb, _))) = (sa, sb) else {
            continue;
        };
        let (ab, ba) = (Arc::new(Dir::default()), Arc::new(Dir::default()));
        let (wa, wb) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let bare_a = scan::bare(ca.jid.as_bytes()).to_vec();
        let bare_b = scan::bare(cb.jid.as_bytes()).to_vec();
        let (to_a, to_b) = (t.bare_jid(ca.index), tb.bare_jid(cb.index));
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
        let mode_a = mode_for(d);
        d += 1;
        let mode_b = if a.both_ways {
            d += 1;
            mode_for(d - 1)
        } else {
            quiet
        };
        // (receives messages?, stats): a one-way sender's side receives nothing.
        let a_receives = a.both_ways;
        set.spawn(async move { (a_receives, run_side(side_a, mode_a, sch).await) });
        set.spawn(async move { (true, run_side(side_b, mode_b, sch).await) });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (a0, b0) = (Mark::now(server_pid), Mark::now(a.peer_server_pid));
    tokio::time::sleep_until(stop.into()).await;
    let (a1, b1) = (Mark::now(server_pid), Mark::now(a.peer_server_pid));
    let (server_a, generator) = a0.until(&a1);
    let (server_b, _) = b0.until(&b1);
    let measured_s = a1.at.duration_since(a0.at).as_secs_f64();

    let mut sides: Vec<(bool, SideStats)> = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => sides.push(s),
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    let (mut sent, mut received, mut in_window, mut out_of_order, mut unexpected) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut skipped, mut max_lag_us, mut starved) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    for (receives, mut s) in sides {
        sent += s.sent;
        received += s.received;
        in_window += s.received_in_window;
        out_of_order += s.out_of_order;
        unexpected += s.unexpected;
        skipped += s.skipped_sends;
        max_lag_us = max_lag_us.max(s.max_send_lag_us);
        if receives && s.received_in_window == 0 {
            starved += 1;
        }
        latencies.append(&mut s.latencies_us);
        errors.merge(std::mem::take(&mut s.errors));
    }
    let lost = sent.saturating_sub(received);
    let rate = in_window as f64 / measured_s.max(1e-9);
    let lat = stats::percentiles_ms(&mut latencies);
    let cpu = |v: &Value| v.get("cpu_s").and_then(Value::as_f64);
    let both_cpu = match (cpu(&server_a), cpu(&server_b)) {
        (Some(x), Some(y)) => json!({ "cpu_s": stats::round3(x + y) }),
        _ => Value::Null,
    };
    let ok = lost == 0 && out_of_order == 0 && skipped == 0 && errors.total() == 0;
    let summary = format!(
        "{rate:.0} msg/s delivered across servers over {measured_s:.1}s ({} pairs, {mode_name}{}); latency p50 {} p99 {} ms; sent {sent} received {received} lost {lost} out-of-order {out_of_order}",
        a.pairs,
        if a.both_ways { ", both ways" } else { "" },
        lat["p50"],
        lat["p99"],
    );
    Report {
        params,
        results: json!({
            "msgs_per_s": stats::round3(rate),
            "delivered_in_window": in_window,
            "measured_s": stats::round3(measured_s),
            "latency_ms": lat,
            "latency_sampled_every": sch.sample_every,
            "sent": sent,
            "received": received,
            "lost": lost,
            "out_of_order": out_of_order,
            "unexpected_stanzas": unexpected,
            "skipped_sends": skipped,
            "max_send_lag_ms": stats::round3(max_lag_us as f64 / 1000.0),
            "starved_directions": starved,
            "peer_server": server_b,
            "server_cpu_s_per_100k": server_cpu_per_100k(&server_a, in_window),
            "peer_server_cpu_s_per_100k": server_cpu_per_100k(&server_b, in_window),
            "both_servers_cpu_s_per_100k": server_cpu_per_100k(&both_cpu, in_window),
        }),
        server: server_a,
        generator,
        ok,
        errors,
        summary,
    }
}
