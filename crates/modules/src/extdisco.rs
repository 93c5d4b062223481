//! XEP-0215 External Service Discovery: the STUN and TURN servers a host's users should use
//! for calls (Jingle ICE), with time-limited TURN credentials.
//!
//! The services come from the host's `[host.extdisco]` section. Credentials follow the
//! shared-secret scheme coturn (`use-auth-secret`) and eturnal implement (the "TURN REST
//! API"): the username is `<expiry as Unix time>:<the user's bare JID>`, the password
//! base64(HMAC-SHA1(secret, username)); the TURN server checks both with the same secret
//! and refuses the username once its time has passed. They are computed for each request,
//! so nothing is stored, and handed only to this server's own accounts: anyone else (a
//! remote entity, a service) gets `forbidden` (§3.1: the server may restrict who learns
//! which services).
//!
//! `<services/>` (§3.1) lists every service, or those of one `type`; a restricted service
//! comes with credentials when a secret is configured. `<credentials/>` (§3.3) renews them
//! for one service named by `host` and `type` (and `port` when given); an unknown one is
//! `item-not-found`.

use base64::Engine;
use hmac::{Hmac, Mac};
use rookery_core::config::ConfigError;
use rookery_core::{
    iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Place, Section,
    SectionDecl, Spec,
};
use rookery_stanza::{StanzaError, StanzaErrorCondition};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExtDisco;

/// One external service (§3.1 attributes).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `stun`, `stuns`, `turn` or `turns`.
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// `udp` or `tcp`; absent: the client picks.
    #[serde(default)]
    pub transport: Option<String>,
    /// Needs credentials; default: yes for TURN, no for STUN.
    #[serde(default)]
    pub restricted: Option<bool>,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
}

impl ServiceConfig {
    fn is_restricted(&self) -> bool {
        self.restricted
            .unwrap_or(matches!(self.kind.as_str(), "turn" | "turns"))
    }
}

/// `[host.extdisco]`: the STUN/TURN services of a host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExtDiscoConfig {
    /// The TURN server's shared secret (coturn `static-auth-secret`); empty: no credentials.
    pub secret: String,
    /// How long credentials are valid, in seconds.
    pub credential_ttl_secs: u64,
    pub services: Vec<ServiceConfig>,
}

impl Default for ExtDiscoConfig {
    fn default() -> Self {
        ExtDiscoConfig {
            secret: String::new(),
            credential_ttl_secs: 86_400,
            services: Vec::new(),
        }
    }
}

impl Section for ExtDiscoConfig {
    const KEY: &'static str = "extdisco";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# STUN and TURN servers for calls (XEP-0215 external service discovery), with time-limited
# TURN credentials from the secret the TURN server shares (coturn: use-auth-secret and
# static-auth-secret). Nothing is announced while no service is listed.
[host.extdisco]
secret = ""
# How long TURN credentials are valid, in seconds.
credential_ttl_secs = 86400
services = []
# [[host.extdisco.services]]
# type = "turn"          # stun, stuns, turn or turns
# host = "turn.example.org"
# port = 3478
# transport = "udp"      # udp or tcp; left out: either
# restricted = true      # needs credentials (the default for TURN)
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if !(60..=7 * 86_400).contains(&self.credential_ttl_secs) {
            return Err(ConfigError::invalid(
                format!("{key}.credential_ttl_secs"),
                "between 60 and 604800",
            ));
        }
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("{key}.services[{i}].{field}");
            if !matches!(s.kind.as_str(), "stun" | "stuns" | "turn" | "turns") {
                return Err(ConfigError::invalid(
                    at("type"),
                    "stun, stuns, turn or turns",
                ));
            }
            if s.host.is_empty() || s.host.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(at("host"), "a host name or address"));
            }
            if let Some(t) = &s.transport {
                if t != "udp" && t != "tcp" {
                    return Err(ConfigError::invalid(at("transport"), "udp or tcp"));
                }
            }
            if s.is_restricted() && self.secret.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.secret"),
                    "needed for a restricted service (TURN): the TURN server's shared secret",
                ));
            }
        }
        Ok(())
    }
}

impl Module for ExtDisco {
    const NAME: &'static str = "extdisco";
    const DEPENDS: &'static [&'static str] = &["disco"];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0215",
        title: "External Service Discovery (STUN/TURN, TURN REST API credentials)",
        version: "1.0.0",
    }];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<ExtDiscoConfig>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let config = host.section::<ExtDiscoConfig>();
        if config.services.is_empty() {
            // Advertised only when it has something to say.
            return Ok(());
        }
        host.add_feature(NS);
        let config: Arc<ExtDiscoConfig> = config;
        host.iq_handler(
            NS,
            IqScope::Host,
            iq_fn(move |req: IqRequest| {
                let config = config.clone();
                async move { handle(&config, req, OffsetDateTime::now_utc()) }
            }),
        )
    }
}

fn handle(config: &ExtDiscoConfig, req: IqRequest, now: OffsetDateTime) -> IqResult {
    req.require_get()?;
    // Only this server's own accounts learn the services and get credentials.
    if req.from.node().is_none() || !req.server.serves(req.from.domain().as_str()) {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
    }
    let user = req.from.to_bare().to_string();
    match req.payload.name() {
        "services" => {
            let wanted = req.payload.attr("type");
            let mut out = Element::new("services", NS);
            if let Some(t) = wanted {
                out.set_attr("type", t);
            }
            for s in config
                .services
                .iter()
                .filter(|s| wanted.is_none_or(|t| t == s.kind))
            {
                out.push_child(service_element(config, s, &user, now));
            }
            Ok(Some(out))
        }
        "credentials" => {
            let Some(asked) = req.payload.get_child("service", NS) else {
                return Err(StanzaError::bad_request("name the service"));
            };
            let (Some(host), Some(kind)) = (asked.attr("host"), asked.attr("type")) else {
                return Err(StanzaError::bad_request("a service needs host and type"));
            };
            let port = asked.attr("port").and_then(|p| p.parse::<u16>().ok());
            let found = config
                .services
                .iter()
                .find(|s| s.host == host && s.kind == kind && port.is_none_or(|p| p == s.port));
            match found {
                Some(s) => Ok(Some(
                    Element::new("credentials", NS)
                        .with_child(service_element(config, s, &user, now)),
                )),
                None => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
            }
        }
        _ => Err(StanzaError::new(
            StanzaErrorCondition::FeatureNotImplemented,
        )),
    }
}

fn service_element(
    config: &ExtDiscoConfig,
    s: &ServiceConfig,
    user: &str,
    now: OffsetDateTime,
) -> Element {
    let mut el = Element::new("service", NS)
        .with_attr("type", s.kind.as_str())
        .with_attr("host", s.host.as_str())
        .with_attr("port", s.port.to_string());
    if let Some(t) = &s.transport {
        el.set_attr("transport", t.as_str());
    }
    if let Some(n) = &s.name {
        el.set_attr("name", n.as_str());
    }
    if s.is_restricted() {
        el.set_attr("restricted", "1");
        if !config.secret.is_empty() {
            let expiry = now + time::Duration::seconds(config.credential_ttl_secs as i64);
            let (username, password) = turn_credentials(&config.secret, user, expiry);
            el.set_attr("username", username);
            el.set_attr("password", password);
            if let Ok(stamp) = expiry
                .replace_nanosecond(0)
                .unwrap_or(expiry)
                .format(&Rfc3339)
            {
                el.set_attr("expires", stamp);
            }
        }
    }
    el
}

/// The TURN REST API credentials for `user` until `expiry`: `expiry:user` and
/// base64(HMAC-SHA1(secret, username)).
pub fn turn_credentials(secret: &str, user: &str, expiry: OffsetDateTime) -> (String, String) {
    let username = format!("{}:{user}", expiry.unix_timestamp());
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_the_turn_rest_api_ones() {
        // The username and password of the TURN REST API scheme for a known secret and time.
        let expiry = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let (u, p) = turn_credentials("north", "alice@example.org", expiry);
        assert_eq!(u, "1700000000:alice@example.org");
        // base64(HMAC-SHA1("north", "1700000000:alice@example.org")), computed independently.
        assert_eq!(p, "PZI+z4ibN1IQ7v4pzuL4fO8lnhI=");
    }

    #[test]
    fn restricted_defaults_by_kind_and_validation() {
        let turn = ServiceConfig {
            kind: "turn".into(),
            host: "t.example".into(),
            port: 3478,
            transport: None,
            restricted: None,
            name: None,
        };
        assert!(turn.is_restricted());
        let stun = ServiceConfig {
            kind: "stun".into(),
            ..turn.clone()
        };
        assert!(!stun.is_restricted());
        let mut c = ExtDiscoConfig {
            services: vec![turn.clone()],
            ..Default::default()
        };
        assert!(
            c.validate("host[0].extdisco").is_err(),
            "TURN needs a secret"
        );
        c.secret = "s".into();
        assert!(c.validate("host[0].extdisco").is_ok());
        c.services[0].kind = "ftp".into();
        assert!(c.validate("host[0].extdisco").is_err());
    }
}
