//! A real PostgreSQL server for the tests: Debian's `postgresql` package, run from a
//! temporary directory (`initdb` + `pg_ctl`) on a free loopback port, with its unix
//! socket in that directory, and stopped (`pg_ctl stop -m immediate`) when the test binary
//! exits. One server is shared by the tests of a binary; each test gets its own database.
//!
//! A second server, started on demand by [`start_tls`], takes TLS only: `ssl = on` with a
//! certificate the test made, and `hostssl` lines only in `pg_hba.conf`, so a TCP
//! connection without TLS is refused.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the server's commands
//! run as the `postgres` system user (`runuser`), on a directory given to that user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The servers started; taken out and stopped at process exit.
static SERVERS: Mutex<Vec<Server>> = Mutex::new(Vec::new());
static STARTED: OnceLock<(u16, PathBuf)> = OnceLock::new();
static STARTED_TLS: OnceLock<TlsServer> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A running server; stopping it is its `Drop`.
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    // Removed after the server stopped (field order: dropped after `Drop::drop` ran).
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Server {
    fn command(&self, tool: &str) -> Command {
        command(&self.bin, tool, self.as_postgres)
    }
}

fn command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding the server's tools.
pub fn server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/<version>/bin/initdb): \
             these tests run a real PostgreSQL server; install Debian's `postgresql` package \
             (./test.sh does)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

extern "C" fn stop_at_exit() {
    if let Ok(mut s) = SERVERS.lock() {
        s.clear();
    }
}

/// A watcher that stops the server and removes its directory once this process is gone,
/// however it ended: killed on a timeout, the exit handler never runs.
fn watch(bin: &Path, data: &Path, dir: &Path, as_postgres: bool) {
    let stop = format!(
        "{}{} -D {} -m immediate -w stop",
        if as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        },
        bin.join("pg_ctl").display(),
        data.display()
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    // Not waited for: it outlives this process on purpose.
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Starts the shared server if it isn't running; returns its port and socket directory.
fn start() -> &'static (u16, PathBuf) {
    STARTED.get_or_init(|| start_server(None))
}

/// The certificate and key a TLS server is started with (PEM).
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The TLS-only server: its port, socket directory and the CA files of the tests.
pub struct TlsServer {
    pub port: u16,
    pub socket_dir: PathBuf,
    /// The CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the server presents.
    pub wrong_ca_file: PathBuf,
}

/// A CA and a leaf certificate it signed for `localhost` and 127.0.0.1.
fn make_pki() -> (String, ServerTls, String) {
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        let cert = p.self_signed(&key).expect("self-signed CA");
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("Rookery test CA");
    let (wrong_cert, _) = ca("Rookery other CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::from([
            127, 0, 0, 1,
        ])));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = p.signed_by(&key, &ca_cert, &ca_key).expect("leaf");
    (
        ca_cert.pem(),
        ServerTls {
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        },
        wrong_cert.pem(),
    )
}

/// Starts the TLS-only server if it isn't running.
pub fn start_tls() -> &'static TlsServer {
    STARTED_TLS.get_or_init(|| {
        let (ca, server, wrong) = make_pki();
        let (port, socket_dir) = start_server(Some(&server));
        let ca_file = socket_dir.join("ca.pem");
        let wrong_ca_file = socket_dir.join("wrong-ca.pem");
        std::fs::write(&ca_file, ca).expect("write CA");
        std::fs::write(&wrong_ca_file, wrong).expect("write CA");
        TlsServer {
            port,
            socket_dir,
            ca_file,
            wrong_ca_file,
        }
    })
}

/// Writes a file of the server's data directory, owned by the server's user, mode 0600
/// (PostgreSQL refuses a key file others can read).
fn write_private(path: &Path, text: &str, as_postgres: bool) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write server file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if as_postgres {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(path);
                c
            },
            "chown",
        );
    }
}

/// Starts a server (with TLS only when `tls` is given); returns its port and socket directory.
fn start_server(tls: Option<&ServerTls>) -> (u16, PathBuf) {
    let bin = server_bin();
    let as_postgres = is_root();
    let dir = tempfile::Builder::new()
        .prefix("rookery-pg-")
        .tempdir()
        .expect("tempdir");
    if as_postgres {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(dir.path());
                c
            },
            "chown",
        );
    }
    let data = dir.path().join("data");
    let mut initdb = command(&bin, "initdb", as_postgres);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync");
    run(initdb, "initdb");
    let mut tls_options = String::new();
    if let Some(tls) = tls {
        write_private(&data.join("server.crt"), &tls.cert_pem, as_postgres);
        write_private(&data.join("server.key"), &tls.key_pem, as_postgres);
        // TCP only with TLS; the unix socket (the harness's own admin connections) stays.
        write_private(
            &data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n",
            as_postgres,
        );
        tls_options = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
    }
    let port = free_port();
    let server = Server {
        bin: bin.clone(),
        data: data.clone(),
        as_postgres,
        _dir: dir,
    };
    let socket_dir = server._dir.path().to_path_buf();
    // fsync off (-F): test data need not survive a machine crash. A benchmark sets
    // ROOKERY_PG_FSYNC=1 to measure commits as a production server makes them.
    let fsync = if std::env::var_os("ROOKERY_PG_FSYNC").is_some() {
        ""
    } else {
        "-F "
    };
    let options = format!(
        "{fsync}-h 127.0.0.1 -p {port} -k {} -c max_connections=300{tls_options}",
        socket_dir.display()
    );
    let mut pg_ctl = server.command("pg_ctl");
    pg_ctl
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(socket_dir.join("server.log"))
        .args(["-w", "-t", "60", "-o", &options, "start"]);
    SERVERS.lock().expect("server lock").push(server);
    // SAFETY: registers a plain function to run at exit; it only stops the servers.
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(stop_at_exit);
    });
    run(pg_ctl, "pg_ctl start");
    watch(&bin, &data, &socket_dir, as_postgres);
    (port, socket_dir)
}

/// The URL of the shared server's `postgres` database.
pub fn admin_url() -> String {
    let (port, _) = start();
    format!("postgresql://postgres@127.0.0.1:{port}/postgres")
}

/// A new, empty database on the shared server; returns its URL.
pub async fn fresh_database() -> String {
    let (port, _) = start();
    let name = create_database(&admin_url()).await;
    format!("postgresql://postgres@127.0.0.1:{port}/{name}")
}

/// A new, empty database on the TLS-only server; returns its name (the tests write the
/// URLs, with their `sslmode`).
pub async fn fresh_tls_database() -> String {
    let s = start_tls();
    // Over the unix socket: TCP needs TLS there, and the harness connects without.
    create_database(&format!(
        "host={} port={} user=postgres dbname=postgres",
        s.socket_dir.display(),
        s.port
    ))
    .await
}

async fn create_database(admin: &str) -> String {
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .await
        .expect("create database");
    drop(client);
    let _ = task.await;
    name
}

/// A plain connection to a database (for inspecting or damaging rows).
pub async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connect");
    tokio::spawn(conn);
    client
}
