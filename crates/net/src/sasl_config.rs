//! `[sasl]`: which SASL mechanisms client streams offer (SASL and SASL2 alike).
//!
//! All of them by default, strongest first. An operator moving accounts from a server that
//! kept SCRAM-SHA-1 records only (ejabberd's default, Prosody's) lists the mechanisms those
//! accounts can use, so clients do not pick SCRAM-SHA-256 or -512 and fail: an imported
//! account has no record for them until it logs in once with PLAIN (c2s then makes the
//! missing records from the password) or its password is set again.

use rookery_core::config::ConfigError;
use rookery_core::settings::{Place, Section};
use rookery_sasl::Mechanism;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// Mechanism names (IANA, case-sensitive). PLAIN is offered only over TLS and the -PLUS
    /// variants only where channel binding is possible, whatever this says.
    pub mechanisms: Vec<String>,
}

impl Default for SaslConfig {
    fn default() -> Self {
        SaslConfig {
            mechanisms: Mechanism::ALL.iter().map(|m| m.name().to_owned()).collect(),
        }
    }
}

impl SaslConfig {
    /// Whether `m` may be offered.
    pub fn allows(&self, m: Mechanism) -> bool {
        self.mechanisms.iter().any(|n| n == m.name())
    }
}

impl Section for SaslConfig {
    const KEY: &'static str = "sasl";
    const PLACE: Place = Place::Server;
    // Read by the streams through `c2s::StreamContext`, refreshed on reload.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# SASL mechanisms offered to clients, strongest first. Accounts imported with SCRAM-SHA-1
# records only (from ejabberd or Prosody) log in with SCRAM-SHA-1 or PLAIN until they log in
# once with PLAIN (which makes the other records) or set a password: list only those meanwhile.
[sasl]
mechanisms = ["SCRAM-SHA-512-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (i, name) in self.mechanisms.iter().enumerate() {
            if Mechanism::from_name(name).is_none() {
                let known: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
                return Err(ConfigError::invalid(
                    format!("{key}.mechanisms[{i}]"),
                    format!("{name:?} is not one of {}", known.join(", ")),
                ));
            }
        }
        if self.mechanisms.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.mechanisms"),
                "at least one mechanism (nobody could log in)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_by_default_and_unknown_names_refused() {
        let c = SaslConfig::default();
        assert!(Mechanism::ALL.iter().all(|m| c.allows(*m)));
        assert!(c.validate("sasl").is_ok());
        let sha1 = SaslConfig {
            mechanisms: vec!["SCRAM-SHA-1".into(), "PLAIN".into()],
        };
        assert!(sha1.allows(Mechanism::ScramSha1) && !sha1.allows(Mechanism::ScramSha256));
        let bad = SaslConfig {
            mechanisms: vec!["scram-sha-1".into()],
        };
        let e = bad.validate("sasl").expect_err("case-sensitive");
        assert!(e.to_string().contains("sasl.mechanisms[0]"), "{e}");
        assert!(SaslConfig { mechanisms: vec![] }.validate("sasl").is_err());
    }
}
