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
//! When the built-in TURN server runs (`[turn] enabled`, the [`turn`](crate::turn) module), it
//! is listed after the configured services, as a `stun` and a `turn` service on UDP, with
//! credentials made from its own secret.
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
        let builtin = host.section::<crate::turn::TurnConfig>();
        let advertised = Arc::new(Advertised::new(&config, &builtin));
        if advertised.services.is_empty() {
            // Advertised only when it has something to say.
            return Ok(());
        }
        host.add_feature(NS);
        host.iq_handler(
            NS,
            IqScope::Host,
            iq_fn(move |req: IqRequest| {
                let advertised = advertised.clone();
                async move { handle(&advertised, req, OffsetDateTime::now_utc()) }
            }),
        )
    }
}

/// The services a host lists: the configured ones, then the built-in TURN server's when it
/// runs, each with the secret its credentials are made with.
struct Advertised {
    services: Vec<(ServiceConfig, String)>,
    credential_ttl_secs: u64,
}

impl Advertised {
    fn new(config: &ExtDiscoConfig, builtin: &crate::turn::TurnConfig) -> Self {
        let mut services: Vec<(ServiceConfig, String)> = config
            .services
            .iter()
            .map(|s| (s.clone(), config.secret.clone()))
            .collect();
        if builtin.enabled && builtin.advertise {
            if let Some((host, port)) = builtin.announced_host() {
                let secret = crate::turn::secret(builtin);
                for kind in ["stun", "turn"] {
                    let service = ServiceConfig {
                        kind: kind.into(),
                        host: host.clone(),
                        port,
                        transport: Some("udp".into()),
                        restricted: None,
                        name: None,
                    };
                    services.push((service, secret.clone()));
                }
            }
        }
        Advertised {
            services,
            credential_ttl_secs: config.credential_ttl_secs,
        }
    }
}

fn handle(config: &Advertised, req: IqRequest, now: OffsetDateTime) -> IqResult {
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
            for (s, secret) in config
                .services
                .iter()
                .filter(|(s, _)| wanted.is_none_or(|t| t == s.kind))
            {
                out.push_child(service_element(config, s, secret, &user, now));
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
            let found = config.services.iter().find(|(s, _)| {
                s.host == host && s.kind == kind && port.is_none_or(|p| p == s.port)
            });
            match found {
                Some((s, secret)) => Ok(Some(
                    Element::new("credentials", NS)
                        .with_child(service_element(config, s, secret, &user, now)),
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
    config: &Advertised,
    s: &ServiceConfig,
    secret: &str,
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
        if !secret.is_empty() {
            let expiry = now + time::Duration::seconds(config.credential_ttl_secs as i64);
            let (username, password) = turn_credentials(secret, user, expiry);
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

    #[test]
    fn the_builtin_turn_server_is_listed_when_it_runs() {
        let none = Advertised::new(&ExtDiscoConfig::default(), &Default::default());
        assert!(none.services.is_empty(), "off by default: nothing to list");
        let builtin = crate::turn::TurnConfig {
            enabled: true,
            address: "0.0.0.0:3478".into(),
            public_ip: "203.0.113.5".into(),
            secret: "inner".into(),
            ..Default::default()
        };
        let configured = ExtDiscoConfig {
            secret: "outer".into(),
            services: vec![ServiceConfig {
                kind: "turns".into(),
                host: "t.example".into(),
                port: 5349,
                transport: Some("tcp".into()),
                restricted: None,
                name: None,
            }],
            ..Default::default()
        };
        let a = Advertised::new(&configured, &builtin);
        let listed: Vec<_> = a
            .services
            .iter()
            .map(|(s, secret)| (s.kind.as_str(), s.host.as_str(), s.port, secret.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("turns", "t.example", 5349, "outer"),
                ("stun", "203.0.113.5", 3478, "inner"),
                ("turn", "203.0.113.5", 3478, "inner"),
            ]
        );
        let quiet = crate::turn::TurnConfig {
            advertise: false,
            ..builtin
        };
        assert_eq!(Advertised::new(&configured, &quiet).services.len(), 1);
    }
}
