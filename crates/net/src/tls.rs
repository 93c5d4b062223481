//! TLS for client streams and the HTTPS listener: certificates per virtual host (loaded, or generated self-signed on
//! first start), SNI selection, TLS 1.2/1.3 only, and the channel-binding data SCRAM-PLUS needs.

use parking_lot::RwLock;
use rookery_core::Config;
use rookery_sasl::ChannelBindings;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("host {domain}: {message}")]
    Host { domain: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A problem with a file the configuration names, with the key that named it.
    #[error("{key}: {error}")]
    Configured { key: String, error: Box<TlsError> },
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// One host's certificate, as rustls serves it and as channel binding needs it.
struct HostCert {
    key: Arc<CertifiedKey>,
    /// RFC 5929 tls-server-end-point data for this certificate.
    end_point: Vec<u8>,
}

/// The TLS configurations built from one load of every host's certificate. A connection
/// takes the current one before its handshake and computes its channel-binding data from the
/// same one, so `tls-server-end-point` always names the certificate that connection was
/// shown, even when the certificates are reloaded in between.
pub struct TlsConfigs {
    certs: Arc<HashMap<String, HostCert>>,
    default_domain: String,
    /// For STARTTLS.
    pub starttls: Arc<rustls::ServerConfig>,
    /// For direct TLS (XEP-0368): the same, with the `xmpp-client` ALPN protocol.
    pub direct: Arc<rustls::ServerConfig>,
    /// For the HTTPS listener: the same certificates, with the `http/1.1` ALPN protocol (the
    /// only HTTP version it speaks; WebSocket upgrades are HTTP/1.1).
    pub https: Arc<rustls::ServerConfig>,
    /// For incoming server-to-server STARTTLS: the same certificates, asking the peer for
    /// its certificate (any is accepted in the handshake; `crate::s2s::pki` checks it for
    /// the domain the peer claims afterwards, so an untrusted one can still fall back to
    /// dialback).
    pub s2s_starttls: Arc<rustls::ServerConfig>,
    /// For incoming direct-TLS server-to-server streams (XEP-0368, ALPN `xmpp-server`).
    pub s2s_direct: Arc<rustls::ServerConfig>,
}

/// Certificates of every served domain; picks one by SNI, else the first host's. Cloned into
/// every listener; [`TlsContext::reload`] replaces the certificates for all of them at once:
/// new handshakes use the new ones, established connections keep theirs.
#[derive(Clone)]
pub struct TlsContext {
    /// Swapped whole on reload. Read once per handshake (an `Arc` clone under a read lock),
    /// so a lock costs nothing that matters and needs no extra dependency.
    current: Arc<RwLock<Arc<TlsConfigs>>>,
}

/// What a reload did, per served domain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Domains whose certificate chain differs from the one served before.
    pub changed: Vec<String>,
    /// Domains whose certificate chain was read again and is the same.
    pub unchanged: Vec<String>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("TlsContext")
            .field("domains", &current.certs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("domains", &self.certs.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug)]
struct SniResolver {
    certs: Arc<HashMap<String, HostCert>>,
    default_domain: String,
}

impl std::fmt::Debug for HostCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostCert")
    }
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<&HostCert> {
        sni.and_then(|n| self.certs.get(&n.to_ascii_lowercase()))
            .or_else(|| self.certs.get(&self.default_domain))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// Paths of a host's certificate and key: configured, or the generated pair in the data dir.
pub fn cert_paths(config: &Config, domain: &str) -> (PathBuf, PathBuf, bool) {
    match config
        .host(domain)
        .and_then(|h| Some((h.certificate.clone()?, h.key.clone()?)))
    {
        Some((c, k)) => (c, k, false),
        None => {
            let dir = config.data_dir.join("certs");
            (
                dir.join(format!("{domain}.pem")),
                dir.join(format!("{domain}.key")),
                true,
            )
        }
    }
}

/// Writes a self-signed certificate for `domain` (valid ten years, SAN = the domain).
pub fn generate_self_signed(domain: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let host_err = |m: String| TlsError::Host {
        domain: domain.to_owned(),
        message: m,
    };
    let key_pair = rcgen::KeyPair::generate().map_err(|e| host_err(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| host_err(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let c = params
        .self_signed(&key_pair)
        .map_err(|e| host_err(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    write_private(key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, c.pem()).map_err(|e| file_err(cert, e))?;
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))
}

/// Reads and checks a certificate chain and its key for `domain`: parseable, key matching,
/// currently valid and naming the domain.
pub fn load_host_cert(
    domain: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = std::fs::read(cert_path).map_err(|e| file_err(cert_path, e))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_path, format!("not a PEM certificate: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_err(cert_path, "no certificate found in the file"));
    };
    let key_pem = std::fs::read(key_path).map_err(|e| file_err(key_path, e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| file_err(key_path, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| file_err(key_path, "no private key found in the file"))?;

    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| file_err(cert_path, format!("cannot parse certificate: {e}")))?;
    if !x509.validity().is_valid() {
        return Err(file_err(
            cert_path,
            format!(
                "certificate is not valid now (valid {} to {})",
                x509.validity().not_before,
                x509.validity().not_after
            ),
        ));
    }
    if !names_domain(&x509, domain) {
        return Err(file_err(
            cert_path,
            format!("certificate does not name {domain} in its subjectAltName or CN"),
        ));
    }
    Ok((chain, key))
}

fn names_domain(cert: &x509_parser::certificate::X509Certificate<'_>, domain: &str) -> bool {
    let matches = |name: &str| {
        let name = name.to_ascii_lowercase();
        name == domain
            || name
                .strip_prefix("*.")
                .is_some_and(|rest| domain.split_once('.').is_some_and(|(_, d)| d == rest))
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        return san.value.general_names.iter().any(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => matches(d),
            _ => false,
        });
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(matches)
}

impl TlsContext {
    /// Loads every host's certificate, generating self-signed ones where none is configured
    /// and none was generated before. With `generate = false` (for `rookery check`) a missing
    /// generated certificate is not an error: it will be made at start.
    pub fn load(config: &Config, generate: bool) -> Result<TlsContext, TlsError> {
        Ok(TlsContext {
            current: Arc::new(RwLock::new(Arc::new(TlsConfigs::load(config, generate)?))),
        })
    }

    /// Reads every host's certificate and key again (the paths `config` gives) and serves
    /// them from the next handshake on. Connections already established are not touched. On
    /// any error nothing changes: the certificates served before stay in use.
    pub fn reload(&self, config: &Config) -> Result<Reloaded, TlsError> {
        let new = Arc::new(TlsConfigs::load(config, true)?);
        let old = std::mem::replace(&mut *self.current.write(), new.clone());
        let mut report = Reloaded::default();
        for h in &config.hosts {
            let Some(cert) = new.certs.get(&h.domain) else {
                continue;
            };
            let same = old
                .certs
                .get(&h.domain)
                .is_some_and(|o| o.key.cert == cert.key.cert);
            if same {
                report.unchanged.push(h.domain.clone());
            } else {
                report.changed.push(h.domain.clone());
            }
        }
        Ok(report)
    }

    /// The configurations to handshake with now. Keep it for the connection's channel
    /// bindings ([`TlsConfigs::channel_bindings`]).
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.current.read().clone()
    }
}

impl TlsConfigs {
    fn load(config: &Config, generate: bool) -> Result<TlsConfigs, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut certs = HashMap::new();
        for (i, h) in config.hosts.iter().enumerate() {
            let (cert_path, key_path, generated) = cert_paths(config, &h.domain);
            // A configured file's problem names the configuration key, so the operator knows
            // which line to fix; generated files are the server's own.
            let name_key = |e: TlsError| match &e {
                TlsError::File { path, .. } if !generated => {
                    let field = if *path == key_path {
                        "key"
                    } else {
                        "certificate"
                    };
                    TlsError::Configured {
                        key: format!("host[{i}].{field} ({})", h.domain),
                        error: Box::new(e),
                    }
                }
                _ => e,
            };
            if generated && !cert_path.exists() {
                if !generate {
                    continue;
                }
                generate_self_signed(&h.domain, &cert_path, &key_path)?;
                tracing::info!(domain = %h.domain, path = %cert_path.display(), "generated a self-signed certificate");
            }
            let (chain, key) =
                load_host_cert(&h.domain, &cert_path, &key_path).map_err(name_key)?;
            let end_point = rookery_sasl::tls_server_end_point(&chain[0])
                .map_err(|e| file_err(&cert_path, format!("cannot compute channel binding: {e}")))
                .map_err(name_key)?;
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| file_err(&key_path, format!("unusable private key: {e}")))
                .map_err(name_key)?;
            let ck = CertifiedKey::new(chain, signing);
            match ck.keys_match() {
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(_) => {
                    return Err(name_key(file_err(
                        &key_path,
                        format!("the key does not belong to {}", cert_path.display()),
                    )))
                }
            }
            certs.insert(
                h.domain.clone(),
                HostCert {
                    key: Arc::new(ck),
                    end_point,
                },
            );
        }
        let certs = Arc::new(certs);
        let default_domain = config
            .hosts
            .first()
            .map(|h| h.domain.clone())
            .unwrap_or_default();
        let make = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(SniResolver {
                    certs: certs.clone(),
                    default_domain: default_domain.clone(),
                }));
            cfg.alpn_protocols = alpn;
            // Keep session tickets small in number: they are per connection memory.
            cfg.send_tls13_tickets = 0;
            // Client connections (XMPP streams, HTTPS) take the keys over after the handshake
            // and protect their records themselves (`crate::tls_records`); the key log gives
            // them the TLS 1.3 traffic secrets their key updates derive from.
            cfg.enable_secret_extraction = true;
            cfg.key_log = Arc::new(crate::tls_records::TrafficSecrets);
            Ok(Arc::new(cfg))
        };
        let make_s2s = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_client_cert_verifier(Arc::new(crate::s2s::pki::AnyPeerCertificate::new(
                    provider.clone(),
                )))
                .with_cert_resolver(Arc::new(SniResolver {
                    certs: certs.clone(),
                    default_domain: default_domain.clone(),
                }));
            cfg.alpn_protocols = alpn;
            cfg.send_tls13_tickets = 0;
            Ok(Arc::new(cfg))
        };
        Ok(TlsConfigs {
            starttls: make(Vec::new())?,
            direct: make(vec![b"xmpp-client".to_vec()])?,
            https: make(vec![b"http/1.1".to_vec()])?,
            s2s_starttls: make_s2s(Vec::new())?,
            s2s_direct: make_s2s(vec![b"xmpp-server".to_vec()])?,
            certs,
            default_domain,
        })
    }

    /// The certificate and key served for `domain` (a host), for presenting it as a client
    /// certificate on outgoing server-to-server streams.
    pub fn certified_key(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.get(domain).map(|c| c.key.clone())
    }

    /// Channel-binding data of a server connection established with these configurations.
    pub fn channel_bindings(&self, conn: &rustls::ServerConnection) -> ChannelBindings {
        let resolver = SniResolver {
            certs: self.certs.clone(),
            default_domain: self.default_domain.clone(),
        };
        let tls_server_end_point = resolver
            .pick(conn.server_name())
            .map(|c| c.end_point.clone());
        // RFC 9266 defines tls-exporter for TLS 1.3; with 1.2 only tls-server-end-point is
        // offered (a 1.2 exporter is only safe with extended master secret).
        let tls_exporter = (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3))
            .then(|| {
                conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .ok()
            })
            .flatten();
        ChannelBindings {
            tls_exporter,
            tls_server_end_point,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_loads_and_checks_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("x.pem"), dir.path().join("x.key"));
        generate_self_signed("example.org", &c, &k).expect("generate");
        load_host_cert("example.org", &c, &k).expect("loads for its domain");
        let e = load_host_cert("other.org", &c, &k).unwrap_err().to_string();
        assert!(e.contains("does not name other.org"), "{e}");
        std::fs::write(&k, "garbage").expect("write");
        assert!(load_host_cert("example.org", &c, &k).is_err());
    }

    fn pem_chain(path: &Path) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(path).expect("read certificate");
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .expect("PEM certificate")
    }

    /// A TLS handshake in memory against `configs`, trusting `roots`; returns the certificate
    /// the client was shown and the server side's channel-binding data.
    fn handshake(
        configs: &TlsConfigs,
        roots: &[CertificateDer<'static>],
    ) -> (CertificateDer<'static>, ChannelBindings) {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(store)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("example.org").expect("name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), name).expect("client");
        let mut server = rustls::ServerConnection::new(configs.starttls.clone()).expect("server");
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client write");
            server.read_tls(&mut buf.as_slice()).expect("server read");
            server.process_new_packets().expect("server handshake");
            buf.clear();
            server.write_tls(&mut buf).expect("server write");
            client.read_tls(&mut buf.as_slice()).expect("client read");
            client.process_new_packets().expect("client handshake");
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let seen = client.peer_certificates().expect("server certificate")[0].clone();
        (seen.into_owned(), configs.channel_bindings(&server))
    }

    #[test]
    fn reload_serves_new_certificates_to_new_handshakes_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("x.pem"), dir.path().join("x.key"));
        let toml = "data_dir = 'data'\n[[host]]\ndomain = 'example.org'\n\
                    certificate = 'x.pem'\nkey = 'x.key'\n";
        let config = Config::from_toml(
            toml,
            &dir.path().join("t.toml"),
            dir.path(),
            &rookery_core::ModuleRegistry::new(),
        )
        .expect("config");
        generate_self_signed("example.org", &c, &k).expect("generate");
        let first = pem_chain(&c);
        let tls = TlsContext::load(&config, false).expect("load");
        let before = tls.current();

        generate_self_signed("example.org", &c, &k).expect("generate again");
        let second = pem_chain(&c);
        assert_ne!(first, second);
        let roots = [first[0].clone(), second[0].clone()];
        let report = tls.reload(&config).expect("reload");
        assert_eq!(report.changed, ["example.org"]);
        assert!(report.unchanged.is_empty());

        let (seen, cb) = handshake(&tls.current(), &roots);
        assert_eq!(seen, second[0], "a new handshake gets the new certificate");
        let end_point = rookery_sasl::tls_server_end_point(&second[0]).expect("end point");
        assert_eq!(cb.tls_server_end_point, Some(end_point));
        // Configurations taken before the reload (a handshake under way) keep the old
        // certificate and channel-binding data that match it.
        let (seen, cb) = handshake(&before, &roots);
        assert_eq!(seen, first[0]);
        let end_point = rookery_sasl::tls_server_end_point(&first[0]).expect("end point");
        assert_eq!(cb.tls_server_end_point, Some(end_point));

        let report = tls.reload(&config).expect("reload unchanged");
        assert_eq!(report.unchanged, ["example.org"]);
        assert!(report.changed.is_empty());

        std::fs::write(&c, "not a certificate").expect("write");
        let e = tls.reload(&config).unwrap_err().to_string();
        assert!(e.contains("x.pem"), "{e}");
        let (seen, _) = handshake(&tls.current(), &roots);
        assert_eq!(
            seen, second[0],
            "a failed reload keeps the certificate served"
        );
    }
}
