//! SIGHUP and `rookery reload`: re-read the configuration file and apply what can change without dropping a
//! session — every host's certificate and key, the log level, and which of the hosts the
//! server was built with are served (a host no longer listed is retired: its sessions end
//! with `host-gone`; listed again, it is served again). Anything invalid is logged and the
//! running settings stay; the server never stops because of a reload.

use rookery_core::{Config, Server};
use rookery_net::tls::TlsContext;
use std::path::PathBuf;
use std::sync::Arc;
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

/// What a reload needs: where the configuration comes from and what it can change.
pub struct Reloader {
    /// The file given with `--config`; `None` means the embedded default.
    pub config_path: Option<PathBuf>,
    /// The configuration the server runs with (listeners, hosts, limits...).
    pub running: Config,
    pub tls: TlsContext,
    pub log: LogFilter,
    pub server: Arc<Server>,
}

impl Reloader {
    /// Re-reads the configuration and applies the certificates and the log level; logs what
    /// was reloaded, what failed (the old settings stay) and what needs a restart, and
    /// returns the same as lines for `rookery reload` (`Err`: nothing was applied).
    pub fn reload(&self) -> Result<String, String> {
        let source = self.config_path.as_ref().map_or_else(
            || "the embedded default".to_owned(),
            |p| p.display().to_string(),
        );
        tracing::info!("reloading certificates and log level from {source}");
        let new = match Config::load(self.config_path.as_deref(), &crate::registry()) {
            Ok(c) => c,
            Err(e) => {
                let e = format!(
                    "reload failed: {e}; the running configuration, certificates and log level stay"
                );
                tracing::error!("{e}");
                return Err(e);
            }
        };
        let mut report = vec![format!("configuration read from {source}")];
        report.push(self.log.apply(&new.log_level));
        report.push(self.reload_certificates(&new));
        report.extend(self.reload_hosts(&new));
        report.extend(self.reload_live_sections(&new));
        let restart = needs_restart(&self.running, &new);
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
    /// ([`rookery_core::Section::LIVE`]: the roster, vCard and private XML size limits...).
    fn reload_live_sections(&self, new: &Config) -> Option<String> {
        let mut applied = self.server.config().sections.apply_live(&new.sections);
        // The reloader's copy shares the server's values; applied again in case it does not.
        applied.extend(self.running.sections.apply_live(&new.sections));
        applied.sort_unstable();
        applied.dedup();
        if applied.is_empty() {
            return None;
        }
        let line = format!("reload: module settings applied: [{}]", applied.join(", "));
        tracing::info!("{line}");
        Some(line)
    }

    /// Retires the hosts the server serves that `new` no longer lists, and serves again the
    /// retired ones it lists again. A host the server was not built with is left for a
    /// restart (see [`needs_restart`]).
    fn reload_hosts(&self, new: &Config) -> Vec<String> {
        let mut lines = Vec::new();
        for domain in self.server.built_hosts() {
            let line = if new.host(domain).is_none() {
                match self.server.retire_host(domain) {
                    Some(n) => format!(
                        "reload: host {domain} removed: no longer served, {n} session(s) closed with host-gone"
                    ),
                    None => continue,
                }
            } else if self.server.restore_host(domain) {
                format!("reload: host {domain} is served again")
            } else {
                continue;
            };
            tracing::warn!("{line}");
            lines.push(line);
        }
        lines
    }

    fn reload_certificates(&self, new: &Config) -> String {
        // The served domains are those the server started with; a host's certificate and
        // key paths come from the new file when it still lists that host.
        let mut merged = self.running.clone();
        for h in &mut merged.hosts {
            if let Some(n) = new.host(&h.domain) {
                h.certificate = n.certificate.clone();
                h.key = n.key.clone();
            }
        }
        match self.tls.reload(&merged) {
            Ok(r) => {
                let line = format!(
                    "reload: certificates read again; changed: [{}], unchanged: [{}]",
                    r.changed.join(", "),
                    r.unchanged.join(", ")
                );
                tracing::info!("{line}");
                line
            }
            Err(e) => {
                let line = format!(
                    "reload: certificates not reloaded: {e}; the previous certificates stay in use"
                );
                tracing::error!("{line}");
                line
            }
        }
    }
}

/// The settings of `new` that differ from the running ones and that a reload does not
/// apply (everything but `log_level`, the hosts' certificate and key paths, and the removal
/// of hosts: a host added, or a host's other settings changed, need a restart).
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    // Module sections (archive, push, the modules' keys in `[limits]`...) are compared by
    // their TOML rendering.
    let mut out = running.sections.changed(&new.sections);
    // Compared through Debug: the configuration types are plain data and don't implement
    // PartialEq; a difference in rendering is a difference in value.
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    // The hosts of `c` that `other` lists too (a removed host is applied, not a change to
    // restart for), without their certificates (applied too).
    let kept = |c: &Config, other: &Config| {
        let mut hosts = c.hosts.clone();
        hosts.retain(|h| other.host(&h.domain).is_some());
        for h in &mut hosts {
            h.certificate = None;
            h.key = None;
        }
        hosts
    };
    let (a, b) = (running, new);
    let checks: [(&'static str, bool); 7] = [
        ("data_dir", differs(&a.data_dir, &b.data_dir)),
        ("storage", differs(&a.storage, &b.storage)),
        ("tls", differs(&a.tls, &b.tls)),
        ("limits", differs(&a.limits, &b.limits)),
        ("messages", differs(&a.messages, &b.messages)),
        ("listeners", differs(&a.listeners, &b.listeners)),
        (
            "hosts",
            // A new host, or a kept one with other settings.
            b.hosts.iter().any(|h| a.host(&h.domain).is_none())
                || differs(&kept(a, b), &kept(b, a)),
        ),
    ];
    for (name, changed) in checks {
        // `limits` may be there already, for a module's key in that table.
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
        let other = config(&format!(
            "[limits]\nmax_stanza_bytes = 100000\n{base}[[host]]\ndomain = 'b.example'\n"
        ));
        assert_eq!(needs_restart(&running, &other), ["limits", "hosts"]);
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
        // A module's section (the archive's) is compared too, by its key.
        let archive = config(&format!("[archive]\nretention_days = 30\n{base}"));
        assert_eq!(needs_restart(&running, &archive), ["archive"]);
        // A module's key in `[limits]` is a change to the limits, named once.
        let offline = config(&format!("[limits]\nmax_offline_messages = 5\n{base}"));
        assert_eq!(needs_restart(&running, &offline), ["limits"]);
        let both = config(&format!(
            "[limits]\nmax_offline_messages = 5\nmax_depth = 10\n{base}"
        ));
        assert_eq!(needs_restart(&running, &both), ["limits"]);
    }
}
