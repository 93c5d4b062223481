//! The `[archive]` section of the configuration: what the `mam` module archives by default,
//! how long it keeps it, and how large query pages are.

use rookery_core::config::ConfigError;
use rookery_core::{Place, Section};
use serde::{Deserialize, Serialize};

/// Which messages an account archives when it has not set its own preference (XEP-0313
/// §5.1.1).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
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

impl Section for ArchiveConfig {
    const KEY: &'static str = "archive";
    const PLACE: Place = Place::Server;
    // Read at each use: queries, preferences and the purge's rounds.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"[archive]
# Message archives (XEP-0313, the "mam" module). Which messages an account archives until it
# sets its own preference: "always", "never", or "roster" (only with contacts in its roster).
default_preference = "always"
# Archived messages older than this many days are deleted; 0 keeps them forever.
retention_days = 0
# How often the retention purge runs, and how many messages it deletes per transaction
# (it repeats until nothing old is left, so archiving never waits long behind it).
purge_interval_secs = 3600
purge_batch = 1000
# Results per page when a query gives no <max/>, and at most whatever it asks for.
default_page_size = 50
max_page_size = 250
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("purge_interval_secs", self.purge_interval_secs as usize),
            ("purge_batch", self.purge_batch),
            ("default_page_size", self.default_page_size),
            ("max_page_size", self.max_page_size),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.default_page_size > self.max_page_size {
            return Err(ConfigError::invalid(
                format!("{key}.default_page_size"),
                format!("must not exceed {key}.max_page_size"),
            ));
        }
        Ok(())
    }
}
