//! Avatars kept in step between PEP (XEP-0084) and the vCard (XEP-0153), and the vCard
//! avatar's hash in the account's presence (XEP-0398):
//!
//! * PEP → vCard (XEP-0398 §3.1, a MUST): a publication to `urn:xmpp:avatar:metadata` picks
//!   the `<info/>` without `url`, reads the item of that id from `urn:xmpp:avatar:data`,
//!   checks that the SHA-1 of its bytes is the id (the SHOULD of §3.1) and stores it as the
//!   vCard's `<PHOTO/>`, the rest of the vCard kept. Only an avatar anyone may read is
//!   copied into the vCard, which anyone may read (§7: "SHOULD perform conversion only if
//!   the access model of the 'urn:xmpp:avatar:data' node has been set to 'open'"). An empty
//!   `<metadata/>` (XEP-0084 §3.5: avatar disabled) removes the photo.
//! * vCard → PEP (§3.2, a MAY): a vCard set with a new photo publishes the image to the
//!   data node (item id: the SHA-1 of the bytes), then one `<info/>` to the metadata node;
//!   new nodes are created open (vCards are public, XEP-0054 §5), existing ones keep their
//!   access model. A set that removes the photo disables the PEP avatar (an empty
//!   `<metadata/>`) if that photo was the PEP avatar too. A set that leaves the photo as it
//!   was (a client editing the name) touches nothing: the PEP avatar may be newer, set by a
//!   client that keeps it out of the vCard. A photo larger than `[pep] max_avatar_bytes` is
//!   not converted (the vCard set itself stands).
//! * Presence (§4): every available presence an account sends, broadcast or directed (a
//!   MUC join too), carries `<x xmlns='vcard-temp:x:update'><photo>HASH</photo></x>` with
//!   the hash of the vCard photo, or an empty `<photo/>` when there is none (XEP-0153 §3.1:
//!   "no avatar"). A presence whose `<photo/>` is empty is left alone (§4); an `<x/>`
//!   without `<photo/>` is overwritten (§4: MUST); a different hash is replaced (§4: MAY),
//!   unless the server knows no photo. The hash of each account with a session is kept in
//!   memory, read from the vCard once and updated by every conversion and vCard set, so a
//!   presence costs no storage read after the account's first.
//!
//! Loops: the module's own publications and vCard writes cause events in the same task; a
//! task-local marks the module's own conversion, so those are ignored. Each direction
//! also compares first (the vCard already holds this photo; the metadata already names this
//! hash) and writes nothing then.

use crate::pubsub::config::AccessModel;
use crate::pubsub::engine::Service;
use crate::pubsub::pep::{self, PepState};
use crate::pubsub::{PublishedItem, NODE_AVATAR_DATA};
use crate::vcard::{self, VCardStored};
use base64::Engine as _;
use parking_lot::Mutex;
use rookery_core::events::{ClientStanza, SessionClosed};
use rookery_core::{Flow, HostBuilder, Module, ModuleError, Order, Server, Spec};
use rookery_stanza::{BareJid, PresenceType, StanzaError, StanzaKind};
use rookery_storage::StorageError;
use rookery_xml::Element;
use sha1::Digest as _;
use std::collections::HashMap;
use std::sync::Arc;

pub const NS_METADATA: &str = "urn:xmpp:avatar:metadata";
pub const NS_DATA: &str = NODE_AVATAR_DATA;
pub const NS_UPDATE: &str = "vcard-temp:x:update";
/// XEP-0398 §2.
const FEATURE: &str = "urn:xmpp:pep-vcard-conversion:0";

pub struct Avatar;

/// The hash of the vCard photo of each account with a session: `None` for no photo. An
/// account is absent until its first presence and again after its last session ends.
#[derive(Default)]
pub struct Hashes(Mutex<HashMap<BareJid, Option<String>>>);

impl Hashes {
    fn set(&self, owner: &BareJid, hash: Option<String>) {
        self.0.lock().insert(owner.clone(), hash);
    }

    /// The account's hash, read from its vCard on first need; `None` when that read failed.
    async fn get(&self, server: &Server, owner: &BareJid) -> Option<Option<String>> {
        if let Some(h) = self.0.lock().get(owner) {
            return Some(h.clone());
        }
        let hash = match vcard::load(server, owner).await {
            Ok(v) => v
                .and_then(|v| photo_of(&v).ok().flatten())
                .map(|p| p.hash()),
            Err(e) => {
                tracing::warn!(account = %owner, error = %e, "vCard read for the avatar hash failed");
                return None;
            }
        };
        // A conversion may have set it meanwhile: that one is newer than this read.
        Some(self.0.lock().entry(owner.clone()).or_insert(hash).clone())
    }
}

impl Module for Avatar {
    const NAME: &'static str = "avatar";
    const DEPENDS: &'static [&'static str] = &["pep", "vcard"];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0084",
            title: "User Avatar",
            version: "1.1.4",
        },
        Spec {
            id: "XEP-0398",
            title: "User Avatar to vCard-Based Avatars Conversion",
            version: "1.0.0",
        },
        Spec {
            id: "XEP-0153",
            title: "vCard-Based Avatars",
            version: "1.1.1",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_account_feature(FEATURE);
        // Filled by the pep module's init; read only at runtime.
        let state = host.shared::<PepState>();
        let hashes = host.shared::<Hashes>();

        let (st, hs) = (state.clone(), hashes.clone());
        host.hook::<PublishedItem, _, _>(Order::normal(), move |server, ev| {
            let (state, hashes) = (st.clone(), hs.clone());
            async move {
                if !converting() && ev.node == NS_METADATA {
                    let change = Change::Metadata(ev.payload.as_ref());
                    convert(&server, &state, &hashes, &ev.owner, change).await;
                }
                Flow::Continue
            }
        });

        let (st, hs) = (state, hashes.clone());
        host.hook::<VCardStored, _, _>(Order::normal(), move |server, ev| {
            let (state, hashes) = (st.clone(), hs.clone());
            async move {
                if !converting() {
                    let change = Change::VCard(&ev.vcard, ev.previous.as_ref());
                    convert(&server, &state, &hashes, &ev.owner, change).await;
                }
                Flow::Continue
            }
        });

        // After blocking: a presence it refuses is not worth reading the vCard for.
        let hs = hashes.clone();
        host.filter::<ClientStanza, _, _>(Order::normal().after("blocking"), move |server, c| {
            let hashes = hs.clone();
            async move { Some(stamp_presence(&server, &hashes, c).await) }
        });

        let hs = hashes;
        host.hook::<SessionClosed, _, _>(Order::normal(), move |server, ev| {
            let owner = ev.session.jid().to_bare();
            if server.sessions().resources(&owner).is_empty() {
                hs.0.lock().remove(&owner);
            }
            async { Flow::Continue }
        });
        Ok(())
    }
}

// ---- presence (XEP-0398 §4) ---------------------------------------------------------------

async fn stamp_presence(server: &Server, hashes: &Hashes, mut c: ClientStanza) -> ClientStanza {
    if c.stanza.kind() != StanzaKind::Presence
        || c.stanza.presence_type() != Some(PresenceType::Available)
    {
        return c;
    }
    let sent = c
        .stanza
        .element()
        .get_child("x", NS_UPDATE)
        .map(|x| x.get_child("photo", NS_UPDATE).map(|p| p.text()));
    let sent_hash = match &sent {
        // §4: "every available presence that does not contain an empty photo element".
        Some(Some(photo)) if photo.trim().is_empty() => return c,
        Some(Some(photo)) => Some(photo.trim()),
        Some(None) | None => None,
    };
    let Some(hash) = hashes.get(server, &c.from.to_bare()).await else {
        return c;
    };
    let photo = match (hash, sent_hash) {
        (Some(h), Some(s)) if h.eq_ignore_ascii_case(s) => return c,
        (Some(h), _) => h,
        // The client names a photo the server does not know of: it may know better.
        (None, Some(_)) => return c,
        (None, None) => String::new(),
    };
    let el = c.stanza.element_mut();
    el.retain_children(|x| !x.is("x", NS_UPDATE));
    el.push_child(
        Element::new("x", NS_UPDATE).with_child(Element::new("photo", NS_UPDATE).with_text(photo)),
    );
    c
}

// ---- conversions ------------------------------------------------------------------------

tokio::task_local! {
    /// Set while this module converts: the events its own writes cause (in the same task)
    /// are not changes to convert.
    static CONVERTING: ();
}

fn converting() -> bool {
    CONVERTING.try_with(|_| ()).is_ok()
}

/// Conversions of one account run one at a time (striped: nothing grows per account).
static LOCKS: [tokio::sync::Mutex<()>; 64] = [const { tokio::sync::Mutex::const_new(()) }; 64];

fn lock_of(owner: &BareJid) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.as_str().hash(&mut h);
    &LOCKS[(h.finish() % LOCKS.len() as u64) as usize]
}

enum Change<'a> {
    /// A publication to the metadata node, with its payload.
    Metadata(Option<&'a Element>),
    /// A vCard set (an empty one deleted the vCard), and the vCard it replaced.
    VCard(&'a Element, Option<&'a Element>),
}

#[derive(Debug, thiserror::Error)]
enum AvatarError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the PEP service refused a write to {node}: {error}")]
    Refused {
        node: &'static str,
        error: StanzaError,
    },
    #[error("the avatar data node is not open (access model {0}), so the avatar stays out of the public vCard")]
    NotOpen(&'static str),
    #[error("no avatar data item {0}")]
    NoData(String),
    #[error("avatar data item {0} holds no base64 image")]
    BadData(String),
    #[error("avatar data item {0} does not hash to its id")]
    WrongHash(String),
    #[error("the vCard photo is not base64")]
    BadPhoto,
    #[error("the vCard photo has {0} bytes, more than [pep] max_avatar_bytes")]
    TooLarge(usize),
}

impl AvatarError {
    /// What the account chose or sent, as opposed to what went wrong on the server.
    fn is_policy(&self) -> bool {
        !matches!(self, AvatarError::Storage(_) | AvatarError::Refused { .. })
    }
}

fn refused(node: &'static str) -> impl Fn(StanzaError) -> AvatarError {
    move |error| AvatarError::Refused { node, error }
}

async fn convert(
    server: &Arc<Server>,
    state: &PepState,
    hashes: &Hashes,
    owner: &BareJid,
    change: Change<'_>,
) {
    let Some(svc) = pep::service(server, state, owner) else {
        return;
    };
    let _lock = lock_of(owner).lock().await;
    let run = async {
        match change {
            Change::Metadata(payload) => to_vcard(&svc, hashes, owner, payload).await,
            Change::VCard(vcard, previous) => to_pep(&svc, hashes, owner, vcard, previous).await,
        }
    };
    match CONVERTING.scope((), run).await {
        Ok(()) => {}
        Err(e) if e.is_policy() => {
            tracing::info!(account = %owner, error = %e, "avatar not converted")
        }
        Err(e) => tracing::warn!(account = %owner, error = %e, "avatar conversion failed"),
    }
}

/// XEP-0398 §3.1: the PEP avatar into the vCard.
async fn to_vcard(
    svc: &Service,
    hashes: &Hashes,
    owner: &BareJid,
    payload: Option<&Element>,
) -> Result<(), AvatarError> {
    let Some(metadata) = payload.filter(|p| p.is("metadata", NS_METADATA)) else {
        return Ok(());
    };
    let infos: Vec<&Element> = metadata
        .children()
        .filter(|c| c.is("info", NS_METADATA))
        .collect();
    if infos.is_empty() {
        // XEP-0084 §3.5: avatar publishing disabled.
        let removed = set_photo(svc, owner, None).await;
        hashes.set(owner, None);
        return removed;
    }
    // §3.1: "MUST pick the info element that does not point to an exernal URL".
    let Some(id) = infos
        .iter()
        .find(|i| i.attr("url").is_none())
        .and_then(|i| i.attr("id"))
    else {
        return Ok(());
    };
    let mime = infos
        .iter()
        .find(|i| i.attr("id") == Some(id))
        .and_then(|i| i.attr("type"))
        .unwrap_or("image/png");
    if hashes
        .get(&svc.server, owner)
        .await
        .flatten()
        .is_some_and(|h| h.eq_ignore_ascii_case(id))
    {
        return Ok(());
    }
    match pep::node_config(svc, NS_DATA).await? {
        Some(c) if c.access_model == AccessModel::Open => {}
        Some(c) => return Err(AvatarError::NotOpen(c.access_model.as_str())),
        None => return Err(AvatarError::NoData(id.to_owned())),
    }
    let data = pep::stored_items(svc, NS_DATA, Some(&[id.to_owned()]))
        .await?
        .into_iter()
        .next()
        .and_then(|(_, p)| p)
        .ok_or_else(|| AvatarError::NoData(id.to_owned()))?;
    if !data.is("data", NS_DATA) {
        return Err(AvatarError::BadData(id.to_owned()));
    }
    let bytes = decode(&data.text()).ok_or_else(|| AvatarError::BadData(id.to_owned()))?;
    let photo = Photo {
        bytes,
        mime: mime.to_owned(),
    };
    let hash = photo.hash();
    if !hash.eq_ignore_ascii_case(id) {
        return Err(AvatarError::WrongHash(id.to_owned()));
    }
    set_photo(svc, owner, Some(&photo)).await?;
    hashes.set(owner, Some(hash));
    Ok(())
}

/// Replaces the vCard's photo (none removes it), keeping the rest.
async fn set_photo(
    svc: &Service,
    owner: &BareJid,
    photo: Option<&Photo>,
) -> Result<(), AvatarError> {
    let current = vcard::load(&svc.server, owner).await?;
    if photo.is_none()
        && current
            .as_ref()
            .is_none_or(|v| !v.has_child("PHOTO", vcard::NS))
    {
        return Ok(());
    }
    let mut v = current.unwrap_or_else(|| Element::new("vCard", vcard::NS));
    v.retain_children(|c| !c.is("PHOTO", vcard::NS));
    if let Some(p) = photo {
        v.push_child(
            Element::new("PHOTO", vcard::NS)
                .with_child(Element::new("TYPE", vcard::NS).with_text(p.mime.clone()))
                .with_child(Element::new("BINVAL", vcard::NS).with_text(p.base64())),
        );
    }
    vcard::store(&svc.server, owner, &v).await?;
    Ok(())
}

/// XEP-0398 §3.2: the vCard photo into PEP, data first, then metadata.
async fn to_pep(
    svc: &Service,
    hashes: &Hashes,
    owner: &BareJid,
    vcard: &Element,
    previous: Option<&Element>,
) -> Result<(), AvatarError> {
    let photo = match photo_of(vcard) {
        Ok(p) => p,
        Err(e) => {
            hashes.set(owner, None);
            return Err(e);
        }
    };
    let before = previous
        .and_then(|v| photo_of(v).ok().flatten())
        .map(|p| p.hash());
    hashes.set(owner, photo.as_ref().map(Photo::hash));
    if photo.as_ref().map(Photo::hash) == before {
        return Ok(());
    }
    let current = pep::stored_items(svc, NS_METADATA, None)
        .await?
        .into_iter()
        .next()
        .and_then(|(_, p)| p);
    let current_ids: Vec<&str> = current
        .iter()
        .flat_map(|m| m.children())
        .filter(|i| i.is("info", NS_METADATA))
        .filter_map(|i| i.attr("id"))
        .collect();
    let Some(photo) = photo else {
        let was_pep = before
            .as_deref()
            .is_some_and(|b| current_ids.iter().any(|id| id.eq_ignore_ascii_case(b)));
        if !was_pep {
            return Ok(());
        }
        // XEP-0084 §3.5: an empty <metadata/> disables the avatar.
        return pep::publish_as_owner(
            svc,
            NS_METADATA,
            None,
            Element::new("metadata", NS_METADATA),
            &[],
        )
        .await
        .map_err(refused(NS_METADATA));
    };
    let hash = photo.hash();
    if current_ids.iter().any(|id| id.eq_ignore_ascii_case(&hash)) {
        return Ok(());
    }
    if photo.bytes.len() > svc.limits.max_avatar_bytes {
        return Err(AvatarError::TooLarge(photo.bytes.len()));
    }
    let data = Element::new("data", NS_DATA).with_text(photo.base64());
    let options = open_if_new(svc, NS_DATA).await?;
    pep::publish_as_owner(svc, NS_DATA, Some(&hash), data, options)
        .await
        .map_err(refused(NS_DATA))?;
    let mut info = Element::new("info", NS_METADATA)
        .with_attr("id", hash.clone())
        .with_attr("bytes", photo.bytes.len().to_string())
        .with_attr("type", photo.mime.clone());
    if let Some((w, h)) = dimensions(&photo.bytes) {
        info.set_attr("width", w.to_string());
        info.set_attr("height", h.to_string());
    }
    let metadata = Element::new("metadata", NS_METADATA).with_child(info);
    let options = open_if_new(svc, NS_METADATA).await?;
    pep::publish_as_owner(svc, NS_METADATA, Some(&hash), metadata, options)
        .await
        .map_err(refused(NS_METADATA))
}

/// Publish-options for a node the server publishes a vCard's avatar to: open when the node
/// is new (the vCard was public), none when it exists (its owner chose its access).
async fn open_if_new(
    svc: &Service,
    node: &str,
) -> Result<&'static [(&'static str, &'static str)], AvatarError> {
    Ok(match pep::node_config(svc, node).await? {
        None => &[("pubsub#access_model", "open")],
        Some(_) => &[],
    })
}

// ---- images -----------------------------------------------------------------------------

/// An avatar image.
struct Photo {
    bytes: Vec<u8>,
    mime: String,
}

impl Photo {
    /// The SHA-1 of the bytes in lower-case hex: the XEP-0084 item id and the XEP-0153 hash.
    fn hash(&self) -> String {
        sha1::Sha1::digest(&self.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

/// Base64 as XEP-0153 §3.5 allows it: whitespace (line breaks every 76 characters) ignored.
fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&compact))
        .ok()
}

/// The vCard's photo, if it has one with image data (`<BINVAL/>`; an `<EXTVAL/>` holds none).
fn photo_of(vcard: &Element) -> Result<Option<Photo>, AvatarError> {
    let Some(photo) = vcard.get_child("PHOTO", vcard::NS) else {
        return Ok(None);
    };
    let Some(binval) = photo.get_child("BINVAL", vcard::NS) else {
        return Ok(None);
    };
    let text = binval.text();
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bytes = decode(&text).ok_or(AvatarError::BadPhoto)?;
    let mime = photo
        .get_child("TYPE", vcard::NS)
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| sniff(&bytes).to_owned());
    Ok(Some(Photo { bytes, mime }))
}

/// The content type of an image a vCard did not label (XEP-0084 §4.2.1: `type` is
/// REQUIRED), by its magic bytes; PNG, which every client must support, otherwise.
fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        "image/gif"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "image/png"
    }
}

/// Width and height of a PNG or GIF (XEP-0084 §4.2.1 RECOMMENDS them), from its header.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR") {
        let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
        let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
        return Some((w, h));
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        let w = u16::from_le_bytes(bytes.get(6..8)?.try_into().ok()?);
        let h = u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?);
        return Some((u32::from(w), u32::from(h)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcard_photo_is_read_with_its_hash() {
        // A 1x1 PNG, with line breaks inside the base64 as vCards have them.
        let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4\n  2mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
        let vcard = rookery_xml::parse_element(&format!(
            "<vCard xmlns='vcard-temp'><FN>A</FN><PHOTO><BINVAL>{png}</BINVAL></PHOTO></vCard>"
        ))
        .expect("xml");
        let photo = photo_of(&vcard).expect("base64").expect("a photo");
        assert_eq!(photo.mime, "image/png", "sniffed");
        assert_eq!(dimensions(&photo.bytes), Some((1, 1)));
        assert_eq!(photo.hash().len(), 40);
        assert_eq!(decode(&photo.base64()), Some(photo.bytes.clone()));
        let bad = rookery_xml::parse_element(
            "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>*not base64*</BINVAL></PHOTO></vCard>",
        )
        .expect("xml");
        assert!(matches!(photo_of(&bad), Err(AvatarError::BadPhoto)));
        let none = rookery_xml::parse_element(
            "<vCard xmlns='vcard-temp'><PHOTO><EXTVAL>http://example.org/a.png</EXTVAL></PHOTO></vCard>",
        )
        .expect("xml");
        assert!(photo_of(&none).expect("fine").is_none());
    }
}
