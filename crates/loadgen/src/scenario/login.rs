//! Login storm: COUNT full logins (TCP, TLS, SASL, bind, initial presence, a confirming
//! ping), CONCURRENCY at a time, each followed by a clean logout. Over TCP (`login`) or
//! WebSocket (`ws-login`: the upgrade instead of TLS, then the same negotiation).

use super::{Mark, Report, Session, CLOSE_WAIT};
use crate::client::{LoginOpts, Target};
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct LoginArgs {
    /// Logins to perform in the measured phase.
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Logins in progress at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Accounts cycled through (0: COUNT accounts, one login each).
    #[arg(long, default_value_t = 0)]
    pub users: u64,
    /// Skip the warm-up pass (one untimed login per account, which also fills the client's
    /// SCRAM key cache so the storm measures the server, not the client's PBKDF2).
    #[arg(long)]
    pub no_warmup: bool,
}

struct Storm {
    latencies: Vec<u64>,
    connect: Vec<u64>,
    tls: Vec<u64>,
    auth: Vec<u64>,
    bind: Vec<u64>,
    logout: Vec<u64>,
    errors: Errors,
    tls_info: Option<(String, String)>,
    /// When the last login of the storm completed (closes may still be running).
    last_login: Option<std::time::Instant>,
}

/// Sessions of one worker still closing before it waits for one to finish.
const MAX_CLOSING: usize = 64;

async fn storm<S: Session>(
    t: &Arc<Target>,
    a: &LoginArgs,
    count: u64,
    users: u64,
    tag: &str,
) -> Storm {
    let next = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (t, next, first, tag) = (t.clone(), next.clone(), a.first, tag.to_owned());
        set.spawn(async move {
            let mut s = Storm {
                latencies: Vec::new(),
                connect: Vec::new(),
                tls: Vec::new(),
                auth: Vec::new(),
                bind: Vec::new(),
                logout: Vec::new(),
                errors: Errors::default(),
                tls_info: None,
                last_login: None,
            };
            let mut closing = tokio::task::JoinSet::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let n = first + i % users;
                match S::login(&t, n, &format!("{tag}{i}"), LoginOpts::default()).await {
                    Ok((conn, times)) => {
                        s.latencies.push(times.ready_us);
                        s.connect.push(times.connect_us);
                        s.tls.push(times.tls_us - times.connect_us);
                        s.auth.push(times.auth_us - times.tls_us);
                        s.bind.push(times.bind_us - times.auth_us);
                        if s.tls_info.is_none() {
                            s.tls_info = Some(conn.tls_info());
                        }
                        // The logout runs beside the next login: a server that is slow
                        // to answer the stream close must not throttle the storm. Its CPU
                        // is still counted (the measured phase ends after every close).
                        closing.spawn(async move {
                            let at = std::time::Instant::now();
                            conn.close(CLOSE_WAIT).await;
                            at.elapsed().as_micros() as u64
                        });
                        // Bound the sessions still closing (and so the open sockets).
                        while closing.len() > MAX_CLOSING {
                            if let Some(Ok(us)) = closing.join_next().await {
                                s.logout.push(us);
                            }
                        }
                    }
                    Err(e) => s.errors.add(e.kind, format!("account {n}: {}", e.detail)),
                }
            }
            s.last_login = Some(std::time::Instant::now());
            while let Some(r) = closing.join_next().await {
                if let Ok(us) = r {
                    s.logout.push(us);
                }
            }
            s
        });
    }
    let mut all = Storm {
        latencies: Vec::new(),
        connect: Vec::new(),
        tls: Vec::new(),
        auth: Vec::new(),
        bind: Vec::new(),
        logout: Vec::new(),
        errors: Errors::default(),
        tls_info: None,
        last_login: None,
    };
    while let Some(r) = set.join_next().await {
        match r {
            Ok(s) => {
                all.latencies.extend(s.latencies);
                all.connect.extend(s.connect);
                all.tls.extend(s.tls);
                all.auth.extend(s.auth);
                all.bind.extend(s.bind);
                all.logout.extend(s.logout);
                all.errors.merge(s.errors);
                if all.tls_info.is_none() {
                    all.tls_info = s.tls_info;
                }
                all.last_login = all.last_login.max(s.last_login);
            }
            Err(e) => all.errors.add("task", e.to_string()),
        }
    }
    all
}

pub async fn run<S: Session>(t: Arc<Target>, a: &LoginArgs, server_pid: Option<u32>) -> Report {
    let users = if a.users == 0 { a.count } else { a.users }.max(1);
    let params = json!({
        "count": a.count, "concurrency": a.concurrency, "first": a.first, "users": users,
        "warmup": !a.no_warmup, "tls_resumption": false, "transport": S::TRANSPORT,
    });
    let mut warm_errors = 0;
    if !a.no_warmup {
        let w = storm::<S>(&t, a, users.min(a.count.max(1)), users, "w").await;
        warm_errors = w.errors.total();
        if w.latencies.is_empty() {
            let mut errors = w.errors;
            errors.add("warmup", "no login succeeded in the warm-up pass");
            return Report::failed(params, errors, "every warm-up login failed");
        }
    }
    let before = Mark::now(server_pid);
    let mut s = storm::<S>(&t, a, a.count, users, "s").await;
    let after = Mark::now(server_pid);
    let last = s.last_login.unwrap_or(after.at);
    let wall = last.duration_since(before.at).as_secs_f64();
    let ok_count = s.latencies.len() as u64;
    let rate = if wall > 0.0 {
        ok_count as f64 / wall
    } else {
        0.0
    };
    let (server, generator) = before.until(&after);
    let lat = stats::percentiles_ms(&mut s.latencies);
    let med = |v: &mut Vec<u64>| stats::round3(stats::median_us(v) / 1000.0);
    let cpu_per_login_ms = server
        .get("cpu_s")
        .and_then(|v| v.as_f64())
        .filter(|_| ok_count > 0)
        .map(|cpu| stats::round3(cpu * 1000.0 / ok_count as f64));
    let (tls_version, cipher) = s.tls_info.clone().unwrap_or_default();
    let summary = format!(
        "{ok_count}/{} logins in {wall:.2}s = {rate:.0}/s; latency p50 {} ms p99 {} ms",
        a.count, lat["p50"], lat["p99"]
    );
    Report {
        params,
        results: json!({
            "transport": S::TRANSPORT,
            "logins_ok": ok_count,
            "logins_failed": a.count - ok_count,
            "wall_s": stats::round3(wall),
            "logins_per_s": stats::round3(rate),
            "latency_ms": lat,
            "phase_median_ms": {
                "tcp_connect": med(&mut s.connect),
                "tls": med(&mut s.tls),
                "sasl": med(&mut s.auth),
                "bind": med(&mut s.bind),
                "logout": med(&mut s.logout),
            },
            "server_cpu_ms_per_login": cpu_per_login_ms,
            "warmup_errors": warm_errors,
            "tls_version": tls_version,
            "cipher_suite": cipher,
            "client_key_cache_entries": t.keys.len(),
        }),
        server,
        generator,
        ok: ok_count == a.count,
        errors: s.errors,
        summary,
    }
}
