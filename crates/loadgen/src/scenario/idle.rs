//! Idle sessions: opens COUNT authenticated, bound sessions with initial presence and holds
//! them, so the server's memory per session can be read while they are open. With
//! `--ready-file`, a JSON line is written there once every session is up; the sessions are then
//! held until `--release-file` exists or `--hold` seconds pass, whichever is first. Several
//! generator processes can share one run this way (each has its own open-files limit). Over TCP
//! with TLS (`idle`) or WebSocket (`ws-idle`).

use super::{login_many_with, Mark, Report, Session, CLOSE_WAIT};
use crate::client::{LoginOpts, Target};
use crate::scan::{self, Event};
use crate::stats;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Logins in progress at once while opening.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Longest time to hold the sessions once open, in seconds.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Written (JSON) once every session is open.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Release the sessions as soon as this file exists.
    #[arg(long)]
    pub release_file: Option<PathBuf>,
}

/// Reads and discards what the server sends to an idle session (answering pings) until told
/// to stop. Returns false when the server ended the session first.
pub async fn hold(mut conn: crate::client::Conn, mut stop: watch::Receiver<bool>) -> bool {
    let mut alive = true;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = conn.read_some() => {
                if r.is_err() {
                    alive = false;
                    break;
                }
                let mut iqs = Vec::new();
                loop {
                    match conn.scanner.next_event() {
                        Ok(Some(Event::Element(r))) => {
                            let el = conn.scanner.slice(r);
                            if scan::root_name(el) == b"iq" {
                                iqs.push(el.to_vec());
                            }
                        }
                        Ok(Some(Event::StreamOpen(_))) => {}
                        Ok(Some(Event::StreamClose)) | Err(_) => {
                            alive = false;
                            break;
                        }
                        Ok(None) => break,
                    }
                }
                for iq in iqs {
                    conn.answer_server_iq(&iq);
                }
                if !alive || conn.flush().await.is_err() {
                    alive = false;
                    break;
                }
            }
        }
    }
    conn.close(CLOSE_WAIT).await;
    alive
}

pub async fn run<S: Session>(t: Arc<Target>, a: &IdleArgs, server_pid: Option<u32>) -> Report {
    let params = json!({
        "transport": S::TRANSPORT, "count": a.count, "first": a.first, "concurrency": a.concurrency, "hold_max_s": a.hold,
    });
    let before = Mark::now(server_pid);
    let indices: Vec<u64> = (a.first..a.first + a.count).collect();
    let (sessions, mut errors) = login_many_with::<S>(
        &t,
        indices,
        |i| format!("idle{i}"),
        a.concurrency,
        LoginOpts::default(),
    )
    .await;
    let ready = Mark::now(server_pid);
    let ramp_s = ready.at.duration_since(before.at).as_secs_f64();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = tokio::task::JoinSet::new();
    let mut established = 0u64;
    for (conn, _) in sessions.into_iter().flatten() {
        established += 1;
        holders.spawn(conn.hold(stop_rx.clone()));
    }
    if let Some(path) = &a.ready_file {
        let line = json!({ "established": established, "failed": a.count - established,
                           "ramp_s": stats::round3(ramp_s) });
        if let Err(e) = std::fs::write(path, format!("{line}\n")) {
            errors.add("ready-file", e.to_string());
        }
    }
    eprintln!(
        "idle: {established}/{} sessions open after {ramp_s:.1}s; holding",
        a.count
    );

    let deadline = Instant::now() + Duration::from_secs(a.hold);
    while Instant::now() < deadline {
        if let Some(p) = &a.release_file {
            if p.exists() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = Mark::now(server_pid);
    let _ = stop_tx.send(true);
    let mut lost = 0u64;
    while let Some(r) = holders.join_next().await {
        match r {
            Ok(true) => {}
            Ok(false) => lost += 1,
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    if lost > 0 {
        errors.add(
            "session-lost",
            format!("{lost} sessions ended by the server while held"),
        );
    }

    let (server, generator) = before.until(&ready);
    let per_session = match (before.server, ready.server) {
        (Some(b), Some(r)) if established > 0 => json!(stats::round3(
            (r.rss_kib as f64 - b.rss_kib as f64) / established as f64
        )),
        _ => serde_json::Value::Null,
    };
    let gen_per_session = match (before.generator, ready.generator) {
        (Some(b), Some(r)) if established > 0 => json!(stats::round3(
            (r.rss_kib as f64 - b.rss_kib as f64) / established as f64
        )),
        _ => serde_json::Value::Null,
    };
    let summary = format!(
        "{established}/{} sessions held {:.1}s (ramp {ramp_s:.1}s), {lost} lost; server KiB/session {}",
        a.count,
        held.at.duration_since(ready.at).as_secs_f64(),
        per_session
    );
    Report {
        params,
        results: json!({
            "established": established,
            "failed": a.count - established,
            "lost_while_held": lost,
            "ramp_s": stats::round3(ramp_s),
            "sessions_per_s": stats::round3(if ramp_s > 0.0 { established as f64 / ramp_s } else { 0.0 }),
            "held_s": stats::round3(held.at.duration_since(ready.at).as_secs_f64()),
            "server_rss_kib_before": before.server.map(|s| s.rss_kib),
            "server_rss_kib_held": ready.server.map(|s| s.rss_kib),
            "server_rss_kib_end_of_hold": held.server.map(|s| s.rss_kib),
            "server_kib_per_session": per_session,
            "generator_kib_per_session": gen_per_session,
        }),
        server,
        generator,
        ok: established == a.count && lost == 0,
        errors,
        summary,
    }
}
