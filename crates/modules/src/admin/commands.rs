//! The XEP-0133 commands Rookery offers, each one stage: a form (or none), then the action.
//! Account changes go through the same storage calls as the `rookery user` commands, and a
//! deleted account is removed as in-band cancellation removes it (subscriptions cancelled,
//! sessions closed), so the CLI, the client and XMPP administration never disagree.

use super::{command_error, ops};
use crate::form::{FormBuilder, Submitted};
use rookery_core::Server;
use rookery_sasl::ScramCredentials;
use rookery_stanza::{BareJid, Jid, StanzaError, StanzaErrorCondition, StreamErrorCondition};
use rookery_storage::StorageError;
use rookery_xml::Element;
use std::sync::Arc;

pub const FORM_TYPE: &str = "http://jabber.org/protocol/admin";
/// Accounts one command may name (delete, end sessions): a bound on the work of one request.
pub const MAX_TARGETS: usize = 100;
/// The most users a list shows (XEP-0133 §4.16: `max_items`).
pub const MAX_LISTED: usize = 1000;
/// The longest announcement, in bytes.
pub const MAX_ANNOUNCEMENT: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    AddUser,
    DeleteUser,
    EndUserSession,
    ChangeUserPassword,
    GetRegisteredUsersNum,
    GetRegisteredUsersList,
    GetOnlineUsersNum,
    GetOnlineUsersList,
    GetActiveUsersNum,
    GetActiveUsersList,
    GetIdleUsersNum,
    GetIdleUsersList,
    GetUserLastLogin,
    Announce,
    DisableUser,
    ReenableUser,
    SetMotd,
    EditMotd,
    DeleteMotd,
    SetWelcome,
    DeleteWelcome,
    EditAdmin,
}

pub const ALL: &[Command] = &[
    Command::AddUser,
    Command::DeleteUser,
    Command::EndUserSession,
    Command::ChangeUserPassword,
    Command::GetRegisteredUsersNum,
    Command::GetRegisteredUsersList,
    Command::GetOnlineUsersNum,
    Command::GetOnlineUsersList,
    Command::GetActiveUsersNum,
    Command::GetActiveUsersList,
    Command::GetIdleUsersNum,
    Command::GetIdleUsersList,
    Command::GetUserLastLogin,
    Command::Announce,
    Command::DisableUser,
    Command::ReenableUser,
    Command::SetMotd,
    Command::EditMotd,
    Command::DeleteMotd,
    Command::SetWelcome,
    Command::DeleteWelcome,
    Command::EditAdmin,
];

/// Who runs a command, for the log and for the commands that depend on it.
pub struct Caller<'a> {
    /// The admin's address, as logged.
    pub actor: String,
    /// The host's administrators from the configuration (fixed: `edit-admin` keeps them).
    pub fixed_admins: &'a [BareJid],
}

/// What a command did: a note and a result form for the admin, and what to log.
pub struct Outcome {
    pub note: Option<String>,
    pub result: Option<Element>,
    pub log: String,
}

fn internal(e: impl std::fmt::Display) -> StanzaError {
    tracing::error!(error = %e, "admin command: storage");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

fn not_acceptable(text: impl Into<String>) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

fn bad_payload(text: impl Into<String>) -> StanzaError {
    command_error(StanzaErrorCondition::BadRequest, "bad-payload").with_text(text)
}

impl Command {
    pub fn node(self) -> String {
        format!("{FORM_TYPE}#{}", self.id())
    }

    fn id(self) -> &'static str {
        match self {
            Command::AddUser => "add-user",
            Command::DeleteUser => "delete-user",
            Command::EndUserSession => "end-user-session",
            Command::ChangeUserPassword => "change-user-password",
            Command::GetRegisteredUsersNum => "get-registered-users-num",
            Command::GetRegisteredUsersList => "get-registered-users-list",
            Command::GetOnlineUsersNum => "get-online-users-num",
            Command::GetOnlineUsersList => "get-online-users-list",
            Command::GetActiveUsersNum => "get-active-users-num",
            Command::GetActiveUsersList => "get-active-users",
            Command::GetIdleUsersNum => "get-idle-users-num",
            Command::GetIdleUsersList => "get-idle-users",
            Command::GetUserLastLogin => "get-user-lastlogin",
            Command::Announce => "announce",
            Command::DisableUser => "disable-user",
            Command::ReenableUser => "reenable-user",
            Command::SetMotd => "set-motd",
            Command::EditMotd => "edit-motd",
            Command::DeleteMotd => "delete-motd",
            Command::SetWelcome => "set-welcome",
            Command::DeleteWelcome => "delete-welcome",
            Command::EditAdmin => "edit-admin",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::AddUser => "Add a User",
            Command::DeleteUser => "Delete a User",
            Command::EndUserSession => "End a User Session",
            Command::ChangeUserPassword => "Change User Password",
            Command::GetRegisteredUsersNum => "Get Number of Registered Users",
            Command::GetRegisteredUsersList => "Get List of Registered Users",
            Command::GetOnlineUsersNum => "Get Number of Online Users",
            Command::GetOnlineUsersList => "Get List of Online Users",
            Command::GetActiveUsersNum => "Get Number of Active Users",
            Command::GetActiveUsersList => "Get List of Active Users",
            Command::GetIdleUsersNum => "Get Number of Idle Users",
            Command::GetIdleUsersList => "Get List of Idle Users",
            Command::GetUserLastLogin => "Get User Last Login Time",
            Command::Announce => "Send Announcement to Online Users",
            Command::DisableUser => "Disable a User",
            Command::ReenableUser => "Re-Enable a User",
            Command::SetMotd => "Set Message of the Day",
            Command::EditMotd => "Edit Message of the Day",
            Command::DeleteMotd => "Delete Message of the Day",
            Command::SetWelcome => "Set Welcome Message",
            Command::DeleteWelcome => "Delete Welcome Message",
            Command::EditAdmin => "Edit Admin List",
        }
    }

    pub fn by_node(node: &str) -> Option<Command> {
        let id = node.strip_prefix(FORM_TYPE)?.strip_prefix('#')?;
        ALL.iter().copied().find(|c| c.id() == id)
    }

    /// The form the command asks the admin to fill in, with the host's current values where
    /// the command edits them; `None`: it runs at once.
    pub async fn form(
        self,
        server: &Server,
        domain: &str,
        caller: &Caller<'_>,
    ) -> Result<Option<Element>, StanzaError> {
        let f = FormBuilder::new("form", FORM_TYPE).title(self.name());
        let max_items = |f: FormBuilder| {
            f.list(
                "max_items",
                "Maximum number of items to show",
                "100",
                &[
                    ("25", "25"),
                    ("50", "50"),
                    ("75", "75"),
                    ("100", "100"),
                    ("150", "150"),
                    ("200", "200"),
                    ("none", "None"),
                ],
            )
        };
        let form = match self {
            Command::AddUser => f
                .field(
                    "accountjid",
                    Some("jid-single"),
                    Some("The Jabber ID for the account to be added"),
                    &[],
                )
                .field(
                    "password",
                    Some("text-private"),
                    Some("The password for this account"),
                    &[],
                )
                .field(
                    "password-verify",
                    Some("text-private"),
                    Some("Retype password"),
                    &[],
                ),
            Command::DeleteUser => f.field(
                "accountjids",
                Some("jid-multi"),
                Some("The Jabber ID(s) to delete"),
                &[],
            ),
            Command::EndUserSession => f.field(
                "accountjids",
                Some("jid-multi"),
                Some("The Jabber ID(s) for which to end sessions"),
                &[],
            ),
            Command::ChangeUserPassword => f
                .field(
                    "accountjid",
                    Some("jid-single"),
                    Some("The Jabber ID for this account"),
                    &[],
                )
                .field(
                    "password",
                    Some("text-private"),
                    Some("The new password for this account"),
                    &[],
                ),
            Command::GetRegisteredUsersList
            | Command::GetOnlineUsersList
            | Command::GetActiveUsersList
            | Command::GetIdleUsersList => max_items(f),
            Command::GetUserLastLogin => f.field(
                "accountjids",
                Some("jid-multi"),
                Some("The Jabber ID(s) for which to retrieve the last login time"),
                &[],
            ),
            Command::Announce => f
                .field("subject", Some("text-single"), Some("Subject"), &[])
                .field(
                    "announcement",
                    Some("text-multi"),
                    Some("Announcement"),
                    &[],
                ),
            Command::DisableUser => f.field(
                "accountjids",
                Some("jid-multi"),
                Some("The Jabber ID(s) to disable"),
                &[],
            ),
            Command::ReenableUser => f.field(
                "accountjids",
                Some("jid-multi"),
                Some("The Jabber ID(s) to re-enable"),
                &[],
            ),
            Command::SetMotd | Command::EditMotd => {
                let current = match self {
                    Command::EditMotd => ops::motd(server, domain)
                        .await
                        .map_err(op_error)?
                        .map(|m| m.text),
                    _ => None,
                };
                let lines: Vec<&str> = current
                    .as_deref()
                    .map(|t| t.lines().collect())
                    .unwrap_or_default();
                f.field(
                    "motd",
                    Some("text-multi"),
                    Some("Message of the Day"),
                    &lines,
                )
            }
            Command::SetWelcome => {
                let current = ops::welcome(server.storage(), domain)
                    .await
                    .map_err(op_error)?;
                let lines: Vec<&str> = current
                    .as_deref()
                    .map(|t| t.lines().collect())
                    .unwrap_or_default();
                f.field(
                    "welcome",
                    Some("text-multi"),
                    Some("Welcome Message"),
                    &lines,
                )
            }
            Command::EditAdmin => {
                let added = ops::added_admins(server, domain).await.map_err(op_error)?;
                let all: Vec<String> = caller
                    .fixed_admins
                    .iter()
                    .chain(added.iter())
                    .map(|a| a.to_string())
                    .collect();
                let values: Vec<&str> = all.iter().map(String::as_str).collect();
                let fixed: Vec<String> =
                    caller.fixed_admins.iter().map(|a| a.to_string()).collect();
                f.instructions(&format!(
                    "Edit the list of administrators. Those named in the server's \
                     configuration ({}) stay administrators and cannot be removed here.",
                    fixed.join(", ")
                ))
                .field(
                    "adminjids",
                    Some("jid-multi"),
                    Some("The admin list"),
                    &values,
                )
            }
            Command::GetRegisteredUsersNum
            | Command::GetOnlineUsersNum
            | Command::GetActiveUsersNum
            | Command::GetIdleUsersNum
            | Command::DeleteMotd
            | Command::DeleteWelcome => return Ok(None),
        };
        Ok(Some(form.build()))
    }

    /// Runs the command on host `domain` with the submitted `form`.
    pub async fn run(
        self,
        server: &Arc<Server>,
        domain: &str,
        form: Option<&Element>,
        caller: &Caller<'_>,
    ) -> Result<Outcome, StanzaError> {
        let text_of = |var: &str| {
            form.map(Submitted::of)
                .and_then(|s| s.values(var))
                .unwrap_or_default()
                .join("\n")
        };
        let submitted = form.map(Submitted::of).map(|s| {
            (
                s.values("accountjid").unwrap_or_default(),
                s.values("accountjids").unwrap_or_default(),
                s.value("password"),
                s.value("password-verify"),
                s.values("announcement").unwrap_or_default(),
                s.value("subject"),
                s.value("max_items"),
            )
        });
        let (one, many, password, verify, announcement, subject, max_items) =
            submitted.unwrap_or_default();
        match self {
            Command::AddUser => {
                let account = local_account(domain, one.first())?;
                let password = password.unwrap_or_default();
                if verify.is_some_and(|v| v != password) {
                    return Err(not_acceptable("the passwords differ"));
                }
                let creds = credentials(server, password).await?;
                let (d, n) = parts(&account);
                match server.storage().accounts.create_account(d, n, &creds).await {
                    Ok(()) => {}
                    Err(StorageError::AlreadyExists) => {
                        return Err(StanzaError::new(StanzaErrorCondition::Conflict)
                            .with_text(format!("{account} already exists")))
                    }
                    Err(e) => return Err(internal(e)),
                }
                ops::send_welcome(server, &account).await;
                Ok(note(format!("created {account}"), account.to_string()))
            }
            Command::ChangeUserPassword => {
                let account = local_account(domain, one.first())?;
                let creds = credentials(server, password.unwrap_or_default()).await?;
                let (d, n) = parts(&account);
                // Also revokes the account's FAST tokens, as `rookery user passwd` does.
                match server.storage().change_password(d, n, &creds).await {
                    Ok(()) => Ok(note(
                        format!("password changed for {account}"),
                        account.to_string(),
                    )),
                    Err(StorageError::NotFound) => {
                        Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                            .with_text(format!("{account} does not exist")))
                    }
                    Err(e) => Err(internal(e)),
                }
            }
            Command::DeleteUser => {
                let accounts = local_accounts(domain, &many)?;
                let mut deleted = Vec::new();
                let mut missing = Vec::new();
                for account in &accounts {
                    match crate::register::delete_account(server, account).await? {
                        true => deleted.push(account.to_string()),
                        false => missing.push(account.to_string()),
                    }
                }
                let mut text = format!("deleted: {}", list_or_none(&deleted));
                if !missing.is_empty() {
                    text.push_str(&format!("; no such account: {}", missing.join(", ")));
                }
                Ok(note(text, deleted.join(",")))
            }
            Command::EndUserSession => {
                if many.is_empty() || many.len() > MAX_TARGETS {
                    return Err(bad_payload(format!("name 1 to {MAX_TARGETS} addresses")));
                }
                let mut ended = 0;
                let mut named = Vec::new();
                for raw in &many {
                    let jid = Jid::new(raw.trim())
                        .map_err(|_| not_acceptable(format!("{raw} is not a JID")))?;
                    if jid.domain().as_str() != domain || jid.node().is_none() {
                        return Err(not_acceptable(format!(
                            "{jid} is not an account of {domain}"
                        )));
                    }
                    let targets: Vec<_> = match jid.try_as_full() {
                        Ok(full) => server.sessions().get(full).into_iter().collect(),
                        Err(bare) => server.sessions().resources(bare).iter().cloned().collect(),
                    };
                    for s in &targets {
                        s.kick(
                            StreamErrorCondition::PolicyViolation,
                            "session ended by an administrator",
                        );
                    }
                    ended += targets.len();
                    named.push(jid.to_string());
                }
                Ok(note(format!("sessions ended: {ended}"), named.join(",")))
            }
            Command::GetRegisteredUsersNum => {
                let n = registered(server, domain).await?.len();
                Ok(result(
                    FormBuilder::new("result", FORM_TYPE).field(
                        "registeredusersnum",
                        None,
                        Some("The number of registered users"),
                        &[&n.to_string()],
                    ),
                    String::new(),
                ))
            }
            Command::GetOnlineUsersNum => {
                let n = online(server, domain).len();
                Ok(result(
                    FormBuilder::new("result", FORM_TYPE).field(
                        "onlineusersnum",
                        None,
                        Some("The number of online users"),
                        &[&n.to_string()],
                    ),
                    String::new(),
                ))
            }
            Command::GetActiveUsersNum | Command::GetIdleUsersNum => {
                let active = self == Command::GetActiveUsersNum;
                let n = by_activity(server, domain, active).len();
                let (var, label) = if active {
                    ("activeusersnum", "The number of active users")
                } else {
                    ("idleusersnum", "The number of idle users")
                };
                Ok(result(
                    FormBuilder::new("result", FORM_TYPE).field(
                        var,
                        None,
                        Some(label),
                        &[&n.to_string()],
                    ),
                    String::new(),
                ))
            }
            Command::GetUserLastLogin => {
                let accounts = local_accounts(domain, &many)?;
                let mut times = Vec::with_capacity(accounts.len());
                for account in &accounts {
                    let (d, n) = parts(account);
                    if !server
                        .storage()
                        .accounts
                        .account_exists(d, n)
                        .await
                        .map_err(internal)?
                    {
                        return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                            .with_text(format!("{account} does not exist")));
                    }
                    // XEP-0082 DateTime; "never" for an account with no login recorded.
                    let at = crate::last::last_login(server, account)
                        .await
                        .map_err(internal)?
                        .and_then(|secs| i64::try_from(secs).ok())
                        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_else(|| "never".to_owned());
                    times.push(at);
                }
                let jids: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
                let jid_values: Vec<&str> = jids.iter().map(String::as_str).collect();
                let time_values: Vec<&str> = times.iter().map(String::as_str).collect();
                Ok(result(
                    FormBuilder::new("result", FORM_TYPE)
                        .field("accountjids", Some("jid-multi"), None, &jid_values)
                        .field(
                            "lastlogin",
                            Some("text-multi"),
                            Some("The last login time of each, in the same order"),
                            &time_values,
                        ),
                    jids.join(","),
                ))
            }
            Command::GetRegisteredUsersList
            | Command::GetOnlineUsersList
            | Command::GetActiveUsersList
            | Command::GetIdleUsersList => {
                let limit = match max_items.as_deref() {
                    None | Some("none") => MAX_LISTED,
                    Some(v) => v
                        .parse::<usize>()
                        .map_err(|_| bad_payload("max_items: a number or none"))?
                        .min(MAX_LISTED),
                };
                let (var, label, mut users) = if self == Command::GetOnlineUsersList {
                    (
                        "onlineuserjids",
                        "The list of all online users",
                        online(server, domain),
                    )
                } else if self == Command::GetActiveUsersList {
                    (
                        "activeuserjids",
                        "The list of active users",
                        by_activity(server, domain, true),
                    )
                } else if self == Command::GetIdleUsersList {
                    (
                        "idleuserjids",
                        "The list of idle users",
                        by_activity(server, domain, false),
                    )
                } else {
                    (
                        "registereduserjids",
                        "The list of all users",
                        registered(server, domain).await?,
                    )
                };
                users.truncate(limit);
                let values: Vec<&str> = users.iter().map(String::as_str).collect();
                Ok(result(
                    FormBuilder::new("result", FORM_TYPE).field(
                        var,
                        Some("jid-multi"),
                        Some(label),
                        &values,
                    ),
                    String::new(),
                ))
            }
            Command::DisableUser | Command::ReenableUser => {
                let accounts = local_accounts(domain, &many)?;
                let disable = self == Command::DisableUser;
                let mut done = Vec::new();
                let mut missing = Vec::new();
                for account in &accounts {
                    match ops::set_disabled(server, account, disable, &caller.actor)
                        .await
                        .map_err(op_error)?
                    {
                        true => done.push(account.to_string()),
                        false => missing.push(account.to_string()),
                    }
                }
                let mut text = format!(
                    "{}: {}",
                    if disable { "disabled" } else { "re-enabled" },
                    list_or_none(&done)
                );
                if !missing.is_empty() {
                    text.push_str(&format!("; no such account: {}", missing.join(", ")));
                }
                Ok(note(text, done.join(",")))
            }
            Command::SetMotd | Command::EditMotd => {
                let text = text_of("motd");
                let sent = ops::set_motd(server, domain, &text, &caller.actor)
                    .await
                    .map_err(op_error)?;
                Ok(note(
                    format!("message of the day set, sent to {sent} online sessions"),
                    format!("{} bytes", text.len()),
                ))
            }
            Command::DeleteMotd => {
                let had = ops::delete_motd(server, domain, &caller.actor)
                    .await
                    .map_err(op_error)?;
                Ok(note(
                    if had {
                        "message of the day deleted".into()
                    } else {
                        "there was no message of the day".into()
                    },
                    String::new(),
                ))
            }
            Command::SetWelcome => {
                let text = text_of("welcome");
                ops::set_welcome(server.storage(), domain, Some(&text), &caller.actor)
                    .await
                    .map_err(op_error)?;
                Ok(note(
                    "welcome message set".into(),
                    format!("{} bytes", text.len()),
                ))
            }
            Command::DeleteWelcome => {
                ops::set_welcome(server.storage(), domain, None, &caller.actor)
                    .await
                    .map_err(op_error)?;
                Ok(note("welcome message deleted".into(), String::new()))
            }
            Command::EditAdmin => {
                let wanted = form
                    .map(Submitted::of)
                    .and_then(|s| s.values("adminjids"))
                    .unwrap_or_default();
                let added =
                    ops::set_admins(server, domain, caller.fixed_admins, &wanted, &caller.actor)
                        .await
                        .map_err(op_error)?;
                let list: Vec<String> = added.iter().map(|a| a.to_string()).collect();
                Ok(note(
                    format!("administrators added over XMPP: {}", list_or_none(&list)),
                    list.join(","),
                ))
            }
            Command::Announce => {
                let body = announcement.join("\n");
                if body.trim().is_empty() {
                    return Err(bad_payload("the announcement is empty"));
                }
                if body.len() > MAX_ANNOUNCEMENT {
                    return Err(not_acceptable(format!("at most {MAX_ANNOUNCEMENT} bytes")));
                }
                let mut sent = 0;
                for s in server.sessions().all() {
                    if s.jid().domain().as_str() != domain {
                        continue;
                    }
                    // A headline (RFC 6121 §5.2.2): shown, never stored or answered.
                    let mut msg = Element::new("message", "jabber:client")
                        .with_attr("from", domain)
                        .with_attr("to", s.jid().as_str())
                        .with_attr("type", "headline");
                    if let Some(subject) = subject.as_deref().filter(|t| !t.is_empty()) {
                        msg.push_child(Element::new("subject", "jabber:client").with_text(subject));
                    }
                    msg.push_child(Element::new("body", "jabber:client").with_text(body.clone()));
                    if s.deliver(msg).is_ok() {
                        sent += 1;
                    }
                }
                Ok(note(
                    format!("announcement sent to {sent} sessions"),
                    format!("{sent} sessions"),
                ))
            }
        }
    }
}

/// An operation's refusal as the command's error: what the admin got wrong is `not-acceptable`
/// with the reason (XEP-0133 §5 leaves the condition to the service), a storage failure
/// `internal-server-error`.
fn op_error(e: ops::OpError) -> StanzaError {
    match e {
        ops::OpError::Invalid(text) => not_acceptable(text),
        ops::OpError::Storage(e) => internal(e),
    }
}

fn note(text: String, log: String) -> Outcome {
    Outcome {
        note: Some(text),
        result: None,
        log,
    }
}

fn result(form: FormBuilder, log: String) -> Outcome {
    Outcome {
        note: None,
        result: Some(form.build()),
        log,
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn parts(account: &BareJid) -> (&str, &str) {
    (
        account.domain().as_str(),
        account.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

/// An account of this host named by the form.
fn local_account(domain: &str, raw: Option<&String>) -> Result<BareJid, StanzaError> {
    let raw = raw.map(|r| r.trim()).filter(|r| !r.is_empty());
    let Some(raw) = raw else {
        return Err(bad_payload("accountjid is required"));
    };
    let jid = BareJid::new(raw).map_err(|_| not_acceptable(format!("{raw} is not a bare JID")))?;
    if jid.domain().as_str() != domain || jid.node().is_none() {
        return Err(not_acceptable(format!(
            "{jid} is not an account of {domain}"
        )));
    }
    Ok(jid)
}

fn local_accounts(domain: &str, raw: &[String]) -> Result<Vec<BareJid>, StanzaError> {
    if raw.is_empty() || raw.len() > MAX_TARGETS {
        return Err(bad_payload(format!("name 1 to {MAX_TARGETS} accounts")));
    }
    raw.iter().map(|r| local_account(domain, Some(r))).collect()
}

/// SCRAM records for a new password, checked against the server's password rules; hashed off
/// the runtime's threads (4096 iterations of three hashes).
async fn credentials(
    server: &Server,
    password: String,
) -> Result<Vec<ScramCredentials>, StanzaError> {
    if password.is_empty() {
        return Err(bad_payload("password is required"));
    }
    if let Some(problem) = server.config().limits.password_problem(&password) {
        return Err(not_acceptable(problem));
    }
    tokio::task::spawn_blocking(move || {
        rookery_sasl::generate_all(&password, ScramCredentials::MIN_ITERATIONS)
    })
    .await
    .map_err(internal)?
    .map_err(|e| not_acceptable(e.to_string()))
}

async fn registered(server: &Server, domain: &str) -> Result<Vec<String>, StanzaError> {
    let mut users: Vec<String> = server
        .storage()
        .accounts
        .list_accounts(Some(domain))
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(node, d)| format!("{node}@{d}"))
        .collect();
    users.sort();
    Ok(users)
}

/// The bare JIDs with at least one session on `domain`, sorted.
/// The online users of `domain` that are active (`active`: some session has not said it
/// is inactive, XEP-0352) or idle (every session said so), sorted: XEP-0133 §4.15–4.16
/// distinguish "users who are online and actively using the service from users who are
/// online but idle", and client state indication is how a client says which it is.
fn by_activity(server: &Server, domain: &str, active: bool) -> Vec<String> {
    let mut by_user: std::collections::BTreeMap<String, bool> = Default::default();
    for s in server.sessions().all() {
        if s.jid().domain().as_str() != domain {
            continue;
        }
        *by_user
            .entry(s.jid().to_bare().to_string())
            .or_insert(false) |= !s.is_inactive();
    }
    by_user
        .into_iter()
        .filter(|(_, any_active)| *any_active == active)
        .map(|(user, _)| user)
        .collect()
}

fn online(server: &Server, domain: &str) -> Vec<String> {
    let mut users: Vec<String> = server
        .sessions()
        .all()
        .iter()
        .filter(|s| s.jid().domain().as_str() == domain)
        .map(|s| s.jid().to_bare().to_string())
        .collect();
    users.sort();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_and_unknown_ones_are_none() {
        for c in ALL {
            assert_eq!(Command::by_node(&c.node()), Some(*c));
            assert!(c.node().starts_with("http://jabber.org/protocol/admin#"));
        }
        assert_eq!(
            Command::by_node("http://jabber.org/protocol/admin#shutdown"),
            None
        );
        assert_eq!(Command::by_node("add-user"), None);
    }

    #[test]
    fn accounts_must_be_of_this_host() {
        let ok = BareJid::new("a@example.org").expect("jid");
        let check = |raw: &str| local_account("example.org", Some(&raw.to_owned()));
        assert_eq!(check("a@example.org").ok(), Some(ok));
        assert_eq!(
            check(" a@example.org ").ok().map(|j| j.to_string()),
            Some("a@example.org".into())
        );
        for bad in ["a@elsewhere.org", "example.org", "a@example.org/res", ""] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(local_accounts("example.org", &[]).is_err(), "nobody named");
        let many: Vec<String> = (0..=MAX_TARGETS)
            .map(|i| format!("u{i}@example.org"))
            .collect();
        assert!(local_accounts("example.org", &many).is_err(), "too many");
    }
}
