//! The configuration file (TOML), its defaults and its validation.
//!
//! Every struct denies unknown fields, so a typo is refused at start with the key's name and
//! position instead of being silently ignored. The top level, each `[[host]]` and `[limits]`
//! also hold the sections modules declare ([`crate::settings`]): a key there that neither the
//! core nor a module of the build knows is refused by name. Relative paths are resolved against the
//! directory of the configuration file (or the working directory for the embedded default).

use crate::module::ModuleRegistry;
use crate::settings::{Place, Read, Section, SectionDecl, Sections};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message and deliberately not a `source`: a caller that
    // prints the error chain would otherwise say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A bad value at `key` (`archive.max_page_size`, `host[0].contact`).
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

/// A key the core's structs skipped: a module's section, or a key nobody declares.
enum UnknownKey {
    Top(String),
    Host(usize, String),
    /// A key of a top-level table the core shares with modules (`[limits]`).
    InTable(String, String),
    Other(String),
}

impl UnknownKey {
    fn of(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        match path {
            Path::Map {
                parent: Path::Root,
                key,
            } => Self::Top(key.clone()),
            Path::Map {
                parent:
                    Path::Seq {
                        parent:
                            Path::Map {
                                parent: Path::Root,
                                key: table,
                            },
                        index,
                    },
                key,
            } if table == "host" => Self::Host(*index, key.clone()),
            Path::Map {
                parent:
                    Path::Map {
                        parent: Path::Root,
                        key: table,
                    },
                key,
            } => Self::InTable(table.clone(), key.clone()),
            _ => Self::Other(path.to_string()),
        }
    }
}

impl UnknownKey {
    /// The line (1-based) of the file where the key is, read from the TOML text's table
    /// headers and key lines: `serde_ignored` reports a key's path, not its place, and an
    /// operator should not have to search for it.
    fn line_in(&self, text: &str) -> Option<usize> {
        let mut table: Vec<String> = Vec::new();
        let mut host: Option<usize> = None;
        let parts = |s: &str| -> Vec<String> {
            s.split('.')
                .map(|p| p.trim().trim_matches('"').to_owned())
                .collect()
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let header = if let Some(rest) = line.strip_prefix("[[") {
                rest.split("]]").next()
            } else if let Some(rest) = line.strip_prefix('[') {
                rest.split(']').next()
            } else {
                None
            };
            let path = match header {
                Some(name) => {
                    table = parts(name);
                    if line.starts_with("[[") && table == ["host"] {
                        host = Some(host.map_or(0, |h| h + 1));
                    }
                    table.clone()
                }
                None => {
                    let Some((lhs, _)) = line.split_once('=') else {
                        continue;
                    };
                    let mut full = table.clone();
                    full.extend(parts(lhs));
                    full
                }
            };
            let found = match self {
                Self::Top(k) => path.first() == Some(k),
                Self::Host(i, k) => {
                    host == Some(*i) && path.len() >= 2 && path[0] == "host" && path[1] == *k
                }
                Self::InTable(t, k) => path.len() >= 2 && path[0] == *t && path[1] == *k,
                Self::Other(_) => false,
            };
            if found {
                return Some(n + 1);
            }
        }
        None
    }
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Top(k) | Self::Other(k) => f.write_str(k),
            Self::Host(i, k) => write!(f, "host[{i}].{k}"),
            Self::InTable(t, k) => write!(f, "{t}.{k}"),
        }
    }
}

// No `deny_unknown_fields` here and in `HostConfig`: modules' sections sit beside the core's
// keys, and `Config::from_toml` refuses what nobody declares.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the database and generated certificates live.
    pub data_dir: PathBuf,
    /// Default tracing filter: error, warn, info, debug, trace (or a full filter directive).
    pub log_level: String,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub messages: MessagesConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(rename = "host")]
    pub hosts: Vec<HostConfig>,
    /// The top-level sections modules declared, read and validated.
    #[serde(skip)]
    pub sections: Sections,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("rookery-data"),
            log_level: "info".into(),
            storage: StorageConfig::default(),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            messages: MessagesConfig::default(),
            listeners: vec![
                ListenerConfig {
                    kind: ListenerKind::C2s,
                    address: SocketAddr::from(([127, 0, 0, 1], 5222)),
                },
                ListenerConfig {
                    kind: ListenerKind::C2sDirectTls,
                    address: SocketAddr::from(([127, 0, 0, 1], 5223)),
                },
                // WebSocket and discovery for browsers, on the port Prosody and ejabberd use
                // for HTTPS, with the hosts' certificates.
                ListenerConfig {
                    kind: ListenerKind::Https,
                    address: SocketAddr::from(([127, 0, 0, 1], 5443)),
                },
            ],
            hosts: vec![HostConfig {
                domain: "localhost".into(),
                certificate: None,
                key: None,
                modules: None,
                sections: Sections::default(),
            }],
            sections: Sections::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// SQLite database file; default `<data_dir>/rookery.db`.
    pub path: Option<PathBuf>,
    /// PostgreSQL connection string (`backend = "postgresql"`):
    /// `postgresql://user[:password]@host[:port]/dbname` or `host=... dbname=...`.
    pub url: Option<String>,
    /// PostgreSQL: most connections the server opens.
    pub pool_size: usize,
}

/// Connections to PostgreSQL by default.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// The most `storage.pool_size` accepts: PostgreSQL's own default `max_connections` is 100,
/// and each connection is a server process.
pub const MAX_POOL_SIZE: usize = 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            path: None,
            url: None,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Sqlite,
    /// A PostgreSQL server (`storage.url`).
    Postgresql,
    /// Volatile, for tests and experiments: everything is lost at exit.
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// A `chat` or `normal` message to a bare JID goes to every resource that shares the
    /// highest priority (RFC 6121 §8.5.2.1.1 allows this or picking one); false picks the
    /// most recently bound of them.
    pub to_all_top_priority_resources: bool,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            to_all_top_priority_resources: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Refuse SASL (and everything else) on the STARTTLS port until TLS is negotiated.
    pub require_starttls: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            require_starttls: true,
        }
    }
}

/// The `[limits]` table: the core's limits. Modules keep theirs in the same table
/// ([`Place::SharedTable`]: `max_roster_items` is the roster module's, `max_offline_messages`
/// the offline module's...), so no `deny_unknown_fields` here: `Config::from_toml` refuses a
/// key that neither this struct nor a module reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Limits {
    /// Largest stanza accepted, in bytes on the wire; beyond it: `policy-violation`.
    pub max_stanza_bytes: usize,
    /// Deepest element nesting inside one stanza.
    pub max_depth: usize,
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
    /// A connection that has not authenticated and bound within this time is closed with
    /// `connection-timeout`.
    pub unauthenticated_timeout_secs: u64,
    /// Stanzas queued for one session before it counts as not reading and is disconnected.
    pub session_send_queue: usize,
    /// Open client connections, in total and from one IP address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// SASL attempts on one stream before it is closed.
    pub max_auth_attempts: u32,
    /// TLS handshake time limit.
    pub tls_handshake_timeout_secs: u64,
    /// Shortest password (in characters) accepted for a new account or a password change,
    /// from the `rookery user` commands and in-band registration alike. Existing passwords
    /// keep working. The core's rather than a module's: it is one policy for the CLI (which
    /// runs no module) and for the `register` module's registration and password change, so
    /// it lives with [`Limits::password_problem`], which all three call.
    pub min_password_length: usize,
    /// Bytes per second one connection may send (bursts of twice that are allowed). Beyond,
    /// the server stops reading from it until it is back under the rate.
    pub max_bytes_per_second: u64,
    /// Stanzas per second one connection may send (bursts of twice that), paced the same way.
    pub max_stanzas_per_second: u64,
    /// A connection kept over its rate for this long is closed with `policy-violation`.
    pub rate_limit_grace_secs: u64,
    /// A bound client silent this long gets a liveness check (an XEP-0198 `<r/>` or an
    /// XEP-0199 ping) and, silent a minute more, is closed with `connection-timeout`
    /// (a resumable session is kept for resumption). Advertised with XEP-0478.
    pub idle_timeout_secs: u64,
}

/// Longest password accepted, in bytes: SCRAM hashes it several times, so an unbounded one is
/// a way to burn CPU.
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl Limits {
    /// The XML parser's limits for one stream (or one WebSocket message, one BOSH body):
    /// read when the stream starts, so a reload's new values apply to new streams.
    pub fn xml(&self) -> rookery_xml::Limits {
        rookery_xml::Limits {
            max_stanza_bytes: self.max_stanza_bytes,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
            max_attribute_bytes: self.max_attribute_bytes,
            ..rookery_xml::Limits::default()
        }
    }

    /// Why a password chosen for an account (new account or password change) is refused, if it
    /// is; `None` when it may be used.
    pub fn password_problem(&self, password: &str) -> Option<String> {
        let chars = password.chars().count();
        if chars == 0 {
            Some("the password is empty".to_owned())
        } else if chars < self.min_password_length {
            Some(format!(
                "the password is too short: at least {} characters are required",
                self.min_password_length
            ))
        } else if password.len() > MAX_PASSWORD_BYTES {
            Some(format!(
                "the password is too long: at most {MAX_PASSWORD_BYTES} bytes"
            ))
        } else {
            None
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_stanza_bytes: 256 * 1024,
            max_depth: 64,
            max_attributes: 64,
            max_attribute_bytes: 8 * 1024,
            unauthenticated_timeout_secs: 60,
            session_send_queue: 8192,
            max_connections: 18_000,
            // One address can't take every slot; large NATs still fit.
            max_connections_per_ip: 1000,
            max_auth_attempts: 5,
            tls_handshake_timeout_secs: 15,
            min_password_length: 8,
            max_bytes_per_second: 1024 * 1024,
            max_stanzas_per_second: 1000,
            rate_limit_grace_secs: 30,
            idle_timeout_secs: 1800,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Client-to-server with STARTTLS (RFC 6120 §5).
    #[serde(rename = "c2s")]
    C2s,
    /// Client-to-server with TLS from the first byte (XEP-0368).
    #[serde(rename = "c2s-direct-tls")]
    C2sDirectTls,
    /// HTTP (WebSocket, discovery), plain: behind a reverse proxy that terminates TLS, or
    /// for tests on loopback.
    #[serde(rename = "http")]
    Http,
    /// HTTP over TLS, with the hosts' certificates selected by SNI.
    #[serde(rename = "https")]
    Https,
    /// Server-to-server with STARTTLS (RFC 6120), usually port 5269.
    #[serde(rename = "s2s")]
    S2s,
    /// Server-to-server with TLS from the first byte (XEP-0368).
    #[serde(rename = "s2s-direct-tls")]
    S2sDirectTls,
    /// External components (XEP-0114), plain TCP; none unless configured.
    #[serde(rename = "component")]
    Component,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostConfig {
    pub domain: String,
    /// PEM certificate chain; generated (self-signed) in `<data_dir>/certs` when absent.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Modules enabled on this host; absent means every module this build has.
    pub modules: Option<Vec<String>>,
    /// The per-host sections modules declared, read and validated.
    #[serde(skip)]
    pub sections: Sections,
}

impl HostConfig {
    /// This host's value of a module's per-host section.
    pub fn section<T: Section>(&self) -> Arc<T> {
        self.sections.get::<T>()
    }
}

impl Config {
    /// Loads and validates a configuration file, or the embedded default when `path` is `None`,
    /// with the sections the modules of `registry` declare.
    pub fn load(path: Option<&Path>, registry: &ModuleRegistry) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let mut cfg = Config::default();
            cfg.keep_sections(read_sections("", Path::new("(default)"), registry)?)?;
            cfg.finish(Path::new("."))?;
            return Ok(cfg);
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base, registry)
    }

    /// Parses TOML text; `base` is the directory relative paths are resolved against. The
    /// sections the modules of `registry` declare are read too; any other unknown key is refused.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        base: &Path,
        registry: &ModuleRegistry,
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        };
        let mut unknown = Vec::new();
        let mut cfg: Config = serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
            unknown.push(UnknownKey::of(&path))
        })
        .map_err(parse_error)?;
        let sections = read_sections(text, origin, registry)?;
        for key in unknown {
            let declared = match &key {
                UnknownKey::Top(k) => registry
                    .sections()
                    .any(|s| s.place == Place::Server && s.key == k),
                UnknownKey::Host(_, k) => registry
                    .sections()
                    .any(|s| s.place == Place::Host && s.key == k),
                // The core's table skipped it: declared if a module's section of that table
                // read it.
                UnknownKey::InTable(table, k) => sections.iter().any(|(s, read)| {
                    s.place == Place::SharedTable && s.key == table && read.reads(k)
                }),
                UnknownKey::Other(_) => false,
            };
            if !declared {
                let message = match key.line_in(text) {
                    Some(line) => format!("unknown key (line {line})"),
                    None => "unknown key".to_owned(),
                };
                return Err(invalid(key.to_string(), message));
            }
        }
        cfg.keep_sections(sections)?;
        cfg.finish(base)?;
        Ok(cfg)
    }

    /// Validates the sections modules declared and keeps them in the config and its hosts.
    fn keep_sections(&mut self, sections: Vec<(&SectionDecl, Read)>) -> Result<(), ConfigError> {
        for (decl, read) in sections {
            decl.validate(&read)?;
            match read {
                Read::Server(v) | Read::Shared { value: v, .. } => self.sections.insert(decl, v),
                Read::Hosts(values) => {
                    for (host, v) in self.hosts.iter_mut().zip(values) {
                        host.sections.insert(decl, v);
                    }
                }
            }
        }
        Ok(())
    }

    /// The value of a module's top-level section.
    pub fn section<T: Section>(&self) -> Arc<T> {
        self.sections.get::<T>()
    }

    fn finish(&mut self, base: &Path) -> Result<(), ConfigError> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        self.data_dir = resolve(&self.data_dir);
        if let Some(p) = &self.storage.path {
            self.storage.path = Some(resolve(p));
        }
        for h in &mut self.hosts {
            h.certificate = h.certificate.as_deref().map(resolve);
            h.key = h.key.as_deref().map(resolve);
        }
        self.validate()
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) && !self.log_level.contains('=')
        {
            return Err(invalid(
                "log_level",
                format!(
                    "'{}' is not one of error, warn, info, debug, trace (or a filter directive)",
                    self.log_level
                ),
            ));
        }
        if self.hosts.is_empty() {
            return Err(invalid("host", "at least one [[host]] must be served"));
        }
        self.validate_storage()?;
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let key = format!("host[{i}].domain");
            let jid = rookery_stanza::BareJid::new(&h.domain)
                .map_err(|e| invalid(&key, format!("'{}' is not a valid domain: {e}", h.domain)))?;
            if jid.node().is_some() || h.domain.contains('/') {
                return Err(invalid(
                    &key,
                    format!("'{}' is not a bare domain", h.domain),
                ));
            }
            h.domain = jid.domain().to_string();
            if !seen.insert(h.domain.clone()) {
                return Err(invalid(&key, format!("'{}' is configured twice", h.domain)));
            }
            if h.certificate.is_some() != h.key.is_some() {
                return Err(invalid(
                    format!("host[{i}].certificate"),
                    "certificate and key must be given together",
                ));
            }
        }
        if self.listeners.is_empty() {
            return Err(invalid("listener", "at least one [[listener]] is needed"));
        }
        let mut addrs = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 ("any free port", used by tests) may appear more than once.
            if l.address.port() != 0 && !addrs.insert(l.address) {
                return Err(invalid(
                    format!("listener[{i}].address"),
                    format!("{} is used by two listeners", l.address),
                ));
            }
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_stanza_bytes", l.max_stanza_bytes),
            ("limits.max_depth", l.max_depth),
            ("limits.max_attributes", l.max_attributes),
            ("limits.max_attribute_bytes", l.max_attribute_bytes),
            ("limits.session_send_queue", l.session_send_queue),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.unauthenticated_timeout_secs",
                l.unauthenticated_timeout_secs as usize,
            ),
            (
                "limits.tls_handshake_timeout_secs",
                l.tls_handshake_timeout_secs as usize,
            ),
            ("limits.max_auth_attempts", l.max_auth_attempts as usize),
            (
                "limits.max_bytes_per_second",
                l.max_bytes_per_second as usize,
            ),
            (
                "limits.max_stanzas_per_second",
                l.max_stanzas_per_second as usize,
            ),
            (
                "limits.rate_limit_grace_secs",
                l.rate_limit_grace_secs as usize,
            ),
            ("limits.idle_timeout_secs", l.idle_timeout_secs as usize),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.min_password_length > MAX_PASSWORD_BYTES {
            return Err(invalid(
                "limits.min_password_length",
                format!("must not exceed {MAX_PASSWORD_BYTES}"),
            ));
        }
        if l.max_stanza_bytes < 4096 {
            return Err(invalid(
                "limits.max_stanza_bytes",
                "must be at least 4096 (RFC 6120 §13.12 requires 10000 for stanzas; 4096 is the floor)",
            ));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let s = &self.storage;
        match s.backend {
            StorageBackend::Postgresql => {
                if !matches!(s.url.as_deref(), Some(u) if !u.trim().is_empty()) {
                    return Err(invalid(
                        "storage.url",
                        "backend \"postgresql\" needs the database's URL, e.g. \
                         \"postgresql://rookery@localhost/rookery\"",
                    ));
                }
                if s.path.is_some() {
                    return Err(invalid(
                        "storage.path",
                        "is the SQLite database file: backend \"postgresql\" uses storage.url",
                    ));
                }
                if !(1..=MAX_POOL_SIZE).contains(&s.pool_size) {
                    return Err(invalid(
                        "storage.pool_size",
                        format!("must be between 1 and {MAX_POOL_SIZE}"),
                    ));
                }
            }
            StorageBackend::Sqlite | StorageBackend::Memory => {
                if s.url.is_some() {
                    return Err(invalid("storage.url", "is for backend \"postgresql\" only"));
                }
            }
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("rookery.db"))
    }

    pub fn host(&self, domain: &str) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.domain == domain)
    }
}

/// Reads every section the modules of `registry` declare from the text (their defaults where
/// the text has none), not validated yet.
fn read_sections<'r>(
    text: &str,
    origin: &Path,
    registry: &'r ModuleRegistry,
) -> Result<Vec<(&'r SectionDecl, Read)>, ConfigError> {
    registry
        .sections()
        .map(|decl| {
            let read = decl.read(text).map_err(|e| ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?;
            Ok((decl, read))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            s,
            Path::new("test.toml"),
            Path::new("/etc/rookery"),
            &ModuleRegistry::new(),
        )
    }

    #[test]
    fn default_is_valid() {
        let c = Config::load(None, &ModuleRegistry::new()).expect("default config");
        assert_eq!(c.hosts[0].domain, "localhost");
        assert_eq!(c.listeners.len(), 3);
    }

    #[test]
    fn full_example_parses_and_resolves_paths() {
        let c = parse(
            r#"
            data_dir = "data"
            log_level = "debug"
            [limits]
            max_stanza_bytes = 65536
            [[listener]]
            kind = "c2s"
            address = "127.0.0.1:5222"
            [[host]]
            domain = "Example.ORG"
            certificate = "certs/example.pem"
            key = "/abs/example.key"
            modules = ["ping"]
            "#,
        )
        .expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/etc/rookery/data"));
        assert_eq!(c.hosts[0].domain, "example.org");
        assert_eq!(
            c.hosts[0].certificate.as_deref(),
            Some(Path::new("/etc/rookery/certs/example.pem"))
        );
        assert_eq!(
            c.hosts[0].key.as_deref(),
            Some(Path::new("/abs/example.key"))
        );
        assert_eq!(c.limits.max_stanza_bytes, 65536);
        assert_eq!(c.limits.max_depth, Limits::default().max_depth);
    }

    #[test]
    fn postgresql_storage_needs_a_url_and_a_sane_pool() {
        let host = "[[host]]\ndomain = 'a.org'\n";
        let c = parse(&format!(
            "[storage]\nbackend = 'postgresql'\nurl = 'postgresql://r@db/rookery'\n{host}"
        ))
        .expect("valid");
        assert_eq!(c.storage.backend, StorageBackend::Postgresql);
        assert_eq!(c.storage.url.as_deref(), Some("postgresql://r@db/rookery"));
        assert_eq!(c.storage.pool_size, DEFAULT_POOL_SIZE);
        for (storage, key) in [
            ("backend = 'postgresql'", "storage.url"),
            ("backend = 'postgresql'\nurl = '  '", "storage.url"),
            (
                "backend = 'postgresql'\nurl = 'host=db'\npool_size = 0",
                "storage.pool_size",
            ),
            (
                "backend = 'postgresql'\nurl = 'host=db'\npool_size = 5000",
                "storage.pool_size",
            ),
            (
                "backend = 'postgresql'\nurl = 'host=db'\npath = 'x.db'",
                "storage.path",
            ),
            ("backend = 'sqlite'\nurl = 'host=db'", "storage.url"),
        ] {
            let e = parse(&format!("[storage]\n{storage}\n{host}"))
                .expect_err(storage)
                .to_string();
            assert!(e.starts_with(key), "{storage}: {e}");
        }
    }

    #[test]
    fn an_unknown_key_is_found_on_its_line() {
        let text = "# a comment\nlog_level = 'info'\n\n[[host]]\ndomain = 'a.org'\n\n[[host]]\ndomain = 'b.org'\nmotd = 'hi'\n";
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(e, "host[1].motd: unknown key (line 9)");
        let e = parse(
            "[limits]\nmax_depth = 10\n\n[tls]\nrequire_starttls = true\n[limits.extra]\nx = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "limits.extra: unknown key (line 6)");
    }

    #[test]
    fn unknown_keys_are_named() {
        // Without the modules that declare them, their sections are unknown keys too.
        let e = parse("[archive]\nretention_days = 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "archive: unknown key (line 1)");
        let e = parse("[[host]]\ndomain = 'a.org'\nmotd = 'hi'\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "host[0].motd: unknown key (line 3)");
        let e = parse("data_dir = 'x'\nbogus_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus_key"), "{e}");
        let e = parse("[limits]\nmax_stanza_byte = 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "limits.max_stanza_byte: unknown key (line 2)");
        // A module's key in `[limits]`, without the module in the build.
        let e = parse("[limits]\nmax_roster_items = 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "limits.max_roster_items: unknown key (line 2)");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[limits]\nmax_stanza_bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_stanza_bytes"), "{e}");
        let e = parse("[[listener]]\nkind = 'c2s'\naddress = 'nope'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("address"), "{e}");
        let e = parse("[[listener]]\nkind = 'bosh'\naddress = '127.0.0.1:1'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind") || e.contains("websocket"), "{e}");
        let e = parse("[[host]]\ndomain = 'a b'\n").unwrap_err().to_string();
        assert!(e.contains("host[0].domain"), "{e}");
        let e = parse("log_level = 'loud'\n").unwrap_err().to_string();
        assert!(e.contains("log_level"), "{e}");
        let e = parse("[[host]]\ndomain = 'x.org'\n[[host]]\ndomain = 'X.org'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
