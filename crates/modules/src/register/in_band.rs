//! XEP-0077 §3.1 on a stream that is not authenticated yet: creating an account, where the
//! host's `registration` setting allows it. Served as a pre-authentication handler
//! ([`rookery_core::preauth`]), so the stream offers and reaches it only over TLS; new
//! accounts from one address are limited per hour (`limits.registrations_per_ip_per_hour`,
//! counted across every host) and their passwords follow `limits.min_password_length`.

use super::NS;
use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::counters::{self, Counter};
use rookery_core::{
    pre_auth_fn, HostBuilder, IqResult, ModuleError, Place, PreAuthRequest, Section,
};
use rookery_stanza::{BareJid, IqType, StanzaError, StanzaErrorCondition};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The stream feature announcing in-band registration (XEP-0077 §4).
const NS_FEATURE: &str = "http://jabber.org/features/iq-register";
/// Addresses remembered by the limiter before windows older than an hour are dropped.
const MAX_ENTRIES: usize = 100_000;

/// `registration` in a `[[host]]`: in-band account registration by anyone who can connect.
/// Off by default.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Registration(pub bool);

impl Section for Registration {
    const KEY: &'static str = "registration";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# In-band registration (XEP-0077): anyone who can connect may create an account. Off by
# default; logged-in users can always change their password and delete their account.
registration = false
"#;
}

/// `limits.registrations_per_ip_per_hour`, in the `[limits]` table: one number for every host,
/// like the count it bounds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct RegistrationLimits {
    /// In-band registrations accepted from one IP address per hour.
    pub registrations_per_ip_per_hour: u32,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            registrations_per_ip_per_hour: 5,
        }
    }
}

impl Section for RegistrationLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    // Read at each use: a reload applies a new value.
    const LIVE: bool = true;
    const EXAMPLE: &'static str = r#"# In-band registrations (when a host allows them) accepted from one IP address per hour.
registrations_per_ip_per_hour = 5
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::require_positive(
            key,
            "registrations_per_ip_per_hour",
            self.registrations_per_ip_per_hour.into(),
        )
    }
}

/// In-band registrations per source address in the current hour (a fixed window).
#[derive(Default)]
pub struct RegistrationLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RegistrationLimiter {
    /// Counts one registration from `ip`; false if the address used its quota this hour.
    pub fn try_register(&self, ip: IpAddr, per_hour: u32) -> bool {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut map = self.windows.lock();
        if map.len() > MAX_ENTRIES {
            map.retain(|_, (start, _)| now.duration_since(*start) < hour);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= hour {
            *entry = (now, 0);
        }
        if entry.1 >= per_hour {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// Registers the pre-authentication handler, and the stream feature where registration is on.
/// The handler is there even where it is off, to answer `service-unavailable`.
pub(super) fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
    let open = host.section::<Registration>().0;
    let limiter = host.shared::<RegistrationLimiter>();
    if open {
        host.add_pre_auth_feature(Element::new("register", NS_FEATURE));
    }
    host.pre_auth_handler(
        NS,
        pre_auth_fn(move |req| {
            let limiter = limiter.clone();
            async move {
                if !open {
                    return Err(StanzaError::service_unavailable());
                }
                create_account(req, &limiter).await
            }
        }),
    )
}

async fn create_account(req: PreAuthRequest, limiter: &RegistrationLimiter) -> IqResult {
    match req.iq_type {
        IqType::Get => Ok(Some(
            Element::new("query", NS)
                .with_child(
                    Element::new("instructions", NS).with_text("Choose a username and password."),
                )
                .with_child(Element::new("username", NS))
                .with_child(Element::new("password", NS)),
        )),
        IqType::Set => {
            let field = |n: &str| req.payload.get_child(n, NS).map(|e| e.text());
            let (Some(user), Some(password)) = (field("username"), field("password")) else {
                return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                    .with_text("username and password are required"));
            };
            let domain = req.domain.as_str();
            let jid = BareJid::new(&format!("{}@{domain}", user.trim()))
                .ok()
                .filter(|j| j.node().is_some())
                .filter(|j| rookery_stanza::is_stable(&j.clone().into()))
                .ok_or_else(|| {
                    StanzaError::new(StanzaErrorCondition::JidMalformed)
                        .with_text("not a valid username")
                })?;
            let limits = &req.server.config().limits;
            if let Some(problem) = limits.password_problem(&password) {
                return Err(
                    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(problem)
                );
            }
            let per_hour = req
                .server
                .config()
                .section::<RegistrationLimits>()
                .registrations_per_ip_per_hour;
            if !limiter.try_register(req.peer.ip(), per_hour) {
                tracing::warn!(peer = %req.peer, "registration refused: rate limit");
                counters::incr(Counter::RegistrationsRefused);
                return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                    .with_text("too many registrations from this address; try later"));
            }
            let creds =
                tokio::task::spawn_blocking(move || rookery_sasl::generate_all(&password, 4096))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| StanzaError::new(StanzaErrorCondition::InternalServerError))?;
            let node = jid.node().map(|n| n.to_string()).unwrap_or_default();
            match req
                .server
                .storage()
                .accounts
                .create_account(domain, &node, &creds)
                .await
            {
                Ok(()) => {
                    tracing::info!(peer = %req.peer, jid = %jid, "account registered in-band");
                    // XEP-0133 §4.27: the host's welcome message, kept offline for the
                    // account's first login.
                    crate::admin::ops::send_welcome(&req.server, &jid).await;
                    Ok(None)
                }
                Err(rookery_storage::StorageError::AlreadyExists) => {
                    Err(StanzaError::new(StanzaErrorCondition::Conflict))
                }
                Err(e) => {
                    tracing::error!(error = %e, "registration failed");
                    Err(StanzaError::new(StanzaErrorCondition::InternalServerError))
                }
            }
        }
        _ => Err(StanzaError::bad_request("registration takes get or set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_limited_per_address() {
        let r = RegistrationLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(r.try_register(a, 2) && r.try_register(a, 2));
        assert!(!r.try_register(a, 2));
        assert!(r.try_register(b, 2), "other addresses are not affected");
    }
}
