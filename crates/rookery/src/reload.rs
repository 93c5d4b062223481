//! SIGHUP and `rookery reload`: re-read the configuration file and apply what can change
//! without dropping a session:
//! - every host's certificate and key (new handshakes use them), and the log level;
//! - hosts added (built with their modules and served, a certificate generated if none is
//!   configured) and removed (retired: their sessions end with `host-gone`; listed again,
//!   served again);
//! - the core's `[limits]` and `[messages]` (new connections and the next routing decision
//!   use them; open streams keep the limits they started with);
//! - the module sections read at each use ([`rookery_core::Section::LIVE`]), top-level and
//!   per host.
//!
//! What is read once at start (listeners, storage, TLS settings, a kept host's module list,
//! the other module sections) is reported as needing a restart. Anything invalid is logged
//! and the running settings stay; the server never stops because of a reload.

use rookery_core::{Config, Server};
use rookery_net::tls::TlsContext;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use tracing_subscriber::reload::Handle;
use tracing_subscriber::{EnvFilter, Registry};

/// The log filter of the running process, replaceable on reload.
pub struct LogFilter {
    handle: Handle<EnvFilter, Registry>,
    /// `RUST_LOG` chose the filter at start: it keeps precedence over `log_level`, as it did
    /// then.
    from_env: bool,
}

/// The filter of a `log_level`. The PostgreSQL driver logs every statement with its
/// parameters at debug level, which would put stored credential records (SCRAM keys) and
/// message bodies in the log: it is held at `info` unless the level names it explicitly.
pub fn filter_for(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    if level.contains("tokio_postgres") {
        return Ok(filter);
    }
    Ok(match "tokio_postgres=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    })
}

impl LogFilter {
    pub fn new(handle: Handle<EnvFilter, Registry>, from_env: bool) -> Self {
        LogFilter { handle, from_env }
    }

    /// Applies `level`; returns what happened, as logged.
    fn apply(&self, level: &str) -> String {
        if self.from_env {
            let line = format!(
                "reload: log level left as RUST_LOG set it (log_level = {level:?} not applied)"
            );
            tracing::info!("{line}");
            return line;
        }
        let filter = match filter_for(level) {
            Ok(f) => f,
            Err(e) => {
                let line =
                    format!("reload: log_level {level:?} is not usable ({e}); log level unchanged");
                tracing::error!("{line}");
                return line;
            }
        };
        let line = match self.handle.reload(filter) {
            Ok(()) => format!("reload: log level is now {level:?}"),
            Err(e) => format!("reload: could not change the log level: {e}"),
        };
        tracing::info!("{line}");
        line
    }
}

/// What a reload needs: where the configuration comes from and what it can change. The
/// configuration it compares against is the server's ([`Server::config`]).
pub struct Reloader {
    /// The file given with `--config`; `None` means the embedded default.
    pub config_path: Option<PathBuf>,
    pub tls: TlsContext,
    pub log: LogFilter,
    pub server: Arc<Server>,
    /// One reload at a time (SIGHUP and `rookery reload` may come together).
    pub busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        config_path: Option<PathBuf>,
        tls: TlsContext,
        log: LogFilter,
        server: Arc<Server>,
    ) -> Self {
        Reloader {
            config_path,
            tls,
            log,
            server,
            busy: Mutex::new(()),
        }
    }

    /// Re-reads the configuration and applies what a running server can change; logs what
    /// was reloaded, what failed (the old settings stay) and what needs a restart, and
    /// returns the same as lines for `rookery reload` (`Err`: nothing was applied).
    pub fn reload(&self) -> Result<String, String> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let source = self.config_path.as_ref().map_or_else(
            || "the embedded default".to_owned(),
            |p| p.display().to_string(),
        );
        tracing::info!("reloading the configuration from {source}");
        let new = match Config::load(self.config_path.as_deref(), &crate::registry()) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("reload failed: {e}; the running configuration stays");
                tracing::error!("{e}");
                return Err(e);
            }
        };
        let running = self.server.config();
        let mut report = vec![format!("configuration read from {source}")];
        report.push(self.log.apply(&new.log_level));
        let (next, added) = next_config(&running, &new, &self.server.built_hosts());
        // Certificates first: a host added below is served with its own from its first
        // handshake.
        let (line, certificates_ok) = self.reload_certificates(&next);
        report.push(line);
        let mut next = next;
        if !certificates_ok && !added.is_empty() {
            next.hosts.retain(|h| !added.contains(&h.domain));
            let line = format!(
                "reload: hosts not added (their certificates could not be read): [{}]",
                added.join(", ")
            );
            tracing::error!("{line}");
            report.push(line);
        }
        if differs(&running.limits, &next.limits) {
            report.push(info("reload: [limits] applied to new connections"));
        }
        if differs(&running.messages, &next.messages) {
            report.push(info("reload: [messages] applied"));
        }
        // The live sections first: their cells are shared with `next`, so the watchers told
        // by `apply_config` (the transports) read the new values.
        report.extend(self.reload_live_sections(&new));
        self.server.apply_config(next);
        report.extend(self.reload_hosts(&new, certificates_ok.then_some(&added)));
        let restart = needs_restart(&running, &new);
        if !restart.is_empty() {
            let line = format!(
                "reload: changes to {} take effect only after a restart",
                restart.join(", ")
            );
            tracing::warn!("{line}");
            report.push(line);
        }
        Ok(report.join("\n") + "\n")
    }

    /// Gives the running server the new values of the module sections it reads at each use
    /// ([`rookery_core::Section::LIVE`]: the roster, vCard and private XML size limits, the
    /// archive settings...), top-level and of each kept host.
    fn reload_live_sections(&self, new: &Config) -> Option<String> {
        let config = self.server.config();
        let mut applied: Vec<String> = config
            .sections
            .apply_live(&new.sections)
            .into_iter()
            .map(str::to_owned)
            .collect();
        for h in &config.hosts {
            if let Some(n) = new.host(&h.domain) {
                applied.extend(
                    h.sections
                        .apply_live(&n.sections)
                        .into_iter()
                        .map(|k| format!("{} of {}", k, h.domain)),
                );
            }
        }
        applied.sort_unstable();
        applied.dedup();
        if applied.is_empty() {
            return None;
        }
        Some(info(&format!(
            "reload: module settings applied: [{}]",
            applied.join(", ")
        )))
    }

    /// Retires the hosts the server serves that `new` no longer lists, serves again the
    /// retired ones it lists again, and builds and serves the ones `added` names (none when
    /// their certificates could not be read). A host whose modules refuse to start is taken
    /// out of the configuration in force again, and the reload says why.
    fn reload_hosts(&self, new: &Config, added: Option<&Vec<String>>) -> Vec<String> {
        let mut lines = Vec::new();
        for domain in self.server.built_hosts() {
            let line = if new.host(&domain).is_none() {
                match self.server.retire_host(&domain) {
                    Some(n) => format!(
                        "reload: host {domain} removed: no longer served, {n} session(s) closed with host-gone"
                    ),
                    None => continue,
                }
            } else if self.server.restore_host(&domain) {
                format!("reload: host {domain} is served again")
            } else {
                continue;
            };
            tracing::warn!("{line}");
            lines.push(line);
        }
        for domain in added.into_iter().flatten() {
            match self.server.add_host(domain) {
                Ok(modules) => lines.push(info(&format!(
                    "reload: host {domain} added: served with {} module(s)",
                    modules.len()
                ))),
                Err(e) => {
                    let mut config = (*self.server.config()).clone();
                    config.hosts.retain(|h| &h.domain != domain);
                    self.server.apply_config(config);
                    let line = format!("reload: host {domain} not added: {e}");
                    tracing::error!("{line}");
                    lines.push(line);
                }
            }
        }
        lines
    }

    /// Reads every host's certificate again (generating one for a new host with none
    /// configured); the line to report, and whether it worked.
    fn reload_certificates(&self, next: &Config) -> (String, bool) {
        match self.tls.reload(next) {
            Ok(r) => (
                info(&format!(
                    "reload: certificates read again; changed: [{}], unchanged: [{}]",
                    r.changed.join(", "),
                    r.unchanged.join(", ")
                )),
                true,
            ),
            Err(e) => {
                let line = format!(
                    "reload: certificates not reloaded: {e}; the previous certificates stay in use"
                );
                tracing::error!("{line}");
                (line, false)
            }
        }
    }
}

fn info(line: &str) -> String {
    tracing::info!("{line}");
    line.to_owned()
}

/// Compared through Debug: the configuration types are plain data and don't implement
/// PartialEq; a difference in rendering is a difference in value.
fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The configuration to put in force: the running one with what a reload applies taken
/// from `new` (the log level, `[limits]`, `[messages]`, the hosts listed, the hosts'
/// certificate and key paths), and the running module sections (whose cells the modules
/// hold; their live values are given separately). A kept host keeps its running settings
/// but for its certificate; a host that the server never built is added (the second value
/// lists them); a retired host listed again comes back with the settings it was built with
/// when the running configuration still has them, else with `new`'s.
fn next_config(running: &Config, new: &Config, built: &[String]) -> (Config, Vec<String>) {
    let mut next = running.clone();
    next.log_level = new.log_level.clone();
    next.limits = new.limits.clone();
    next.messages = new.messages.clone();
    let mut added = Vec::new();
    next.hosts = new
        .hosts
        .iter()
        .map(|n| {
            let mut h = running.host(&n.domain).cloned().unwrap_or_else(|| {
                if !built.contains(&n.domain) {
                    added.push(n.domain.clone());
                }
                n.clone()
            });
            h.certificate = n.certificate.clone();
            h.key = n.key.clone();
            h
        })
        .collect();
    (next, added)
}

/// The settings of `new` that differ from the running ones and that a reload does not
/// apply: everything but the log level, `[limits]` and `[messages]`, the hosts' certificate
/// and key paths, hosts added and removed, and the live module sections; a kept host's
/// other settings (its module list, its sections read at start) need a restart.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    // Module sections (push, MUC, the modules' keys in `[limits]`...) are compared by
    // their TOML rendering; live ones are applied, not restarted for.
    let mut out = running.sections.changed_at_start(&new.sections);
    // The hosts both list, without what a reload applies (certificates, live sections).
    let kept = |c: &Config, other: &Config| {
        let mut hosts = c.hosts.clone();
        hosts.retain(|h| other.host(&h.domain).is_some());
        for h in &mut hosts {
            h.certificate = None;
            h.key = None;
            h.sections = Default::default();
        }
        hosts
    };
    let host_sections_changed = running.hosts.iter().any(|h| {
        new.host(&h.domain)
            .is_some_and(|n| !h.sections.changed_at_start(&n.sections).is_empty())
    });
    let (a, b) = (running, new);
    let checks: [(&'static str, bool); 5] = [
        ("data_dir", differs(&a.data_dir, &b.data_dir)),
        ("storage", differs(&a.storage, &b.storage)),
        ("tls", differs(&a.tls, &b.tls)),
        ("listeners", differs(&a.listeners, &b.listeners)),
        (
            "hosts",
            differs(&kept(a, b), &kept(b, a)) || host_sections_changed,
        ),
    ];
    for (name, changed) in checks {
        if changed && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::from_toml(
            text,
            Path::new("t.toml"),
            Path::new("/srv"),
            &crate::registry(),
        )
        .expect("config")
    }

    #[test]
    fn the_database_driver_is_held_at_info_unless_named() {
        for level in ["debug", "trace", "info,rookery_net=debug"] {
            let f = filter_for(level).expect("filter").to_string();
            assert!(f.contains("tokio_postgres=info"), "{level}: {f}");
        }
        let f = filter_for("debug,tokio_postgres=trace")
            .expect("filter")
            .to_string();
        assert!(
            f.contains("tokio_postgres=trace") && !f.contains("tokio_postgres=info"),
            "{f}"
        );
        assert!(filter_for("rookery=loud").is_err());
    }

    #[test]
    fn only_settings_a_reload_does_not_apply_need_a_restart() {
        let base = "[[host]]\ndomain = 'a.example'\n";
        let running = config(base);
        let same = config(&format!(
            "log_level = 'debug'\n{base}certificate = 'a.pem'\nkey = 'a.key'\n"
        ));
        assert!(needs_restart(&running, &same).is_empty());
        // The core's limits and a new host are applied.
        let other = config(&format!(
            "[limits]\nmax_stanza_bytes = 100000\n{base}[[host]]\ndomain = 'b.example'\n"
        ));
        assert!(needs_restart(&running, &other).is_empty());
        // Removing a host is applied; so is listing it again, with its certificate changed.
        let two = config(&format!("{base}[[host]]\ndomain = 'b.example'\n"));
        assert!(needs_restart(&two, &running).is_empty());
        let b_again = config(&format!(
            "{base}[[host]]\ndomain = 'b.example'\ncertificate = 'b.pem'\nkey = 'b.key'\n"
        ));
        assert!(needs_restart(&two, &b_again).is_empty());
        // A kept host's modules changed: a restart.
        let modules = config(&format!("{base}modules = ['ping']\n"));
        assert_eq!(needs_restart(&running, &modules), ["hosts"]);
        // A section read at start (federation's) is compared too, by its key; a live one
        // (SASL's, the archive's, the modules' keys in `[limits]`) is applied.
        let s2s = config(&format!("[s2s]\nenabled = false\n{base}"));
        assert_eq!(needs_restart(&running, &s2s), ["s2s"]);
        let sasl = config(&format!("[sasl]\nmechanisms = ['PLAIN']\n{base}"));
        assert!(needs_restart(&running, &sasl).is_empty());
        let archive = config(&format!("[archive]\nretention_days = 30\n{base}"));
        assert!(needs_restart(&running, &archive).is_empty());
        let offline = config(&format!(
            "[limits]\nmax_offline_messages = 5\nmax_depth = 10\n{base}"
        ));
        assert!(needs_restart(&running, &offline).is_empty());
        // Listeners and storage are bound at start.
        let listener = config(&format!(
            "[[listener]]\nkind = 'c2s'\naddress = '127.0.0.1:15999'\n{base}"
        ));
        assert_eq!(needs_restart(&running, &listener), ["listeners"]);
    }

    #[test]
    fn the_next_configuration_takes_what_a_reload_applies() {
        let running = config(
            "[limits]\nmax_stanza_bytes = 100000\n[[host]]\ndomain = 'a.example'\n\
             [[host]]\ndomain = 'gone.example'\n",
        );
        let new = config(
            "log_level = 'debug'\n[limits]\nmax_stanza_bytes = 5000\n\
             [[listener]]\nkind = 'c2s'\naddress = '127.0.0.1:15999'\n\
             [[host]]\ndomain = 'a.example'\nmodules = ['ping']\ncertificate = 'a.pem'\nkey = 'a.key'\n\
             [[host]]\ndomain = 'new.example'\n[[host]]\ndomain = 'gone.example'\n",
        );
        let built = vec!["a.example".to_owned(), "gone.example".to_owned()];
        let (next, added) = next_config(&running, &new, &built);
        assert_eq!(added, ["new.example"]);
        assert_eq!(next.log_level, "debug");
        assert_eq!(next.limits.max_stanza_bytes, 5000);
        // Listeners stay as they were bound.
        assert!(!differs(&next.listeners, &running.listeners));
        let domains: Vec<&str> = next.hosts.iter().map(|h| h.domain.as_str()).collect();
        assert_eq!(domains, ["a.example", "new.example", "gone.example"]);
        // A kept host keeps its modules (a restart changes them) but takes its certificate.
        let a = next.host("a.example").expect("a");
        assert!(a.modules.is_none());
        assert_eq!(a.certificate.as_deref(), Some(Path::new("/srv/a.pem")));
    }
}
