//! The administration operations that both the XMPP commands ([`super::commands`]) and the
//! `rookery` CLI (through the admin socket of a running server, or on the database when no
//! server runs) perform, so the two never disagree: disabling accounts, the message of the
//! day, the welcome message, and the administrators added over XMPP.
//!
//! Each operation has a storage part (`&Storage`: what the CLI does on the database of a
//! stopped server) and, where a running server has more to do (end sessions, send the
//! message of the day to online users, refresh its cache), a server part that calls it.

use parking_lot::Mutex;
use rookery_core::Server;
use rookery_stanza::{BareJid, Jid, StreamErrorCondition};
use rookery_storage::{host_keys, Storage, StorageError, ACCOUNT_STATE_STORE};
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::Arc;

/// The longest message of the day or welcome message, in bytes.
pub const MAX_MESSAGE: usize = 8192;
/// Administrators that may be added over XMPP, per host.
pub const MAX_ADDED_ADMINS: usize = 100;
/// The user-data key (in [`ACCOUNT_STATE_STORE`]) of the message of the day the account saw.
const MOTD_SEEN_KEY: &str = "motd-seen";
/// The stored message of the day: `<id>\n<text>`; the id changes with every set or edit.
const MOTD_ID_LEN: usize = 16;

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// What the server caches of the host values, per domain (shared by the hosts through
/// [`rookery_core::HostBuilder::shared`]): read once, replaced by every write made here.
#[derive(Default)]
pub struct HostCache {
    motd: Mutex<HashMap<String, Option<Motd>>>,
    admins: Mutex<HashMap<String, Vec<BareJid>>>,
}

/// A message of the day: its text and the id that tells accounts whether they saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Motd {
    pub id: String,
    pub text: String,
}

impl Motd {
    fn parse(stored: &str) -> Option<Motd> {
        let (id, text) = stored.split_once('\n')?;
        Some(Motd {
            id: id.to_owned(),
            text: text.to_owned(),
        })
    }
}

/// A message of the day or welcome message is acceptable: not empty, at most [`MAX_MESSAGE`].
pub fn check_message(text: &str) -> Result<(), OpError> {
    if text.trim().is_empty() {
        return Err(OpError::Invalid("the message is empty".into()));
    }
    if text.len() > MAX_MESSAGE {
        return Err(OpError::Invalid(format!(
            "the message is longer than {MAX_MESSAGE} bytes"
        )));
    }
    Ok(())
}

fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; MOTD_ID_LEN / 2];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn parts(account: &BareJid) -> (&str, &str) {
    (
        account.domain().as_str(),
        account.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

// ---- Disabled accounts (XEP-0133 §4.5, §4.6) ----------------------------------------------

/// Disables or re-enables an account on the database; `false` when it does not exist.
pub async fn store_disabled(
    storage: &Storage,
    account: &BareJid,
    disabled: bool,
) -> Result<bool, OpError> {
    let (d, n) = parts(account);
    match storage.set_account_disabled(d, n, disabled).await {
        Ok(()) => Ok(true),
        Err(StorageError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Disables or re-enables an account of the running server; disabling ends its sessions
/// (§4.5: "MUST result in the termination of any active sessions"). Its data is kept.
/// `false` when the account does not exist.
pub async fn set_disabled(
    server: &Arc<Server>,
    account: &BareJid,
    disabled: bool,
    actor: &str,
) -> Result<bool, OpError> {
    if !store_disabled(server.storage(), account, disabled).await? {
        return Ok(false);
    }
    let mut ended = 0;
    if disabled {
        for s in server.sessions().resources(account).iter() {
            s.kick(
                StreamErrorCondition::PolicyViolation,
                "account disabled by an administrator",
            );
            ended += 1;
        }
    }
    tracing::info!(target: "rookery::admin", actor, account = %account, disabled, sessions_ended = ended,
        "account {}", if disabled { "disabled" } else { "re-enabled" });
    Ok(true)
}

// ---- Message of the day (XEP-0133 §4.23-4.25) ---------------------------------------------

/// The stored message of the day of `domain`.
pub async fn stored_motd(storage: &Storage, domain: &str) -> Result<Option<Motd>, OpError> {
    Ok(storage
        .host_data
        .get_host_data(domain, host_keys::MOTD)
        .await?
        .as_deref()
        .and_then(Motd::parse))
}

/// Stores a new message of the day (with a new id, so every account gets it once more).
pub async fn store_motd(storage: &Storage, domain: &str, text: &str) -> Result<Motd, OpError> {
    check_message(text)?;
    let motd = Motd {
        id: new_id(),
        text: text.to_owned(),
    };
    storage
        .host_data
        .set_host_data(
            domain,
            host_keys::MOTD,
            Some(&format!("{}\n{}", motd.id, motd.text)),
            MAX_MESSAGE + MOTD_ID_LEN + 1,
        )
        .await?;
    Ok(motd)
}

/// Deletes the stored message of the day; `false` when there was none.
pub async fn store_delete_motd(storage: &Storage, domain: &str) -> Result<bool, OpError> {
    let had = stored_motd(storage, domain).await?.is_some();
    storage
        .host_data
        .set_host_data(domain, host_keys::MOTD, None, 0)
        .await?;
    Ok(had)
}

/// The message of the day of a host of the running server (cached).
pub async fn motd(server: &Server, domain: &str) -> Result<Option<Motd>, OpError> {
    let cache = server.shared::<HostCache>();
    if let Some(found) = cache
        .as_ref()
        .and_then(|c| c.motd.lock().get(domain).cloned())
    {
        return Ok(found);
    }
    let motd = stored_motd(server.storage(), domain).await?;
    if let Some(c) = cache {
        c.motd.lock().insert(domain.to_owned(), motd.clone());
    }
    Ok(motd)
}

/// Sets the message of the day of a host of the running server and sends it to the accounts
/// online now (XEP-0133 §4.23 note: "sent immediately to users who are online"); each of
/// them is marked as having seen it. Returns the number of sessions it was sent to.
pub async fn set_motd(
    server: &Arc<Server>,
    domain: &str,
    text: &str,
    actor: &str,
) -> Result<usize, OpError> {
    let motd = store_motd(server.storage(), domain, text).await?;
    if let Some(c) = server.shared::<HostCache>() {
        c.motd.lock().insert(domain.to_owned(), Some(motd.clone()));
    }
    let mut sent = 0;
    let mut accounts = Vec::new();
    for s in server.sessions().all() {
        if s.jid().domain().as_str() != domain || s.priority().is_none() {
            continue;
        }
        s.extension_or_insert_with(|| MotdChecked);
        if s.deliver(motd_message(
            domain,
            &Jid::from(s.jid().clone()),
            &motd.text,
        ))
        .is_ok()
        {
            sent += 1;
        }
        accounts.push(s.jid().to_bare());
    }
    accounts.sort();
    accounts.dedup();
    for account in &accounts {
        mark_seen(server.storage(), account, &motd.id).await;
    }
    tracing::info!(target: "rookery::admin", actor, domain, bytes = text.len(), sessions = sent,
        "message of the day set");
    Ok(sent)
}

/// Deletes the message of the day of a host of the running server.
pub async fn delete_motd(server: &Server, domain: &str, actor: &str) -> Result<bool, OpError> {
    let had = store_delete_motd(server.storage(), domain).await?;
    if let Some(c) = server.shared::<HostCache>() {
        c.motd.lock().insert(domain.to_owned(), None);
    }
    tracing::info!(target: "rookery::admin", actor, domain, existed = had, "message of the day deleted");
    Ok(had)
}

/// Attached to a session once its first available presence was checked for the message of
/// the day, so later presence updates cost nothing.
struct MotdChecked;

/// On a session's first available presence: sends the host's message of the day unless the
/// account saw this one already (ejabberd's mod_announce behaviour: once per account and
/// message), and records that it did.
pub(crate) async fn motd_on_presence(server: &Arc<Server>, session: &rookery_core::SessionHandle) {
    if session.extension::<MotdChecked>().is_some() {
        return;
    }
    session.extension_or_insert_with(|| MotdChecked);
    let domain = session.jid().domain().as_str().to_owned();
    let motd = match motd(server, &domain).await {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "message of the day not read");
            return;
        }
    };
    let account = session.jid().to_bare();
    let (d, n) = parts(&account);
    let seen = server
        .storage()
        .user_data
        .get_data(d, n, ACCOUNT_STATE_STORE, MOTD_SEEN_KEY)
        .await;
    match seen {
        Ok(Some(id)) if id == motd.id => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "message of the day: seen mark not read");
            return;
        }
    }
    let _ = session.deliver(motd_message(
        &domain,
        &Jid::from(session.jid().clone()),
        &motd.text,
    ));
    mark_seen(server.storage(), &account, &motd.id).await;
}

async fn mark_seen(storage: &Storage, account: &BareJid, id: &str) {
    let (d, n) = parts(account);
    if let Err(e) = storage
        .user_data
        .set_data(
            d,
            n,
            ACCOUNT_STATE_STORE,
            MOTD_SEEN_KEY,
            Some(id),
            MOTD_ID_LEN,
        )
        .await
    {
        tracing::debug!(error = %e, account = %account, "message of the day: seen mark not stored");
    }
}

/// The message of the day as sent: a headline from the host (RFC 6121 §5.2.2: shown, not
/// stored offline or answered).
fn motd_message(domain: &str, to: &Jid, text: &str) -> Element {
    Element::new("message", "jabber:client")
        .with_attr("from", domain)
        .with_attr("to", to.as_str())
        .with_attr("type", "headline")
        .with_child(Element::new("subject", "jabber:client").with_text("Message of the day"))
        .with_child(Element::new("body", "jabber:client").with_text(text))
}

// ---- Welcome message (XEP-0133 §4.26, §4.27) ----------------------------------------------

/// The welcome message of `domain`.
pub async fn welcome(storage: &Storage, domain: &str) -> Result<Option<String>, OpError> {
    Ok(storage
        .host_data
        .get_host_data(domain, host_keys::WELCOME)
        .await?)
}

/// Sets (Some) or deletes (None) the welcome message of `domain`.
pub async fn set_welcome(
    storage: &Storage,
    domain: &str,
    text: Option<&str>,
    actor: &str,
) -> Result<(), OpError> {
    if let Some(t) = text {
        check_message(t)?;
    }
    storage
        .host_data
        .set_host_data(domain, host_keys::WELCOME, text, MAX_MESSAGE)
        .await?;
    tracing::info!(target: "rookery::admin", actor, domain, set = text.is_some(), "welcome message changed");
    Ok(())
}

/// Sends the host's welcome message, if it has one, to a newly created account: a normal
/// message from the host, which offline storage keeps until the account's first login.
pub async fn send_welcome(server: &Arc<Server>, account: &BareJid) {
    let domain = account.domain().as_str();
    let text = match welcome(server.storage(), domain).await {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "welcome message not read");
            return;
        }
    };
    let msg = Element::new("message", "jabber:client")
        .with_attr("from", domain)
        .with_attr("to", account.as_str())
        .with_attr("type", "normal")
        .with_child(Element::new("subject", "jabber:client").with_text("Welcome"))
        .with_child(Element::new("body", "jabber:client").with_text(text));
    server.route(msg).await;
}

// ---- Administrators (XEP-0133 §4.28) ------------------------------------------------------

/// The administrators added over XMPP to `domain` (those of the configuration are not here).
pub async fn stored_admins(storage: &Storage, domain: &str) -> Result<Vec<BareJid>, OpError> {
    let stored = storage
        .host_data
        .get_host_data(domain, host_keys::ADMINS)
        .await?
        .unwrap_or_default();
    // Written by `set_added_admins` from checked JIDs; a line that no longer parses is skipped.
    Ok(stored
        .lines()
        .filter_map(|l| BareJid::new(l.trim()).ok())
        .collect())
}

/// The added administrators of a host of the running server (cached).
pub async fn added_admins(server: &Server, domain: &str) -> Result<Vec<BareJid>, OpError> {
    let cache = server.shared::<HostCache>();
    if let Some(found) = cache
        .as_ref()
        .and_then(|c| c.admins.lock().get(domain).cloned())
    {
        return Ok(found);
    }
    let admins = stored_admins(server.storage(), domain).await?;
    if let Some(c) = cache {
        c.admins.lock().insert(domain.to_owned(), admins.clone());
    }
    Ok(admins)
}

/// Replaces the administrators of `domain`: `wanted` is the whole list (as the form of
/// §4.28 shows it); every one of `fixed` (the configuration's) must stay in it, and the
/// others are stored as the added ones. Returns the added list as stored.
pub async fn set_admins(
    server: &Server,
    domain: &str,
    fixed: &[BareJid],
    wanted: &[String],
    actor: &str,
) -> Result<Vec<BareJid>, OpError> {
    let mut jids = Vec::new();
    for raw in wanted.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
        let jid = BareJid::new(raw)
            .ok()
            .filter(|j| j.node().is_some())
            .ok_or_else(|| OpError::Invalid(format!("{raw} is not an account's bare JID")))?;
        if !jids.contains(&jid) {
            jids.push(jid);
        }
    }
    if let Some(kept) = fixed.iter().find(|f| !jids.contains(f)) {
        return Err(OpError::Invalid(format!(
            "{kept} is an administrator named in the server's configuration and cannot be removed here"
        )));
    }
    let added: Vec<BareJid> = jids.into_iter().filter(|j| !fixed.contains(j)).collect();
    if added.len() > MAX_ADDED_ADMINS {
        return Err(OpError::Invalid(format!(
            "at most {MAX_ADDED_ADMINS} administrators can be added"
        )));
    }
    let text: String = added.iter().map(|a| format!("{a}\n")).collect();
    let value = (!text.is_empty()).then_some(text.as_str());
    server
        .storage()
        .host_data
        .set_host_data(domain, host_keys::ADMINS, value, MAX_ADDED_ADMINS * 3072)
        .await?;
    if let Some(c) = server.shared::<HostCache>() {
        c.admins.lock().insert(domain.to_owned(), added.clone());
    }
    let list: Vec<String> = added.iter().map(|a| a.to_string()).collect();
    tracing::info!(target: "rookery::admin", actor, domain, added = %list.join(","), "administrators changed");
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn motd_is_stored_with_a_new_id_each_time_and_deleted() {
        let s = Storage::memory();
        assert_eq!(stored_motd(&s, "example.org").await.expect("read"), None);
        let a = store_motd(&s, "example.org", "line 1\nline 2")
            .await
            .expect("set");
        assert_eq!(
            stored_motd(&s, "example.org").await.expect("read"),
            Some(a.clone())
        );
        assert_eq!(a.text, "line 1\nline 2");
        let b = store_motd(&s, "example.org", "line 1\nline 2")
            .await
            .expect("set again");
        assert_ne!(a.id, b.id, "a new id: accounts get it again");
        assert_eq!(stored_motd(&s, "example.net").await.expect("read"), None);
        assert!(store_motd(&s, "example.org", "  \n").await.is_err());
        assert!(store_motd(&s, "example.org", &"x".repeat(MAX_MESSAGE + 1))
            .await
            .is_err());
        assert!(store_motd(&s, "example.org", &"x".repeat(MAX_MESSAGE))
            .await
            .is_ok());
        assert!(store_delete_motd(&s, "example.org").await.expect("delete"));
        assert!(!store_delete_motd(&s, "example.org").await.expect("delete"));
        assert_eq!(stored_motd(&s, "example.org").await.expect("read"), None);
    }

    #[tokio::test]
    async fn disabling_needs_an_existing_account() {
        let s = Storage::memory();
        let alice = BareJid::new("alice@example.org").expect("jid");
        assert!(!store_disabled(&s, &alice, true).await.expect("disable"));
        s.accounts
            .create_account(
                "example.org",
                "alice",
                &rookery_sasl::generate_all("pw-123456", 4096).expect("creds"),
            )
            .await
            .expect("create");
        assert!(store_disabled(&s, &alice, true).await.expect("disable"));
        assert!(s
            .account_disabled("example.org", "alice")
            .await
            .expect("read"));
        assert!(store_disabled(&s, &alice, false).await.expect("enable"));
        assert!(!s
            .account_disabled("example.org", "alice")
            .await
            .expect("read"));
    }
}
