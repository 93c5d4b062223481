//! The router's routes beyond local accounts: a service domain (its stanzas in both
//! directions, through the local accounts' rules), external routes, the one
//! `remote-server-not-found`, and what a fan-out shares.

use async_trait::async_trait;
use parking_lot::Mutex;
use rookery_core::events::{LocalDelivery, MessageDelivered};
use rookery_core::route::{AttachError, RouteError};
use rookery_core::{
    iq_fn, Config, ExternalRoute, Flow, HostBuilder, IqRequest, IqScope, Module, ModuleError,
    ModuleRegistry, Order, RemoteRoutes, Server, Service, ServiceHandle, SessionHandle,
    SessionInbox,
};
use rookery_stanza::{FullJid, SharedStanza, Stanza, StanzaError, StanzaErrorCondition};
use rookery_storage::Storage;
use rookery_xml::{parse_element, Element};
use std::sync::Arc;

/// What the test service received, as (to, from, name).
static RECEIVED: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
/// The handle the service keeps to send on its own.
static HANDLE: Mutex<Option<ServiceHandle>> = Mutex::new(None);

struct Recorder;

#[async_trait]
impl Service for Recorder {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza) {
        RECEIVED.lock().push((
            stanza.attr("to").unwrap_or_default().to_owned(),
            stanza.attr("from").unwrap_or_default().to_owned(),
            stanza.name().to_owned(),
        ));
        *HANDLE.lock() = Some(service.clone());
    }
}

/// Claims `svc.<host>`; an account-scope IQ handler that names the requester; a delivery
/// filter that drops messages marked `blocked`; a `MessageDelivered` hook that keeps the
/// stanza it was given.
struct Routes;
static DELIVERED: Mutex<Vec<SharedStanza>> = Mutex::new(Vec::new());

impl Module for Routes {
    const NAME: &'static str = "routes";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let domain = format!("svc.{}", host.domain());
        host.service_domain(&domain, None, Recorder)?;
        host.iq_handler(
            "urn:test:whoami",
            IqScope::Account,
            iq_fn(|req: IqRequest| async move {
                Ok(Some(
                    Element::new("whoami", "urn:test:whoami").with_text(req.from.to_string()),
                ))
            }),
        )?;
        host.filter::<LocalDelivery, _, _>(Order::normal(), |_, d| async move {
            (d.stanza.attr("id") != Some("blocked")).then_some(d)
        });
        host.hook::<MessageDelivered, _, _>(Order::normal(), |_, ev| async move {
            DELIVERED.lock().push(ev.stanza.clone());
            Flow::Continue
        });
        Ok(())
    }
}

async fn server() -> Arc<Server> {
    let storage = Storage::memory();
    for (i, user) in ["alice", "bob"].into_iter().enumerate() {
        storage
            .accounts
            .create_account(
                "example.org",
                user,
                &rookery_storage::conformance::sample_all(i as u8),
            )
            .await
            .expect("account");
    }
    let mut registry = ModuleRegistry::new();
    registry.register::<Routes>();
    let cfg = Config::from_toml(
        "[messages]\nto_all_top_priority_resources = true\n[[host]]\ndomain = 'example.org'\n",
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &registry,
    )
    .expect("config");
    Server::new(cfg, storage, &registry).expect("server")
}

struct Client {
    jid: FullJid,
    inbox: SessionInbox,
}

impl Client {
    fn online(server: &Server, jid: &str) -> Client {
        let jid = FullJid::new(jid).expect("jid");
        let (handle, inbox) = SessionHandle::new(jid.clone(), 16);
        server.sessions().bind(handle.clone());
        handle.set_priority(Some(0));
        Client { jid, inbox }
    }
    fn recv(&mut self) -> Option<SharedStanza> {
        self.inbox.stanzas.try_recv().ok().map(|o| o.stanza)
    }
    async fn send(&self, server: &Arc<Server>, xml: &str) {
        let el = parse_element(xml).expect("xml");
        if let Some(s) = server.stamp_from_client(&self.jid, el).expect("stamp") {
            server.route_from_client(&self.jid, s).await;
        }
    }
}

fn condition(el: &Element) -> Option<StanzaErrorCondition> {
    StanzaError::from_stanza(el).map(|e| e.condition)
}

#[tokio::test]
async fn a_service_domain_gets_its_stanzas_and_sends_as_any_entity() {
    RECEIVED.lock().clear();
    let s = server().await;
    assert!(
        s.host("example.org")
            .expect("host")
            .disco_items()
            .iter()
            .any(|(jid, _)| jid == "svc.example.org"),
        "the host's disco#items list the service domain"
    );
    let mut alice = Client::online(&s, "alice@example.org/a");
    for xml in [
        "<message xmlns='jabber:client' to='room@svc.example.org'><body>x</body></message>",
        "<presence xmlns='jabber:client' to='room@svc.example.org/nick'/>",
        "<iq xmlns='jabber:client' type='get' id='i' to='svc.example.org'><query xmlns='q'/></iq>",
    ] {
        alice.send(&s, xml).await;
    }
    let got = RECEIVED.lock().clone();
    assert_eq!(
        got,
        vec![
            (
                "room@svc.example.org".into(),
                "alice@example.org/a".into(),
                "message".into()
            ),
            (
                "room@svc.example.org/nick".into(),
                "alice@example.org/a".into(),
                "presence".into()
            ),
            (
                "svc.example.org".into(),
                "alice@example.org/a".into(),
                "iq".into()
            ),
        ]
    );
    assert!(
        alice.recv().is_none(),
        "the service answers, not the router"
    );

    let service = HANDLE.lock().clone().expect("handle");
    // To a local account: through its delivery filters.
    service
        .send(parse_element("<message xmlns='jabber:client' from='room@svc.example.org/bob' to='alice@example.org' id='blocked'/>").expect("xml"))
        .await
        .expect("sent");
    assert!(alice.recv().is_none(), "filtered like anyone's");
    service
        .send(parse_element("<message xmlns='jabber:client' from='room@svc.example.org/bob' to='alice@example.org/a' type='groupchat'><body>hi</body></message>").expect("xml"))
        .await
        .expect("sent");
    let m = alice.recv().expect("delivered");
    assert_eq!(m.attr("from"), Some("room@svc.example.org/bob"));
    // An IQ to an account is answered by the server on its behalf, to the service; the
    // requester is a JID of the service domain, not a local session.
    RECEIVED.lock().clear();
    service
        .send(parse_element("<iq xmlns='jabber:client' type='get' id='w' to='alice@example.org'><whoami xmlns='urn:test:whoami'/></iq>").expect("xml"))
        .await
        .expect("sent");
    assert_eq!(
        RECEIVED.lock().clone(),
        vec![(
            "svc.example.org".into(),
            "alice@example.org".into(),
            "iq".into()
        )]
    );
    // A service sends from its own domain only.
    assert!(service
        .send(
            parse_element(
                "<message xmlns='jabber:client' from='bob@example.org' to='alice@example.org'/>"
            )
            .expect("xml")
        )
        .await
        .is_err());
}

/// An external route (a component or, later, a server-to-server connection) that keeps
/// what it is given, or refuses everything.
struct Outbox(Mutex<Vec<String>>, bool);

#[async_trait]
impl ExternalRoute for Outbox {
    async fn send(&self, stanza: Stanza) -> Result<(), RouteError> {
        if !self.1 {
            return Err(RouteError::Unroutable(StanzaError::new(
                StanzaErrorCondition::RemoteServerTimeout,
            )));
        }
        self.0
            .lock()
            .push(stanza.attr("to").unwrap_or_default().to_owned());
        Ok(())
    }
}

struct Federation(Arc<Outbox>);
impl RemoteRoutes for Federation {
    fn route_to(&self, domain: &str) -> Option<Arc<dyn ExternalRoute>> {
        (domain == "remote.example").then(|| self.0.clone() as Arc<dyn ExternalRoute>)
    }
}

#[tokio::test]
async fn unserved_domains_go_to_external_routes_or_get_one_answer() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a");
    let msg = |to: &str| {
        format!("<message xmlns='jabber:client' id='m' to='{to}'><body>x</body></message>")
    };
    // No route: the one answer.
    alice.send(&s, &msg("juliet@remote.example")).await;
    let e = alice.recv().expect("bounce");
    assert_eq!(
        condition(&e),
        Some(StanzaErrorCondition::RemoteServerNotFound)
    );
    assert_eq!(
        s.check_route("remote.example").map_err(|e| e.condition),
        Err(StanzaErrorCondition::RemoteServerNotFound)
    );
    // What the server sends for an account is not bounced back to it.
    s.route(
        parse_element(
            "<presence xmlns='jabber:client' from='alice@example.org' to='juliet@remote.example'/>",
        )
        .expect("xml"),
    )
    .await;
    assert!(alice.recv().is_none());

    // A component attached under its domain, and the remote routes of a transport.
    let component = Arc::new(Outbox(Mutex::default(), true));
    assert!(s
        .attach_component("gateway.example.org", component.clone())
        .is_ok());
    assert_eq!(
        s.attach_component("example.org", component.clone()),
        Err(AttachError::Served),
        "a host stays a host"
    );
    assert_eq!(
        s.attach_component("gateway.example.org", component.clone()),
        Err(AttachError::Attached),
        "the connection holding a domain keeps it"
    );
    let remote = Arc::new(Outbox(Mutex::default(), true));
    s.set_remote_routes(Arc::new(Federation(remote.clone())));
    alice.send(&s, &msg("x@gateway.example.org")).await;
    alice.send(&s, &msg("juliet@remote.example")).await;
    assert_eq!(*component.0.lock(), vec!["x@gateway.example.org"]);
    assert_eq!(*remote.0.lock(), vec!["juliet@remote.example"]);
    assert!(alice.recv().is_none());
    assert!(s.check_route("remote.example").is_ok());

    // A route that cannot take it: its error reaches the sender.
    s.detach_component("gateway.example.org");
    assert!(s
        .attach_component(
            "gateway.example.org",
            Arc::new(Outbox(Mutex::default(), false))
        )
        .is_ok());
    alice.send(&s, &msg("x@gateway.example.org")).await;
    let e = alice.recv().expect("bounce");
    assert_eq!(
        condition(&e),
        Some(StanzaErrorCondition::RemoteServerTimeout)
    );
    // Still unrouted elsewhere.
    alice.send(&s, &msg("x@elsewhere.example")).await;
    let e = alice.recv().expect("bounce");
    assert_eq!(
        condition(&e),
        Some(StanzaErrorCondition::RemoteServerNotFound)
    );
}

#[tokio::test]
async fn a_message_to_several_resources_is_shared_and_serialised_once() {
    DELIVERED.lock().clear();
    let s = server().await;
    let alice = Client::online(&s, "alice@example.org/a");
    let mut one = Client::online(&s, "bob@example.org/one");
    let mut two = Client::online(&s, "bob@example.org/two");
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' type='chat' to='bob@example.org'><body>hi</body></message>",
        )
        .await;
    let (a, b) = (one.recv().expect("one"), two.recv().expect("two"));
    let (mut wa, mut wb) = (Vec::new(), Vec::new());
    a.write_to(&mut wa, "jabber:client");
    assert!(
        b.is_serialised(),
        "the second session reuses the first one's bytes"
    );
    b.write_to(&mut wb, "jabber:client");
    assert_eq!(wa, wb);
    assert!(String::from_utf8(wa)
        .expect("utf-8")
        .contains("<body>hi</body>"));
    // The hook got the very stanza the sessions got (no copy): serialised with theirs.
    let hooked = DELIVERED.lock().clone();
    assert_eq!(hooked.len(), 1);
    assert!(hooked[0].is_serialised());
}

/// Two hosts, each with its `svc.` service domain; the second can be retired by a reload.
#[tokio::test]
async fn a_retired_host_and_its_service_domain_are_not_served_until_restored() {
    use rookery_core::route::Destination;
    use rookery_stanza::StreamErrorCondition;
    let mut registry = ModuleRegistry::new();
    registry.register::<Routes>();
    let cfg = Config::from_toml(
        "[[host]]\ndomain = 'example.org'\nmodules = ['routes']\n\
         [[host]]\ndomain = 'other.org'\nmodules = ['routes']\n",
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &registry,
    )
    .expect("config");
    let server = Server::new(cfg, Storage::memory(), &registry).expect("server");
    let (kept, _kept_inbox) =
        SessionHandle::new(FullJid::new("alice@example.org/a").expect("jid"), 8);
    let (gone, _gone_inbox) =
        SessionHandle::new(FullJid::new("carol@other.org/c").expect("jid"), 8);
    server.sessions().bind(kept.clone());
    server.sessions().bind(gone.clone());
    assert_eq!(server.built_hosts(), ["example.org", "other.org"]);

    assert_eq!(server.retire_host("other.org"), Some(1));
    // Once only; an unknown host is not retired.
    assert_eq!(server.retire_host("other.org"), None);
    assert_eq!(server.retire_host("nowhere.org"), None);
    assert_eq!(
        gone.kicked().await,
        (
            StreamErrorCondition::HostGone,
            "this host is no longer served here".to_owned()
        )
    );
    assert!(!server.serves("other.org") && server.host("other.org").is_none());
    assert!(server.service("svc.other.org").is_none());
    assert!(matches!(
        server.destination("other.org"),
        Destination::Unrouted
    ));
    assert!(matches!(
        server.destination("svc.other.org"),
        Destination::Unrouted
    ));
    // The other host is untouched, its session too.
    assert!(server.serves("example.org"));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), kept.kicked())
            .await
            .is_err()
    );
    assert!(matches!(
        server.destination("svc.example.org"),
        Destination::Service(_)
    ));
    assert!(matches!(
        server.destination("example.org"),
        Destination::Host(_)
    ));

    assert!(server.restore_host("other.org"));
    assert!(!server.restore_host("other.org"));
    assert!(server.serves("other.org"));
    assert!(matches!(
        server.destination("svc.other.org"),
        Destination::Service(_)
    ));
    assert!(matches!(
        server.destination("other.org"),
        Destination::Host(_)
    ));
}
