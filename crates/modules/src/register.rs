//! XEP-0077 In-Band Registration, the parts an authenticated session can use:
//!
//! * get (§3.1): the account is registered: `<registered/>`, the username, an empty
//!   `<password/>` (only SCRAM records are stored; the XEP lets it be empty);
//! * password change (§3.3): `<username/>` (required, and it must name the session's own
//!   account) and a non-empty `<password/>` (an empty one keeps the password, as §3.3
//!   requires, and is answered `bad-request`). New SCRAM records for every hash replace the
//!   old ones; a password shorter than `limits.min_password_length`, longer than
//!   `config::MAX_PASSWORD_BYTES` or refused by SASLprep gets `not-acceptable`. Other sessions
//!   stay up.
//! * cancellation (§3.2): `<remove/>` as the only child, addressed to the account itself or
//!   its server. The account's subscriptions are cancelled (`unsubscribe`/`unsubscribed` to
//!   its contacts, as §3.2 recommends for an RFC 6121 server), the account is deleted with
//!   everything it owns, the result is sent, and every session of the account is closed
//!   with the `not-authorized` stream error — the requesting one only once the result has
//!   been written (a `ClientStanza` filter answers the request, because an IQ handler has no
//!   way to know when its reply is written).
//!
//! New accounts are created on streams that are not authenticated yet, which never reach
//! the router: [`in_band`] answers those as a pre-authentication handler the stream calls
//! (gated by the host's `registration` setting, TLS and `limits.registrations_per_ip_per_hour`).
//! Password change and removal are part of `jabber:iq:register`, so the feature is
//! advertised in the server's disco#info.

use rookery_core::events::ClientStanza;
pub mod in_band;

use in_band::{Registration, RegistrationLimits};
use rookery_core::{
    iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Server, Spec,
};
use rookery_core::{Order, SectionDecl};
use rookery_stanza::{
    iq_result, parse_jid, BareJid, FullJid, IqType, Jid, Stanza, StanzaError, StanzaErrorCondition,
    StanzaKind, StreamErrorCondition,
};
use rookery_storage::{ScramCredentials, StorageError, Subscription};
use rookery_xml::Element;
use std::sync::Arc;
use std::time::Duration;

pub const NS: &str = "jabber:iq:register";
/// How long the result of a removal may take to be written before the session is closed
/// anyway.
const WRITE_WAIT: Duration = Duration::from_secs(10);

pub struct Register;

impl Module for Register {
    const NAME: &'static str = "register";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0077",
        title: "In-Band Registration (password change and cancellation)",
        version: "2.4",
    }];
    const CONFIG: &'static [SectionDecl] = &[
        SectionDecl::of::<Registration>(),
        SectionDecl::of::<RegistrationLimits>(),
    ];
    const PRE_AUTH: &'static [&'static str] = &[NS];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Host, iq_fn(handle))?;
        host.iq_handler(NS, IqScope::Account, iq_fn(handle))?;
        host.filter::<ClientStanza, _, _>(Order::first(), |server, c| async move {
            intercept_remove(&server, c).await
        });
        in_band::init(host)
    }
}

fn internal(e: impl std::fmt::Display) -> StanzaError {
    tracing::error!(error = %e, "account operation failed");
    StanzaError::new(StanzaErrorCondition::InternalServerError)
}

fn parts(user: &BareJid) -> Result<(&str, &str), StanzaError> {
    match user.node() {
        Some(n) => Ok((user.domain().as_str(), n.as_str())),
        None => Err(StanzaError::new(StanzaErrorCondition::RegistrationRequired)),
    }
}

/// Whether `to` (absent, or parsed) addresses the account itself or its server.
fn addressed_to_own(user: &BareJid, to: Option<&Jid>) -> bool {
    match to {
        None => true,
        Some(j) if j.node().is_none() => j.resource().is_none() && j.domain() == user.domain(),
        Some(j) => j.resource().is_none() && j.to_bare() == *user,
    }
}

async fn handle(req: IqRequest) -> IqResult {
    let user = req.from.to_bare();
    if !addressed_to_own(&user, Some(&req.to)) {
        return Err(StanzaError::new(StanzaErrorCondition::NotAllowed)
            .with_text("an account is managed through its own server"));
    }
    if req.payload.name() != "query" {
        return Err(StanzaError::bad_request(
            "expected <query xmlns='jabber:iq:register'/>",
        ));
    }
    match req.iq_type {
        IqType::Get => {
            let (_, node) = parts(&user)?;
            Ok(Some(
                Element::new("query", NS)
                    .with_child(Element::new("registered", NS))
                    .with_child(Element::new("instructions", NS).with_text(
                        "You are registered. Send a new <password/> with your <username/> \
                         to change it, or <remove/> to delete the account.",
                    ))
                    .with_child(Element::new("username", NS).with_text(node))
                    .with_child(Element::new("password", NS)),
            ))
        }
        _ if req.payload.has_child("remove", NS) => {
            // A well-formed removal is answered by the ClientStanza filter before routing.
            Err(StanzaError::bad_request(
                "<remove/> must be the only child of the query",
            ))
        }
        _ => change_password(&req, &user).await,
    }
}

async fn change_password(req: &IqRequest, user: &BareJid) -> IqResult {
    let (domain, node) = parts(user)?;
    let field = |name: &str| req.payload.get_child(name, NS).map(Element::text);
    let (Some(username), Some(password)) = (field("username"), field("password")) else {
        return Err(StanzaError::bad_request(
            "a password change needs <username/> and <password/>",
        ));
    };
    let same = BareJid::new(&format!("{}@{domain}", username.trim()))
        .is_ok_and(|j| j.node().map(|n| n.as_str()) == Some(node));
    if !same {
        return Err(StanzaError::bad_request(
            "the username is not the account of this session",
        ));
    }
    if password.is_empty() {
        return Err(StanzaError::bad_request(
            "an empty password is not set; the password is unchanged",
        ));
    }
    if let Some(problem) = req.server.config().limits.password_problem(&password) {
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(problem));
    }
    // PBKDF2 for every hash takes milliseconds of CPU: not on an async worker.
    let creds = tokio::task::spawn_blocking(move || {
        rookery_sasl::generate_all(&password, ScramCredentials::MIN_ITERATIONS)
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        rookery_sasl::SaslError::MalformedRequest(_) => {
            StanzaError::new(StanzaErrorCondition::NotAcceptable)
                .with_text("the password contains characters SASLprep does not allow")
        }
        e => internal(e),
    })?;
    // Also revokes the account's FAST tokens.
    req.server
        .storage()
        .change_password(domain, node, &creds)
        .await
        .map_err(|e| match e {
            StorageError::NotFound => StanzaError::new(StanzaErrorCondition::RegistrationRequired),
            e => internal(e),
        })?;
    tracing::info!(account = %user, "password changed in-band");
    Ok(None)
}

/// The `<query><remove/></query>` set addressed to the account itself or its server, if
/// this stanza is one.
/// The `<query><remove/></query>` of an account removal request, by its shape alone (this
/// runs on every stanza a client sends, so nothing is built before the shape matches).
fn removal_query(c: &ClientStanza) -> Option<&Element> {
    let st = &c.stanza;
    if st.name() != "iq" || IqType::of(st) != Some(IqType::Set) || st.attr("id").is_none() {
        return None;
    }
    let mut children = st.children();
    match (children.next(), children.next()) {
        (Some(q), None) if q.is("query", NS) && q.has_child("remove", NS) => Some(q),
        _ => None,
    }
}

async fn intercept_remove(server: &Arc<Server>, c: ClientStanza) -> Option<ClientStanza> {
    let Some(query) = removal_query(&c) else {
        return Some(c);
    };
    let user = c.from.to_bare();
    if !addressed_to_own(&user, c.stanza.to()) {
        return Some(c);
    }
    if query.children().count() != 1 {
        server.bounce(
            &c.stanza,
            StanzaError::bad_request("<remove/> must be the only child of the query"),
        );
        return None;
    }
    match remove_account(server, &user).await {
        Ok(()) => {
            tracing::info!(account = %user, "account removed in-band");
            close_sessions(server, &user, &c.from, iq_result(&c.stanza, None));
        }
        Err(e) => server.bounce(&c.stanza, e),
    }
    None
}

/// Deletes an account as its own cancellation would (its subscriptions cancelled, everything
/// it owns removed) and closes its sessions: for the administrators' commands (XEP-0133) and
/// `rookery user delete` on a running server, so every way of deleting an account does the
/// same. `Ok(false)`: there is no such account.
pub async fn delete_account(server: &Arc<Server>, user: &BareJid) -> Result<bool, StanzaError> {
    match remove_account(server, user).await {
        Ok(()) => {
            for s in server.sessions().resources(user).iter() {
                s.kick(StreamErrorCondition::NotAuthorized, "account removed");
            }
            Ok(true)
        }
        Err(e) if e.condition == StanzaErrorCondition::RegistrationRequired => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the account and everything it owns, then cancels its subscriptions.
async fn remove_account(server: &Arc<Server>, user: &BareJid) -> Result<(), StanzaError> {
    let (domain, node) = parts(user)?;
    let roster = server
        .storage()
        .roster
        .roster(domain, node)
        .await
        .map_err(internal)?;
    let pending = server
        .storage()
        .roster
        .pending_in(domain, node)
        .await
        .map_err(internal)?;
    let existed = server
        .storage()
        .accounts
        .delete_account(domain, node)
        .await
        .map_err(internal)?;
    if !existed {
        return Err(StanzaError::new(StanzaErrorCondition::RegistrationRequired));
    }
    // RFC 6121 §3.2, §3.3 as the account would send them (XEP-0077 §3.2).
    let mut out: Vec<(&str, &str)> = Vec::new();
    for item in &roster.items {
        if matches!(item.subscription, Subscription::To | Subscription::Both) || item.ask {
            out.push((item.jid.as_str(), "unsubscribe"));
        }
        if matches!(item.subscription, Subscription::From | Subscription::Both) {
            out.push((item.jid.as_str(), "unsubscribed"));
        }
    }
    for (contact, _) in &pending {
        if !out.contains(&(contact.as_str(), "unsubscribed")) {
            out.push((contact.as_str(), "unsubscribed"));
        }
    }
    let from = Jid::from(user.clone());
    for (contact, ptype) in out {
        // Stored addresses were valid when stored; one that no longer parses has no route.
        let Ok(to) = parse_jid(contact) else {
            continue;
        };
        let p = Element::new("presence", "jabber:client")
            .with_attr("from", user.as_str())
            .with_attr("to", to.as_str())
            .with_attr("type", ptype);
        let p = Stanza::from_parts(StanzaKind::Presence, p, Some(to), Some(from.clone()));
        Box::pin(server.route_stanza(p)).await;
    }
    Ok(())
}

/// Sends `result` to the requesting session and closes every session of the account with
/// `not-authorized` (XEP-0077 §3.2), the requesting one once the result is written.
fn close_sessions(server: &Arc<Server>, user: &BareJid, requester: &FullJid, result: Element) {
    const WHY: &str = "account removed";
    for s in server.sessions().resources(user) {
        if s.jid() != requester {
            s.kick(StreamErrorCondition::NotAuthorized, WHY);
        }
    }
    let Some(session) = server.sessions().get(requester) else {
        return;
    };
    let receipt = session.deliver_tracked(result).ok();
    server.tasks().spawn(async move {
        if let Some(written) = receipt {
            // Resolves when written, errs when the session ended first: either way, go on.
            let _ = tokio::time::timeout(WRITE_WAIT, written).await;
        }
        session.kick(StreamErrorCondition::NotAuthorized, WHY);
    });
}
