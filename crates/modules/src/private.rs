//! XEP-0049 Private XML Storage: an account keeps XML fragments on the server, each keyed by
//! the (name, namespace) of its root element, readable and writable only by the account.
//!
//! * Only the account itself (no `to`, or its own bare JID): anyone else gets `forbidden`
//!   (§2.3, "the former is preferable").
//! * A get carries one element (or several of one namespace, §2.3) and is answered with the
//!   stored element of each, or the empty element when nothing is stored under it.
//! * A set stores each child element it carries (§2.3: "an IQ set ... MAY contain multiple
//!   elements"); all are checked before any is written. Storing an empty element deletes
//!   what was stored under its name and namespace.
//! * A query without a child is refused with `not-acceptable` (the MUST of §2.3; the "Bad
//!   Format" suggested a few lines later is not an RFC 6120 condition).
//! * Elements in `jabber:client`, `jabber:server` or `jabber:iq:private`, or in no namespace,
//!   are refused with `not-acceptable`. XEP-0049 makes refusing reserved namespaces optional
//!   and lists every `jabber:*` and `http://jabber.org/*` namespace plus `vcard-temp`; only
//!   the stream content namespaces and this protocol's own are refused here, since nothing
//!   stored under them could be meaningful and the wider list would refuse data clients do
//!   store.
//! * An element larger than `limits.max_private_bytes` (serialized) gets `not-acceptable`.
//!
//! After a set, [`PrivateStored`] runs on the account's host for each element stored, so a
//! module keeping another form of the same data in step (bookmarks) hears of it; such a
//! module reads and writes through [`load`] and [`store`], which emit nothing.

use rookery_core::config::ConfigError;
use rookery_core::{
    iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Place, Section,
    SectionDecl, Server, Spec,
};
use rookery_stanza::{BareJid, IqType, StanzaError, StanzaErrorCondition};
use rookery_storage::StorageError;
use rookery_xml::Element;
use serde::{Deserialize, Serialize};

pub const NS: &str = "jabber:iq:private";
/// The user-data store; keys are `"<element name> <namespace>"`.
pub const STORE: &str = "private";
/// Namespaces no private element may be in.
const REFUSED: &[&str] = &["", "jabber:client", "jabber:server", NS];

pub struct Private;

/// An account stored a private element through XEP-0049 (run on the account's host after
/// the write succeeded). `element` is what the client sent; an empty one means it was
/// deleted.
#[derive(Debug, Clone)]
pub struct PrivateStored {
    pub owner: BareJid,
    pub element: Element,
}

/// `limits.max_private_bytes`, in the `[limits]` table.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct PrivateLimits {
    /// Bytes of one stored element, serialized.
    pub max_private_bytes: usize,
}

impl Default for PrivateLimits {
    fn default() -> Self {
        Self {
            max_private_bytes: 64 * 1024,
        }
    }
}

impl Section for PrivateLimits {
    const KEY: &'static str = "limits";
    const PLACE: Place = Place::SharedTable;
    // Read at each request: a reload applies a new value.
    const LIVE: bool = true;
    // In the example file this line follows the `vcard` module's `max_vcard_bytes`, whose
    // comment describes both sizes.
    const EXAMPLE: &'static str = "max_private_bytes = 65536\n";

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::require_positive(key, "max_private_bytes", self.max_private_bytes as u64)
    }
}

impl Module for Private {
    const NAME: &'static str = "private";
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<PrivateLimits>()];
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0049",
        title: "Private XML Storage",
        version: "1.2",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))
    }
}

fn not_acceptable(text: &str) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

fn storage_error(e: StorageError) -> StanzaError {
    match e {
        StorageError::LimitReached(_) => not_acceptable("the element is too large"),
        e => {
            tracing::error!(error = %e, "private storage failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        }
    }
}

/// The storage key of an element.
pub fn key(el: &Element) -> String {
    format!("{} {}", el.name(), el.ns())
}

fn parts(owner: &BareJid) -> Result<(&str, &str), StorageError> {
    match owner.node() {
        Some(n) => Ok((owner.domain().as_str(), n.as_str())),
        None => Err(StorageError::NotFound),
    }
}

/// The element an account stored under (`name`, `ns`), if any.
pub async fn load(
    server: &Server,
    owner: &BareJid,
    name: &str,
    ns: &str,
) -> Result<Option<Element>, StorageError> {
    let (domain, node) = parts(owner)?;
    let key = format!("{name} {ns}");
    let stored = server
        .storage()
        .user_data
        .get_data(domain, node, STORE, &key)
        .await?;
    match stored.as_deref().map(rookery_xml::parse_element) {
        None => Ok(None),
        Some(Ok(el)) if el.is(name, ns) => Ok(Some(el)),
        Some(_) => Err(StorageError::Corrupt(format!(
            "private element {key} of {owner}"
        ))),
    }
}

/// Stores `element` for the account as a set would (an empty element deletes), within
/// `limits.max_private_bytes`, without running [`PrivateStored`]: for a module writing on the
/// account's behalf, which knows what it wrote.
pub async fn store(
    server: &Server,
    owner: &BareJid,
    element: &Element,
) -> Result<(), StorageError> {
    let (domain, node) = parts(owner)?;
    let max = server.config().section::<PrivateLimits>().max_private_bytes;
    let xml = (!is_empty(element)).then(|| element.to_xml(""));
    server
        .storage()
        .user_data
        .set_data(domain, node, STORE, &key(element), xml.as_deref(), max)
        .await
}

/// An element without attributes or content: what a get of nothing answers.
fn is_empty(el: &Element) -> bool {
    el.nodes().is_empty() && el.attrs().next().is_none()
}

async fn handle(req: IqRequest) -> IqResult {
    let user = req.from.to_bare();
    if req.to.to_bare() != user {
        return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
            .with_text("private data belongs to its account alone"));
    }
    if req.payload.name() != "query" {
        return Err(StanzaError::bad_request(
            "expected <query xmlns='jabber:iq:private'/>",
        ));
    }
    let elements: Vec<&Element> = req.payload.children().collect();
    if elements.is_empty() {
        return Err(not_acceptable("the query carries no element"));
    }
    if let Some(bad) = elements.iter().find(|e| REFUSED.contains(&e.ns())) {
        return Err(not_acceptable(&format!(
            "elements in the namespace '{}' cannot be stored",
            bad.ns()
        )));
    }
    let (domain, node) = match user.node() {
        Some(n) => (user.domain().as_str(), n.as_str()),
        None => return Err(StanzaError::service_unavailable()),
    };
    let store = &req.server.storage().user_data;
    match req.iq_type {
        IqType::Get => {
            if elements.iter().any(|e| e.ns() != elements[0].ns()) {
                return Err(StanzaError::bad_request(
                    "a get asks for elements of one namespace",
                ));
            }
            let mut query = Element::new("query", NS);
            for el in elements {
                let stored = store
                    .get_data(domain, node, STORE, &key(el))
                    .await
                    .map_err(storage_error)?;
                let found = match stored.as_deref().map(rookery_xml::parse_element) {
                    Some(Ok(s)) if s.name() == el.name() && s.ns() == el.ns() => s,
                    Some(_) => {
                        tracing::error!(account = %user, key = %key(el), "stored private element is corrupt");
                        return Err(StanzaError::new(StanzaErrorCondition::InternalServerError));
                    }
                    None => Element::new(el.name(), el.ns()),
                };
                query.push_child(found);
            }
            Ok(Some(query))
        }
        _ => {
            let max = req
                .server
                .config()
                .section::<PrivateLimits>()
                .max_private_bytes;
            // An empty element is what a get of nothing answers: storing one deletes.
            let docs: Vec<(String, Option<String>)> = elements
                .iter()
                .map(|el| (key(el), (!is_empty(el)).then(|| el.to_xml(""))))
                .collect();
            if docs
                .iter()
                .any(|(_, xml)| xml.as_ref().is_some_and(|x| x.len() > max))
            {
                return Err(not_acceptable("the element is too large"));
            }
            for (k, xml) in &docs {
                store
                    .set_data(domain, node, STORE, k, xml.as_deref(), max)
                    .await
                    .map_err(storage_error)?;
            }
            if let Some(host) = req.server.host(user.domain().as_str()) {
                for el in elements {
                    host.hooks()
                        .run(
                            &req.server,
                            PrivateStored {
                                owner: user.clone(),
                                element: el.clone(),
                            },
                        )
                        .await;
                }
            }
            Ok(None)
        }
    }
}
