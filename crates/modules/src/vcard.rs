//! XEP-0054 vcard-temp: each account stores one vCard, which the server hands out on the
//! account's behalf to anyone who asks its bare JID (vCards are public, §5).
//!
//! * Get on one's own account (no `to`, or the own bare JID, §3.1): the stored vCard, or an
//!   empty `<vCard/>` when there is none (the XEP allows that or `item-not-found`; the empty
//!   element is what clients handle best and what Prosody does).
//! * Get on another local account (§3.3): its vCard; when it has none, `service-unavailable`,
//!   the one condition §3.3 (version 1.3) allows so that "no vCard" and "no such account"
//!   (which the core answers `service-unavailable`) look the same.
//! * Set only on one's own account, else `forbidden` (§3.2). A set replaces the whole vCard;
//!   an empty `<vCard/>` deletes it.
//! * A vCard larger than `limits.max_vcard_bytes` (serialized) is refused with
//!   `not-acceptable`: the XEP names no condition, and RFC 6120 §8.3.3.9 defines
//!   `not-acceptable` as a request that "does not meet criteria defined by the recipient or
//!   server" (a size limit is such a criterion, and the roster module answers over-long names
//!   the same way); `policy-violation` (§8.3.3.12) reads as a content rule instead.
//!
//! After a set, [`VCardStored`] runs on the account's host, so a module keeping another
//! form of the account's data in step (the avatar) hears of it; such a module reads and
//! writes through [`load`] and [`store`], which emit nothing.

use rookery_core::config::ConfigError;
use rookery_core::{
    iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Place, Section,
    SectionDecl, Server, Spec,
};
use rookery_stanza::{BareJid, IqType, StanzaError, StanzaErrorCondition};
use rookery_storage::StorageError;
use rookery_xml::Element;
use serde::{Deserialize, Serialize};

pub const NS: &str = "vcard-temp";
/// The user-data store holding one vCard per account under the key "".
pub const STORE: &str = "vcard";

pub struct VCard;

/// An account set its vCard (run on the account's host after the write succeeded). `vcard`
/// is what the client sent; an empty one means the vCard was deleted. `previous` is the
/// vCard it replaced, so a listener can tell what this set changed (a client editing the
/// name sends the photo it read, or none if it ignores photos).
#[derive(Debug, Clone)]
pub struct VCardStored {
    pub owner: BareJid,
    pub vcard: Element,
    pub previous: Option<Element>,
}

/// `limits.max_vcard_bytes`, in the `[limits]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct VcardLimits {
    /// Bytes of one account's vCard, serialized.
    pub max_vcard_bytes: usize,
}

impl Default for VcardLimits {
    fn default() -> Self {
        Self {
            max_vcard_bytes: 200 * 1024,
        }
    }
}

impl Section for VcardLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    // Read at each request: a reload applies a new value.
    const LIVE: bool = true;
    // The comment speaks for `max_private_bytes` too, the line after this one in the example
    // file (the `private` module's).
    const EXAMPLE: &'static str = r#"# Bytes of one account's vCard (XEP-0054) and of one private XML element (XEP-0049).
max_vcard_bytes = 204800
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::require_positive(key, "max_vcard_bytes", self.max_vcard_bytes as u64)
    }
}

impl Module for VCard {
    const NAME: &'static str = "vcard";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<VcardLimits>()];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0054",
        title: "vcard-temp",
        version: "1.3.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))
    }
}

fn storage_error(e: StorageError) -> StanzaError {
    match e {
        StorageError::LimitReached(_) => too_large(),
        e => {
            tracing::error!(error = %e, "vCard storage failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        }
    }
}

fn too_large() -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("the vCard is too large")
}

fn parts(jid: &BareJid) -> Result<(&str, &str), StanzaError> {
    match jid.node() {
        Some(n) => Ok((jid.domain().as_str(), n.as_str())),
        None => Err(StanzaError::service_unavailable()),
    }
}

async fn handle(req: IqRequest) -> IqResult {
    if req.payload.name() != "vCard" {
        return Err(StanzaError::bad_request(
            "expected <vCard xmlns='vcard-temp'/>",
        ));
    }
    let owner = req.to.to_bare();
    let own = owner == req.from.to_bare();
    match req.iq_type {
        IqType::Get => get(&req, &owner, own).await,
        _ if !own => Err(StanzaError::new(StanzaErrorCondition::Forbidden)
            .with_text("only the account itself may change its vCard")),
        _ => set(&req, &owner).await,
    }
}

/// The account's stored vCard, if it has one.
pub async fn load(server: &Server, owner: &BareJid) -> Result<Option<Element>, StorageError> {
    let Some(node) = owner.node() else {
        return Ok(None);
    };
    let stored = server
        .storage()
        .user_data
        .get_data(owner.domain().as_str(), node.as_str(), STORE, "")
        .await?;
    match stored.as_deref().map(rookery_xml::parse_element) {
        None => Ok(None),
        Some(Ok(el)) if el.is("vCard", NS) => Ok(Some(el)),
        Some(_) => Err(StorageError::Corrupt(format!("the vCard of {owner}"))),
    }
}

/// Stores the account's vCard as a set would (an empty `<vCard/>` deletes it), within
/// `limits.max_vcard_bytes` (`LimitReached` beyond), without running [`VCardStored`]: for a
/// module writing on the account's behalf, which knows what it wrote.
pub async fn store(server: &Server, owner: &BareJid, vcard: &Element) -> Result<(), StorageError> {
    let Some(node) = owner.node() else {
        return Err(StorageError::NotFound);
    };
    let max = server.config().section::<VcardLimits>().max_vcard_bytes;
    let empty = vcard.nodes().is_empty() && vcard.attrs().next().is_none();
    let xml = (!empty).then(|| vcard.to_xml(""));
    if xml.as_ref().is_some_and(|x| x.len() > max) {
        return Err(StorageError::LimitReached("limits.max_vcard_bytes".into()));
    }
    server
        .storage()
        .user_data
        .set_data(
            owner.domain().as_str(),
            node.as_str(),
            STORE,
            "",
            xml.as_deref(),
            max,
        )
        .await
}

async fn get(req: &IqRequest, owner: &BareJid, own: bool) -> IqResult {
    parts(owner)?;
    let stored = load(&req.server, owner).await.map_err(|e| match e {
        StorageError::Corrupt(_) => {
            tracing::error!(account = %owner, "stored vCard is not a vCard element");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        }
        e => storage_error(e),
    })?;
    match stored {
        Some(el) => Ok(Some(el)),
        None if own => Ok(Some(Element::new("vCard", NS))),
        // §3.3: the same answer as for an account that does not exist.
        None => Err(StanzaError::service_unavailable()),
    }
}

async fn set(req: &IqRequest, owner: &BareJid) -> IqResult {
    parts(owner)?;
    // One read more per set (rare): a previous vCard that cannot be read is replaced anyway,
    // so it counts as none.
    let previous = match load(&req.server, owner).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(account = %owner, error = %e, "the vCard being replaced is unreadable");
            None
        }
    };
    store(&req.server, owner, &req.payload)
        .await
        .map_err(storage_error)?;
    if let Some(host) = req.server.host(owner.domain().as_str()) {
        host.hooks()
            .run(
                &req.server,
                VCardStored {
                    owner: owner.clone(),
                    vcard: req.payload.clone(),
                    previous,
                },
            )
            .await;
    }
    Ok(None)
}
