//! `rookery-load`: a load generator for XMPP servers on this machine.
//!
//! It speaks XMPP with its own minimal client (STARTTLS or direct TLS, SCRAM or PLAIN,
//! binding, presence, messages) and runs one scenario per invocation: `login`, `idle`,
//! `messages`, `rate`, `fanout`, `muc`, `pep`, `mam` (archive queries), over the web
//! transports in the clear `ws-login`, `ws-idle` (WebSocket) and `bosh-rtt` (BOSH), `s2s`
//! (messages between two federating servers), and `register` to create accounts by in-band
//! registration on servers that allow it. Each run prints one JSON object on
//! stdout (scenario, parameters, results, errors) and a human summary on stderr. Every loop
//! is bounded in count and time, every connection is closed at the end, and only loopback
//! addresses are accepted.

mod caps;
mod client;
mod scan;
mod scenario;
mod scram;
mod stats;
mod web;

use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Conn, Target, TlsMode};
use scenario::Report;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "rookery-load",
    version,
    about = "Load generator for XMPP servers (loopback only)"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Server address (must resolve to loopback).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// Server port: the STARTTLS c2s port, or the direct TLS port with `--tls direct`
    /// (`--tls none`: plain TCP, for a server that accepts authentication in the clear).
    #[arg(long, global = true, default_value_t = 5222)]
    port: u16,
    /// XMPP domain of the accounts.
    #[arg(long, global = true, default_value = "localhost")]
    domain: String,
    /// The server's plain HTTP port (WebSocket and BOSH scenarios: `ws://`, `http://`).
    #[arg(long, global = true, default_value_t = 5280)]
    http_port: u16,
    /// Path of the WebSocket endpoint on the HTTP port.
    #[arg(long, global = true, default_value = "/xmpp-websocket")]
    ws_path: String,
    /// Path of the BOSH endpoint on the HTTP port.
    #[arg(long, global = true, default_value = "/http-bind")]
    bosh_path: String,
    #[arg(long, global = true, value_enum, default_value_t = TlsArg::Starttls)]
    tls: TlsArg,
    /// SASL mechanism: SCRAM-SHA-1, SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN.
    #[arg(long, global = true, default_value = "SCRAM-SHA-1")]
    mechanism: String,
    /// Account localpart; `{n}` is replaced by the account number.
    #[arg(long, global = true, default_value = "user{n}")]
    user_pattern: String,
    /// Password; `{n}` is replaced by the account number.
    #[arg(long, global = true, default_value = "password{n}")]
    password_pattern: String,
    /// Seconds allowed for each negotiation step.
    #[arg(long, global = true, default_value_t = 30)]
    step_timeout: u64,
    /// PID of the server process: its CPU time and RSS are read around the measured phase.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Local loopback addresses to connect from, comma-separated (spreads ephemeral ports).
    #[arg(long, global = true, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// Runtime worker threads; 1 runs everything on one thread (the usual setting when the
    /// generator is pinned to one core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Free text copied into the JSON output (e.g. the server's name).
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum TlsArg {
    Starttls,
    Direct,
    /// No TLS: the server must accept authentication in the clear.
    None,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Login storm: COUNT connects + TLS + SASL + bind + initial presence, CONCURRENCY at a
    /// time, each followed by a clean logout; reports logins/s and latency percentiles.
    Login(scenario::login::LoginArgs),
    /// Holds COUNT authenticated sessions open (for the server's memory per session).
    Idle(scenario::idle::IdleArgs),
    /// PAIRS of sessions exchanging one-to-one chat messages flat out (a window of
    /// unanswered messages per direction); reports delivered msg/s, loss and ordering.
    Messages(scenario::messages::MessagesArgs),
    /// A fixed aggregate message RATE over PAIRS; reports send-to-receive latency percentiles.
    Rate(scenario::messages::RateArgs),
    /// One user with CONTACTS online contacts changes presence REPEATS times; reports the time
    /// until every contact has it. Sets up the mutual subscriptions over XMPP if missing.
    Fanout(scenario::fanout::FanoutArgs),
    /// Creates accounts by in-band registration (XEP-0077) where the server allows it.
    Register(scenario::register::RegisterArgs),
    /// Group chat: ROOMS rooms of OCCUPANTS occupants; each round every room's first
    /// occupant sends one message; reports the time until every occupant has it, server CPU
    /// per delivered copy and memory per occupant.
    Muc(scenario::muc::MucArgs),
    /// Personal eventing (XEP-0163): a publisher with CONTACTS contacts whose caps ask for
    /// notifications publishes REPEATS items one after the other; reports the time until
    /// the last contact has each one and server CPU per publish. Sets up the mutual
    /// subscriptions over XMPP if missing.
    Pep(scenario::pep::PepArgs),
    /// Fills an archive with MESSAGES messages between two accounts, then times archive
    /// queries (last page, a page by start time, a `with` page, a page after an id).
    Mam(scenario::mam::MamArgs),
    /// The login storm over WebSocket in the clear (`ws://`): upgrade, stream, SASL, restart,
    /// bind, initial presence, a confirming ping, then `<close/>`.
    WsLogin(scenario::login::LoginArgs),
    /// Holds COUNT authenticated WebSocket sessions open (for memory per session).
    WsIdle(scenario::idle::IdleArgs),
    /// SESSIONS logged-in BOSH sessions (`http://`); IQ pings to the server at a fixed
    /// aggregate RATE; reports the round trip until the answer is in a BOSH response.
    BoshRtt(scenario::bosh::BoshRttArgs),
    /// Messages across a federation link: PAIRS senders on this server (`--port`, `--domain`)
    /// each sending to a receiver on another server (`--peer-port`, `--peer-domain`) flat out
    /// or at `--rate`; reports delivered msg/s, latency percentiles, loss and ordering, and
    /// both servers' CPU.
    S2s(scenario::s2s::S2sArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Login(_) => "login",
            Scenario::Idle(_) => "idle",
            Scenario::Messages(_) => "messages",
            Scenario::Rate(_) => "rate",
            Scenario::Fanout(_) => "fanout",
            Scenario::Register(_) => "register",
            Scenario::Muc(_) => "muc",
            Scenario::Pep(_) => "pep",
            Scenario::Mam(_) => "mam",
            Scenario::WsLogin(_) => "ws-login",
            Scenario::WsIdle(_) => "ws-idle",
            Scenario::BoshRtt(_) => "bosh-rtt",
            Scenario::S2s(_) => "s2s",
        }
    }
}

/// Raises the soft open-files limit to the hard one: every session is a socket.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

fn main() {
    let cli = Cli::parse();
    let exit = match run(cli) {
        Ok(ok) => {
            if ok {
                0
            } else {
                1
            }
        }
        Err(msg) => {
            eprintln!("rookery-load: {msg}");
            2
        }
    };
    std::process::exit(exit);
}

fn run(cli: Cli) -> Result<bool, String> {
    let a = &cli.target;
    let addr = client::resolve_loopback(&a.host, a.port)?;
    let http_addr = client::resolve_loopback(&a.host, a.http_port)?;
    if let Some(bad) = a.source.iter().find(|ip| !ip.is_loopback()) {
        return Err(format!("--source {bad} is not a loopback address"));
    }
    let mechanism = scram::Mechanism::parse(&a.mechanism)
        .ok_or_else(|| format!("unknown mechanism {}", a.mechanism))?;
    let target = Arc::new(Target {
        addr,
        domain: a.domain.clone(),
        tls: match a.tls {
            TlsArg::Starttls => TlsMode::StartTls,
            TlsArg::Direct => TlsMode::Direct,
            TlsArg::None => TlsMode::None,
        },
        mechanism,
        user_pattern: a.user_pattern.clone(),
        password_pattern: a.password_pattern.clone(),
        step_timeout: Duration::from_secs(a.step_timeout.max(1)),
        connector: client::tls_connector(),
        keys: scram::KeyCache::new(),
        sources: a.source.clone(),
        http_addr,
        ws_path: a.ws_path.clone(),
        bosh_path: a.bosh_path.clone(),
    });
    let fd_limit = raise_fd_limit();
    let runtime = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;

    let name = cli.scenario.name();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let gen_before = stats::self_sample();
    let wall = Instant::now();
    let server_pid = a.server_pid;
    let report: Report = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Login(s) => scenario::login::run::<Conn>(target.clone(), s, server_pid).await,
            Scenario::Idle(s) => scenario::idle::run::<Conn>(target.clone(), s, server_pid).await,
            Scenario::Messages(s) => {
                scenario::messages::run_flat(target.clone(), s, server_pid).await
            }
            Scenario::Rate(s) => scenario::messages::run_rate(target.clone(), s, server_pid).await,
            Scenario::Fanout(s) => scenario::fanout::run(target.clone(), s, server_pid).await,
            Scenario::Register(s) => scenario::register::run(target.clone(), s).await,
            Scenario::Muc(s) => scenario::muc::run(target.clone(), s, server_pid).await,
            Scenario::Pep(s) => scenario::pep::run(target.clone(), s, server_pid).await,
            Scenario::Mam(s) => scenario::mam::run(target.clone(), s, server_pid).await,
            Scenario::WsLogin(s) => {
                scenario::login::run::<web::WsConn>(target.clone(), s, server_pid).await
            }
            Scenario::WsIdle(s) => {
                scenario::idle::run::<web::WsConn>(target.clone(), s, server_pid).await
            }
            Scenario::BoshRtt(s) => scenario::bosh::run(target.clone(), s, server_pid).await,
            Scenario::S2s(s) => scenario::s2s::run(target.clone(), s, server_pid).await,
        }
    });
    // Let the close handshakes still in flight finish before the runtime goes away.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let gen_after = stats::self_sample();
    let wall_s = wall.elapsed().as_secs_f64();

    let gen_cpu = match (gen_before, gen_after) {
        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
        _ => 0.0,
    };
    let out = json!({
        "tool": "rookery-load",
        "version": env!("CARGO_PKG_VERSION"),
        "scenario": name,
        "label": a.label,
        "started_unix": started_unix,
        "target": {
            "addr": addr.to_string(),
            "domain": a.domain,
            "tls": format!("{:?}", a.tls).to_lowercase(),
            "mechanism": mechanism.name(),
            "http_addr": http_addr.to_string(),
            "user_pattern": a.user_pattern,
        },
        "params": report.params,
        "ok": report.ok,
        "results": report.results,
        "server": report.server,
        "errors": report.errors.to_json(),
        "generator": {
            "wall_s": stats::round3(wall_s),
            "cpu_s": stats::round3(gen_cpu),
            "threads": a.threads,
            "fd_limit": fd_limit,
            "rss_kib_end": gen_after.map(|s| s.rss_kib),
            "measured_phase": report.generator,
        },
    });
    println!("{out}");
    eprintln!("{name}: {}", report.summary);
    if report.errors.total() > 0 {
        eprintln!(
            "{name}: {} errors {:?}; first: {:?}",
            report.errors.total(),
            report.errors.by_kind,
            report.errors.samples.first()
        );
    }
    Ok(report.ok)
}
