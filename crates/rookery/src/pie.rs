//! `rookery export` and `rookery import`: accounts and their data in the Portable
//! Import/Export Format (XEP-0227, version 1.1).
//!
//! One document, `<server-data xmlns='urn:xmpp:pie:0'>`, holds a `<host jid='…'>` per domain
//! and a `<user name='…'>` per account with:
//!
//! * a `<scram-credentials xmlns='urn:xmpp:pie:0#scram'>` per stored hash (never a password);
//! * the roster (`<query xmlns='jabber:iq:roster'>`: jid, name, subscription, ask, approved,
//!   groups), pending incoming subscription requests (`<presence type='subscribe'/>`), the
//!   vCard (`<vCard xmlns='vcard-temp'>`), private XML (`<query xmlns='jabber:iq:private'>`)
//!   and offline messages in arrival order (`<offline-messages>`);
//! * the account's PEP nodes (XEP-0163) as XEP-0227 1.1 shows them: a
//!   `<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'>` with per node its
//!   `<configure node='…'>` (the node configuration as a submitted XEP-0004 form),
//!   `<affiliations node='…'>` and `<subscriptions node='…'>` (XEP-0060 §8.9 and §8.8 forms),
//!   and a `<pubsub xmlns='http://jabber.org/protocol/pubsub'>` with the items of each node,
//!   oldest first (`<items node='…'><item id='…' publisher='…'>payload</item></items>`, as
//!   XEP-0060 §6.5 answers). When items were published is not part of the format: imported
//!   items keep their order and get the time of the import.
//!
//! * the account's blocklist (XEP-0191) as `<blocklist xmlns='urn:xmpp:blocking'>` with an
//!   `<item jid='…'/>` per blocked JID, and its message archive (XEP-0313) as
//!   `<archive xmlns='urn:xmpp:pie:0#mam'>`, one `<result xmlns='urn:xmpp:mam:2' id='…'>` per
//!   message in archive order, each the message `<forwarded>` (XEP-0297) with its archiving
//!   time in a `<delay>` (XEP-0203): the form Prosody's XEP-0227 storage and Tigase write.
//!   The other party of an imported message is its `to` when the account sent it, else its
//!   `from`.
//!
//! Import also reads the older forms (XEP-0227 0.x, and what `ejabberdctl export_piefxis`
//! writes): the namespace of versions before 0.7; a plaintext `password` attribute on
//! `<user>`, turned into SCRAM records at once and never stored, or ejabberd's SCRAM record
//! in it (`scram:StoredKey,ServerKey,Salt,Iterations`); a main file that includes one file per
//! host (`<xi:include href='…'/>`, a file name in the same directory only). Elements this
//! server keeps no data for (privacy lists) are skipped and named on stderr.
//!
//! Import is two steps: [`parse`] reads and validates the whole document (XML limits, JIDs,
//! base64, iteration counts, element shapes) into a [`Document`], then [`check`] compares it
//! with the configuration and the database (served hosts, existing accounts, size limits);
//! only when both passed does [`write`] touch the database, so a refused document changes
//! nothing.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rookery_core::Config;
use rookery_modules::form::Submitted;
use rookery_modules::pubsub::config::{
    ConfigError, Limits as NodeLimits, NodeConfig, NS_NODE_CONFIG,
};
use rookery_modules::pubsub::pep::PepSettings;
use rookery_modules::vcard::VcardLimits;
use rookery_modules::{offline::OfflineLimits, private::PrivateLimits, roster::RosterLimits};
use rookery_sasl::{HashAlg, ScramCredentials};
use rookery_stanza::{BareJid, Jid};
use rookery_storage::{
    ArchiveEntry, ArchiveFilter, ArchiveQuery, ItemRecord, ItemSelection, PageRequest,
    PubSubService, RosterItem, Storage, Subscription, SubscriptionRecord,
};
use rookery_xml::{Element, Limits};
use std::collections::HashSet;

pub const NS: &str = "urn:xmpp:pie:0";
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
/// The namespace of XEP-0227 before version 0.7, which older ejabberd writes.
const NS_OLD: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
/// XInclude: ejabberd writes a main file that includes one file per host.
const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";
/// Files one document may include.
pub const MAX_INCLUDES: usize = 1000;
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_CLIENT: &str = "jabber:client";
const NS_VCARD: &str = rookery_modules::vcard::NS;
const NS_PRIVATE: &str = rookery_modules::private::NS;
const VCARD_STORE: &str = rookery_modules::vcard::STORE;
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
const NS_DATA: &str = "jabber:x:data";
const NS_SUBSCRIBE_OPTIONS: &str = "http://jabber.org/protocol/pubsub#subscribe_options";
/// Bytes of a PEP node name.
pub const MAX_NODE_NAME: usize = 1024;
/// The stored options of a subscription that asked for no notifications (`pubsub#deliver`
/// false, XEP-0060 §6.3.7); the only options the PubSub module keeps.
const NO_DELIVERY: &str = "nodeliver";
const PRIVATE_STORE: &str = rookery_modules::private::STORE;
const NS_BLOCKING: &str = rookery_modules::blocking::NS;
const BLOCKLIST_STORE: &str = rookery_modules::blocking::STORE;
/// XEP-0227's message archive element (as Prosody and Tigase write it).
const NS_PIE_MAM: &str = "urn:xmpp:pie:0#mam";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const NS_DELAY: &str = "urn:xmpp:delay";
/// Archived messages read per storage query while exporting.
const EXPORT_ARCHIVE_PAGE: usize = 500;

/// Bytes of a document `import` reads; larger files are refused before being read.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;
/// Nesting depth inside the document (`server-data` is 1; a stanza in `offline-messages`
/// starts at 5).
pub const MAX_DEPTH: usize = 32;
/// Iteration counts accepted in imported SCRAM records: not below what Rookery generates
/// (RFC 7677's minimum), and not so high that every login would cost the server seconds.
pub const ITERATIONS: std::ops::RangeInclusive<u32> = ScramCredentials::MIN_ITERATIONS..=1_000_000;

/// A validated document: hosts and accounts with normalised names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    pub hosts: Vec<Host>,
    /// What was skipped (elements this server keeps no data for), for the operator.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub domain: String,
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub node: String,
    /// One record per hash, in [`HashAlg::ALL`] order.
    pub credentials: Vec<ScramCredentials>,
    pub roster: Vec<RosterItem>,
    /// Pending incoming subscription requests: the contact's bare JID and the stanza.
    pub pending_in: Vec<(String, Element)>,
    pub vcard: Option<Element>,
    pub private: Vec<Element>,
    /// `<message xmlns='jabber:client'>` stanzas, oldest first.
    pub offline: Vec<Element>,
    /// PEP nodes, sorted by name.
    pub pep: Vec<PepNode>,
    /// Blocked JIDs (XEP-0191), sorted.
    pub blocklist: Vec<String>,
    /// The message archive, in archive order.
    pub archive: Vec<ArchivedMessage>,
}

/// One message of an account's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// The archive id (XEP-0359 stanza id), unique within the archive.
    pub id: String,
    pub timestamp_us: i64,
    /// The other party, bare, and its resource ("" when none).
    pub with_bare: String,
    pub with_resource: String,
    pub message: Element,
}

/// One PEP node of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PepNode {
    pub node: String,
    pub config: NodeConfig,
    /// `(bare JID, affiliation)`, sorted by JID.
    pub affiliations: Vec<(String, String)>,
    /// Sorted by (JID, subid).
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Oldest first: `(id, publisher, payload)`.
    pub items: Vec<(String, String, Option<Element>)>,
}

impl PepNode {
    fn new(node: String) -> Self {
        PepNode {
            node,
            config: NodeConfig::pep(),
            affiliations: Vec::new(),
            subscriptions: Vec::new(),
            items: Vec::new(),
        }
    }
}

impl Account {
    fn new(node: String) -> Self {
        Account {
            node,
            credentials: Vec::new(),
            roster: Vec::new(),
            pending_in: Vec::new(),
            vcard: None,
            private: Vec::new(),
            offline: Vec::new(),
            pep: Vec::new(),
            blocklist: Vec::new(),
            archive: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Export

/// Reads every account of `domain` (all domains with accounts when `None`) from storage.
pub async fn export(storage: &Storage, domain: Option<&str>) -> Result<Document> {
    let mut doc = Document::default();
    if let Some(d) = domain {
        doc.hosts.push(Host {
            domain: d.to_owned(),
            accounts: Vec::new(),
        });
    }
    for (node, d) in storage.accounts.list_accounts(domain).await? {
        let account = export_account(storage, &d, &node)
            .await
            .with_context(|| format!("cannot export {node}@{d}"))?;
        match doc.hosts.last_mut() {
            Some(h) if h.domain == d => h.accounts.push(account),
            _ => doc.hosts.push(Host {
                domain: d,
                accounts: vec![account],
            }),
        }
    }
    Ok(doc)
}

async fn export_account(storage: &Storage, domain: &str, node: &str) -> Result<Account> {
    let stored = |what: &str, xml: &str| {
        rookery_xml::parse_element(xml).map_err(|e| anyhow!("the stored {what} is unreadable: {e}"))
    };
    let mut a = Account::new(node.to_owned());
    for h in HashAlg::ALL {
        if let Some(c) = storage.accounts.get_credentials(domain, node, h).await? {
            a.credentials.push(c);
        }
    }
    a.roster = storage.roster.roster(domain, node).await?.items;
    for (contact, xml) in storage.roster.pending_in(domain, node).await? {
        let el = stored("subscription request", &xml)?;
        a.pending_in.push((contact, el));
    }
    if let Some(xml) = storage
        .user_data
        .get_data(domain, node, VCARD_STORE, "")
        .await?
    {
        a.vcard = Some(stored("vCard", &xml)?);
    }
    for key in storage
        .user_data
        .data_keys(domain, node, PRIVATE_STORE)
        .await?
    {
        if let Some(xml) = storage
            .user_data
            .get_data(domain, node, PRIVATE_STORE, &key)
            .await?
        {
            a.private.push(stored("private element", &xml)?);
        }
    }
    let count = storage.offline.count_offline(domain, node).await?;
    for (_, xml) in storage.offline.peek_offline(domain, node, count).await? {
        a.offline.push(stored("offline message", &xml)?);
    }
    if let Some(xml) = storage
        .user_data
        .get_data(domain, node, BLOCKLIST_STORE, "")
        .await?
    {
        let list = rookery_modules::blocking::Blocklist::from_xml(&xml)
            .map_err(|e| anyhow!("the stored blocklist is unreadable: {e}"))?;
        a.blocklist = list.items().map(str::to_owned).collect();
    }
    let mut page = PageRequest::First;
    loop {
        let got = storage
            .archive
            .query_archive(
                domain,
                node,
                &ArchiveQuery {
                    filter: ArchiveFilter::default(),
                    page,
                    max: EXPORT_ARCHIVE_PAGE,
                },
            )
            .await?;
        let Some(last) = got.entries.last().map(|e| e.id.clone()) else {
            break;
        };
        for e in got.entries {
            a.archive.push(ArchivedMessage {
                message: stored(&format!("archived message {}", e.id), &e.stanza)?,
                id: e.id,
                timestamp_us: e.timestamp_us,
                with_bare: e.with_bare,
                with_resource: e.with_resource,
            });
        }
        if got.complete {
            break;
        }
        page = PageRequest::After(last);
    }
    let service = PubSubService::Account { domain, user: node };
    for rec in storage.pubsub.list_nodes(service).await? {
        let mut n = PepNode::new(rec.node.clone());
        let what = format!("PEP node '{}'", rec.node);
        n.config = NodeConfig::from_doc(&rec.config)
            .ok_or_else(|| anyhow!("the stored configuration of {what} is unreadable"))?;
        n.affiliations = storage.pubsub.affiliations(service, &rec.node).await?;
        n.subscriptions = storage.pubsub.subscriptions(service, &rec.node).await?;
        let page = |max| ItemSelection::Page {
            after: None,
            before: None,
            max,
        };
        let count = storage
            .pubsub
            .get_items(service, &rec.node, page(0))
            .await?
            .count;
        let items = storage
            .pubsub
            .get_items(service, &rec.node, page(count))
            .await?
            .items;
        // Newest first in storage; oldest first in the document, the order to publish them in.
        for i in items.into_iter().rev() {
            let payload = if i.payload.is_empty() {
                None
            } else {
                Some(stored(&format!("item of {what}"), &i.payload)?)
            };
            n.items.push((i.id, i.publisher, payload));
        }
        a.pep.push(n);
    }
    Ok(a)
}

/// A node's configuration as a submitted form: FORM_TYPE and each field's values (the
/// service's own read-only fields left out).
fn config_form(c: &NodeConfig) -> Element {
    let limits = NodeLimits {
        max_items: usize::MAX,
        max_item_bytes: 0,
    };
    let full = c.form("submit", NS_NODE_CONFIG, &limits);
    let mut form = Element::new("x", NS_DATA).with_attr("type", "submit");
    for f in full.children().filter(|f| f.is("field", NS_DATA)) {
        let Some(var) = f.attr("var") else { continue };
        if matches!(var, "pubsub#max_payload_size" | "pubsub#node_type") {
            continue;
        }
        let mut field = Element::new("field", NS_DATA).with_attr("var", var);
        if var == "FORM_TYPE" {
            field.set_attr("type", "hidden");
        }
        for v in f.children().filter(|v| v.is("value", NS_DATA)) {
            field.push_child(Element::new("value", NS_DATA).with_text(v.text()));
        }
        form.push_child(field);
    }
    form
}

fn pep_elements(a: &Account) -> Vec<Element> {
    if a.pep.is_empty() {
        return Vec::new();
    }
    let mut owner = Element::new("pubsub", NS_PUBSUB_OWNER);
    let mut items_el = Element::new("pubsub", NS_PUBSUB);
    for n in &a.pep {
        let node = n.node.as_str();
        owner.push_child(
            Element::new("configure", NS_PUBSUB_OWNER)
                .with_attr("node", node)
                .with_child(config_form(&n.config)),
        );
        if !n.affiliations.is_empty() {
            let mut affs = Element::new("affiliations", NS_PUBSUB_OWNER).with_attr("node", node);
            for (jid, aff) in &n.affiliations {
                affs.push_child(
                    Element::new("affiliation", NS_PUBSUB_OWNER)
                        .with_attr("jid", jid.as_str())
                        .with_attr("affiliation", aff.as_str()),
                );
            }
            owner.push_child(affs);
        }
        if !n.subscriptions.is_empty() {
            let mut subs = Element::new("subscriptions", NS_PUBSUB_OWNER).with_attr("node", node);
            for s in &n.subscriptions {
                let mut sub = Element::new("subscription", NS_PUBSUB_OWNER)
                    .with_attr("jid", s.jid.as_str())
                    .with_attr("subscription", s.state.as_str())
                    .with_attr("subid", s.subid.as_str());
                if s.options == NO_DELIVERY {
                    sub.push_child(
                        Element::new("options", NS_PUBSUB_OWNER).with_child(
                            Element::new("x", NS_DATA)
                                .with_attr("type", "submit")
                                .with_child(
                                    Element::new("field", NS_DATA)
                                        .with_attr("var", "FORM_TYPE")
                                        .with_attr("type", "hidden")
                                        .with_child(
                                            Element::new("value", NS_DATA)
                                                .with_text(NS_SUBSCRIBE_OPTIONS),
                                        ),
                                )
                                .with_child(
                                    Element::new("field", NS_DATA)
                                        .with_attr("var", "pubsub#deliver")
                                        .with_child(Element::new("value", NS_DATA).with_text("0")),
                                ),
                        ),
                    );
                }
                subs.push_child(sub);
            }
            owner.push_child(subs);
        }
        if !n.items.is_empty() {
            let mut list = Element::new("items", NS_PUBSUB).with_attr("node", node);
            for (id, publisher, payload) in &n.items {
                let mut item = Element::new("item", NS_PUBSUB).with_attr("id", id.as_str());
                if !publisher.is_empty() {
                    item.set_attr("publisher", publisher.as_str());
                }
                if let Some(p) = payload {
                    item.push_child(p.clone());
                }
                list.push_child(item);
            }
            items_el.push_child(list);
        }
    }
    let mut out = vec![owner];
    if items_el.children().next().is_some() {
        out.push(items_el);
    }
    out
}

/// The document as XML, with an XML declaration and a final newline.
pub fn to_xml(doc: &Document) -> String {
    let mut root = Element::new("server-data", NS);
    for h in &doc.hosts {
        let mut host = Element::new("host", NS).with_attr("jid", h.domain.as_str());
        for a in &h.accounts {
            host.push_child(account_element(a));
        }
        root.push_child(host);
    }
    format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n{}\n",
        root.to_xml("")
    )
}

fn account_element(a: &Account) -> Element {
    let mut user = Element::new("user", NS).with_attr("name", a.node.as_str());
    for c in &a.credentials {
        user.push_child(
            Element::new("scram-credentials", NS_SCRAM)
                .with_attr("mechanism", format!("SCRAM-{}", c.hash.name()))
                .with_child(
                    Element::new("iter-count", NS_SCRAM).with_text(c.iterations.to_string()),
                )
                .with_child(Element::new("salt", NS_SCRAM).with_text(BASE64.encode(&c.salt)))
                .with_child(
                    Element::new("server-key", NS_SCRAM).with_text(BASE64.encode(&c.server_key)),
                )
                .with_child(
                    Element::new("stored-key", NS_SCRAM).with_text(BASE64.encode(&c.stored_key)),
                ),
        );
    }
    if !a.roster.is_empty() {
        let mut query = Element::new("query", NS_ROSTER);
        for i in &a.roster {
            let mut item = Element::new("item", NS_ROSTER)
                .with_attr("jid", i.jid.as_str())
                .with_attr("subscription", i.subscription.as_str());
            if let Some(n) = &i.name {
                item.set_attr("name", n.as_str());
            }
            if i.ask {
                item.set_attr("ask", "subscribe");
            }
            if i.approved {
                item.set_attr("approved", "true");
            }
            for g in &i.groups {
                item.push_child(Element::new("group", NS_ROSTER).with_text(g.as_str()));
            }
            query.push_child(item);
        }
        user.push_child(query);
    }
    for (_, p) in &a.pending_in {
        user.push_child(p.clone());
    }
    if let Some(v) = &a.vcard {
        user.push_child(v.clone());
    }
    if !a.private.is_empty() {
        let mut query = Element::new("query", NS_PRIVATE);
        for p in &a.private {
            query.push_child(p.clone());
        }
        user.push_child(query);
    }
    if !a.offline.is_empty() {
        let mut box_ = Element::new("offline-messages", NS);
        for m in &a.offline {
            box_.push_child(m.clone());
        }
        user.push_child(box_);
    }
    for p in pep_elements(a) {
        user.push_child(p);
    }
    if !a.blocklist.is_empty() {
        let mut list = Element::new("blocklist", NS_BLOCKING);
        for jid in &a.blocklist {
            list.push_child(Element::new("item", NS_BLOCKING).with_attr("jid", jid.as_str()));
        }
        user.push_child(list);
    }
    if !a.archive.is_empty() {
        let mut archive = Element::new("archive", NS_PIE_MAM);
        for m in &a.archive {
            let delay = Element::new("delay", NS_DELAY)
                .with_attr("stamp", rookery_modules::mam::query::stamp(m.timestamp_us));
            archive.push_child(
                Element::new("result", NS_MAM)
                    .with_attr("id", m.id.as_str())
                    .with_child(
                        Element::new("forwarded", NS_FORWARD)
                            .with_child(delay)
                            .with_child(m.message.clone()),
                    ),
            );
        }
        user.push_child(archive);
    }
    user
}

// ---------------------------------------------------------------------------------------
// Import, step 1: parse and validate (no configuration, no database)

/// Reads a file and the files it includes (`<xi:include href='…'/>` of a file name in the
/// same directory, as `ejabberdctl export_piefxis` writes them), at most
/// [`MAX_DOCUMENT_BYTES`] in all, and [`parse_with`]s them.
pub fn read(path: &std::path::Path) -> Result<Document> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut budget = MAX_DOCUMENT_BYTES;
    let text = read_limited(path, &mut budget)?;
    let mut include = |href: &str| -> Result<String> {
        if href.is_empty() || href.starts_with('.') || href.contains(['/', '\\', '\0']) {
            bail!(
                "an included file must be named by a file name in the same directory, not '{href}'"
            );
        }
        read_limited(&dir.join(href), &mut budget)
    };
    parse_with(&text, &mut include)
        .with_context(|| format!("{} is not a valid XEP-0227 document", path.display()))
}

/// The text of a file, taken from `budget` (the bytes left for the whole document).
fn read_limited(path: &std::path::Path, budget: &mut usize) -> Result<String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(*budget as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > *budget {
        bail!(
            "the document is larger than {} MiB (with {})",
            MAX_DOCUMENT_BYTES / (1024 * 1024),
            path.display()
        );
    }
    *budget -= bytes.len();
    String::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))
}

/// Parses and validates a whole document that includes no other file.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Document> {
    parse_with(text, &mut |href: &str| {
        bail!("the document includes {href}, and no file can be read here")
    })
}

/// Parses and validates a whole document; `include` gives the text of a file an
/// `<xi:include href='…'/>` names. Nothing here reads the configuration or the database: see
/// [`check`] for that.
pub fn parse_with(text: &str, include: &mut dyn FnMut(&str) -> Result<String>) -> Result<Document> {
    let root = parse_xml(text)?;
    if !is_pie(&root, "server-data") {
        bail!(
            "the root element is <{}> in '{}', not <server-data xmlns='{NS}'>",
            root.name(),
            root.ns()
        );
    }
    let mut doc = Document::default();
    let mut domains = HashSet::new();
    let mut includes = 0;
    for el in root.children() {
        if el.is("include", NS_XINCLUDE) {
            includes += 1;
            if includes > MAX_INCLUDES {
                bail!("the document includes more than {MAX_INCLUDES} files");
            }
            let href = el
                .attr("href")
                .ok_or_else(|| anyhow!("an <xi:include> has no href"))?;
            let host = include(href)
                .and_then(|text| parse_xml(&text))
                .with_context(|| format!("included file {href}"))?;
            if !is_pie(&host, "host") {
                bail!(
                    "included file {href}: the root element is <{}>, not <host>",
                    host.name()
                );
            }
            add_host(&mut doc, &mut domains, &host)?;
        } else if is_pie(el, "host") {
            add_host(&mut doc, &mut domains, el)?;
        } else {
            doc.skipped.push(format!("<{}> in server-data", el.name()));
        }
    }
    Ok(doc)
}

/// One XML document (with or without a declaration), within the limits of an import.
fn parse_xml(text: &str) -> Result<Element> {
    if text.len() > MAX_DOCUMENT_BYTES {
        bail!("the document is larger than {MAX_DOCUMENT_BYTES} bytes");
    }
    let body = strip_declaration(text)?;
    let limits = Limits {
        max_stanza_bytes: MAX_DOCUMENT_BYTES,
        max_depth: MAX_DEPTH,
        ..Limits::default()
    };
    rookery_xml::parse_element_with_limits(body, limits).map_err(|e| anyhow!("bad XML: {e}"))
}

/// An element of this format: in its namespace or in the one of versions before 0.7.
fn is_pie(el: &Element, name: &str) -> bool {
    el.name() == name && (el.ns() == NS || el.ns() == NS_OLD)
}

fn add_host(doc: &mut Document, domains: &mut HashSet<String>, el: &Element) -> Result<()> {
    let jid = el
        .attr("jid")
        .ok_or_else(|| anyhow!("a <host> has no jid attribute"))?;
    let domain = domain_of(jid)?;
    if !domains.insert(domain.clone()) {
        bail!("host {domain} appears twice");
    }
    let mut host = Host {
        domain,
        accounts: Vec::new(),
    };
    let mut nodes = HashSet::new();
    for u in el.children() {
        if !is_pie(u, "user") {
            doc.skipped
                .push(format!("<{}> in host {}", u.name(), host.domain));
            continue;
        }
        let a = parse_account(&host.domain, u, &mut doc.skipped)?;
        if !nodes.insert(a.node.clone()) {
            bail!("user {}@{} appears twice", a.node, host.domain);
        }
        host.accounts.push(a);
    }
    doc.hosts.push(host);
    Ok(())
}

/// The document without its `<?xml …?>` declaration (the element parser takes none).
fn strip_declaration(text: &str) -> Result<&str> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if let Some(rest) = t.strip_prefix("<?xml") {
        let end = rest
            .find("?>")
            .ok_or_else(|| anyhow!("bad XML: unterminated XML declaration"))?;
        let decl = &rest[..end];
        if decl.contains('<') || decl.contains('>') {
            bail!("bad XML: malformed XML declaration");
        }
        let lower = decl.to_ascii_lowercase();
        if lower.contains("encoding") && !lower.contains("utf-8") {
            bail!("bad XML: only UTF-8 documents are read");
        }
        return Ok(&rest[end + 2..]);
    }
    Ok(t)
}

fn domain_of(jid: &str) -> Result<String> {
    let j = BareJid::new(jid).map_err(|e| anyhow!("host '{jid}' is not a valid domain: {e}"))?;
    if j.node().is_some() || !rookery_stanza::is_stable(&j.clone().into()) {
        bail!("host '{jid}' is not a valid domain");
    }
    Ok(j.domain().to_string())
}

fn bare(jid: &str, what: &str) -> Result<String> {
    let j = Jid::new(jid).map_err(|e| anyhow!("{what} '{jid}' is not a valid JID: {e}"))?;
    if !rookery_stanza::is_stable(&j) {
        bail!("{what} '{jid}' is not a valid JID: its normalisation is ambiguous");
    }
    Ok(j.to_bare().to_string())
}

fn parse_account(domain: &str, u: &Element, skipped: &mut Vec<String>) -> Result<Account> {
    let name = u
        .attr("name")
        .ok_or_else(|| anyhow!("a <user> of host {domain} has no name attribute"))?;
    let jid = BareJid::new(&format!("{name}@{domain}"))
        .map_err(|e| anyhow!("user '{name}' of host {domain} is not a valid JID: {e}"))?;
    if !rookery_stanza::is_stable(&jid.clone().into()) {
        bail!("user '{name}' of host {domain} is not a valid JID: its normalisation is ambiguous");
    }
    let node = jid
        .node()
        .map(|n| n.to_string())
        .ok_or_else(|| anyhow!("a <user> of host {domain} has an empty name"))?;
    let who = format!("{node}@{domain}");
    let mut a = Account::new(node);
    for el in u.children() {
        if el.is("scram-credentials", NS_SCRAM) {
            let c = parse_scram(el).with_context(|| format!("{who}: bad scram-credentials"))?;
            if a.credentials.iter().any(|o| o.hash == c.hash) {
                bail!("{who}: two scram-credentials for SCRAM-{}", c.hash);
            }
            a.credentials.push(c);
        } else if el.is("query", NS_ROSTER) {
            for item in el.children() {
                let i = parse_item(item).with_context(|| format!("{who}: bad roster item"))?;
                if a.roster.iter().any(|o| o.jid == i.jid) {
                    bail!("{who}: roster item {} appears twice", i.jid);
                }
                a.roster.push(i);
            }
        } else if el.is("presence", NS_CLIENT) {
            if el.attr("type") != Some("subscribe") {
                skipped.push(format!(
                    "a presence of {who} that is not a subscription request"
                ));
                continue;
            }
            let from = el
                .attr("from")
                .ok_or_else(|| anyhow!("{who}: a subscription request has no from"))?;
            let contact = bare(from, &format!("{who}: the subscription request from"))?;
            a.pending_in.retain(|(c, _)| *c != contact);
            a.pending_in.push((contact, el.clone()));
        } else if el.is("vCard", NS_VCARD) {
            if a.vcard.is_some() {
                bail!("{who}: two vCards");
            }
            // An empty vCard is no vCard (a set of one deletes it).
            a.vcard = (!is_empty(el)).then(|| el.clone());
        } else if el.is("query", NS_PRIVATE) {
            for p in el.children() {
                if ["", NS_CLIENT, "jabber:server", NS_PRIVATE].contains(&p.ns()) {
                    bail!(
                        "{who}: private element <{}> is in the namespace '{}', which cannot be stored",
                        p.name(),
                        p.ns()
                    );
                }
                if a.private.iter().any(|o| o.is(p.name(), p.ns())) {
                    bail!(
                        "{who}: private element <{} xmlns='{}'> appears twice",
                        p.name(),
                        p.ns()
                    );
                }
                // An empty element is what a get of nothing answers: nothing to store.
                if !is_empty(p) {
                    a.private.push(p.clone());
                }
            }
        } else if is_pie(el, "offline-messages") {
            for m in el.children() {
                if !m.is("message", NS_CLIENT) {
                    bail!(
                        "{who}: <{}> in '{}' among the offline messages (expected <message xmlns='{NS_CLIENT}'>)",
                        m.name(),
                        m.ns()
                    );
                }
                // Delivered as it is: it must say who sent it.
                let from = m
                    .attr("from")
                    .ok_or_else(|| anyhow!("{who}: an offline message has no from"))?;
                Jid::new(from).map_err(|e| {
                    anyhow!(
                        "{who}: an offline message from '{from}', which is not a valid JID: {e}"
                    )
                })?;
                a.offline.push(m.clone());
            }
        } else if el.is("blocklist", NS_BLOCKING) {
            for item in el.children() {
                let jid = item
                    .attr("jid")
                    .filter(|_| item.is("item", NS_BLOCKING))
                    .ok_or_else(|| anyhow!("{who}: a blocklist entry is not an <item jid='…'/>"))?;
                let jid = Jid::new(jid)
                    .map_err(|e| anyhow!("{who}: the blocked '{jid}' is not a valid JID: {e}"))?;
                a.blocklist.push(jid.to_string());
            }
        } else if el.is("archive", NS_PIE_MAM) {
            let mut ids = HashSet::new();
            for (i, r) in el.children().enumerate() {
                let m = parse_archived(&who, r)
                    .with_context(|| format!("{who}: archived message {}", i + 1))?;
                if !ids.insert(m.id.clone()) {
                    bail!("{who}: the archive id '{}' appears twice", m.id);
                }
                a.archive.push(m);
            }
        } else if el.is("pubsub", NS_PUBSUB_OWNER) {
            parse_pep_owner(&mut a.pep, el, &who, skipped)
                .with_context(|| format!("{who}: bad PEP node data"))?;
        } else if el.is("pubsub", NS_PUBSUB) {
            parse_pep_items(&mut a.pep, el).with_context(|| format!("{who}: bad PEP items"))?;
        } else {
            skipped.push(format!("<{} xmlns='{}'> of {who}", el.name(), el.ns()));
        }
    }
    a.pep.sort_by(|x, y| x.node.cmp(&y.node));
    // Records are kept in one order whatever the document's, so export after import gives
    // the same document.
    a.pending_in.sort_by(|x, y| x.0.cmp(&y.0));
    a.roster.sort_by(|x, y| x.jid.cmp(&y.jid));
    a.credentials.sort_by_key(|c| c.hash);
    a.blocklist.sort();
    a.blocklist.dedup();
    // The older form: a plaintext password, made into SCRAM records here and dropped. When a
    // document carries both, the password gives records for every hash.
    match u.attr("password") {
        None => {}
        Some("") => bail!("{who} has an empty password"),
        // ejabberd with `auth_password_format: scram` writes its record there.
        Some(p) if p.starts_with("scram:") => {
            let c = parse_ejabberd_scram(&p["scram:".len()..])
                .with_context(|| format!("{who}: bad scram: password"))?;
            a.credentials.retain(|o| o.hash != c.hash);
            a.credentials.push(c);
            a.credentials.sort_by_key(|c| c.hash);
        }
        Some(pw) => {
            a.credentials = rookery_sasl::generate_all(pw, crate::SCRAM_ITERATIONS)
                .map_err(|e| anyhow!("{who}: the password cannot be used: {e}"))?;
        }
    }
    if a.credentials.is_empty() {
        bail!("{who} has no credentials (neither scram-credentials nor a password)");
    }
    Ok(a)
}

/// One `<result xmlns='urn:xmpp:mam:2' id='…'>` of an `<archive>`: its id, the delay's
/// stamp, the forwarded message, and the other party (its `to` when `account` sent it, else
/// its `from`).
fn parse_archived(account: &str, r: &Element) -> Result<ArchivedMessage> {
    if !r.is("result", NS_MAM) {
        bail!(
            "<{}> in '{}' (expected <result xmlns='{NS_MAM}'>)",
            r.name(),
            r.ns()
        );
    }
    let id = r
        .attr("id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| anyhow!("a result has no id"))?;
    let forwarded = r
        .get_child("forwarded", NS_FORWARD)
        .ok_or_else(|| anyhow!("result {id} has no <forwarded xmlns='{NS_FORWARD}'>"))?;
    let stamp = forwarded
        .get_child("delay", NS_DELAY)
        .and_then(|d| d.attr("stamp"))
        .ok_or_else(|| anyhow!("result {id} has no delay stamp"))?;
    let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            anyhow!("result {id}: the stamp '{stamp}' is not an XEP-0082 DateTime: {e}")
        })?;
    let timestamp_us = i64::try_from(at.unix_timestamp_nanos() / 1000)
        .map_err(|_| anyhow!("result {id}: the stamp '{stamp}' is out of range"))?;
    let message = forwarded
        .get_child("message", NS_CLIENT)
        .ok_or_else(|| anyhow!("result {id} forwards no <message xmlns='{NS_CLIENT}'>"))?;
    let jid_of = |attr: &str| -> Result<Option<Jid>> {
        message
            .attr(attr)
            .map(|j| {
                Jid::new(j)
                    .map_err(|e| anyhow!("result {id}: '{j}' ({attr}) is not a valid JID: {e}"))
            })
            .transpose()
    };
    let (from, to) = (jid_of("from")?, jid_of("to")?);
    let sent = from
        .as_ref()
        .is_some_and(|f| f.to_bare().as_str() == account);
    let other = if sent { to } else { from.or(to) }
        .ok_or_else(|| anyhow!("result {id}: the message names no other party"))?;
    Ok(ArchivedMessage {
        id: id.to_owned(),
        timestamp_us,
        with_bare: other.to_bare().to_string(),
        with_resource: other.resource().map(|r| r.to_string()).unwrap_or_default(),
        message: message.clone(),
    })
}

/// The node a `<configure>`, `<affiliations>`, `<subscriptions>` or `<items>` is about,
/// created at its first mention.
fn pep_node<'a>(nodes: &'a mut Vec<PepNode>, el: &Element) -> Result<&'a mut PepNode> {
    let name = el
        .attr("node")
        .ok_or_else(|| anyhow!("<{}> without a node", el.name()))?;
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        bail!("node name of {} bytes (1 to {MAX_NODE_NAME})", name.len());
    }
    let i = match nodes.iter().position(|n| n.node == name) {
        Some(i) => i,
        None => {
            nodes.push(PepNode::new(name.to_owned()));
            nodes.len() - 1
        }
    };
    Ok(&mut nodes[i])
}

fn parse_pep_owner(
    nodes: &mut Vec<PepNode>,
    el: &Element,
    who: &str,
    skipped: &mut Vec<String>,
) -> Result<()> {
    for c in el.children() {
        match c.name() {
            "configure" => {
                let n = pep_node(nodes, c)?;
                let what = format!("node '{}'", n.node);
                let form = c
                    .get_child("x", NS_DATA)
                    .ok_or_else(|| anyhow!("{what}: <configure> without a form"))?;
                // Limits are the configuration's: `check` compares the result with them.
                let limits = NodeLimits {
                    max_items: usize::MAX,
                    max_item_bytes: 0,
                };
                // Field by field: a field this server has no setting for (other servers
                // offer more) is named and skipped; a bad value of a known one refuses.
                let mut config = NodeConfig::pep();
                for field in form.children().filter(|f| f.is("field", NS_DATA)) {
                    let one = Element::new("x", NS_DATA)
                        .with_attr("type", "submit")
                        .with_child(field.clone());
                    match config.apply_form(&Submitted::of(&one), &limits) {
                        Ok(()) => {}
                        Err(ConfigError::UnknownField(var)) => {
                            skipped.push(format!("the setting '{var}' of PEP {what} of {who}"))
                        }
                        Err(e) => bail!("{what}: bad configuration: {e}"),
                    }
                }
                n.config = config;
            }
            "affiliations" => {
                let n = pep_node(nodes, c)?;
                for a in c.children() {
                    let jid = a
                        .attr("jid")
                        .ok_or_else(|| anyhow!("an affiliation without a jid"))?;
                    let jid = bare(jid, "an affiliation of")?;
                    let aff = a.attr("affiliation").unwrap_or("none");
                    if aff == "none" {
                        continue;
                    }
                    if !["owner", "publisher", "publish-only", "member", "outcast"].contains(&aff) {
                        bail!("node '{}': unknown affiliation '{aff}'", n.node);
                    }
                    if n.affiliations.iter().any(|(j, _)| *j == jid) {
                        bail!("node '{}': {jid} is affiliated twice", n.node);
                    }
                    n.affiliations.push((jid, aff.to_owned()));
                }
                n.affiliations.sort();
            }
            "subscriptions" => {
                let n = pep_node(nodes, c)?;
                for s in c.children() {
                    let jid = s
                        .attr("jid")
                        .ok_or_else(|| anyhow!("a subscription without a jid"))?;
                    let parsed = Jid::new(jid)
                        .map_err(|e| anyhow!("subscription of '{jid}', not a valid JID: {e}"))?;
                    if !rookery_stanza::is_stable(&parsed) {
                        bail!("subscription of '{jid}', not a valid JID");
                    }
                    let state = s.attr("subscription").unwrap_or("subscribed");
                    if !["subscribed", "pending", "unconfigured"].contains(&state) {
                        bail!("node '{}': unknown subscription state '{state}'", n.node);
                    }
                    // Servers without subscription ids (Prosody) write none: one is made up.
                    let subid = match s.attr("subid") {
                        Some(id) if !id.is_empty() && id.len() <= MAX_NODE_NAME => id.to_owned(),
                        Some(_) => bail!(
                            "node '{}': a subid of 1 to {MAX_NODE_NAME} bytes expected",
                            n.node
                        ),
                        None => format!("imported-{}", n.subscriptions.len() + 1),
                    };
                    let deliver = match s
                        .get_child("options", NS_PUBSUB_OWNER)
                        .and_then(|o| o.get_child("x", NS_DATA))
                    {
                        Some(form) => Submitted::of(form)
                            .boolean("pubsub#deliver")
                            .map_err(|e| anyhow!("node '{}': {e}", n.node))?
                            .unwrap_or(true),
                        None => true,
                    };
                    let record = SubscriptionRecord {
                        jid: parsed.to_string(),
                        subid,
                        state: state.to_owned(),
                        options: if deliver {
                            String::new()
                        } else {
                            NO_DELIVERY.to_owned()
                        },
                    };
                    if n.subscriptions
                        .iter()
                        .any(|o| o.jid == record.jid && o.subid == record.subid)
                    {
                        bail!(
                            "node '{}': subscription {} {} appears twice",
                            n.node,
                            record.jid,
                            record.subid
                        );
                    }
                    n.subscriptions.push(record);
                }
                n.subscriptions
                    .sort_by(|x, y| (&x.jid, &x.subid).cmp(&(&y.jid, &y.subid)));
            }
            other => bail!("<{other}> in the PEP owner data"),
        }
    }
    Ok(())
}

fn parse_pep_items(nodes: &mut Vec<PepNode>, el: &Element) -> Result<()> {
    for list in el.children() {
        if list.name() != "items" {
            bail!("<{}> in the PEP items", list.name());
        }
        let n = pep_node(nodes, list)?;
        for item in list.children() {
            let id = item
                .attr("id")
                .filter(|id| !id.is_empty() && id.len() <= MAX_NODE_NAME)
                .ok_or_else(|| anyhow!("node '{}': an item without an id", n.node))?;
            if n.items.iter().any(|(i, _, _)| i == id) {
                bail!("node '{}': item '{id}' appears twice", n.node);
            }
            let publisher = match item.attr("publisher") {
                Some(p) => bare(p, "the publisher")?,
                None => String::new(),
            };
            let mut children = item.children();
            let payload = children.next().cloned();
            if children.next().is_some() {
                bail!("node '{}': item '{id}' has more than one payload", n.node);
            }
            n.items.push((id.to_owned(), publisher, payload));
        }
    }
    Ok(())
}

/// An element without attributes or content.
fn is_empty(el: &Element) -> bool {
    el.nodes().is_empty() && el.attrs().next().is_none()
}

fn parse_scram(el: &Element) -> Result<ScramCredentials> {
    let mech = el.attr("mechanism").unwrap_or_default();
    let hash = mech
        .strip_prefix("SCRAM-")
        .and_then(HashAlg::from_name)
        .ok_or_else(|| anyhow!("unknown mechanism '{mech}'"))?;
    let field = |name: &str| -> Result<String> {
        let mut found = el.children().filter(|c| c.is(name, NS_SCRAM));
        let v = found.next().ok_or_else(|| anyhow!("no <{name}>"))?;
        if found.next().is_some() {
            bail!("two <{name}>");
        }
        Ok(v.text().trim().to_owned())
    };
    let b64 = |name: &str| -> Result<Vec<u8>> {
        BASE64
            .decode(field(name)?)
            .map_err(|e| anyhow!("<{name}> is not base64: {e}"))
    };
    let iter = field("iter-count")?;
    let iterations: u32 = iter
        .parse()
        .map_err(|_| anyhow!("<iter-count> '{iter}' is not a number"))?;
    if !ITERATIONS.contains(&iterations) {
        bail!(
            "<iter-count> {iterations} is outside {}..={}",
            ITERATIONS.start(),
            ITERATIONS.end()
        );
    }
    let mut c = ScramCredentials {
        hash,
        salt: b64("salt")?,
        iterations,
        stored_key: b64("stored-key")?,
        server_key: b64("server-key")?,
    };
    // ejabberd's export_piefxis (23.01) base64-encodes the values it already keeps in base64:
    // keys of the wrong length that are themselves base64 of the right length mean the whole
    // record (salt included) was encoded twice.
    let once_more = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|t| BASE64.decode(t.trim()).ok())
    };
    let len = hash.output_len();
    if c.stored_key.len() != len {
        if let (Some(stored), Some(server), Some(salt)) = (
            once_more(&c.stored_key),
            once_more(&c.server_key),
            once_more(&c.salt),
        ) {
            if stored.len() == len && server.len() == len {
                c.stored_key = stored;
                c.server_key = server;
                c.salt = salt;
            }
        }
    }
    c.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(c)
}

/// ejabberd's form of a SCRAM record, after `scram:`: `StoredKey,ServerKey,Salt,Iterations`
/// in base64 (SHA-1), or the same preceded by the hash (`sha256,` or `sha256:`).
fn parse_ejabberd_scram(data: &str) -> Result<ScramCredentials> {
    let hash_of = |name: &str| match name.to_ascii_lowercase().as_str() {
        "sha" | "sha1" | "sha-1" => Some(HashAlg::Sha1),
        "sha256" | "sha-256" => Some(HashAlg::Sha256),
        "sha512" | "sha-512" => Some(HashAlg::Sha512),
        _ => None,
    };
    let (hash, rest) = match data.split_once(':') {
        Some((h, rest)) => (
            hash_of(h).ok_or_else(|| anyhow!("unknown hash '{h}'"))?,
            rest,
        ),
        None => (HashAlg::Sha1, data),
    };
    let mut fields: Vec<&str> = rest.split(',').collect();
    let hash = if fields.len() == 5 {
        let h = fields.remove(0);
        hash_of(h).ok_or_else(|| anyhow!("unknown hash '{h}'"))?
    } else {
        hash
    };
    let [stored, server, salt, iter] = fields[..] else {
        bail!("expected StoredKey,ServerKey,Salt,IterationCount");
    };
    let b64 = |what: &str, v: &str| {
        BASE64
            .decode(v.trim())
            .map_err(|e| anyhow!("the {what} is not base64: {e}"))
    };
    let iterations: u32 = iter
        .trim()
        .parse()
        .map_err(|_| anyhow!("the iteration count '{iter}' is not a number"))?;
    if !ITERATIONS.contains(&iterations) {
        bail!(
            "the iteration count {iterations} is outside {}..={}",
            ITERATIONS.start(),
            ITERATIONS.end()
        );
    }
    let c = ScramCredentials {
        hash,
        salt: b64("salt", salt)?,
        iterations,
        stored_key: b64("StoredKey", stored)?,
        server_key: b64("ServerKey", server)?,
    };
    c.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(c)
}

fn parse_item(el: &Element) -> Result<RosterItem> {
    if !el.is("item", NS_ROSTER) {
        bail!("<{}> instead of <item>", el.name());
    }
    let jid = el
        .attr("jid")
        .ok_or_else(|| anyhow!("an item has no jid"))?;
    let mut i = RosterItem::new(bare(jid, "the item")?);
    if i.jid != jid {
        // Only a bare JID is a roster key; a resource would be lost silently.
        if Jid::new(jid).is_ok_and(|j| j.resource().is_some()) {
            bail!("item '{jid}' is a full JID");
        }
    }
    i.name = el.attr("name").map(str::to_owned);
    let sub = el.attr("subscription").unwrap_or("none");
    i.subscription = Subscription::from_name(sub)
        .ok_or_else(|| anyhow!("item {jid}: unknown subscription '{sub}'"))?;
    i.ask = match el.attr("ask") {
        None => false,
        Some("subscribe") => true,
        Some(other) => bail!("item {jid}: unknown ask '{other}'"),
    };
    i.approved = matches!(el.attr("approved"), Some("true" | "1"));
    for g in el.children().filter(|c| c.is("group", NS_ROSTER)) {
        let name = g.text();
        if !i.groups.contains(&name) {
            i.groups.push(name);
        }
    }
    Ok(i)
}

// ---------------------------------------------------------------------------------------
// Import, step 2: check against the configuration and the database (still no writes)

/// What to do with an account of the document that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse the whole document, naming the accounts.
    Refuse,
    /// Leave the existing account as it is and import the others.
    Skip,
}

/// Refuses a document that names hosts the configuration does not serve, exceeds the
/// configured limits, or (with [`Existing::Refuse`]) names accounts that exist. Returns
/// the accounts to skip.
pub async fn check(
    config: &Config,
    storage: &Storage,
    doc: &Document,
    existing: Existing,
) -> Result<HashSet<(String, String)>> {
    let unserved: Vec<&str> = doc
        .hosts
        .iter()
        .map(|h| h.domain.as_str())
        .filter(|d| config.host(d).is_none())
        .collect();
    if !unserved.is_empty() {
        bail!(
            "the document has accounts of {}, which this configuration does not serve",
            unserved.join(", ")
        );
    }
    let max_roster = config.section::<RosterLimits>().max_roster_items;
    let max_offline = config.section::<OfflineLimits>().max_offline_messages;
    let max_vcard = config.section::<VcardLimits>().max_vcard_bytes;
    let max_private = config.section::<PrivateLimits>().max_private_bytes;
    let pep = config.section::<PepSettings>();
    let mut found = HashSet::new();
    for h in &doc.hosts {
        for a in &h.accounts {
            let who = format!("{}@{}", a.node, h.domain);
            if a.roster.len() > max_roster {
                bail!(
                    "{who}: {} roster items, above limits.max_roster_items ({max_roster})",
                    a.roster.len()
                );
            }
            if a.offline.len() > max_offline {
                bail!(
                    "{who}: {} offline messages, above limits.max_offline_messages ({max_offline})",
                    a.offline.len()
                );
            }
            if let Some(v) = &a.vcard {
                if v.to_xml("").len() > max_vcard {
                    bail!("{who}: the vCard is larger than limits.max_vcard_bytes ({max_vcard})");
                }
            }
            for p in &a.private {
                if p.to_xml("").len() > max_private {
                    bail!(
                        "{who}: private element <{}> is larger than limits.max_private_bytes ({max_private})",
                        p.name()
                    );
                }
            }
            if a.blocklist.len() > max_roster {
                bail!(
                    "{who}: {} blocked JIDs, above limits.max_roster_items ({max_roster}), which bounds blocklists",
                    a.blocklist.len()
                );
            }
            check_pep(&pep, a).with_context(|| format!("{who}: PEP"))?;
            if storage.accounts.account_exists(&h.domain, &a.node).await? {
                found.insert((h.domain.clone(), a.node.clone()));
            }
        }
    }
    if existing == Existing::Refuse && !found.is_empty() {
        let mut names: Vec<String> = found.iter().map(|(d, n)| format!("{n}@{d}")).collect();
        names.sort();
        bail!(
            "{} already exist{}: {} (nothing was imported; --skip-existing imports the others)",
            if names.len() == 1 {
                "this account"
            } else {
                "these accounts"
            },
            if names.len() == 1 { "s" } else { "" },
            names.join(", ")
        );
    }
    Ok(found)
}

/// The `[pep]` bounds: what the module would have accepted.
fn check_pep(pep: &PepSettings, a: &Account) -> Result<()> {
    if a.pep.len() > pep.max_nodes {
        bail!(
            "{} nodes, above pep.max_nodes ({})",
            a.pep.len(),
            pep.max_nodes
        );
    }
    let mut total = 0;
    for n in &a.pep {
        if n.config.max_items.resolve(pep.max_items) < n.items.len() {
            bail!(
                "node '{}' holds {} items, more than its pubsub#max_items (or pep.max_items)",
                n.node,
                n.items.len()
            );
        }
        total += n.items.len();
        let limit = if n.node == "urn:xmpp:avatar:data" {
            pep.max_avatar_bytes
        } else {
            pep.max_item_bytes
        };
        for (id, _, p) in &n.items {
            if p.as_ref().is_some_and(|p| p.to_xml("").len() > limit) {
                bail!(
                    "item '{id}' of node '{}' is larger than {limit} bytes",
                    n.node
                );
            }
        }
    }
    if total > pep.max_account_items {
        bail!(
            "{total} items, above pep.max_account_items ({})",
            pep.max_account_items
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Import, step 3: write

/// Writes the accounts of a checked document, skipping those in `skip`; returns how many
/// were created. An account whose data cannot be written is deleted again (it is created
/// whole or not at all) and the error returned; accounts written before it stay.
pub async fn write(
    storage: &Storage,
    doc: &Document,
    skip: &HashSet<(String, String)>,
) -> Result<usize> {
    let mut created = 0;
    for h in &doc.hosts {
        for a in &h.accounts {
            if skip.contains(&(h.domain.clone(), a.node.clone())) {
                continue;
            }
            storage
                .accounts
                .create_account(&h.domain, &a.node, &a.credentials)
                .await
                .with_context(|| format!("cannot create {}@{}", a.node, h.domain))?;
            if let Err(e) = write_data(storage, &h.domain, a).await {
                let _ = storage.accounts.delete_account(&h.domain, &a.node).await;
                return Err(e.context(format!(
                    "cannot import {}@{} (it was not created)",
                    a.node, h.domain
                )));
            }
            created += 1;
        }
    }
    Ok(created)
}

async fn write_data(storage: &Storage, domain: &str, a: &Account) -> Result<()> {
    let node = a.node.as_str();
    // The limits were checked against the configuration by `check`.
    for i in &a.roster {
        storage
            .roster
            .set_roster_item(domain, node, i, usize::MAX)
            .await?;
    }
    for (contact, p) in &a.pending_in {
        storage
            .roster
            .add_pending_in(domain, node, contact, &p.to_xml(""))
            .await?;
    }
    if let Some(v) = &a.vcard {
        storage
            .user_data
            .set_data(
                domain,
                node,
                VCARD_STORE,
                "",
                Some(&v.to_xml("")),
                usize::MAX,
            )
            .await?;
    }
    for p in &a.private {
        let key = rookery_modules::private::key(p);
        storage
            .user_data
            .set_data(
                domain,
                node,
                PRIVATE_STORE,
                &key,
                Some(&p.to_xml("")),
                usize::MAX,
            )
            .await?;
    }
    for m in &a.offline {
        storage
            .offline
            .push_offline(domain, node, &m.to_xml(""), usize::MAX)
            .await?;
    }
    if !a.blocklist.is_empty() {
        let mut list = Element::new("blocklist", NS_BLOCKING);
        for jid in &a.blocklist {
            list.push_child(Element::new("item", NS_BLOCKING).with_attr("jid", jid.as_str()));
        }
        storage
            .user_data
            .set_data(
                domain,
                node,
                BLOCKLIST_STORE,
                "",
                Some(&list.to_xml("")),
                usize::MAX,
            )
            .await?;
    }
    // In archive order: the store keeps the order of appends.
    for m in &a.archive {
        let entry = ArchiveEntry {
            id: m.id.clone(),
            timestamp_us: m.timestamp_us,
            with_bare: m.with_bare.clone(),
            with_resource: m.with_resource.clone(),
            stanza: m.message.to_xml(""),
        };
        storage.archive.append_archive(domain, node, &entry).await?;
    }
    let service = PubSubService::Account { domain, user: node };
    let owner = format!("{node}@{domain}");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    for n in &a.pep {
        storage
            .pubsub
            .create_node(service, &n.node, &n.config.to_doc(), &owner, usize::MAX)
            .await?;
        for (jid, aff) in &n.affiliations {
            storage
                .pubsub
                .set_affiliation(service, &n.node, jid, Some(aff))
                .await?;
        }
        for s in &n.subscriptions {
            storage
                .pubsub
                .set_subscription(service, &n.node, s, usize::MAX)
                .await?;
        }
        // Oldest first, so that storage keeps their order (each publication is the newest).
        for (id, publisher, payload) in &n.items {
            let record = ItemRecord {
                id: id.clone(),
                publisher: if publisher.is_empty() {
                    owner.clone()
                } else {
                    publisher.clone()
                },
                payload: payload.as_ref().map(|p| p.to_xml("")).unwrap_or_default(),
                published_us: now_us,
            };
            storage
                .pubsub
                .publish_item(service, &n.node, &record, usize::MAX, usize::MAX)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
