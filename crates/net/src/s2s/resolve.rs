//! Finding a peer server (RFC 6120 §3.2, XEP-0368 §2): the `[s2s.hosts]` override for the
//! domain if there is one, else the `_xmpps-server._tcp` (direct TLS) and `_xmpp-server._tcp`
//! (STARTTLS) SRV records together, ordered by priority and, within a priority, by weight
//! (RFC 2782), else the domain's own addresses on port 5269.

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;

/// The port of `_xmpp-server` when a domain has no SRV record (RFC 6120 §3.2.2).
pub const DEFAULT_PORT: u16 = 5269;

/// Where to try connecting, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    /// TLS from the first byte (XEP-0368), else STARTTLS.
    pub direct_tls: bool,
}

/// One configured override: `"[tls://]host:port"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub host: String,
    pub port: u16,
    pub direct_tls: bool,
}

impl Override {
    /// Parses `"[tls://]host[:port]"` (an IPv6 address in brackets).
    pub fn parse(s: &str) -> Option<Override> {
        let (direct_tls, rest) = match s.strip_prefix("tls://") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return None,
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (rest, DEFAULT_PORT),
            }
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return None;
        }
        Some(Override {
            host: host.to_owned(),
            port,
            direct_tls,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The domain does not exist, offers no XMPP service ("." SRV target) or has no address.
    #[error("no server found for {0}")]
    NotFound(String),
}

/// Looks peer servers up. Cheap to share.
pub struct Resolver {
    dns: Option<TokioResolver>,
    overrides: HashMap<String, Override>,
}

impl Resolver {
    /// `nameservers`: where to send DNS queries (`ip:port`); empty means the system's
    /// configuration. A resolver that cannot be built (no usable system configuration)
    /// leaves only the overrides.
    pub fn new(nameservers: &[SocketAddr], overrides: HashMap<String, Override>) -> Resolver {
        let provider = TokioConnectionProvider::default();
        let dns = if nameservers.is_empty() {
            match TokioResolver::builder(provider) {
                Ok(b) => Some(b.build()),
                Err(e) => {
                    tracing::warn!(error = %e, "no system DNS configuration: only [s2s.hosts] is used");
                    None
                }
            }
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[ns.ip()],
                    ns.port(),
                    true,
                ));
            }
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                provider,
            );
            *builder.options_mut() = ResolverOpts::default();
            Some(builder.build())
        };
        Resolver { dns, overrides }
    }

    /// Whether `domain` has an override.
    pub fn is_overridden(&self, domain: &str) -> bool {
        self.overrides.contains_key(domain)
    }

    /// Where `domain`'s server may be reached, in the order to try.
    pub async fn candidates(&self, domain: &str) -> Result<Vec<Candidate>, ResolveError> {
        let not_found = || ResolveError::NotFound(domain.to_owned());
        if let Some(o) = self.overrides.get(domain) {
            let addrs = self.addresses(&o.host, o.port).await;
            if addrs.is_empty() {
                return Err(not_found());
            }
            return Ok(addrs
                .into_iter()
                .map(|addr| Candidate {
                    addr,
                    direct_tls: o.direct_tls,
                })
                .collect());
        }
        let dns = self.dns.as_ref().ok_or_else(not_found)?;
        // Both lookups at once: a server that offers neither costs one round trip.
        let (tls, plain) = tokio::join!(
            dns.srv_lookup(format!("_xmpps-server._tcp.{domain}.")),
            dns.srv_lookup(format!("_xmpp-server._tcp.{domain}.")),
        );
        let mut records = Vec::new();
        for (lookup, direct_tls) in [(tls, true), (plain, false)] {
            if let Ok(lookup) = lookup {
                for srv in lookup.iter() {
                    records.push(SrvRecord {
                        priority: srv.priority(),
                        weight: srv.weight(),
                        target: srv.target().to_utf8().trim_end_matches('.').to_owned(),
                        port: srv.port(),
                        direct_tls,
                    });
                }
            }
        }
        if records.is_empty() {
            // RFC 6120 §3.2.2: no SRV record, the domain itself on the default port.
            let addrs = self.addresses(domain, DEFAULT_PORT).await;
            if addrs.is_empty() {
                return Err(not_found());
            }
            return Ok(addrs
                .into_iter()
                .map(|addr| Candidate {
                    addr,
                    direct_tls: false,
                })
                .collect());
        }
        // RFC 2782: a single record with the target "." says there is no such service.
        if records.iter().all(|r| r.target.is_empty()) {
            return Err(not_found());
        }
        let mut out = Vec::new();
        let ordered = order(records, &mut rand::thread_rng());
        for r in ordered {
            if r.target.is_empty() {
                continue;
            }
            for addr in self.addresses(&r.target, r.port).await {
                out.push(Candidate {
                    addr,
                    direct_tls: r.direct_tls,
                });
            }
        }
        if out.is_empty() {
            return Err(not_found());
        }
        Ok(out)
    }

    async fn addresses(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return vec![SocketAddr::new(ip, port)];
        }
        match &self.dns {
            Some(dns) => match dns.lookup_ip(format!("{host}.")).await {
                Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
                Err(e) => {
                    tracing::debug!(host, error = %e, "no address");
                    Vec::new()
                }
            },
            None => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    /// Empty for ".".
    target: String,
    port: u16,
    direct_tls: bool,
}

/// RFC 2782's order: ascending priority; within a priority, a weighted random draw (a
/// record of weight 0 is rarely first). On a tie XEP-0368 §2.2 prefers direct TLS, which
/// the stable sort gives (those records were listed first).
fn order(mut records: Vec<SrvRecord>, rng: &mut impl Rng) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(n);
        let mut group: Vec<SrvRecord> = group.to_vec();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let mut draw = rng.gen_range(0..=total);
                group
                    .iter()
                    .position(|r| {
                        let w = u32::from(r.weight);
                        if draw <= w && (w > 0 || draw == 0) {
                            true
                        } else {
                            draw = draw.saturating_sub(w);
                            false
                        }
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(pick));
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str, direct_tls: bool) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            target: target.into(),
            port: 5269,
            direct_tls,
        }
    }

    #[test]
    fn overrides_parse() {
        assert_eq!(
            Override::parse("127.0.0.1:5270"),
            Some(Override {
                host: "127.0.0.1".into(),
                port: 5270,
                direct_tls: false
            })
        );
        assert_eq!(
            Override::parse("tls://xmpp.example.net"),
            Some(Override {
                host: "xmpp.example.net".into(),
                port: 5269,
                direct_tls: true
            })
        );
        assert_eq!(
            Override::parse("[::1]:5300"),
            Some(Override {
                host: "::1".into(),
                port: 5300,
                direct_tls: false
            })
        );
        for bad in ["", ":5269", "host:port", "a b:1", "[::1", "[::1]x"] {
            assert_eq!(Override::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_go_by_priority_then_weight() {
        let mut rng = rand::thread_rng();
        let records = vec![
            rec(20, 0, "c", false),
            rec(10, 0, "b", false),
            rec(10, 0, "a", true),
            rec(5, 1, "z", false),
        ];
        let order_of = |v: Vec<SrvRecord>| v.into_iter().map(|r| r.target).collect::<Vec<_>>();
        assert_eq!(
            order_of(order(records.clone(), &mut rng)),
            ["z", "b", "a", "c"]
        );
        // Within one priority, weight 100 against 1 comes first nearly always.
        let weighted = vec![rec(1, 1, "light", false), rec(1, 100, "heavy", false)];
        let firsts = (0..200)
            .filter(|_| order(weighted.clone(), &mut rng)[0].target == "heavy")
            .count();
        assert!(firsts > 150, "{firsts}");
    }
}
