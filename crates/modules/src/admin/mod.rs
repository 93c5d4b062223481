//! Administration over XMPP: XEP-0050 Ad-Hoc Commands on each host, carrying the XEP-0133
//! Service Administration commands ([`commands`]) that Gajim, Psi and other clients offer
//! in their "Commands" menu. Only the host's admins (`[host.admin] admins`) see and run
//! them; anyone else finds no commands and gets `forbidden` when executing one by name. A
//! host without admins offers nothing (the commands feature is not advertised).
//!
//! The protocol (XEP-0050 §3):
//! * the command list is disco#items of node `http://jabber.org/protocol/commands` on the
//!   host (§3.1), each command's disco#info its node (§3.2);
//! * `<command action='execute' node='…'/>` starts a command: one that needs input answers
//!   `status='executing'` with a form and a `sessionid` (§3.4); the requester submits the
//!   form (`complete`, or `execute`/no action, which the `<actions/>` make equivalent here)
//!   or `cancel`s; a command without input answers `completed` at once;
//! * an unknown or expired session, or one started by another entity, is `bad-request` with
//!   `<bad-sessionid/>` (§4.6); an action the stage does not offer `<bad-action/>`.
//!
//! Sessions are kept for [`SESSION_TTL`] and at most [`MAX_SESSIONS`] at once. Every
//! completed command is logged at info level with the admin's address, the command and its
//! targets (never a password).
//!
//! Active and idle users (§4.15–4.16, §4.20–4.21) are told apart by client state indication
//! (XEP-0352): idle when every session of the user said `<inactive/>`. The last login time
//! (§4.12) is the latest bind while the user is online, else the one the `last` module
//! recorded when it went offline ([`crate::last::last_login`]).
//!
//! Administrators are those of `[host.admin] admins` (fixed) and those added with
//! `edit-admin` (stored per host, [`ops::added_admins`]); the commands are offered only on a
//! host with configured ones. The message of the day is sent whatever the admins: the
//! module hooks each session's first available presence for it ([`ops`]).

pub mod commands;
pub mod ops;

use parking_lot::Mutex;
use rookery_core::config::ConfigError;
use rookery_core::events::{HostDiscoInfo, HostDiscoItems, PresenceBroadcast};
use rookery_core::{
    iq_fn, Flow, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Order, Place,
    Section, SectionDecl, Server, Spec,
};
use rookery_stanza::{BareJid, Jid, PresenceType, StanzaError, StanzaErrorCondition};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NS: &str = "http://jabber.org/protocol/commands";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// How long a started command waits for its form.
pub const SESSION_TTL: Duration = Duration::from_secs(600);
/// Command sessions open at once on a host; the oldest goes when a new one would pass it.
pub const MAX_SESSIONS: usize = 256;

pub struct Admin;

/// `[host.admin]`: who administers the host.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bare JIDs of the host's administrators.
    pub admins: Vec<String>,
}

impl Section for AdminConfig {
    const KEY: &'static str = "admin";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# Administrators of this host (bare JIDs): they get the service administration commands
# (XEP-0133: add, delete, disable and end the sessions of users, change passwords, list and
# count users, announce, the message of the day and welcome message, add administrators)
# in their client's ad-hoc commands menu (XEP-0050).
[host.admin]
admins = []
"#;

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (i, a) in self.admins.iter().enumerate() {
            if BareJid::new(a).is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.admins[{i}]"),
                    "a bare JID, like admin@example.org",
                ));
            }
        }
        Ok(())
    }
}

impl Module for Admin {
    const NAME: &'static str = "admin";
    const DEPENDS: &'static [&'static str] = &["disco"];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0050",
            title: "Ad-Hoc Commands",
            version: "1.3.0",
        },
        Spec {
            id: "XEP-0133",
            title: "Service Administration (add, delete, disable, re-enable, end sessions of and change passwords of users, counts and lists of registered, online, active and idle users, last login time, announce, message of the day, welcome message, admin list)",
            version: "1.3.0",
        },
    ];
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<AdminConfig>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let config = host.section::<AdminConfig>();
        // The host values the operations cache (message of the day, added admins), one for
        // the server, found again by the admin socket through `Server::shared`.
        host.shared::<ops::HostCache>();
        // The message of the day reaches each account at its next login whether or not the
        // host has administrators (the CLI sets it too). After the presence broadcast and
        // after the offline module started the backlog's delivery.
        host.hook::<PresenceBroadcast, _, _>(
            Order::normal().after("presence").after("offline"),
            |server, ev| async move {
                if ev.stanza.presence_type() == Some(PresenceType::Available) {
                    ops::motd_on_presence(&server, &ev.session).await;
                }
                Flow::Continue
            },
        );
        if config.admins.is_empty() {
            // Nobody may run a command: nothing to offer or advertise.
            return Ok(());
        }
        let state = Arc::new(State {
            admins: config
                .admins
                .iter()
                .filter_map(|a| BareJid::new(a).ok())
                .collect(),
            sessions: Mutex::new(HashMap::new()),
        });
        host.add_feature(NS);
        let s = state.clone();
        host.iq_handler(
            NS,
            IqScope::Host,
            iq_fn(move |req| {
                let s = s.clone();
                async move { s.handle(req).await }
            }),
        )?;
        let s = state.clone();
        let domain = host.domain().to_owned();
        host.filter::<HostDiscoItems, _, _>(Order::normal(), move |server, mut ev| {
            let s = s.clone();
            let domain = domain.clone();
            async move {
                if ev.node == NS {
                    ev.found = true;
                    if s.is_admin(&server, &domain, &ev.requester).await {
                        for c in commands::ALL {
                            ev.query.push_child(
                                Element::new("item", NS_DISCO_ITEMS)
                                    .with_attr("jid", domain.clone())
                                    .with_attr("node", c.node())
                                    .with_attr("name", c.name()),
                            );
                        }
                    }
                }
                Some(ev)
            }
        });
        let s = state;
        let domain = host.domain().to_owned();
        host.filter::<HostDiscoInfo, _, _>(Order::normal(), move |server, mut ev| {
            let s = s.clone();
            let domain = domain.clone();
            async move {
                if ev.node == NS {
                    ev.found = true;
                    ev.query
                        .push_child(identity("automation", "command-list", None));
                } else if let Some(c) = commands::Command::by_node(&ev.node) {
                    if s.is_admin(&server, &domain, &ev.requester).await {
                        ev.found = true;
                        ev.query
                            .push_child(identity("automation", "command-node", Some(c.name())));
                        for f in [NS, "jabber:x:data"] {
                            ev.query.push_child(
                                Element::new("feature", NS_DISCO_INFO).with_attr("var", f),
                            );
                        }
                    }
                }
                Some(ev)
            }
        });
        Ok(())
    }
}

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut el = Element::new("identity", NS_DISCO_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(n) = name {
        el.set_attr("name", n);
    }
    el
}

/// An open command session.
struct Open {
    command: commands::Command,
    requester: Jid,
    started: Instant,
}

struct State {
    /// The administrators of the configuration; those added over XMPP are in
    /// [`ops::added_admins`].
    admins: Vec<BareJid>,
    sessions: Mutex<HashMap<String, Open>>,
}

/// The XEP-0050 errors of §4.6, each a stanza error with its specific condition.
pub fn command_error(condition: StanzaErrorCondition, specific: &str) -> StanzaError {
    StanzaError::new(condition).with_app_specific(Element::new(specific, NS))
}

impl State {
    /// Named in the configuration.
    fn is_fixed_admin(&self, who: &Jid) -> bool {
        let bare = who.to_bare();
        self.admins.contains(&bare)
    }

    /// Named in the configuration or added over XMPP (`edit-admin`). A failed read of the
    /// added ones counts as not added: refusing is the safe side.
    async fn is_admin(&self, server: &Server, domain: &str, who: &Jid) -> bool {
        if self.is_fixed_admin(who) {
            return true;
        }
        let bare = who.to_bare();
        match ops::added_admins(server, domain).await {
            Ok(added) => added.contains(&bare),
            Err(e) => {
                tracing::warn!(error = %e, "added administrators not read");
                false
            }
        }
    }

    async fn handle(&self, req: IqRequest) -> IqResult {
        req.require_set()?;
        if req.payload.name() != "command" {
            return Err(StanzaError::bad_request("expected <command/>"));
        }
        let node = req.payload.attr("node").unwrap_or_default().to_owned();
        let Some(command) = commands::Command::by_node(&node) else {
            return Err(
                StanzaError::new(StanzaErrorCondition::ItemNotFound).with_text("no such command")
            );
        };
        // Only a host's own admins, and only over their authenticated session (a remote
        // entity's address proves nothing about who typed the command).
        let domain = req.to.domain().as_str().to_owned();
        if !req.server.serves(req.from.domain().as_str())
            || !self.is_admin(&req.server, &domain, &req.from).await
        {
            tracing::info!(target: "rookery::admin", requester = %req.from, command = command.name(),
                "refused: not an admin");
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("only the server's administrators may run this command"));
        }
        let action = req.payload.attr("action").unwrap_or("execute");
        if !matches!(action, "execute" | "complete" | "cancel" | "next" | "prev") {
            return Err(command_error(
                StanzaErrorCondition::BadRequest,
                "malformed-action",
            ));
        }
        match req.payload.attr("sessionid") {
            None => {
                if action != "execute" {
                    return Err(command_error(
                        StanzaErrorCondition::BadRequest,
                        "bad-action",
                    ));
                }
                let caller = self.caller(&req);
                match command.form(&req.server, &domain, &caller).await? {
                    // No input needed: run now.
                    None => self.finish(&req, command, new_session_id(), None).await,
                    Some(form) => {
                        let id = new_session_id();
                        self.open(id.clone(), command, req.from.clone());
                        Ok(Some(
                            response(command, &id, "executing")
                                .with_child(
                                    Element::new("actions", NS)
                                        .with_attr("execute", "complete")
                                        .with_child(Element::new("complete", NS)),
                                )
                                .with_child(form),
                        ))
                    }
                }
            }
            Some(id) => {
                let id = id.to_owned();
                let open = self.take(&id, command, &req.from)?;
                match action {
                    "cancel" => Ok(Some(response(open.command, &id, "canceled"))),
                    "execute" | "complete" => {
                        let Some(form) = req
                            .payload
                            .get_child("x", crate::form::NS_DATA)
                            .filter(|x| x.attr("type") == Some("submit"))
                        else {
                            return Err(StanzaError::bad_request("submit the command's form"));
                        };
                        self.finish(&req, open.command, id, Some(form)).await
                    }
                    // One stage only: there is nothing to go back or forward to.
                    _ => Err(command_error(
                        StanzaErrorCondition::BadRequest,
                        "bad-action",
                    )),
                }
            }
        }
    }

    async fn finish(
        &self,
        req: &IqRequest,
        command: commands::Command,
        id: String,
        form: Option<&Element>,
    ) -> IqResult {
        let caller = self.caller(req);
        let outcome = command
            .run(&req.server, req.to.domain().as_str(), form, &caller)
            .await?;
        tracing::info!(target: "rookery::admin", admin = %req.from, command = command.name(),
            targets = %outcome.log, "admin command run");
        let mut out = response(command, &id, "completed");
        if let Some(note) = outcome.note {
            out.push_child(
                Element::new("note", NS)
                    .with_attr("type", "info")
                    .with_text(note),
            );
        }
        if let Some(result) = outcome.result {
            out.push_child(result);
        }
        Ok(Some(out))
    }

    fn caller(&self, req: &IqRequest) -> commands::Caller<'_> {
        commands::Caller {
            actor: req.from.to_string(),
            fixed_admins: &self.admins,
        }
    }

    fn open(&self, id: String, command: commands::Command, requester: Jid) {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, o| now.duration_since(o.started) < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, o)| o.started)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id,
            Open {
                command,
                requester,
                started: now,
            },
        );
    }

    /// The open session `id` of this command and requester, closed (each has one stage).
    fn take(
        &self,
        id: &str,
        command: commands::Command,
        requester: &Jid,
    ) -> Result<Open, StanzaError> {
        let mut sessions = self.sessions.lock();
        let fits = sessions.get(id).is_some_and(|o| {
            o.command == command && &o.requester == requester && o.started.elapsed() < SESSION_TTL
        });
        match sessions.remove(id) {
            Some(open) if fits => Ok(open),
            Some(other) => {
                // Someone else's session stays theirs.
                if &other.requester != requester {
                    sessions.insert(id.to_owned(), other);
                }
                Err(command_error(
                    StanzaErrorCondition::BadRequest,
                    "bad-sessionid",
                ))
            }
            None => Err(command_error(
                StanzaErrorCondition::BadRequest,
                "bad-sessionid",
            )),
        }
    }
}

fn new_session_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn response(command: commands::Command, id: &str, status: &str) -> Element {
    Element::new("command", NS)
        .with_attr("node", command.node())
        .with_attr("sessionid", id)
        .with_attr("status", status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            admins: vec![BareJid::new("boss@example.org").expect("jid")],
            sessions: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn a_session_belongs_to_its_requester_and_command_and_is_used_once() {
        let s = state();
        let boss = Jid::new("boss@example.org/laptop").expect("jid");
        let other = Jid::new("eve@example.org/x").expect("jid");
        assert!(s.is_fixed_admin(&boss) && !s.is_fixed_admin(&other));
        s.open("a".into(), commands::Command::Announce, boss.clone());
        let bad = |e: StanzaError| e.condition == StanzaErrorCondition::BadRequest;
        assert!(s
            .take("a", commands::Command::Announce, &other)
            .is_err_and(bad));
        assert!(
            s.take("a", commands::Command::AddUser, &boss)
                .is_err_and(bad),
            "another command's session"
        );
        s.open("b".into(), commands::Command::Announce, boss.clone());
        assert!(s.take("b", commands::Command::Announce, &boss).is_ok());
        assert!(
            s.take("b", commands::Command::Announce, &boss).is_err(),
            "used once"
        );
        assert!(s.take("zz", commands::Command::Announce, &boss).is_err());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = state();
        let boss = Jid::new("boss@example.org/laptop").expect("jid");
        for i in 0..MAX_SESSIONS + 10 {
            s.open(format!("s{i}"), commands::Command::Announce, boss.clone());
        }
        assert_eq!(s.sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn admins_must_be_bare_jids() {
        let ok = AdminConfig {
            admins: vec!["boss@example.org".into()],
        };
        assert!(ok.validate("host[0].admin").is_ok());
        let bad = AdminConfig {
            admins: vec!["not a jid@@".into()],
        };
        let e = bad.validate("host[0].admin").expect_err("invalid");
        assert!(e.to_string().contains("host[0].admin.admins[0]"), "{e}");
    }
}
