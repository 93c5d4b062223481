//! Bookmarks kept in step across their three forms, so that clients of every generation see
//! the same rooms (XEP-0402 §5.3 "Compatibility", XEP-0411):
//!
//! * bookmarks 2 (XEP-0402): the PEP node `urn:xmpp:bookmarks:1`, one item per room, the
//!   item's id being the room's JID;
//! * private XML (XEP-0049, where XEP-0048 1.0 kept bookmarks): one
//!   `<storage xmlns='storage:bookmarks'/>` holding every room (`<conference/>`) and web page
//!   (`<url/>`);
//! * the PEP node `storage:bookmarks` of XEP-0048 1.1: one item `current` holding the same
//!   `<storage/>`.
//!
//! When a client writes one form, the server writes the other two:
//!
//! * A publication or retraction on `urn:xmpp:bookmarks:1` ([`PublishedItem`],
//!   [`RetractedItem`]) collates the node's items into the `<storage/>` document (XEP-0402
//!   §5.3.1), keeping the web pages (which bookmarks 2 dropped, §1) and unknown children of
//!   the stored document, stores it as private XML and publishes it to `storage:bookmarks`.
//! * A private XML set of `<storage/>` ([`PrivateStored`]) or a publication to
//!   `storage:bookmarks` publishes to `urn:xmpp:bookmarks:1` the rooms that are new or
//!   changed and retracts the rooms that are gone, leaving unchanged items alone (§5.3.2:
//!   "SHOULD NOT send notifications for unchanged items"), then mirrors the document to the
//!   other legacy form. A private XML change thus reaches the subscribers of
//!   `storage:bookmarks` through the PEP engine's notifications (the MUST of XEP-0411 §3).
//! * What one format holds and the other cannot is kept where it is: a room keeps its
//!   item's `<extensions/>` (XEP-0402 §2: they MUST be preserved) while it stays bookmarked,
//!   and a legacy `<conference/>` keeps its unknown children.
//! * The nodes are the account's alone. A node the server creates gets the configuration
//!   XEP-0402 §3.3 asks of clients (whitelist, persistent, `max` items, last item never
//!   sent); a node that exists with an access model other than `whitelist` is not written
//!   (XEP-0411 §5: the service "MUST make [sure] that the user is the only one who has
//!   access to that node", by changing the access model "or not doing the conversion").
//! * Bookmarks a legacy client left in private XML reach PEP when the account binds a
//!   session and has no bookmarks 2 node yet (XEP-0411 §4: before PEP-only clients look).
//!
//! Loops: the module's own publications run [`PublishedItem`] again, inside the same task.
//! A task-local marks the module's own conversion, so those events are ignored; and each
//! form is written only when its content differs from what it would become (compared by
//! meaning: attribute order and whitespace do not count), so a conversion converges even
//! without the mark. Conversions of one account hold its lock (striped), so two resources
//! writing at once cannot interleave reads and writes of the three forms.
//!
//! Publications go through the engine as the account (`pep::publish_as_owner`): the same
//! checks, notifications and publish budget as the client's own.

use crate::private::{self, PrivateStored};
use crate::pubsub::config::AccessModel;
use crate::pubsub::engine::Service;
use crate::pubsub::pep::{self, PepState};
use crate::pubsub::{PublishedItem, RetractedItem};
use rookery_core::events::SessionBound;
use rookery_core::{Flow, HostBuilder, Module, ModuleError, Order, Server, Spec};
use rookery_stanza::{BareJid, StanzaError};
use rookery_storage::StorageError;
use rookery_xml::{Element, Node};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The bookmarks 2 node and payload namespace (XEP-0402).
pub const NS_BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
/// The XEP-0048 namespace: the private XML element and the legacy PEP node.
pub const NS_LEGACY: &str = "storage:bookmarks";
/// The one item of the legacy PEP node (XEP-0048 §3.1).
const LEGACY_ITEM: &str = "current";

/// Account features (XEP-0402 §6, XEP-0411 §2).
const FEATURES: &[&str] = &[
    "urn:xmpp:bookmarks:1#compat",
    "urn:xmpp:bookmarks:1#compat-pep",
    "urn:xmpp:bookmarks-conversion:0",
];

/// XEP-0402 §3.3: what a client asks of the bookmarks 2 node with publish-options.
const BOOKMARKS_OPTIONS: &[(&str, &str)] = &[
    ("pubsub#persist_items", "true"),
    ("pubsub#max_items", "max"),
    ("pubsub#send_last_published_item", "never"),
    ("pubsub#access_model", "whitelist"),
];

/// XEP-0048 §3.1: the legacy node's publish-options.
const LEGACY_OPTIONS: &[(&str, &str)] = &[
    ("pubsub#persist_items", "true"),
    ("pubsub#access_model", "whitelist"),
];

pub struct Bookmarks;

impl Module for Bookmarks {
    const NAME: &'static str = "bookmarks";
    const DEPENDS: &'static [&'static str] = &["pep", "private"];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0402",
            title: "PEP Native Bookmarks",
            version: "1.2.0",
        },
        Spec {
            id: "XEP-0048",
            title: "Bookmarks",
            version: "1.2",
        },
        Spec {
            id: "XEP-0411",
            title: "Bookmarks Conversion",
            version: "1.1.0",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        for f in FEATURES {
            host.add_account_feature(f);
        }
        // Filled by the pep module's init; read only at runtime.
        let state = host.shared::<PepState>();

        let published = state.clone();
        host.hook::<PublishedItem, _, _>(Order::normal(), move |server, ev| {
            let state = published.clone();
            async move {
                if converting() {
                    return Flow::Continue;
                }
                match ev.node.as_str() {
                    NS_BOOKMARKS => convert(&server, &state, &ev.owner, Change::Bookmarks).await,
                    NS_LEGACY => {
                        if let Some(doc) =
                            ev.payload.as_ref().filter(|p| p.is("storage", NS_LEGACY))
                        {
                            let change = Change::Legacy(doc, Source::Pep);
                            convert(&server, &state, &ev.owner, change).await
                        }
                    }
                    _ => {}
                }
                Flow::Continue
            }
        });

        // A retraction on the legacy node is not a change of bookmarks: XEP-0048 defines
        // none, and reading it as "no bookmarks" would lose every room.
        let retracted = state.clone();
        host.hook::<RetractedItem, _, _>(Order::normal(), move |server, ev| {
            let state = retracted.clone();
            async move {
                if !converting() && ev.node == NS_BOOKMARKS {
                    convert(&server, &state, &ev.owner, Change::Bookmarks).await;
                }
                Flow::Continue
            }
        });

        let stored = state.clone();
        host.hook::<PrivateStored, _, _>(Order::normal(), move |server, ev| {
            let state = stored.clone();
            async move {
                if !converting() && ev.element.is("storage", NS_LEGACY) {
                    let change = Change::Legacy(&ev.element, Source::Private);
                    convert(&server, &state, &ev.owner, change).await;
                }
                Flow::Continue
            }
        });

        let bound = state;
        host.hook::<SessionBound, _, _>(Order::normal(), move |server, ev| {
            let state = bound.clone();
            async move {
                let owner = ev.session.jid().to_bare();
                convert(&server, &state, &owner, Change::FirstSession).await;
                Flow::Continue
            }
        });
        Ok(())
    }
}

// ---- running a conversion -----------------------------------------------------------------

tokio::task_local! {
    /// Set while this module converts: the events its own writes cause (in the same task,
    /// inside the publication) are not changes to convert.
    static CONVERTING: ();
}

fn converting() -> bool {
    CONVERTING.try_with(|_| ()).is_ok()
}

/// Conversions of one account run one at a time. Striped over a fixed set of locks, so
/// nothing grows per account; never taken inside a conversion (the guard comes first).
static LOCKS: [tokio::sync::Mutex<()>; 64] = [const { tokio::sync::Mutex::const_new(()) }; 64];

fn lock_of(owner: &BareJid) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.as_str().hash(&mut h);
    &LOCKS[(h.finish() % LOCKS.len() as u64) as usize]
}

/// What a client changed.
enum Change<'a> {
    /// An item of `urn:xmpp:bookmarks:1` was published or retracted.
    Bookmarks,
    /// A `<storage xmlns='storage:bookmarks'/>` was written to one of the legacy forms.
    Legacy(&'a Element, Source),
    /// A session was bound: legacy bookmarks not in PEP yet are copied there.
    FirstSession,
}

/// Which legacy form a client wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Private,
    Pep,
}

#[derive(Debug, thiserror::Error)]
enum ConvertError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the PEP service refused a write to {node}: {error}")]
    Refused {
        node: &'static str,
        error: StanzaError,
    },
    #[error("the node {0} is readable by others than the account (access model {1})")]
    NotPrivate(&'static str, &'static str),
}

fn refused(node: &'static str) -> impl Fn(StanzaError) -> ConvertError {
    move |error| ConvertError::Refused { node, error }
}

/// Runs one conversion for `owner` under its lock and the guard, logging what failed: the
/// client's own write has succeeded whatever happens here.
async fn convert(server: &Arc<Server>, state: &PepState, owner: &BareJid, change: Change<'_>) {
    let Some(svc) = pep::service(server, state, owner) else {
        return;
    };
    let _lock = lock_of(owner).lock().await;
    let run = async {
        match change {
            Change::Bookmarks => from_bookmarks(&svc, owner).await,
            Change::Legacy(doc, source) => from_legacy(&svc, owner, doc, source).await,
            Change::FirstSession => first_session(&svc, owner).await,
        }
    };
    if let Err(e) = CONVERTING.scope((), run).await {
        tracing::warn!(account = %owner, error = %e, "bookmarks conversion not done");
    }
}

/// Bookmarks 2 → the `<storage/>` document, stored as private XML and published to the
/// legacy node.
async fn from_bookmarks(svc: &Service, owner: &BareJid) -> Result<(), ConvertError> {
    let rooms: BTreeMap<String, Room> = pep::stored_items(svc, NS_BOOKMARKS, None)
        .await?
        .into_iter()
        .filter_map(|(id, payload)| {
            let p = payload.filter(|p| p.is("conference", NS_BOOKMARKS))?;
            Some((id, Room::read(&p, NS_BOOKMARKS)))
        })
        .collect();
    let current = private::load(&svc.server, owner, "storage", NS_LEGACY).await?;
    let doc = rebuild(current.as_ref(), &rooms);
    let stored = async {
        if !same_legacy(current.as_ref(), &doc) {
            private::store(&svc.server, owner, &doc).await?;
        }
        Ok(())
    }
    .await;
    let published = to_legacy_node(svc, &doc).await;
    stored.and(published)
}

/// A legacy document → bookmarks 2 items, and the other legacy form.
async fn from_legacy(
    svc: &Service,
    owner: &BareJid,
    doc: &Element,
    source: Source,
) -> Result<(), ConvertError> {
    let mirrored = match source {
        Source::Private => to_legacy_node(svc, doc).await,
        Source::Pep => {
            async {
                let current = private::load(&svc.server, owner, "storage", NS_LEGACY).await?;
                if !same_legacy(current.as_ref(), doc) {
                    private::store(&svc.server, owner, doc).await?;
                }
                Ok(())
            }
            .await
        }
    };
    let items = to_bookmarks(svc, doc).await;
    mirrored.and(items)
}

/// XEP-0411 §4: legacy bookmarks reach PEP before a client relying on PEP alone looks for
/// them. Once the bookmarks 2 node exists this costs one read per session.
async fn first_session(svc: &Service, owner: &BareJid) -> Result<(), ConvertError> {
    if pep::node_config(svc, NS_BOOKMARKS).await?.is_some() {
        return Ok(());
    }
    let Some(doc) = private::load(&svc.server, owner, "storage", NS_LEGACY).await? else {
        return Ok(());
    };
    if !doc.children().any(|c| c.is("conference", NS_LEGACY)) {
        return Ok(());
    }
    from_legacy(svc, owner, &doc, Source::Private).await
}

/// Publishes `doc` as the legacy node's item, unless it already holds the same.
async fn to_legacy_node(svc: &Service, doc: &Element) -> Result<(), ConvertError> {
    let current = pep::stored_items(svc, NS_LEGACY, Some(&[LEGACY_ITEM.to_owned()]))
        .await?
        .into_iter()
        .next()
        .and_then(|(_, p)| p);
    if same_legacy(current.as_ref(), doc) {
        return Ok(());
    }
    let options = private_node(svc, NS_LEGACY, LEGACY_OPTIONS).await?;
    pep::publish_as_owner(svc, NS_LEGACY, Some(LEGACY_ITEM), doc.clone(), options)
        .await
        .map_err(refused(NS_LEGACY))
}

/// Makes the bookmarks 2 items say what `doc` says: new and changed rooms published (each
/// keeping its item's extensions), rooms no longer there retracted, the rest untouched.
async fn to_bookmarks(svc: &Service, doc: &Element) -> Result<(), ConvertError> {
    let wanted = legacy_view(doc).0;
    let existing: HashMap<String, Option<(Room, Option<Element>)>> =
        pep::stored_items(svc, NS_BOOKMARKS, None)
            .await?
            .into_iter()
            .map(|(id, payload)| {
                let item = payload
                    .filter(|p| p.is("conference", NS_BOOKMARKS))
                    .map(|p| {
                        (
                            Room::read(&p, NS_BOOKMARKS),
                            p.get_child("extensions", NS_BOOKMARKS).cloned(),
                        )
                    });
                (id, item)
            })
            .collect();
    let mut publish = Vec::new();
    for (jid, (room, _)) in &wanted {
        let old = existing.get(jid).and_then(Option::as_ref);
        if old.is_some_and(|(r, _)| r == room) {
            continue;
        }
        let extensions = old.and_then(|(_, e)| e.as_ref());
        publish.push((jid.as_str(), room.conference(extensions)));
    }
    let mut retract: Vec<&str> = existing
        .keys()
        .filter(|id| !wanted.contains_key(*id))
        .map(String::as_str)
        .collect();
    retract.sort_unstable();
    if publish.is_empty() && retract.is_empty() {
        return Ok(());
    }
    let options = private_node(svc, NS_BOOKMARKS, BOOKMARKS_OPTIONS).await?;
    for (jid, conference) in publish {
        pep::publish_as_owner(svc, NS_BOOKMARKS, Some(jid), conference, options)
            .await
            .map_err(refused(NS_BOOKMARKS))?;
    }
    for id in retract {
        pep::retract_as_owner(svc, NS_BOOKMARKS, id)
            .await
            .map_err(refused(NS_BOOKMARKS))?;
    }
    Ok(())
}

/// The publish-options to write to a node that must stay the account's alone: the full
/// configuration for a new node, none for an existing whitelist node (its other settings are
/// the owner's choice), and a refusal for a node others may read (XEP-0411 §5).
async fn private_node(
    svc: &Service,
    node: &'static str,
    options: &'static [(&'static str, &'static str)],
) -> Result<&'static [(&'static str, &'static str)], ConvertError> {
    match pep::node_config(svc, node).await? {
        None => Ok(options),
        Some(c) if c.access_model == AccessModel::Whitelist => Ok(&[]),
        Some(c) => Err(ConvertError::NotPrivate(node, c.access_model.as_str())),
    }
}

// ---- the two formats ------------------------------------------------------------------

/// One room as both formats describe it (XEP-0402 §2, XEP-0048 §2.1), the JID aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Room {
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
}

impl Room {
    /// From a `<conference/>` of either namespace.
    fn read(el: &Element, ns: &str) -> Room {
        Room {
            name: el.attr("name").map(str::to_owned),
            // xs:boolean: "true" or "1" (both XEPs' BOOLEANNOTE).
            autojoin: matches!(el.attr("autojoin").map(str::trim), Some("true" | "1")),
            nick: el.get_child("nick", ns).map(Element::text),
            password: el.get_child("password", ns).map(Element::text),
        }
    }

    fn write(&self, el: &mut Element, ns: &str) {
        if let Some(name) = &self.name {
            el.set_attr("name", name.clone());
        }
        if self.autojoin {
            el.set_attr("autojoin", "true");
        }
        if let Some(nick) = &self.nick {
            el.push_child(Element::new("nick", ns).with_text(nick.clone()));
        }
        if let Some(password) = &self.password {
            el.push_child(Element::new("password", ns).with_text(password.clone()));
        }
    }

    /// The bookmarks 2 payload.
    fn conference(&self, extensions: Option<&Element>) -> Element {
        let mut el = Element::new("conference", NS_BOOKMARKS);
        self.write(&mut el, NS_BOOKMARKS);
        if let Some(ext) = extensions {
            el.push_child(ext.clone());
        }
        el
    }
}

/// Whether a child of a legacy `<conference/>` is one the format defines.
fn is_known_legacy_child(el: &Element) -> bool {
    el.ns() == NS_LEGACY && matches!(el.name(), "nick" | "password")
}

/// A legacy document by meaning: each room (the first `<conference/>` of a JID wins) with
/// its unknown children, and the document's other children, all canonical.
type LegacyView = (BTreeMap<String, (Room, Vec<Element>)>, Vec<Element>);

fn legacy_view(doc: &Element) -> LegacyView {
    let mut rooms = BTreeMap::new();
    let mut others = Vec::new();
    for child in doc.children() {
        if child.is("conference", NS_LEGACY) {
            let Some(jid) = child.attr("jid").filter(|j| !j.is_empty()) else {
                // XEP-0048 §2.1: the JID is REQUIRED; without one there is no room.
                continue;
            };
            let unknown = child
                .children()
                .filter(|c| !is_known_legacy_child(c))
                .map(canonical)
                .collect();
            rooms
                .entry(jid.to_owned())
                .or_insert((Room::read(child, NS_LEGACY), unknown));
        } else {
            others.push(canonical(child));
        }
    }
    (rooms, others)
}

/// Whether a stored legacy document (or none) says the same as `doc`.
fn same_legacy(current: Option<&Element>, doc: &Element) -> bool {
    let empty = Element::new("storage", NS_LEGACY);
    legacy_view(current.unwrap_or(&empty)) == legacy_view(doc)
}

/// The legacy document for these rooms: each room's unknown children and the document's
/// other children (web pages, which bookmarks 2 has no place for: XEP-0402 §1) taken from
/// the current document.
fn rebuild(current: Option<&Element>, rooms: &BTreeMap<String, Room>) -> Element {
    let mut old: HashMap<&str, &Element> = HashMap::new();
    for c in current
        .into_iter()
        .flat_map(Element::children)
        .filter(|c| c.is("conference", NS_LEGACY))
    {
        if let Some(jid) = c.attr("jid") {
            old.entry(jid).or_insert(c);
        }
    }
    let mut doc = Element::new("storage", NS_LEGACY);
    for (jid, room) in rooms {
        let mut c = Element::new("conference", NS_LEGACY).with_attr("jid", jid.clone());
        room.write(&mut c, NS_LEGACY);
        if let Some(o) = old.get(jid.as_str()) {
            for unknown in o.children().filter(|c| !is_known_legacy_child(c)) {
                c.push_child(unknown.clone());
            }
        }
        doc.push_child(c);
    }
    for other in current
        .into_iter()
        .flat_map(Element::children)
        .filter(|c| !c.is("conference", NS_LEGACY))
    {
        doc.push_child(other.clone());
    }
    doc
}

/// An element as compared by meaning: attributes sorted, whitespace between elements gone.
fn canonical(el: &Element) -> Element {
    let mut out = Element::new(el.name(), el.ns());
    let mut attrs: Vec<(&str, &str)> = el.attrs().collect();
    attrs.sort_unstable();
    for (k, v) in attrs {
        out.set_attr(k, v);
    }
    for node in el.nodes() {
        match node {
            Node::Element(c) => out.push_child(canonical(c)),
            Node::Text(t) if !t.trim().is_empty() => out.push_text(t.clone()),
            Node::Text(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        rookery_xml::parse_element(xml).expect("xml")
    }

    #[test]
    fn rooms_read_alike_from_both_formats() {
        let two = parse(
            "<conference xmlns='urn:xmpp:bookmarks:1' name='Council' autojoin='1'><nick>Puck</nick><extensions><x xmlns='urn:example'/></extensions></conference>",
        );
        let legacy = parse(
            "<conference xmlns='storage:bookmarks' jid='council@conference.underhill.org' autojoin='true' name='Council'>\n  <nick>Puck</nick>\n</conference>",
        );
        assert_eq!(
            Room::read(&two, NS_BOOKMARKS),
            Room::read(&legacy, NS_LEGACY)
        );
        // Written back, the room reads the same and keeps its extensions.
        let room = Room::read(&two, NS_BOOKMARKS);
        let back = room.conference(two.get_child("extensions", NS_BOOKMARKS));
        assert_eq!(Room::read(&back, NS_BOOKMARKS), room);
        assert_eq!(back.attr("autojoin"), Some("true"));
        assert_eq!(
            back.get_child("extensions", NS_BOOKMARKS),
            two.get_child("extensions", NS_BOOKMARKS)
        );
    }

    #[test]
    fn the_rebuilt_document_keeps_urls_and_unknown_children() {
        let current = parse(
            "<storage xmlns='storage:bookmarks'>\n <url name='Works' url='http://example.org/'/>\n <conference jid='a@muc.example.org' name='A'><nick>n</nick><pin xmlns='urn:example:pin'/></conference>\n <conference jid='gone@muc.example.org'/>\n</storage>",
        );
        let mut rooms = BTreeMap::new();
        rooms.insert(
            "a@muc.example.org".to_owned(),
            Room {
                name: Some("A".into()),
                autojoin: true,
                nick: Some("n".into()),
                password: None,
            },
        );
        let doc = rebuild(Some(&current), &rooms);
        let (view, others) = legacy_view(&doc);
        assert_eq!(view.len(), 1);
        let (room, unknown) = &view["a@muc.example.org"];
        assert!(room.autojoin);
        assert_eq!(unknown.len(), 1, "the unknown child stays");
        assert_eq!(others.len(), 1, "the url stays");
        assert!(!same_legacy(Some(&current), &doc));
        // Whitespace and attribute order do not make a difference.
        let again = parse(
            "<storage xmlns='storage:bookmarks'><conference autojoin='1' name='A' jid='a@muc.example.org'>\n<nick>n</nick><pin xmlns='urn:example:pin'/></conference><url url='http://example.org/' name='Works'/></storage>",
        );
        assert!(same_legacy(Some(&again), &doc));
        // No document is the empty document.
        assert!(same_legacy(None, &Element::new("storage", NS_LEGACY)));
    }
}
