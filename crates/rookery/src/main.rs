//! The `rookery` binary: command line, logging, and wiring the crates together.

mod admin;
mod pie;
mod prosody;
mod reload;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use rookery_core::config::StorageBackend;
use rookery_core::{Config, Server};
use rookery_stanza::BareJid;
use rookery_storage::Storage;
use rookery_storage_sqlite::SqliteBackend;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Iterations for newly stored SCRAM records (RFC 7677 recommends at least 4096).
const SCRAM_ITERATIONS: u32 = 4096;
/// How long a graceful stop waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "rookery", version, about = "Rookery, an XMPP server")]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded default is used: domain localhost,
    /// ports 5222/5223 (XMPP) and 5443 (HTTPS: WebSocket) on loopback, data in ./rookery-data.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Say on stderr which configuration and database the command uses.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT (SIGHUP re-reads certificates and log level).
    Serve,
    /// Validate the configuration and certificates without starting.
    Check,
    /// List the modules of this build and the specifications implemented, as Markdown.
    Modules {
        /// Instead, list what this build does not implement yet.
        #[arg(long)]
        missing: bool,
    },
    /// List the sessions of the running server (optionally of one domain).
    Sessions { domain: Option<String> },
    /// Print the running server's counters: limits hit, sessions, resumptions.
    Stats,
    /// Make the running server re-read its configuration and certificates (as SIGHUP does)
    /// and print what it applied; exits 1 if the file is invalid (nothing is applied then).
    Reload,
    /// Write every account with its data (or those of one domain) to stdout as one XEP-0227
    /// document: SCRAM records, roster, pending subscription requests, vCard, private XML,
    /// offline messages, PEP nodes. Reads only; works while the server runs.
    Export { domain: Option<String> },
    /// Create the accounts of a XEP-0227 document (also the older form with plaintext
    /// passwords, which become SCRAM records), or with --prosody of a Prosody data directory.
    /// Everything is checked first: a refused import changes nothing.
    Import {
        /// The document, or with --prosody the directory.
        #[arg(value_name = "FILE|DIR")]
        file: PathBuf,
        /// Read a Prosody data directory (internal storage: accounts with their SCRAM-SHA-1
        /// records or passwords, rosters, vCards, private XML, offline messages).
        #[arg(long)]
        prosody: bool,
        /// Leave accounts that already exist as they are and import the others (without it,
        /// an existing account refuses the whole document).
        #[arg(long)]
        skip_existing: bool,
    },
    /// Manage accounts (works while the server runs).
    #[command(subcommand)]
    User(UserCommand),
    /// The message of the day (XEP-0133): sent to each account once, at its next login, and
    /// at once to the accounts online when it is set (works while the server runs).
    #[command(subcommand)]
    Motd(MotdCommand),
    /// List a host's administrators: those of the configuration (`config`) and those added
    /// over XMPP with the edit-admin command (`added`).
    Admins {
        /// The host (needed when the server serves several).
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
enum MotdCommand {
    /// Set the message of the day: the TEXT argument, or stdin when it is absent.
    Set {
        text: Option<String>,
        /// The host (needed when the server serves several).
        #[arg(long)]
        host: Option<String>,
    },
    /// Print the message of the day (nothing, and a note on stderr, when there is none).
    Show {
        #[arg(long)]
        host: Option<String>,
    },
    /// Delete the message of the day.
    Delete {
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account. The password comes from --password, a prompt on a terminal (asked
    /// twice, not echoed) or the first line of stdin.
    Add {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Change an account's password (from --password, a prompt, or the first line of stdin).
    Passwd {
        jid: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Delete an account.
    Delete { jid: String },
    /// Disable an account: its sessions end and it cannot log in until enabled again; its
    /// data is kept and it still receives messages (stored offline).
    Disable { jid: String },
    /// Enable a disabled account again.
    Enable { jid: String },
    /// List accounts, one bare JID per line.
    List {
        /// Only this domain.
        domain: Option<String>,
    },
}

/// The build's modules, with the client stream's configuration sections.
pub(crate) fn registry() -> rookery_core::ModuleRegistry {
    rookery_net::with_stream_sections(rookery_modules::registry())
}

/// mimalloc instead of glibc's malloc: the server allocates and frees many small,
/// short-lived buffers on every delivery (a stanza's copy header, TLS records, queue
/// blocks), which glibc serves with locks and periodic consolidation, and keeps what a
/// burst freed (a connection flood, a room's join storm) as resident memory; mimalloc's
/// per-thread free lists are cheaper, and it returns freed pages to the system. Built
/// without transparent huge pages (`no_thp`): with them, each thread's 2 MiB pages made an
/// idle session cost a third more resident memory than with glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Everything the server writes (database, WAL files, generated keys, the admin socket,
    // the data directory) is for its own user only.
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rookery: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Modules { missing } = cli.command {
        if missing {
            print!("{}", missing_markdown());
        } else {
            print!("{}", modules_markdown());
        }
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref(), &crate::registry())?;
    if cli.verbose {
        for line in describe(cli.config.as_deref(), &config) {
            eprintln!("rookery: {line}");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(short_time_slice)
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve => {
            let log = init_logging(&config.log_level);
            rt.block_on(serve(config, cli.config, log))
        }
        Command::Check => {
            // A server already running with this configuration holds its own ports: that is
            // not an error (checking before a restart is what operators do).
            let running = rt.block_on(admin::request(&config, "stats"))?.is_some();
            let database = rt.block_on(check_database(&config))?;
            check(cli.config.as_deref(), &config, running, database)
        }
        Command::Modules { .. } => Ok(()),
        Command::Stats => rt.block_on(async {
            match admin::request(&config, "stats").await? {
                Some(out) => {
                    print!("{out}");
                    Ok(())
                }
                None => bail!(
                    "the server is not running (no admin socket in {})",
                    config.data_dir.display()
                ),
            }
        }),
        Command::Reload => rt.block_on(async {
            match admin::request(&config, "reload").await? {
                Some(out) => match out.strip_prefix("error: ") {
                    Some(e) => bail!("{}", e.trim_end()),
                    None => {
                        print!("{out}");
                        Ok(())
                    }
                },
                None => bail!(
                    "the server is not running (no admin socket in {})",
                    config.data_dir.display()
                ),
            }
        }),
        Command::Sessions { domain } => rt.block_on(async {
            let line = format!("sessions {}", domain.unwrap_or_default());
            match admin::request(&config, line.trim()).await? {
                Some(out) => {
                    print!("{out}");
                    Ok(())
                }
                None => bail!(
                    "the server is not running (no admin socket in {})",
                    config.data_dir.display()
                ),
            }
        }),
        Command::User(cmd) => rt.block_on(user(&config, cmd)),
        Command::Motd(cmd) => rt.block_on(motd(&config, cmd)),
        Command::Admins { host } => rt.block_on(admins(&config, host)),
        Command::Export { domain } => rt.block_on(export(&config, domain)),
        Command::Import {
            file,
            prosody,
            skip_existing,
        } => rt.block_on(import(&config, &file, prosody, skip_existing)),
    }
}

/// What an XMPP server is expected to offer and this build does not yet, by area, with the
/// specifications involved. The README's status section is generated from it, and a test
/// fails when a specification listed here appears among the implemented ones, so the list
/// cannot silently go stale.
pub const MISSING: &[(&str, &str, &[&str])] = &[(
    "Operations",
    "reload of the module settings read at start (MUC, PubSub, upload, TURN, push, SASL, federation...) and of a kept host's module list (a restart applies them)",
    &[],
)];

/// What the command line itself implements (`rookery export` and `rookery import`).
const COMMAND_SPECS: &[rookery_core::Spec] = &[rookery_core::Spec {
    id: "XEP-0227",
    title: "Portable Import/Export Format for XMPP-IM Servers",
    version: "1.1",
}];

/// The README's "not yet" table, generated from [`MISSING`].
fn missing_markdown() -> String {
    let mut out = String::from("| area | what is missing | specifications |\n|---|---|---|\n");
    for (area, what, specs) in MISSING {
        out.push_str(&format!("| {area} | {what} | {} |\n", specs.join(", ")));
    }
    out
}

/// The table of supported specifications the README carries, generated from the code.
fn modules_markdown() -> String {
    let mut out = String::from("| module | specification | title | version |\n|---|---|---|---|\n");
    let version = |v: &str| {
        if v.is_empty() {
            "—".to_owned()
        } else {
            v.to_owned()
        }
    };
    for s in rookery_net::SPECS.iter().chain(COMMAND_SPECS) {
        out.push_str(&format!(
            "| (core) | {} | {} | {} |\n",
            s.id,
            s.title,
            version(s.version)
        ));
    }
    for m in crate::registry().modules() {
        for s in m.specs {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                m.name,
                s.id,
                s.title,
                version(s.version)
            ));
        }
    }
    out
}

/// Logs to stderr, coloured only on a terminal (escape codes would litter files and
/// journals). The filter sits behind a reload layer so SIGHUP can change the log level.
fn init_logging(level: &str) -> reload::LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, from_env) = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => (f, true),
        Err(_) => (
            reload::filter_for(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
            false,
        ),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    reload::LogFilter::new(handle, from_env)
}

/// Which configuration and database a command uses, one line each, with absolute paths: the
/// embedded default resolves paths against the working directory, which is easy to forget.
fn describe(file: Option<&Path>, config: &Config) -> Vec<String> {
    let configuration = match file {
        Some(f) => format!("configuration: {}", absolute(f).display()),
        None => "configuration: the embedded default (no --config given)".to_owned(),
    };
    let storage = match config.storage.backend {
        StorageBackend::Memory => "database: none (storage.backend = \"memory\")".to_owned(),
        StorageBackend::Postgresql => format!(
            "database: PostgreSQL {}",
            rookery_storage_postgres::describe_url(config.storage.url.as_deref().unwrap_or(""))
        ),
        StorageBackend::Sqlite => {
            let db = absolute(&config.database_path());
            let state = if db.exists() {
                ""
            } else {
                " (does not exist yet)"
            };
            format!("database: {}{state}", db.display())
        }
    };
    vec![
        configuration,
        format!("data directory: {}", absolute(&config.data_dir).display()),
        storage,
    ]
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Creates a directory (and its parents) readable by its owner only; an existing one is left
/// as it is.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Whether a command may create the database when it does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    /// The server and `user add`: a new installation starts with an empty database.
    Yes,
    /// Commands that read or change existing accounts: a missing database means the command
    /// is looking in the wrong place, which must not be answered by making an empty one.
    No,
}

/// Whether the database exists already. A PostgreSQL database is made by its administrator,
/// so it always counts as existing (its tables are created by the first open).
fn database_exists(config: &Config) -> bool {
    match config.storage.backend {
        StorageBackend::Sqlite => config.database_path().exists(),
        StorageBackend::Memory | StorageBackend::Postgresql => true,
    }
}

async fn open_storage(config: &Config, create: Create) -> Result<Storage> {
    match config.storage.backend {
        StorageBackend::Memory => Ok(Storage::memory()),
        StorageBackend::Postgresql => {
            let url = config.storage.url.clone().unwrap_or_default();
            let db =
                rookery_storage_postgres::PgBackend::open(&rookery_storage_postgres::PgOptions {
                    pool_size: config.storage.pool_size,
                    ..rookery_storage_postgres::PgOptions::new(url.clone())
                })
                .await
                .with_context(|| {
                    format!(
                        "cannot open the PostgreSQL database {}",
                        rookery_storage_postgres::describe_url(&url)
                    )
                })?;
            Ok(db.storage())
        }
        StorageBackend::Sqlite => {
            let path = config.database_path();
            if !path.exists() {
                if create == Create::No {
                    bail!(
                        "there is no database at {}: the server has not run with this \
                         configuration{}. Give the server's configuration with --config FILE",
                        absolute(&path).display(),
                        if config.storage.path.is_none() {
                            " (data_dir is relative to the working directory without --config)"
                        } else {
                            ""
                        }
                    );
                }
                if let Some(dir) = path.parent() {
                    create_private_dir(dir)?;
                }
            }
            let db = SqliteBackend::open(&path)
                .with_context(|| format!("cannot open the database {}", path.display()))?;
            Ok(db.storage())
        }
    }
}

/// The time slice the runtime's threads ask the scheduler for (Linux 6.12 and later;
/// 100 µs is the shortest it grants). Under EEVDF a thread woken on a busy core preempts the
/// running one at once only if it asked for a shorter slice; otherwise it waits until that
/// one has run its slice, milliseconds. The runtime's threads wake for every stanza and run
/// briefly, while the storage threads (the archive writer, the checkpointer) run long: with
/// the default slice, their turns were the tail of message latency at a steady rate with
/// the archive on. On older kernels the call fails and nothing changes; a thread started
/// under another policy (real-time, set by the operator) keeps it.
fn short_time_slice() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getscheduler on the calling thread (pid 0) takes no pointers.
        if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
            return;
        }
        /// `struct sched_attr` as of Linux 3.14 (`SCHED_ATTR_SIZE_VER0`); libc has no binding.
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            policy: u32,
            flags: u64,
            nice: i32,
            priority: u32,
            runtime: u64,
            deadline: u64,
            period: u64,
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_OTHER as u32,
            flags: 0,
            nice: 0,
            priority: 0,
            runtime: 100_000,
            deadline: 0,
            period: 0,
        };
        // SAFETY: sched_setattr(2) on the calling thread (pid 0) reads `attr`, which lives
        // for the call and has the layout and size the kernel expects for its `size`.
        unsafe {
            libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
        }
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>, log: reload::LogFilter) -> Result<()> {
    // Watched before anything else: a signal that arrived before its handler would get the
    // default action, which for SIGHUP is to die.
    let mut signals = Signals::new()?;
    create_private_dir(&config.data_dir)?;
    // Every store call is timed for the metrics, whatever the backend.
    let storage = rookery_storage::timed::timed(open_storage(&config, Create::Yes).await?);
    let tls = rookery_net::tls::TlsContext::load(&config, true)?;
    let server = Server::new(config, storage, &crate::registry())?;
    let reloader = Arc::new(reload::Reloader::new(
        config_path,
        tls.clone(),
        log,
        server.clone(),
    ));
    let listeners = rookery_net::bind_all(&server).await?;
    rookery_net::serve(server.clone(), tls, listeners);
    admin::serve(server.clone(), reloader.clone())?;
    server.tasks().spawn(log_counters(server.clone()));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        hosts = ?server.config().hosts.iter().map(|h| &h.domain).collect::<Vec<_>>(),
        "Rookery started"
    );

    while let Signal::Reload = signals.next().await {
        // File reads and parsing, on the thread that only waits for signals: no connection
        // waits for it. The outcome is logged.
        let _ = reloader.reload();
    }
    tracing::info!(
        sessions = server.sessions().count(),
        "stopping: closing every stream"
    );
    server.shutdown_token().cancel();
    server.tasks().close();
    if tokio::time::timeout(SHUTDOWN_GRACE, server.tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Logs the counters that changed in the last minute (limits hit, resumptions...), so an
/// operator sees in the log what the server refused and why.
async fn log_counters(server: Arc<Server>) {
    let mut last = rookery_core::counters::snapshot();
    let shutdown = server.shutdown_token().clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let now = rookery_core::counters::snapshot();
        let changed: Vec<String> = now
            .iter()
            .zip(&last)
            .filter(|((_, v), (_, old))| v != old)
            .map(|((name, v), (_, old))| format!("{name}=+{} ({v})", v - old))
            .collect();
        if !changed.is_empty() {
            tracing::info!(
                target: "rookery::counters",
                sessions = server.sessions().count(),
                "counters: {}",
                changed.join(" ")
            );
        }
        last = now;
    }
}

enum Signal {
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
    /// SIGHUP: reload what can be reloaded.
    Reload,
}

/// The signals `serve` acts on, watched for the life of the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// A PostgreSQL database is checked by connecting to it (without changing it): an
/// unreachable database or a schema newer than this build is an error, as it would be for
/// `serve`; otherwise one line with the server's and the schema's versions. None for the
/// other backends.
async fn check_database(config: &Config) -> Result<Option<String>> {
    if config.storage.backend != StorageBackend::Postgresql {
        return Ok(None);
    }
    let url = config.storage.url.as_deref().unwrap_or("");
    let probe = rookery_storage_postgres::probe(url)
        .await
        .with_context(|| {
            format!(
                "storage.url: cannot reach the PostgreSQL database {}",
                rookery_storage_postgres::describe_url(url)
            )
        })?;
    let supported = rookery_storage_postgres::SCHEMA_VERSION;
    let schema = match probe.schema_version {
        None | Some(0) => "no schema yet (the server creates it when it starts)".to_owned(),
        Some(v) if v > supported => bail!(
            "the PostgreSQL database has schema version {v}, newer than this build supports \
             ({supported})"
        ),
        Some(v) if v < supported => {
            format!("schema version {v} (the server migrates it to {supported} when it starts)")
        }
        Some(v) => format!("schema version {v}"),
    };
    let tls = match &probe.tls {
        Some(version) => format!("TLS {version} (sslmode={})", probe.tls_mode.as_str()),
        None => format!("no TLS (sslmode={})", probe.tls_mode.as_str()),
    };
    Ok(Some(format!(
        "database reachable: PostgreSQL {}, {schema}, {tls}",
        probe.server_version
    )))
}

/// Everything `serve` would refuse, checked before anything is printed: modules, certificates
/// and whether the listeners' addresses can be bound now.
fn check(
    file: Option<&Path>,
    config: &Config,
    running: bool,
    database: Option<String>,
) -> Result<()> {
    let registry = crate::registry();
    let mut hosts = Vec::new();
    for h in &config.hosts {
        let modules = registry.resolve(&h.domain, h.modules.as_deref())?;
        hosts.push(format!(
            "host {}: modules {}",
            h.domain,
            modules
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    rookery_net::tls::TlsContext::load(config, false)?;
    let mut notes = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        // Bound and released at once: the port is free now (it may be taken before `serve`
        // starts, but a port another process holds is the common mistake this catches).
        match std::net::TcpListener::bind(l.address) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && running => notes.push(format!(
                "listener {:?} on {}: in use by the Rookery running with this configuration",
                l.kind, l.address
            )),
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another process listens there: stop it or choose another port)"
                } else {
                    ""
                };
                bail!(
                    "listener[{i}].address: cannot listen on {}: {e}{hint}",
                    l.address
                );
            }
        }
    }
    for line in describe(file, config) {
        println!("{line}");
    }
    if let Some(line) = database {
        println!("{line}");
    }
    for line in hosts {
        println!("{line}");
    }
    for l in &config.listeners {
        println!("listener {:?} on {}", l.kind, l.address);
    }
    for note in notes {
        println!("{note}");
    }
    println!("configuration OK");
    Ok(())
}

/// Reads a new password for `jid`: from the flag, else from a prompt when stdin is a
/// terminal (not echoed, asked twice), else from the first line of stdin. The password
/// policy (`limits.min_password_length`) applies to all three.
fn password(config: &Config, jid: &str, flag: Option<String>) -> Result<String> {
    let pw = match flag {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password(format!("New password for {jid}: "))
                .context("cannot read the password from the terminal")?;
            if let Some(problem) = config.limits.password_problem(&first) {
                bail!("{problem} (limits.min_password_length)");
            }
            let again = rpassword::prompt_password("Repeat the password: ")
                .context("cannot read the password from the terminal")?;
            if first != again {
                bail!("the two passwords differ; nothing was changed");
            }
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if let Some(problem) = config.limits.password_problem(&pw) {
        bail!("{problem} (limits.min_password_length)");
    }
    Ok(pw)
}

/// Parses `user@domain` and checks the domain is served.
fn account(config: &Config, jid: &str) -> Result<(String, String)> {
    let j = BareJid::new(jid).map_err(|e| anyhow!("'{jid}' is not a valid JID: {e}"))?;
    if !rookery_stanza::is_stable(&j.clone().into()) {
        bail!(
            "'{jid}' is not a valid JID: it contains characters whose normalisation is ambiguous"
        );
    }
    let node = j
        .node()
        .ok_or_else(|| anyhow!("'{jid}' has no user part (expected user@domain)"))?;
    let domain = j.domain().to_string();
    if config.host(&domain).is_none() {
        bail!("{domain} is not a domain this server serves");
    }
    Ok((node.to_string(), domain))
}

async fn export(config: &Config, domain: Option<String>) -> Result<()> {
    if config.storage.backend == StorageBackend::Memory {
        bail!("the memory storage backend keeps no accounts between runs");
    }
    if let Some(d) = &domain {
        if config.host(d).is_none() {
            bail!("{d} is not a domain this server serves");
        }
    }
    let storage = open_storage(config, Create::No).await?;
    let doc = pie::export(&storage, domain.as_deref()).await?;
    let xml = pie::to_xml(&doc);
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(xml.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the document to stdout")?;
    let accounts: usize = doc.hosts.iter().map(|h| h.accounts.len()).sum();
    eprintln!("rookery: exported {accounts} accounts");
    Ok(())
}

async fn import(config: &Config, file: &Path, prosody: bool, skip_existing: bool) -> Result<()> {
    if config.storage.backend == StorageBackend::Memory {
        bail!("the memory storage backend keeps no accounts between runs");
    }
    // The whole document is read and validated, then checked against the configuration and
    // the database, before anything is written: a refused document changes nothing.
    let doc = if prosody {
        prosody::read(file)?
    } else {
        pie::read(file)?
    };
    for s in &doc.skipped {
        eprintln!("rookery: skipped {s} (not kept by this server)");
    }
    let existed = database_exists(config);
    let storage = open_storage(config, Create::Yes).await?;
    let existing = if skip_existing {
        pie::Existing::Skip
    } else {
        pie::Existing::Refuse
    };
    let checked = pie::check(config, &storage, &doc, existing).await;
    let skip = match checked {
        Ok(skip) => skip,
        Err(e) => {
            drop(storage);
            if !existed {
                // A database this command created for a refused document is removed again.
                let db = config.database_path();
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = db.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(e);
        }
    };
    let mut skipped: Vec<String> = skip.iter().map(|(d, n)| format!("{n}@{d}")).collect();
    skipped.sort();
    for s in &skipped {
        eprintln!("rookery: {s} already exists: left as it is");
    }
    let created = pie::write(&storage, &doc, &skip).await?;
    // Logins look up the record of the mechanism's hash: an account imported without one
    // (ejabberd keeps SHA-1 only) cannot log in with that mechanism until its password is set.
    let partial: Vec<String> = doc
        .hosts
        .iter()
        .flat_map(|h| h.accounts.iter().map(move |a| (h, a)))
        .filter(|(h, a)| {
            !skip.contains(&(h.domain.clone(), a.node.clone()))
                && a.credentials.len() < rookery_sasl::HashAlg::ALL.len()
        })
        .map(|(h, a)| {
            let hashes: Vec<&str> = a.credentials.iter().map(|c| c.hash.name()).collect();
            format!("{}@{} ({})", a.node, h.domain, hashes.join(", "))
        })
        .collect();
    if !partial.is_empty() {
        // A whole server's accounts (Prosody keeps SHA-1 only) would make a line of
        // thousands of names: the first ones say enough.
        const NAMED: usize = 20;
        let more = partial.len().saturating_sub(NAMED);
        eprintln!(
            "rookery: warning: {} accounts have SCRAM records for some hashes only, and log in \
             only with those mechanisms until their password is changed: {}{}",
            partial.len(),
            partial[..partial.len().min(NAMED)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    println!(
        "imported {created} accounts{}",
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} existing skipped)", skipped.len())
        }
    );
    Ok(())
}

/// `rookery user disable|enable`: a running server does it itself, as the disable-user and
/// reenable-user commands do (disabling ends the account's sessions); without one the flag
/// is written to the database by the same operation.
async fn toggle_account(config: &Config, jid: &str, disable: bool) -> Result<()> {
    let (node, domain) = account(config, jid)?;
    let user = BareJid::new(&format!("{node}@{domain}"))?;
    let line = format!("{} {user}", if disable { "disable" } else { "enable" });
    let exists = match admin::request(config, &line).await? {
        Some(reply) => match reply.trim() {
            "done" => true,
            "missing" => false,
            other => bail!(
                "the server could not change {user}: {}",
                other.trim_start_matches("error: ")
            ),
        },
        None => {
            rookery_modules::admin::ops::store_disabled(
                &open_user_storage(config, Create::No).await?,
                &user,
                disable,
            )
            .await?
        }
    };
    if !exists {
        bail!("{user} does not exist");
    }
    println!("{} {user}", if disable { "disabled" } else { "enabled" });
    Ok(())
}

/// The host a command is about: `--host`, or the only one the configuration serves.
fn one_host(config: &Config, host: Option<String>) -> Result<String> {
    match host {
        Some(h) => {
            if config.host(&h).is_none() {
                bail!("{h} is not a domain this server serves");
            }
            Ok(h)
        }
        None => match config.hosts.as_slice() {
            [only] => Ok(only.domain.clone()),
            hosts => bail!(
                "the server serves {} domains: name one with --host ({})",
                hosts.len(),
                hosts
                    .iter()
                    .map(|h| h.domain.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Commands on the database need one that keeps data.
fn persistent(config: &Config) -> Result<()> {
    if config.storage.backend == StorageBackend::Memory {
        bail!("the memory storage backend keeps nothing between runs");
    }
    Ok(())
}

async fn motd(config: &Config, cmd: MotdCommand) -> Result<()> {
    use rookery_modules::admin::ops;
    persistent(config)?;
    match cmd {
        MotdCommand::Set { text, host } => {
            let domain = one_host(config, host)?;
            let text = match text {
                Some(t) => t,
                None => {
                    use std::io::Read;
                    let mut t = String::new();
                    std::io::stdin()
                        .take(ops::MAX_MESSAGE as u64 + 1)
                        .read_to_string(&mut t)
                        .context("cannot read the message from stdin")?;
                    t.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            // Checked here too, so an oversized text is never sent to the server's socket.
            ops::check_message(&text)?;
            match admin::request_with_body(config, &format!("motd-set {domain}"), Some(&text))
                .await?
            {
                Some(reply) => match reply.trim().strip_prefix("sent ") {
                    Some(n) => {
                        println!("message of the day of {domain} set; sent to {n} online sessions")
                    }
                    None => bail!(
                        "the server could not set it: {}",
                        reply.trim().trim_start_matches("error: ")
                    ),
                },
                None => {
                    ops::store_motd(&open_storage(config, Create::No).await?, &domain, &text)
                        .await?;
                    tracing::info!(target: "rookery::admin", actor = "rookery CLI", domain, "message of the day set");
                    println!("message of the day of {domain} set");
                }
            }
        }
        MotdCommand::Show { host } => {
            let domain = one_host(config, host)?;
            let text = match admin::request(config, &format!("motd {domain}")).await? {
                Some(reply) => match reply.split_once('\n') {
                    Some(("motd", text)) => Some(text.to_owned()),
                    Some(("none", _)) => None,
                    _ => bail!("the server could not read it: {}", reply.trim()),
                },
                None => ops::stored_motd(&open_storage(config, Create::No).await?, &domain)
                    .await?
                    .map(|m| m.text),
            };
            match text {
                Some(t) => println!("{t}"),
                None => eprintln!("rookery: {domain} has no message of the day"),
            }
        }
        MotdCommand::Delete { host } => {
            let domain = one_host(config, host)?;
            let had = match admin::request(config, &format!("motd-delete {domain}")).await? {
                Some(reply) => match reply.trim() {
                    "deleted" => true,
                    "missing" => false,
                    other => bail!(
                        "the server could not delete it: {}",
                        other.trim_start_matches("error: ")
                    ),
                },
                None => {
                    ops::store_delete_motd(&open_storage(config, Create::No).await?, &domain)
                        .await?
                }
            };
            if had {
                println!("message of the day of {domain} deleted");
            } else {
                eprintln!("rookery: {domain} has no message of the day");
            }
        }
    }
    Ok(())
}

async fn admins(config: &Config, host: Option<String>) -> Result<()> {
    let domain = one_host(config, host)?;
    let out = match admin::request(config, &format!("admins {domain}")).await? {
        Some(reply) if reply.starts_with("error: ") => {
            bail!("{}", reply.trim().trim_start_matches("error: "))
        }
        Some(reply) => reply,
        None => {
            let fixed = admin::configured_admins(config, &domain);
            let added = if config.storage.backend == StorageBackend::Memory
                || !config.database_path().exists()
            {
                Vec::new()
            } else {
                rookery_modules::admin::ops::stored_admins(
                    &open_storage(config, Create::No).await?,
                    &domain,
                )
                .await?
            };
            admin::admin_lines(&fixed, &added)
        }
    };
    if out.is_empty() {
        eprintln!("rookery: {domain} has no administrators");
    }
    print!("{out}");
    Ok(())
}

/// The storage of a `rookery user` command, warning when it had to create the database.
async fn open_user_storage(config: &Config, create: Create) -> Result<Storage> {
    let existed = database_exists(config);
    let storage = open_storage(config, create).await?;
    if !existed {
        eprintln!(
            "rookery: warning: created a new, empty database at {}: if the server uses \
             another configuration, give it with --config FILE",
            absolute(&config.database_path()).display()
        );
    }
    Ok(storage)
}

/// The database a command used, for messages: the SQLite file or the PostgreSQL URL
/// (without its password).
fn database_name(config: &Config) -> String {
    match config.storage.backend {
        StorageBackend::Postgresql => format!(
            "the PostgreSQL database {}",
            rookery_storage_postgres::describe_url(config.storage.url.as_deref().unwrap_or(""))
        ),
        _ => absolute(&config.database_path()).display().to_string(),
    }
}

async fn user(config: &Config, cmd: UserCommand) -> Result<()> {
    if config.storage.backend == StorageBackend::Memory {
        bail!("the memory storage backend keeps no accounts between runs");
    }
    // Arguments are checked before the database is opened, so a refused command changes
    // nothing on disk.
    let open = |create: Create| open_user_storage(config, create);
    match cmd {
        UserCommand::Add { jid, password: pw } => {
            let (node, domain) = account(config, &jid)?;
            let creds = rookery_sasl::generate_all(&password(config, &jid, pw)?, SCRAM_ITERATIONS)?;
            open(Create::Yes)
                .await?
                .accounts
                .create_account(&domain, &node, &creds)
                .await
                .map_err(|e| match e {
                    rookery_storage::StorageError::AlreadyExists => {
                        anyhow!("{node}@{domain} already exists")
                    }
                    e => e.into(),
                })?;
            println!("created {node}@{domain}");
        }
        UserCommand::Passwd { jid, password: pw } => {
            let (node, domain) = account(config, &jid)?;
            let storage = open(Create::No).await?;
            if !storage.accounts.account_exists(&domain, &node).await? {
                bail!("{node}@{domain} does not exist");
            }
            let creds = rookery_sasl::generate_all(&password(config, &jid, pw)?, SCRAM_ITERATIONS)?;
            // Also revokes the account's FAST tokens.
            storage
                .change_password(&domain, &node, &creds)
                .await
                .map_err(|e| match e {
                    rookery_storage::StorageError::NotFound => {
                        anyhow!("{node}@{domain} does not exist")
                    }
                    e => e.into(),
                })?;
            println!("password changed for {node}@{domain}");
        }
        UserCommand::Delete { jid } => {
            let (node, domain) = account(config, &jid)?;
            // A running server deletes it itself, as its administrators' command and in-band
            // cancellation do: contacts told (subscriptions cancelled), sessions closed.
            match admin::request(config, &format!("delete {node}@{domain}")).await? {
                Some(reply) => match reply.trim() {
                    "deleted" => {}
                    "missing" => bail!("{node}@{domain} does not exist"),
                    other => bail!(
                        "the server could not delete {node}@{domain}: {}",
                        other.trim_start_matches("error: ")
                    ),
                },
                None => {
                    if !open(Create::No)
                        .await?
                        .accounts
                        .delete_account(&domain, &node)
                        .await?
                    {
                        bail!("{node}@{domain} does not exist");
                    }
                }
            }
            println!("deleted {node}@{domain} and all its data");
        }
        UserCommand::Disable { jid } => toggle_account(config, &jid, true).await?,
        UserCommand::Enable { jid } => toggle_account(config, &jid, false).await?,
        UserCommand::List { domain } => {
            if let Some(d) = &domain {
                if config.host(d).is_none() {
                    bail!("{d} is not a domain this server serves");
                }
            }
            let list = open(Create::No)
                .await?
                .accounts
                .list_accounts(domain.as_deref())
                .await?;
            if list.is_empty() {
                eprintln!(
                    "rookery: warning: no accounts{} in {}",
                    domain
                        .as_deref()
                        .map(|d| format!(" of {d}"))
                        .unwrap_or_default(),
                    database_name(config)
                );
            }
            for (node, d) in list {
                println!("{node}@{d}");
            }
        }
    }
    Ok(())
}
