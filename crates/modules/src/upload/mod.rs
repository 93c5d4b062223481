//! HTTP File Upload (XEP-0363): a service on its own domain (`upload.<host>` by default)
//! that hands local accounts upload slots, and an HTTP handler that takes the uploads and
//! serves the files.
//!
//! * this file: the module (its `[host.upload]` section), the service (disco with the
//!   XEP-0128 form of §3, slot requests of §4 and their errors of §5), and the expiry task;
//! * [`slot`]: file names, content types, the PUT URL's signature, with no I/O;
//! * [`files`]: the HTTP side (PUT streamed to a temporary file and renamed into place
//!   when complete, GET and HEAD with headers that keep browsers from running what was
//!   uploaded) and the files on disk.
//!
//! A slot is recorded in the `UploadStore` when it is issued (the owner's daily quota is
//! checked in the same transaction). Its PUT URL is signed with HMAC-SHA-256 over the
//! file's path, size, content type and the URL's expiry, with a secret kept in
//! `<data_dir>/upload/secret` (created 0600 on first start), so the HTTP side needs nothing
//! but the record and the secret to accept an upload. Files live in
//! `<data_dir>/upload/files/<slot id>`: the name on disk is the random id only; the
//! cleaned file name is the URL's last segment and the record's.

pub mod files;
pub mod slot;

use async_trait::async_trait;
use rookery_core::config::ConfigError;
use rookery_core::{
    spawn_background, HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Server,
    Service, ServiceHandle, Spec,
};
use rookery_stanza::{IqType, Stanza, StanzaError, StanzaErrorCondition, StanzaKind};
use rookery_storage::{StorageError, UploadRecord};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "urn:xmpp:http:upload:0";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// The quota window: a user's uploads of the last day count (§5's "quota reached").
pub const QUOTA_WINDOW_SECS: i64 = 86_400;
/// How often expired files are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);
/// Records deleted per transaction by the expiry task.
const EXPIRY_BATCH: usize = 500;

pub struct Upload;

/// `[host.upload]`: the upload service of a host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSettings {
    /// The service's domain; `upload.<host>` when empty.
    pub domain: String,
    /// The service's name in disco.
    pub name: String,
    /// Largest file, in bytes (announced in disco, §3).
    pub max_file_size: u64,
    /// Bytes one user may upload per day (slots issued in the last 24 hours).
    pub quota_per_user_per_day: u64,
    /// How long a PUT URL stays valid.
    pub slot_lifetime_secs: u64,
    /// Files are deleted this many days after their slot was issued; 0 keeps them.
    pub expire_after_days: u64,
    /// The URL the GET URLs start with (before `/<id>/<name>`); empty: the HTTP
    /// listener's (`[http] public_url`, or `https://<host>:<port>`), then
    /// `<path_prefix>/upload/<service domain>`.
    pub get_url_base: String,
    /// The same for PUT URLs (an upload endpoint behind another proxy).
    pub put_url_base: String,
    /// Content types that may be uploaded (`image/*`, `application/pdf`); empty: any.
    pub allowed_content_types: Vec<String>,
    /// Content types that may not be uploaded, checked after the allow list.
    pub denied_content_types: Vec<String>,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            domain: String::new(),
            name: "HTTP File Upload".into(),
            max_file_size: 100 * 1024 * 1024,
            quota_per_user_per_day: 1024 * 1024 * 1024,
            slot_lifetime_secs: 300,
            expire_after_days: 30,
            get_url_base: String::new(),
            put_url_base: String::new(),
            allowed_content_types: Vec::new(),
            denied_content_types: Vec::new(),
        }
    }
}

impl Section for UploadSettings {
    const KEY: &'static str = "upload";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# HTTP File Upload (XEP-0363, the "upload" module): users upload files over the HTTP(S)
# listener and share the links. Files are in <data_dir>/upload/.
[host.upload]
# The service's domain; empty means upload.<host>.
domain = ""
name = "HTTP File Upload"
# Largest file, in bytes (100 MiB).
max_file_size = 104857600
# Bytes one user may upload in 24 hours (1 GiB); over it, requests are refused until the
# oldest upload of the window is a day old.
quota_per_user_per_day = 1073741824
# How long an upload URL stays valid, in seconds.
slot_lifetime_secs = 300
# Files are deleted this many days after upload; 0 keeps them.
expire_after_days = 30
# The URLs clients get start with these (then /<id>/<file name>); empty: the HTTP
# listener's URL ([http] public_url, else https://<host>:<port>) with
# <path_prefix>/upload/<service domain>. Set them when a proxy serves the files elsewhere.
get_url_base = ""
put_url_base = ""
# Content types that may be uploaded ("image/*", "application/pdf"); empty: any.
allowed_content_types = []
# Content types that may not be uploaded.
denied_content_types = []
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("max_file_size", self.max_file_size),
            ("quota_per_user_per_day", self.quota_per_user_per_day),
            ("slot_lifetime_secs", self.slot_lifetime_secs),
        ] {
            crate::require_positive(key, name, v)?;
        }
        if self.slot_lifetime_secs > 7 * 86_400 {
            return Err(ConfigError::invalid(
                format!("{key}.slot_lifetime_secs"),
                "must not exceed a week (604800)",
            ));
        }
        for (name, v) in [
            ("get_url_base", &self.get_url_base),
            ("put_url_base", &self.put_url_base),
        ] {
            let rest = v
                .strip_prefix("https://")
                .or_else(|| v.strip_prefix("http://"));
            if !v.is_empty()
                && !rest.is_some_and(|r| {
                    !r.is_empty() && !r.ends_with('/') && !r.contains(['?', '#', ' '])
                })
            {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "empty, or an http:// or https:// URL without query, fragment or trailing /",
                ));
            }
        }
        crate::require_domain(key, &self.domain)
    }
}

/// The files of every upload service of the server: `<data_dir>/upload/`.
pub fn upload_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("upload")
}

/// The signing secret: 32 random bytes in `<dir>/secret`, created once with mode 0600 and
/// read at every start after, so URLs signed before a restart stay valid.
pub fn load_or_create_secret(dir: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let path = dir.join("secret");
    std::fs::create_dir_all(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut f) => {
            let mut secret = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
            f.write_all(&secret)?;
            f.sync_all()?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut secret = Vec::new();
            std::fs::File::open(&path)?.read_to_end(&mut secret)?;
            if secret.len() < 32 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is shorter than 32 bytes", path.display()),
                ));
            }
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// What the service and the HTTP handler of one host share.
pub struct Inner {
    /// The virtual host whose accounts may upload.
    host: String,
    settings: UploadSettings,
    secret: Vec<u8>,
    /// `<data_dir>/upload`.
    dir: PathBuf,
    /// The handler's mount: `/upload/<service domain>`.
    mount: String,
    storage: rookery_storage::Storage,
}

impl Module for Upload {
    const NAME: &'static str = "upload";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0363",
        title: "HTTP File Upload",
        version: "1.2.0",
    }];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<UploadSettings>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let settings = host.section::<UploadSettings>();
        let domain = if settings.domain.is_empty() {
            format!("upload.{}", host.domain())
        } else {
            settings.domain.clone()
        };
        let dir = upload_dir(&host.config().data_dir);
        let secret = load_or_create_secret(&dir).map_err(|e| ModuleError::Init {
            module: Self::NAME,
            message: format!("cannot read or create the upload secret: {e}"),
        })?;
        let inner = Arc::new(Inner {
            host: host.domain().to_owned(),
            mount: format!("/upload/{domain}"),
            settings: (*settings).clone(),
            secret,
            dir,
            storage: host.storage().clone(),
        });
        host.http_handler(&inner.mount, files::Files(inner.clone()))?;
        host.service_domain(&domain, Some(&settings.name), UploadService(inner))
    }

    fn start(server: &Arc<Server>) {
        let dir = upload_dir(&server.config().data_dir);
        let storage = server.storage().clone();
        let weak = Arc::downgrade(server);
        spawn_background(server, "upload expiry", async move {
            let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
            loop {
                tick.tick().await;
                // Asked at each round: a reload may add a host with its own period.
                let Some(days) = weak.upgrade().map(|s| expiry_days(&s)) else {
                    return;
                };
                let cutoff = days.map(|d| {
                    now_unix()
                        .saturating_sub(i64::try_from(d.saturating_mul(86_400)).unwrap_or(i64::MAX))
                });
                if let Err(e) = files::expire(&storage, &dir, cutoff, EXPIRY_BATCH).await {
                    tracing::warn!(error = %e, "upload expiry failed");
                }
            }
        });
    }
}

/// One expiry period for the whole server: the shortest any host that runs the module asks
/// for; `None` keeps files for ever.
fn expiry_days(server: &Server) -> Option<u64> {
    server
        .config()
        .hosts
        .iter()
        .filter(|h| {
            server
                .host(&h.domain)
                .is_some_and(|host| host.modules().contains(&Upload::NAME))
        })
        .map(|h| h.section::<UploadSettings>().expire_after_days)
        .filter(|d| *d > 0)
        .min()
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

struct UploadService(Arc<Inner>);

#[async_trait]
impl Service for UploadService {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza) {
        let inner = &self.0;
        if stanza.kind() != StanzaKind::Iq || !stanza.iq_type().is_some_and(IqType::is_request) {
            if stanza.kind() == StanzaKind::Message && !stanza.is_error() {
                reply_error(
                    service,
                    &stanza,
                    StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
                )
                .await;
            }
            return;
        }
        let to_domain = stanza
            .to()
            .is_some_and(|t| t.node().is_none() && t.resource().is_none());
        let get = stanza.iq_type() == Some(IqType::Get);
        let payload = stanza.element().children().next().cloned();
        let answer = match payload.as_ref().map(|p| (p.ns(), p.name())) {
            _ if !to_domain => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
            Some((NS_DISCO_INFO, "query")) if get => {
                match payload.as_ref().and_then(|p| p.attr("node")) {
                    None => Ok(inner.disco_info()),
                    Some(_) => Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)),
                }
            }
            Some((NS_DISCO_ITEMS, "query")) if get => Ok(Element::new("query", NS_DISCO_ITEMS)),
            Some((NS, "request")) if get => match payload.as_ref() {
                Some(p) => inner.request_slot(service, &stanza, p).await,
                None => Err(StanzaError::bad_request("no request")),
            },
            _ => Err(StanzaError::new(StanzaErrorCondition::ServiceUnavailable)),
        };
        match answer {
            Ok(payload) => {
                if let Some(to) = stanza.from() {
                    let mut el = stanza.iq_result(Some(payload));
                    el.set_attr("to", to.as_str());
                    if let Err(e) = service.send(el).await {
                        tracing::debug!(error = %e, "an upload answer was not sent");
                    }
                }
            }
            Err(e) => reply_error(service, &stanza, e).await,
        }
    }
}

async fn reply_error(service: &ServiceHandle, stanza: &Stanza, e: StanzaError) {
    let (Some(mut reply), Some(to)) = (stanza.error_reply(&e), stanza.from()) else {
        return;
    };
    reply.set_attr("to", to.as_str());
    if let Err(e) = service.send(reply).await {
        tracing::debug!(error = %e, "an upload error was not sent");
    }
}

/// A slot: where to PUT and where the file will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub put: String,
    pub get: String,
}

impl Inner {
    /// §3: identity store/file, the feature, and the form with the largest file.
    fn disco_info(&self) -> Element {
        let mut q = Element::new("query", NS_DISCO_INFO).with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", self.settings.name.clone()),
        );
        for f in [NS_DISCO_INFO, NS_DISCO_ITEMS, NS] {
            q.push_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        q.push_child(
            crate::form::FormBuilder::new("result", NS)
                .field(
                    "max-file-size",
                    None,
                    None,
                    &[&self.settings.max_file_size.to_string()],
                )
                .build(),
        );
        q
    }

    /// The URL bases: the configured ones, else the HTTP listener's with the mount.
    fn bases(&self, server: &Server) -> Option<(String, String)> {
        let default = || {
            server
                .http_endpoint()
                .and_then(|e| e.url(&self.host, &self.mount))
        };
        let get = match self.settings.get_url_base.as_str() {
            "" => default()?,
            b => b.to_owned(),
        };
        let put = match self.settings.put_url_base.as_str() {
            "" => default()?,
            b => b.to_owned(),
        };
        Some((get, put))
    }

    /// §4: a slot for a local account of the host, or the errors of §5.
    async fn request_slot(
        &self,
        service: &ServiceHandle,
        stanza: &Stanza,
        request: &Element,
    ) -> Result<Element, StanzaError> {
        let Some(from) = stanza.from() else {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden));
        };
        // Uploads count against an account's quota and go with the account: only the
        // host's own accounts get slots (§5 "not allowed to upload").
        let (Some(user), true) = (from.node(), from.domain().as_str() == self.host) else {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("Only local users may upload files"));
        };
        let user = user.to_string();
        let file_name = request
            .attr("filename")
            .and_then(slot::clean_file_name)
            .ok_or_else(|| StanzaError::bad_request("A file name is required"))?;
        let size: u64 = request
            .attr("size")
            .and_then(|s| s.trim().parse().ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| StanzaError::bad_request("A size in bytes is required"))?;
        let content_type = match request.attr("content-type") {
            None | Some("") => "application/octet-stream".to_owned(),
            Some(ct) => slot::clean_content_type(ct)
                .ok_or_else(|| StanzaError::bad_request("Invalid content type"))?,
        };
        if size > self.settings.max_file_size {
            // §5: the limit in the error, so the client can tell the user.
            return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text(format!(
                    "File too large: the maximum is {} bytes",
                    self.settings.max_file_size
                ))
                .with_app_specific(
                    Element::new("file-too-large", NS).with_child(
                        Element::new("max-file-size", NS)
                            .with_text(self.settings.max_file_size.to_string()),
                    ),
                ));
        }
        let allowed = &self.settings.allowed_content_types;
        if (!allowed.is_empty() && !allowed.iter().any(|p| slot::type_matches(p, &content_type)))
            || self
                .settings
                .denied_content_types
                .iter()
                .any(|p| slot::type_matches(p, &content_type))
        {
            return Err(
                StanzaError::new(StanzaErrorCondition::Forbidden).with_text(format!(
                    "Files of type {} may not be uploaded",
                    slot::essence(&content_type)
                )),
            );
        }
        let server = service
            .server()
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::InternalServerError))?;
        let (get_base, put_base) = self.bases(&server).ok_or_else(|| {
            StanzaError::new(StanzaErrorCondition::ServiceUnavailable)
                .with_text("No HTTP listener serves uploads")
        })?;
        let now = now_unix();
        let record = UploadRecord {
            id: rookery_stanza::random_id(slot::ID_LEN),
            domain: self.host.clone(),
            user: user.clone(),
            file_name,
            size,
            content_type,
            created: now,
        };
        let since = now - QUOTA_WINDOW_SECS + 1;
        match self
            .storage
            .upload
            .add_upload(&record, since, self.settings.quota_per_user_per_day)
            .await
        {
            Ok(()) => {}
            Err(StorageError::LimitReached(_)) => {
                return Err(self.over_quota(&user, since, size).await);
            }
            Err(StorageError::NotFound) => {
                return Err(StanzaError::new(StanzaErrorCondition::Forbidden))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record an upload slot");
                return Err(StanzaError::new(StanzaErrorCondition::InternalServerError));
            }
        }
        let slot = self.slot(&record, &get_base, &put_base, now);
        tracing::debug!(user = %from, id = %record.id, size, "upload slot issued");
        Ok(Element::new("slot", NS)
            .with_child(Element::new("put", NS).with_attr("url", slot.put))
            .with_child(Element::new("get", NS).with_attr("url", slot.get)))
    }

    /// The URLs of a recorded slot: the PUT one signed and expiring.
    pub fn slot(&self, r: &UploadRecord, get_base: &str, put_base: &str, now: i64) -> Slot {
        let path = slot::file_path(&r.id, &r.file_name);
        let expires =
            now.saturating_add(i64::try_from(self.settings.slot_lifetime_secs).unwrap_or(i64::MAX));
        let sig = slot::sign(&self.secret, &path, r.size, &r.content_type, expires);
        Slot {
            put: format!("{put_base}{path}?v={expires}&s={sig}"),
            get: format!("{get_base}{path}"),
        }
    }

    /// §5: over quota, with when a request of `size` will fit again (when enough of the
    /// window's oldest uploads are a day old), if it ever will.
    async fn over_quota(&self, user: &str, since: i64, size: u64) -> StanzaError {
        let quota = self.settings.quota_per_user_per_day;
        let mut e = StanzaError::new(StanzaErrorCondition::ResourceConstraint)
            .with_type(rookery_stanza::ErrorType::Wait)
            .with_text(format!("Daily upload quota of {quota} bytes reached"));
        let recent = match self
            .storage
            .upload
            .recent_uploads(&self.host, user, since)
            .await
        {
            Ok(r) => r,
            Err(_) => return e,
        };
        let mut used: u64 = recent.iter().map(|(_, s)| s).sum();
        if size <= quota {
            for (created, s) in recent {
                used = used.saturating_sub(s);
                if used.saturating_add(size) <= quota {
                    let at = created + QUOTA_WINDOW_SECS;
                    if let Ok(stamp) = time::OffsetDateTime::from_unix_timestamp(at)
                        .map_err(|_| ())
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .map_err(|_| ())
                        })
                    {
                        e = e
                            .with_app_specific(Element::new("retry", NS).with_attr("stamp", stamp));
                    }
                    break;
                }
            }
        }
        e
    }
}
