//! The scenarios, one module each, and what they share: the report and a bounded-concurrency
//! login of many sessions.

pub mod bosh;
pub mod fanout;
pub mod idle;
pub mod login;
pub mod mam;
pub mod messages;
pub mod muc;
pub mod pep;
pub mod register;
pub mod s2s;

use crate::client::{self, Conn, LoginOpts, LoginTimes, Target};
use crate::stats::{self, Errors, ProcSample};
use crate::web::WsConn;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A client session over one transport, as the scenarios that work the same on any (login,
/// idle) use it: TCP with TLS ([`Conn`]) or WebSocket ([`WsConn`]).
pub trait Session: Sized + Send + 'static {
    /// What the JSON output calls the transport.
    const TRANSPORT: &'static str;
    /// A full login as account `n` with this resource.
    fn login(
        t: &Target,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> impl Future<Output = client::Result<(Self, LoginTimes)>> + Send;
    /// Ends the session cleanly (bounded wait).
    fn close(self, wait: Duration) -> impl Future<Output = ()> + Send;
    /// Keeps the session open, answering the server's pings, until `stop` changes; false
    /// when the server ended it first. Closes it at the end.
    fn hold(self, stop: watch::Receiver<bool>) -> impl Future<Output = bool> + Send;
    /// The TLS protocol version and cipher suite (empty without TLS).
    fn tls_info(&self) -> (String, String);
}

impl Session for Conn {
    const TRANSPORT: &'static str = "tcp";
    async fn login(
        t: &Target,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> client::Result<(Self, LoginTimes)> {
        Conn::login(t, n, resource, opts).await
    }
    async fn close(self, wait: Duration) {
        Conn::close(self, wait).await
    }
    async fn hold(self, stop: watch::Receiver<bool>) -> bool {
        idle::hold(self, stop).await
    }
    fn tls_info(&self) -> (String, String) {
        Conn::tls_info(self)
    }
}

impl Session for WsConn {
    const TRANSPORT: &'static str = "websocket";
    async fn login(
        t: &Target,
        n: u64,
        resource: &str,
        opts: LoginOpts,
    ) -> client::Result<(Self, LoginTimes)> {
        WsConn::login(t, n, resource, opts).await
    }
    async fn close(self, wait: Duration) {
        WsConn::close(self, wait).await
    }
    async fn hold(self, stop: watch::Receiver<bool>) -> bool {
        WsConn::hold(self, stop).await
    }
    fn tls_info(&self) -> (String, String) {
        (String::new(), String::new())
    }
}

/// What a scenario hands back for the JSON output.
pub struct Report {
    pub params: Value,
    pub results: Value,
    /// Server CPU and memory over the measured phase (null without `--server-pid`).
    pub server: Value,
    /// The generator's own CPU over the measured phase.
    pub generator: Value,
    pub errors: Errors,
    pub ok: bool,
    /// One line for humans.
    pub summary: String,
}

impl Report {
    pub fn failed(params: Value, errors: Errors, summary: impl Into<String>) -> Self {
        Report {
            params,
            results: Value::Null,
            server: Value::Null,
            generator: Value::Null,
            errors,
            ok: false,
            summary: summary.into(),
        }
    }
}

/// Seconds allowed for closing handshakes at the end of a run.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Process samples of the server and of this generator at one moment.
#[derive(Clone, Copy)]
pub struct Mark {
    pub server: Option<ProcSample>,
    pub generator: Option<ProcSample>,
    pub at: std::time::Instant,
}

impl Mark {
    pub fn now(server_pid: Option<u32>) -> Self {
        Mark {
            server: stats::sample(server_pid),
            generator: stats::self_sample(),
            at: std::time::Instant::now(),
        }
    }

    /// (server JSON, generator JSON) for the interval from `self` to `later`.
    pub fn until(&self, later: &Mark) -> (Value, Value) {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let server = match stats::delta_json(self.server, later.server) {
            Value::Object(mut m) => {
                if let Some(cpu) = m.get("cpu_s").and_then(Value::as_f64) {
                    m.insert("wall_s".into(), json!(stats::round3(wall)));
                    m.insert(
                        "cpu_util".into(),
                        json!(stats::round3(if wall > 0.0 { cpu / wall } else { 0.0 })),
                    );
                }
                Value::Object(m)
            }
            v => v,
        };
        let generator = match (self.generator, later.generator) {
            (Some(a), Some(b)) => {
                let cpu = b.cpu_s - a.cpu_s;
                json!({
                    "cpu_s": stats::round3(cpu),
                    "wall_s": stats::round3(wall),
                    "cpu_util": stats::round3(if wall > 0.0 { cpu / wall } else { 0.0 }),
                })
            }
            _ => Value::Null,
        };
        (server, generator)
    }
}

/// Logs in the accounts `indices[i]` with `resources[i]`, `concurrency` at a time. Returns
/// the sessions in the order given (`None` for a failed login) and the failures.
pub async fn login_many(
    t: &Arc<Target>,
    indices: Vec<u64>,
    resource: impl Fn(usize) -> String,
    concurrency: usize,
    opts: LoginOpts,
) -> (Vec<Option<(Conn, LoginTimes)>>, Errors) {
    login_many_with::<Conn>(t, indices, resource, concurrency, opts).await
}

/// [`login_many`] over any transport.
pub async fn login_many_with<S: Session>(
    t: &Arc<Target>,
    indices: Vec<u64>,
    resource: impl Fn(usize) -> String,
    concurrency: usize,
    opts: LoginOpts,
) -> (Vec<Option<(S, LoginTimes)>>, Errors) {
    let n = indices.len();
    let indices = Arc::new(indices);
    let resources: Arc<Vec<String>> = Arc::new((0..n).map(resource).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (t, indices, resources, next) =
            (t.clone(), indices.clone(), resources.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            let mut errors = Errors::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= indices.len() {
                    break;
                }
                match S::login(&t, indices[i], &resources[i], opts).await {
                    Ok(c) => done.push((i, c)),
                    Err(e) => errors.add(e.kind, format!("account {}: {}", indices[i], e.detail)),
                }
            }
            (done, errors)
        });
    }
    let mut out: Vec<Option<(S, LoginTimes)>> = (0..n).map(|_| None).collect();
    let mut errors = Errors::default();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok((done, e)) => {
                for (i, c) in done {
                    out[i] = Some(c);
                }
                errors.merge(e);
            }
            Err(e) => errors.add("task", e.to_string()),
        }
    }
    (out, errors)
}

/// Closes sessions concurrently (bounded wait each).
pub async fn close_all(conns: Vec<Conn>) {
    let mut set = tokio::task::JoinSet::new();
    for c in conns {
        set.spawn(c.close(CLOSE_WAIT));
    }
    while set.join_next().await.is_some() {}
}
