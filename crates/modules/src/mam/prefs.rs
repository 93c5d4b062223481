//! Archiving preferences (XEP-0441, split out of XEP-0313, same `urn:xmpp:mam:2` namespace):
//! `<prefs default='always|never|roster'>` with `<always/>` and `<never/>` JID lists, kept
//! per account in the user-data store and applied to every message before it is archived.

use super::config::{ArchiveConfig, ArchivePreference};
use rookery_core::Server;
use rookery_stanza::{Jid, StanzaError, StanzaErrorCondition};
use rookery_storage::StorageError;
use rookery_xml::Element;
use std::collections::BTreeSet;

use super::NS;

/// The user-data store holding the preferences of an account under the key "".
pub const STORE: &str = "mam_prefs";

/// An account's preferences. JIDs are normalised (RFC 7622) and kept as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default: ArchivePreference,
    pub always: BTreeSet<String>,
    pub never: BTreeSet<String>,
}

impl Prefs {
    /// What an account that never set preferences gets: the configured default, no lists.
    pub fn configured(server: &Server) -> Self {
        Prefs {
            default: server
                .config()
                .section::<ArchiveConfig>()
                .default_preference,
            always: BTreeSet::new(),
            never: BTreeSet::new(),
        }
    }

    /// The `<prefs/>` element.
    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &BTreeSet<String>| {
            let mut el = Element::new(name, NS);
            for j in jids {
                el.push_child(Element::new("jid", NS).with_text(j.clone()));
            }
            el
        };
        Element::new("prefs", NS)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    /// Reads a `<prefs/>` element (a client's set, or the stored copy). The `default`
    /// attribute is required (the XEP-0441 schema makes it so); every `<jid/>` must be a
    /// valid JID; a JID in both lists is refused, since the two rules would contradict.
    pub fn from_element(el: &Element) -> Result<Self, StanzaError> {
        let default = el
            .attr("default")
            .and_then(ArchivePreference::from_name)
            .ok_or_else(|| {
                StanzaError::bad_request("'default' must be one of always, never, roster")
            })?;
        let list = |name: &str| -> Result<BTreeSet<String>, StanzaError> {
            let mut out = BTreeSet::new();
            if let Some(l) = el.get_child(name, NS) {
                for j in l.children().filter(|c| c.is("jid", NS)) {
                    let jid = Jid::new(j.text().trim())
                        .map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
                    out.insert(jid.to_string());
                }
            }
            Ok(out)
        };
        let (always, never) = (list("always")?, list("never")?);
        if always.intersection(&never).next().is_some() {
            return Err(StanzaError::bad_request(
                "a JID cannot be in both <always/> and <never/>",
            ));
        }
        Ok(Prefs {
            default,
            always,
            never,
        })
    }

    /// Whether a message with `contact` is archived, given whether the contact is in the
    /// roster (asked only for the `roster` default). `never` wins over `always`; a bare JID
    /// in a list covers all its resources, a full JID only itself.
    pub async fn allows(
        &self,
        contact: &Jid,
        in_roster: impl std::future::Future<Output = Result<bool, StorageError>>,
    ) -> Result<bool, StorageError> {
        let bare = rookery_stanza::bare_str(contact);
        let listed = |set: &BTreeSet<String>| set.contains(contact.as_str()) || set.contains(bare);
        if listed(&self.never) {
            return Ok(false);
        }
        if listed(&self.always) {
            return Ok(true);
        }
        match self.default {
            ArchivePreference::Always => Ok(true),
            ArchivePreference::Never => Ok(false),
            ArchivePreference::Roster => in_roster.await,
        }
    }
}

/// The stored preferences of an account, or the configured default.
pub async fn load(server: &Server, domain: &str, user: &str) -> Result<Prefs, StorageError> {
    let stored = server
        .storage()
        .user_data
        .get_data(domain, user, STORE, "")
        .await?;
    let Some(xml) = stored else {
        return Ok(Prefs::configured(server));
    };
    rookery_xml::parse_element(&xml)
        .ok()
        .and_then(|el| Prefs::from_element(&el).ok())
        .ok_or_else(|| StorageError::Corrupt(format!("archive preferences of {user}@{domain}")))
}

/// Stores an account's preferences.
pub async fn store(
    server: &Server,
    domain: &str,
    user: &str,
    prefs: &Prefs,
) -> Result<(), StorageError> {
    // The list sizes are bounded by the stanza that carried them (limits.max_stanza_bytes).
    server
        .storage()
        .user_data
        .set_data(
            domain,
            user,
            STORE,
            "",
            Some(&prefs.to_element().to_xml("")),
            usize::MAX,
        )
        .await
}
