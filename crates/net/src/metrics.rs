//! Prometheus metrics: `GET /metrics` on the HTTP listeners, in the Prometheus text format
//! (or OpenMetrics, when the scraper asks for it), for the addresses `[metrics] allowed`
//! lists.
//!
//! Nothing here is on a hot path. The events are counted where they happen with plain
//! atomics, one relaxed add each ([`rookery_core::counters`] and the logins below); what
//! is a state rather than an event (sessions by host and transport, connections open,
//! server-to-server streams, the process's memory and CPU time) is read when a scrape asks
//! for it. A scrape builds a [`Snapshot`] of those values, and [`render`] writes it with
//! `prometheus-client`'s encoders.
//!
//! The names: `rookery_` and the counter's name for each counter of `rookery stats`
//! (`rookery_auth_failures_total`), `rookery_stanzas_in_total{kind}` and
//! `rookery_stanzas_out_total{kind}`, `rookery_logins_total{mechanism,result}`,
//! `rookery_sessions{host,transport}`, `rookery_client_connections`,
//! `rookery_s2s_connections{direction}`, `rookery_build_info{version}`, and the `process_`
//! metrics every Prometheus client library exports.
//!
//! Storage: `rookery_storage_operation_duration_seconds{store,operation}` (a histogram of
//! every store call, recorded by [`rookery_storage::timed`] around the server's storage),
//! `rookery_storage_errors_total{store}` (backend and corruption errors), and
//! `rookery_archive_entries{store}` (entries in the message archives of accounts and of
//! rooms), counted by the backend every [`ARCHIVE_COUNT_INTERVAL`] rather than per scrape:
//! counting is a walk over an index, too much for every scrape and unneeded for a figure
//! that moves slowly; a counter kept by append and purge would miss what account deletion
//! and room destruction remove, so the backend is asked.

use crate::http::{refuse, Connection, HttpContext, HttpRouter};
use crate::limits::ConnectionLimits;
use crate::s2s::S2s;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use ipnet::IpNet;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::settings::{Place, Section};
use rookery_core::{ClientTransport, Server};
use rookery_storage::timed::{self, OperationStats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the metrics are served, on every HTTP listener (not under `[http] path_prefix`).
pub const PATH: &str = "/metrics";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `[metrics]`: who may read `GET /metrics`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on the HTTP listeners.
    pub enabled: bool,
    /// Addresses or networks (`192.0.2.7`, `10.0.0.0/8`) that may read it; everyone else is
    /// answered 403. Behind a trusted proxy (`[http] trusted_proxies`) the address it
    /// forwards is the one checked.
    pub allowed: Vec<String>,
    /// A listener of the metrics' own, serving `/metrics` and nothing else; when set, the
    /// HTTP listeners no longer serve it. Unset: the HTTP listeners serve it, and without
    /// any HTTP listener the metrics listen on [`DEFAULT_ADDRESS`] (loopback only).
    pub address: Option<SocketAddr>,
}

/// Where the metrics listen when no HTTP listener is configured and `[metrics] address` is
/// unset: loopback only, so that enabling the metrics never opens a port to the network.
/// 9464 is the port Prometheus exporters of OpenTelemetry use.
pub const DEFAULT_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// Why [`own_listener`] chose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// `[metrics] address`: failing to bind it stops the server, like any listener.
    Configured,
    /// [`DEFAULT_ADDRESS`], for want of an HTTP listener: failing to bind it is a warning.
    Default,
}

/// The metrics' own listener, if there is one: `[metrics] address`, or
/// [`DEFAULT_ADDRESS`] when no HTTP listener (`http_listeners` false) would serve them.
pub fn own_listener(config: &MetricsConfig, http_listeners: bool) -> Option<(SocketAddr, Chosen)> {
    if !config.enabled {
        return None;
    }
    match config.address {
        Some(a) => Some((a, Chosen::Configured)),
        None if !http_listeners => Some((DEFAULT_ADDRESS, Chosen::Default)),
        None => None,
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Loopback: the whole of 127.0.0.0/8, and ::1.
            allowed: vec!["127.0.0.0/8".to_owned(), "::1".to_owned()],
            address: None,
        }
    }
}

impl MetricsConfig {
    /// The allowed networks (an address is a network of one).
    fn networks(&self) -> Result<Vec<IpNet>, String> {
        self.allowed
            .iter()
            .map(|a| {
                a.parse::<IpNet>()
                    .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| a.clone())
            })
            .collect()
    }
}

impl Section for MetricsConfig {
    const KEY: &'static str = "metrics";
    const PLACE: Place = Place::Server;
    const EXAMPLE: &'static str = r#"# Prometheus metrics at /metrics on the HTTP listeners ([[listener]] kind = "http" or
# "https"), or on a listener of their own (address below).
[metrics]
enabled = true
# Addresses or networks (CIDR) that may read /metrics; others are answered 403. Behind a
# reverse proxy listed in [http] trusted_proxies, the client address it forwards counts.
allowed = ["127.0.0.0/8", "::1"]
# A listener of their own, serving only /metrics (the HTTP listeners then stop serving
# it). Unset: the HTTP listeners serve it, and when there is none the metrics listen on
# 127.0.0.1:9464, loopback only.
# address = "127.0.0.1:9464"
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        self.networks().map(|_| ()).map_err(|bad| {
            ConfigError::invalid(
                format!("{key}.allowed"),
                format!("{bad:?} is not an IP address or network (192.0.2.7, 10.0.0.0/8)"),
            )
        })
    }
}

/// The SASL mechanisms logins are counted by; `unknown` for an exchange that failed before
/// naming one this server offers.
const MECHANISMS: [&str; 11] = [
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512",
    "SCRAM-SHA-512-PLUS",
    "HT-SHA-256-NONE",
    "HT-SHA-256-EXPR",
    "HT-SHA-256-ENDP",
    "unknown",
];

/// Successes (`[i][0]`) and failures (`[i][1]`) by mechanism, as [`MECHANISMS`] orders them.
static LOGINS: [[AtomicU64; 2]; MECHANISMS.len()] =
    [const { [const { AtomicU64::new(0) }; 2] }; MECHANISMS.len()];

/// Counts a SASL authentication (SASL, SASL2, a FAST token) that succeeded or failed.
pub fn login(mechanism: &str, success: bool) {
    let i = MECHANISMS
        .iter()
        .position(|m| *m == mechanism)
        .unwrap_or(MECHANISMS.len() - 1);
    LOGINS[i][usize::from(!success)].fetch_add(1, Ordering::Relaxed);
}

/// How often the archives' entries are counted for `rookery_archive_entries`.
pub const ARCHIVE_COUNT_INTERVAL: Duration = Duration::from_secs(300);

/// The last counts of archived entries: accounts' archives, then rooms' (`u64::MAX`: not
/// known, the backend does not count or has not been asked yet).
static ARCHIVE_ENTRIES: [AtomicU64; 2] = [const { AtomicU64::new(u64::MAX) }; 2];

/// Counts the archived entries now and every [`ARCHIVE_COUNT_INTERVAL`] until the server
/// stops.
pub(crate) async fn count_archives(server: Arc<Server>) {
    let shutdown = server.shutdown_token().clone();
    loop {
        let stores = [&server.storage().archive, &server.storage().room_archive];
        for (slot, store) in ARCHIVE_ENTRIES.iter().zip(stores) {
            match store.count_archived().await {
                Ok(n) => slot.store(n.unwrap_or(u64::MAX), Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "archived entries could not be counted"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ARCHIVE_COUNT_INTERVAL) => {}
        }
    }
}

/// One store's figures for a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSnapshot {
    pub store: &'static str,
    pub operations: Vec<OperationStats>,
    pub errors: u64,
}

/// A histogram already counted (per-bucket counts, `+Inf` last), for the encoder.
struct ConstHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What a scrape reports, read from the counters and the server's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every counter of [`rookery_core::counters`] with its value.
    pub counters: Vec<(Counter, u64)>,
    /// `(kind, in, out)`.
    pub stanzas: Vec<(&'static str, u64, u64)>,
    /// `(mechanism, successes, failures)`.
    pub logins: Vec<(&'static str, u64, u64)>,
    /// Bound sessions by host and transport (every host and transport, zeros included).
    pub sessions: BTreeMap<(String, &'static str), u64>,
    pub client_connections: u64,
    /// `None` when federation is off.
    pub s2s: Option<(u64, u64)>,
    pub process: ProcessStats,
    /// Every store's latencies and errors.
    pub storage: Vec<StoreSnapshot>,
    /// `(store, entries)` for the archives whose backend counts them.
    pub archive_entries: Vec<(&'static str, u64)>,
}

/// The process's figures, from `/proc/self` (none elsewhere).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self` now.
    pub fn read() -> ProcessStats {
        let mut p = ProcessStats::default();
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The fields after the command name (which may hold spaces), from field 3 on.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
                if let (Some(u), Some(s)) = (num(14), num(15)) {
                    p.cpu_seconds = Some((u + s) as f64 / ticks);
                }
                p.threads = num(20);
                p.virtual_memory_bytes = num(23);
                if page > 0 {
                    p.resident_memory_bytes = num(24).map(|n| n * page as u64);
                }
                let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("btime "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
                if let (Some(boot), Some(start)) = (boot, num(22)) {
                    p.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor of the directory being read.
            p.open_fds = Some((dir.count() as u64).saturating_sub(1));
        }
        p.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l["Max open files".len()..].split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            });
        p
    }
}

/// What the metrics are read from: shared by every HTTP listener.
pub struct Metrics {
    server: Arc<Server>,
    connections: Arc<ConnectionLimits>,
    s2s: Option<Arc<S2s>>,
}

impl Metrics {
    pub fn new(
        server: Arc<Server>,
        connections: Arc<ConnectionLimits>,
        s2s: Option<Arc<S2s>>,
    ) -> Arc<Self> {
        Arc::new(Metrics {
            server,
            connections,
            s2s,
        })
    }

    /// The values now.
    pub fn snapshot(&self) -> Snapshot {
        let mut sessions = BTreeMap::new();
        for host in &self.server.config().hosts {
            for t in [
                ClientTransport::Tcp,
                ClientTransport::WebSocket,
                ClientTransport::Bosh,
            ] {
                sessions.insert((host.domain.clone(), t.name()), 0);
            }
        }
        for ((host, t), n) in self.server.sessions().count_by_host_and_transport() {
            *sessions.entry((host, t.name())).or_default() += n as u64;
        }
        Snapshot {
            counters: Counter::ALL
                .iter()
                .map(|c| (*c, counters::get(*c)))
                .collect(),
            stanzas: counters::stanzas().to_vec(),
            logins: MECHANISMS
                .iter()
                .zip(&LOGINS)
                .map(|(m, [ok, failed])| {
                    (
                        *m,
                        ok.load(Ordering::Relaxed),
                        failed.load(Ordering::Relaxed),
                    )
                })
                .collect(),
            sessions,
            client_connections: self.connections.open() as u64,
            s2s: self
                .s2s
                .as_ref()
                .map(|s| (s.incoming_connections() as u64, s.outgoing_links() as u64)),
            process: ProcessStats::read(),
            storage: timed::STORES
                .iter()
                .map(|s| StoreSnapshot {
                    store: s.store,
                    operations: s.operations(),
                    errors: s.errors(),
                })
                .collect(),
            archive_entries: ["archive", "room_archive"]
                .into_iter()
                .zip(&ARCHIVE_ENTRIES)
                .map(|(store, n)| (store, n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n != u64::MAX)
                .collect(),
        }
    }
}

/// Writes a snapshot in the Prometheus text format (0.0.4), or OpenMetrics 1.0.
pub fn render(snapshot: Snapshot, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    let written = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    // Writing to a String does not fail; a metric the encoder refuses would be a bug here.
    if let Err(e) = written {
        tracing::error!(error = %e, "metrics could not be written");
    }
    out
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn counter(
            enc: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: impl prometheus_client::encoding::EncodeCounterValue + Clone,
        ) -> std::fmt::Result {
            let m = ConstCounter::new(value);
            m.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
        }
        fn gauge(
            enc: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: impl prometheus_client::encoding::EncodeGaugeValue + Clone,
        ) -> std::fmt::Result {
            let m = ConstGauge::new(value);
            m.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
        }

        for (c, value) in &self.counters {
            counter(&mut enc, &format!("rookery_{}", c.name()), c.help(), *value)?;
        }

        let mut family = enc.encode_descriptor(
            "rookery_stanzas_in",
            "Stanzas received on client, server-to-server and component streams, by kind.",
            None,
            MetricType::Counter,
        )?;
        for (kind, n, _) in &self.stanzas {
            ConstCounter::new(*n).encode(family.encode_family(&[("kind", *kind)])?)?;
        }
        let mut family = enc.encode_descriptor(
            "rookery_stanzas_out",
            "Stanzas handed to client sessions, server-to-server links and components, by kind.",
            None,
            MetricType::Counter,
        )?;
        for (kind, _, n) in &self.stanzas {
            ConstCounter::new(*n).encode(family.encode_family(&[("kind", *kind)])?)?;
        }

        let mut family = enc.encode_descriptor(
            "rookery_logins",
            "SASL authentications of clients (SASL, SASL2, FAST tokens) by mechanism and result.",
            None,
            MetricType::Counter,
        )?;
        for (mechanism, ok, failed) in &self.logins {
            for (result, n) in [("success", ok), ("failure", failed)] {
                // An exchange that named no mechanism never succeeds.
                if *mechanism == "unknown" && result == "success" {
                    continue;
                }
                let labels = [("mechanism", *mechanism), ("result", result)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = enc.encode_descriptor(
            "rookery_sessions",
            "Bound client sessions (including those kept for resumption), by virtual host and transport.",
            None,
            MetricType::Gauge,
        )?;
        for ((host, transport), n) in &self.sessions {
            let labels = [("host", host.as_str()), ("transport", *transport)];
            ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
        }

        gauge(
            &mut enc,
            "rookery_client_connections",
            "Client connections open (XMPP streams and HTTP connections), as the connection limits count them.",
            self.client_connections,
        )?;
        if let Some((incoming, outgoing)) = self.s2s {
            let mut family = enc.encode_descriptor(
                "rookery_s2s_connections",
                "Server-to-server streams: incoming connections, and outgoing links (one per local and remote domain pair).",
                None,
                MetricType::Gauge,
            )?;
            for (direction, n) in [("incoming", incoming), ("outgoing", outgoing)] {
                ConstGauge::new(n).encode(family.encode_family(&[("direction", direction)])?)?;
            }
        }

        let mut family = enc.encode_descriptor(
            "rookery_storage_operation_duration_seconds",
            "Time taken by each call to the storage backend, by store and operation.",
            None,
            MetricType::Histogram,
        )?;
        let mut buckets: Vec<(f64, u64)> = timed::BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
        for store in &self.storage {
            for op in &store.operations {
                for (b, n) in buckets.iter_mut().zip(op.buckets) {
                    b.1 = n;
                }
                let labels = [("store", store.store), ("operation", op.operation)];
                ConstHistogram {
                    sum: op.sum_seconds,
                    count: op.count(),
                    buckets: &buckets,
                }
                .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = enc.encode_descriptor(
            "rookery_storage_errors",
            "Storage calls that failed in the backend (or read corrupt data), by store.",
            None,
            MetricType::Counter,
        )?;
        for store in &self.storage {
            ConstCounter::new(store.errors)
                .encode(family.encode_family(&[("store", store.store)])?)?;
        }
        if !self.archive_entries.is_empty() {
            let mut family = enc.encode_descriptor(
                "rookery_archive_entries",
                "Entries in the message archives (of accounts: archive; of rooms: room_archive), counted every few minutes.",
                None,
                MetricType::Gauge,
            )?;
            for (store, n) in &self.archive_entries {
                ConstGauge::new(*n).encode(family.encode_family(&[("store", *store)])?)?;
            }
        }

        let mut family = enc.encode_descriptor(
            "rookery_build_info",
            "The running version, as a label; the value is always 1.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1u64)
            .encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;

        let p = &self.process;
        if let Some(v) = p.cpu_seconds {
            counter(
                &mut enc,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                v,
            )?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            ("process_threads", "Number of OS threads.", p.threads),
        ] {
            if let Some(v) = value {
                gauge(&mut enc, name, help, v)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            gauge(
                &mut enc,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                v,
            )?;
        }
        Ok(())
    }
}

/// The `/metrics` route, for the route table of an HTTP listener (`own`: the metrics' own
/// listener); no route when `[metrics] enabled = false`, nor on the HTTP listeners when
/// the metrics have an address of their own.
pub(crate) fn router(metrics: Arc<Metrics>, config: &MetricsConfig, own: bool) -> HttpRouter {
    if !config.enabled || (config.address.is_some() && !own) {
        return Router::new();
    }
    // Checked when the configuration was read.
    let allowed: Arc<[IpNet]> = config.networks().unwrap_or_default().into();
    Router::new().route(
        PATH,
        get(
            move |State(ctx): State<Arc<HttpContext>>,
                  Extension(conn): Extension<Connection>,
                  headers: HeaderMap| {
                let metrics = metrics.clone();
                let allowed = allowed.clone();
                async move { scrape(&metrics, &allowed, &ctx, &conn, &headers) }
            },
        ),
    )
}

/// Whether `ip` may read the metrics.
fn allowed_to_read(allowed: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allowed.iter().any(|n| n.contains(&ip))
}

fn scrape(
    metrics: &Metrics,
    allowed: &[IpNet],
    ctx: &HttpContext,
    conn: &Connection,
    headers: &HeaderMap,
) -> Response {
    let client = ctx.client(conn, headers);
    if !allowed_to_read(allowed, client.addr.ip()) {
        tracing::debug!(addr = %client.addr, "metrics refused: address not allowed");
        return refuse(
            StatusCode::FORBIDDEN,
            "metrics are not served to this address",
        );
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = render(metrics.snapshot(), openmetrics);
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            counters: vec![(Counter::AuthFailures, 3), (Counter::SmParked, 1)],
            stanzas: vec![("message", 5, 7), ("presence", 0, 2), ("iq", 1, 1)],
            logins: vec![("PLAIN", 2, 1), ("unknown", 0, 4)],
            sessions: BTreeMap::from([
                (("example.org".to_owned(), "tcp"), 2),
                (("example.org".to_owned(), "websocket"), 1),
            ]),
            client_connections: 4,
            s2s: Some((1, 2)),
            process: ProcessStats {
                cpu_seconds: Some(1.5),
                resident_memory_bytes: Some(4096),
                start_time_seconds: Some(1_700_000_000.25),
                ..ProcessStats::default()
            },
            storage: vec![StoreSnapshot {
                store: "accounts",
                operations: vec![OperationStats {
                    operation: "get_credentials",
                    buckets: std::array::from_fn(|i| match i {
                        0 => 2,
                        3 => 1,
                        _ => 0,
                    }),
                    sum_seconds: 0.0006,
                }],
                errors: 1,
            }],
            archive_entries: vec![("archive", 42)],
        }
    }

    #[test]
    fn the_text_format_has_help_type_and_labels() {
        let text = render(snapshot(), false);
        for line in [
            "# TYPE rookery_auth_failures_total counter",
            "rookery_auth_failures_total 3",
            "rookery_sm_parked_total 1",
            "rookery_stanzas_in_total{kind=\"message\"} 5",
            "rookery_stanzas_out_total{kind=\"presence\"} 2",
            "rookery_logins_total{mechanism=\"PLAIN\",result=\"failure\"} 1",
            "rookery_logins_total{mechanism=\"unknown\",result=\"failure\"} 4",
            "# TYPE rookery_sessions gauge",
            "rookery_sessions{host=\"example.org\",transport=\"websocket\"} 1",
            "rookery_client_connections 4",
            "rookery_s2s_connections{direction=\"outgoing\"} 2",
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 4096",
            "process_start_time_seconds 1700000000.25",
            "# TYPE rookery_storage_operation_duration_seconds histogram",
            "rookery_storage_operation_duration_seconds_count{store=\"accounts\",operation=\"get_credentials\"} 3",
            "rookery_storage_operation_duration_seconds_bucket{store=\"accounts\",operation=\"get_credentials\",le=\"5e-05\"} 2",
            "rookery_storage_operation_duration_seconds_bucket{store=\"accounts\",operation=\"get_credentials\",le=\"0.0005\"} 3",
            "rookery_storage_operation_duration_seconds_bucket{store=\"accounts\",operation=\"get_credentials\",le=\"+Inf\"} 3",
            "rookery_storage_errors_total{store=\"accounts\"} 1",
            "rookery_archive_entries{store=\"archive\"} 42",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "rookery_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(
            "# HELP rookery_auth_failures_total A failed SASL attempt (each one is slowed down)."
        ));
        // Each metric is described once, and every sample follows its description.
        let mut described = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(!described.contains(&name.to_owned()), "{name} twice");
                described.push(name.to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                // A histogram's samples are its `_bucket`, `_sum` and `_count` series.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| described.last().is_some_and(|d| d == f))
                    .unwrap_or(name);
                assert_eq!(described.last().map(String::as_str), Some(family), "{line}");
            }
        }
        assert!(
            !text.contains("process_open_fds"),
            "unknown figures are left out"
        );
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = render(snapshot(), true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE rookery_auth_failures counter"));
        assert!(text.contains("rookery_auth_failures_total 3"));
    }

    #[test]
    fn logins_are_counted_by_mechanism() {
        let before = |m: &str| {
            let i = MECHANISMS.iter().position(|x| *x == m).expect("listed");
            (
                LOGINS[i][0].load(Ordering::Relaxed),
                LOGINS[i][1].load(Ordering::Relaxed),
            )
        };
        let (ok, _) = before("SCRAM-SHA-256");
        let (_, unknown) = before("unknown");
        login("SCRAM-SHA-256", true);
        login("(none)", false);
        assert_eq!(before("SCRAM-SHA-256").0, ok + 1);
        assert_eq!(before("unknown").1, unknown + 1);
        // Every mechanism the server offers has its own label.
        let names = rookery_sasl::Mechanism::ALL
            .iter()
            .map(|m| m.name())
            .chain(rookery_sasl::ht::HtMechanism::ALL.iter().map(|m| m.name()));
        for name in names {
            assert!(MECHANISMS.contains(&name), "{name}");
        }
    }

    #[test]
    fn access_is_by_address_or_network() {
        let config = MetricsConfig {
            allowed: vec!["127.0.0.1".into(), "::1".into(), "10.0.0.0/8".into()],
            ..MetricsConfig::default()
        };
        let nets = config.networks().expect("valid");
        for ok in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.2.3.4"] {
            assert!(allowed_to_read(&nets, ok.parse().expect("ip")), "{ok}");
        }
        for no in ["127.0.0.2", "192.0.2.1", "::2"] {
            assert!(!allowed_to_read(&nets, no.parse().expect("ip")), "{no}");
        }
        assert!(!allowed_to_read(&[], "127.0.0.1".parse().expect("ip")));
        let bad = MetricsConfig {
            allowed: vec!["localhost".into()],
            ..MetricsConfig::default()
        };
        let e = bad.validate("metrics").expect_err("refused").to_string();
        assert!(e.contains("metrics.allowed"), "{e}");
        MetricsConfig::default()
            .validate("metrics")
            .expect("the default is valid");
    }

    #[test]
    fn the_own_listener_is_loopback_unless_configured() {
        let mut config = MetricsConfig::default();
        // With an HTTP listener, no new port.
        assert_eq!(own_listener(&config, true), None);
        // Without one, loopback only, and not fatal if taken.
        let (a, chosen) = own_listener(&config, false).expect("a listener");
        assert!(a.ip().is_loopback(), "{a}");
        assert_eq!(chosen, Chosen::Default);
        config.address = Some("192.0.2.7:9100".parse().expect("addr"));
        assert_eq!(
            own_listener(&config, true),
            Some(("192.0.2.7:9100".parse().expect("addr"), Chosen::Configured))
        );
        config.enabled = false;
        assert_eq!(own_listener(&config, false), None);
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        let p = ProcessStats::read();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(p.resident_memory_bytes.is_some_and(|b| b > 0), "{p:?}");
            assert!(p.open_fds.is_some_and(|n| n > 0), "{p:?}");
            assert!(p.cpu_seconds.is_some(), "{p:?}");
            assert!(p.threads.is_some_and(|n| n >= 1), "{p:?}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64();
            let start = p.start_time_seconds.expect("start time");
            assert!(
                start <= now + 1.0 && start > now - 86400.0 * 365.0,
                "{start}"
            );
        }
    }
}
