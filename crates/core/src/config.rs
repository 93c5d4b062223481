//! The configuration file (TOML), its defaults and its validation.
//!
//! Every struct denies unknown fields, so a typo is refused at start with the key's name and
//! position instead of being silently ignored. Relative paths are resolved against the directory
//! of the configuration file (or the working directory for the embedded default).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database and generated certificates live.
    pub data_dir: PathBuf,
    /// Default tracing filter: error, warn, info, debug, trace (or a full filter directive).
    pub log_level: String,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub messages: MessagesConfig,
    pub stream_management: StreamManagementConfig,
    pub fast: FastConfig,
    pub push: PushConfig,
    pub archive: ArchiveConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(rename = "host")]
    pub hosts: Vec<HostConfig>,
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
            stream_management: StreamManagementConfig::default(),
            fast: FastConfig::default(),
            push: PushConfig::default(),
            archive: ArchiveConfig::default(),
            listeners: vec![
                ListenerConfig {
                    kind: ListenerKind::C2s,
                    address: SocketAddr::from(([127, 0, 0, 1], 5222)),
                },
                ListenerConfig {
                    kind: ListenerKind::C2sDirectTls,
                    address: SocketAddr::from(([127, 0, 0, 1], 5223)),
                },
            ],
            hosts: vec![HostConfig {
                domain: "localhost".into(),
                certificate: None,
                key: None,
                modules: None,
                registration: false,
                contact: ContactAddresses::default(),
            }],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// SQLite database file; default `<data_dir>/rookery.db`.
    pub path: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            path: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Sqlite,
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

/// Stream management (XEP-0198): acknowledgements and resumption after a dropped connection.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Offer stream management to clients.
    pub enabled: bool,
    /// How long a session whose connection dropped waits to be resumed, when the client does
    /// not ask for less. Messages for it meanwhile are held (and trigger push notifications).
    pub resume_timeout_secs: u64,
    /// The longest resumption time a client may ask for with `max`.
    pub max_resume_timeout_secs: u64,
    /// Stanzas sent to a client and not yet acknowledged (plus those held while it is away)
    /// before the session is ended and its messages handed to other resources or offline
    /// storage.
    pub max_unacked_stanzas: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            resume_timeout_secs: 300,
            max_resume_timeout_secs: 3600,
            max_unacked_stanzas: 8192,
        }
    }
}

/// FAST (XEP-0484): tokens for one-round-trip logins over SASL2.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FastConfig {
    /// Offer FAST tokens to SASL2 clients.
    pub enabled: bool,
    /// How long a token is valid; it is rotated when less than half of this is left.
    pub token_lifetime_secs: u64,
}

impl Default for FastConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token_lifetime_secs: 14 * 24 * 3600,
        }
    }
}

/// Push notifications (XEP-0357), for the module that sends them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Put the body of the last message in notifications. Off by default: notifications pass
    /// through the app's push service and the platform's (XEP-0357 §9).
    pub include_body: bool,
    /// Push services (JID and node) one account may enable.
    pub max_registrations: usize,
    /// How long to wait for the push service to answer a notification.
    pub request_timeout_secs: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            include_body: false,
            max_registrations: 10,
            request_timeout_secs: 30,
        }
    }
}

/// Which messages an account archives when it has not set its own preference (XEP-0313
/// §5.1.1).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchivePreference {
    /// Every message.
    Always,
    /// None (unless the account lists the contact in `<always/>`).
    Never,
    /// Messages with contacts in the account's roster.
    Roster,
}

impl ArchivePreference {
    /// The value of the `default` attribute of `<prefs/>`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchivePreference::Always => "always",
            ArchivePreference::Never => "never",
            ArchivePreference::Roster => "roster",
        }
    }

    /// Inverse of [`ArchivePreference::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Always, Self::Never, Self::Roster]
            .into_iter()
            .find(|p| p.as_str() == name)
    }
}

/// Message archives (XEP-0313, the `mam` module).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The preference of an account that has not set one.
    pub default_preference: ArchivePreference,
    /// Archived messages older than this many days are deleted; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention purge runs.
    pub purge_interval_secs: u64,
    /// Messages deleted per purge transaction (the purge repeats until done).
    pub purge_batch: usize,
    /// Results per page when a query asks for no `max`.
    pub default_page_size: usize,
    /// Results per page at most, whatever `max` a query asks for.
    pub max_page_size: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            default_preference: ArchivePreference::Always,
            retention_days: 0,
            purge_interval_secs: 3600,
            purge_batch: 1000,
            default_page_size: 50,
            max_page_size: 250,
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

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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
    /// Items in one roster; adding beyond gets `not-allowed`.
    pub max_roster_items: usize,
    /// Messages kept offline for one account; beyond, `service-unavailable`.
    pub max_offline_messages: usize,
    /// Bytes of one account's vCard.
    pub max_vcard_bytes: usize,
    /// Bytes of one private XML storage element.
    pub max_private_bytes: usize,
    /// In-band registrations accepted from one IP address per hour.
    pub registrations_per_ip_per_hour: u32,
    /// Shortest password (in characters) accepted for a new account or a password change,
    /// from the `rookery user` commands and in-band registration alike. Existing passwords
    /// keep working.
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
            max_roster_items: 5000,
            max_offline_messages: 1000,
            max_vcard_bytes: 200 * 1024,
            max_private_bytes: 64 * 1024,
            registrations_per_ip_per_hour: 5,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub domain: String,
    /// PEM certificate chain; generated (self-signed) in `<data_dir>/certs` when absent.
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Modules enabled on this host; absent means every module this build has.
    pub modules: Option<Vec<String>>,
    /// In-band account registration (XEP-0077) by anyone who can connect. Off by default.
    #[serde(default)]
    pub registration: bool,
    /// Contact addresses of the service (XEP-0157), advertised in service discovery.
    #[serde(default)]
    pub contact: ContactAddresses,
}

/// XEP-0157 contact addresses: URIs (`mailto:`, `xmpp:`, `https:`) per role.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ContactAddresses {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactAddresses {
    /// (XEP-0157 field var, addresses) for the roles that have any.
    pub fn fields(&self) -> Vec<(&'static str, &[String])> {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_slice()))
        .collect()
    }
}

impl Config {
    /// Loads and validates a configuration file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let mut cfg = Config::default();
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
        Self::from_toml(&text, path, base)
    }

    /// Parses TOML text; `base` is the directory relative paths are resolved against.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        cfg.finish(base)?;
        Ok(cfg)
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
        if self.push.max_registrations == 0 {
            return Err(invalid(
                "push.max_registrations",
                "must be greater than 0 (disable the push module instead)",
            ));
        }
        if self.push.request_timeout_secs == 0 {
            return Err(invalid(
                "push.request_timeout_secs",
                "must be greater than 0",
            ));
        }
        if self.hosts.is_empty() {
            return Err(invalid("host", "at least one [[host]] must be served"));
        }
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
            for (role, addrs) in h.contact.fields() {
                for a in addrs {
                    if !a.contains(':') {
                        return Err(invalid(
                            format!("host[{i}].contact"),
                            format!("{role}: '{a}' is not a URI (mailto:, xmpp:, https:...)"),
                        ));
                    }
                }
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
            ("limits.max_roster_items", l.max_roster_items),
            ("limits.max_offline_messages", l.max_offline_messages),
            ("limits.max_vcard_bytes", l.max_vcard_bytes),
            ("limits.max_private_bytes", l.max_private_bytes),
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
        let sm = &self.stream_management;
        let sm_positive = [
            (
                "stream_management.resume_timeout_secs",
                sm.resume_timeout_secs as usize,
            ),
            (
                "stream_management.max_resume_timeout_secs",
                sm.max_resume_timeout_secs as usize,
            ),
            (
                "stream_management.max_unacked_stanzas",
                sm.max_unacked_stanzas,
            ),
            (
                "fast.token_lifetime_secs",
                self.fast.token_lifetime_secs as usize,
            ),
        ];
        let a = &self.archive;
        let archive_positive = [
            (
                "archive.purge_interval_secs",
                a.purge_interval_secs as usize,
            ),
            ("archive.purge_batch", a.purge_batch),
            ("archive.default_page_size", a.default_page_size),
            ("archive.max_page_size", a.max_page_size),
        ];
        for (key, v) in positive
            .into_iter()
            .chain(sm_positive)
            .chain(archive_positive)
        {
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
        if a.default_page_size > a.max_page_size {
            return Err(invalid(
                "archive.default_page_size",
                "must not exceed archive.max_page_size",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("test.toml"), Path::new("/etc/rookery"))
    }

    #[test]
    fn default_is_valid() {
        let c = Config::load(None).expect("default config");
        assert_eq!(c.hosts[0].domain, "localhost");
        assert_eq!(c.listeners.len(), 2);
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
    fn unknown_keys_are_named() {
        let e = parse("data_dir = 'x'\nbogus_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus_key"), "{e}");
        let e = parse("[limits]\nmax_stanza_byte = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_stanza_byte"), "{e}");
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
        let e = parse("[[listener]]\nkind = 'websocket'\naddress = '127.0.0.1:1'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind") || e.contains("websocket"), "{e}");
        let e = parse("[[host]]\ndomain = 'a b'\n").unwrap_err().to_string();
        assert!(e.contains("host[0].domain"), "{e}");
        let e = parse("[archive]\nmax_page_size = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("archive.max_page_size"), "{e}");
        let e = parse("[archive]\ndefault_page_size = 300\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("archive.default_page_size"), "{e}");
        let e = parse("[archive]\ndefault_preference = 'sometimes'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = parse("log_level = 'loud'\n").unwrap_err().to_string();
        assert!(e.contains("log_level"), "{e}");
        let e = parse("[[host]]\ndomain = 'x.org'\n[[host]]\ndomain = 'X.org'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example in the repository must stay valid and complete.
    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rookery.example.toml");
        let c = Config::load(Some(&path)).expect("the example config is valid");
        let d = Config::default();
        assert_eq!(
            c.limits, d.limits,
            "the example documents the default limits"
        );
        assert_eq!(c.stream_management, d.stream_management);
        assert_eq!(c.fast, d.fast);
        assert_eq!(c.log_level, d.log_level);
        assert_eq!(c.push, d.push, "the example documents the push defaults");
        assert_eq!(
            c.archive, d.archive,
            "the example documents the archive defaults"
        );
        assert_eq!(c.tls.require_starttls, d.tls.require_starttls);
        assert_eq!(c.listeners.len(), d.listeners.len());
        assert_eq!(c.hosts[0].domain, "localhost");
    }
}
