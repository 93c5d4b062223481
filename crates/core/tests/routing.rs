//! The routing rules of RFC 6120 §10 and RFC 6121 §8.5, driven through the core with
//! in-memory storage and sessions that are queues instead of sockets.

use parking_lot::Mutex;
use rookery_core::events::{ClientStanza, LocalDelivery, UndeliverableMessage};
use rookery_core::Order;
use rookery_core::{
    iq_fn, Config, Flow, HostBuilder, IqRequest, IqScope, Module, ModuleError, ModuleRegistry,
    Server, SessionHandle, SessionInbox,
};
use rookery_stanza::{FullJid, StanzaError, StanzaErrorCondition, StreamErrorCondition};
use rookery_storage::Storage;
use rookery_xml::{parse_element, Element};
use std::sync::Arc;

/// A test module: an echo IQ handler, a filter that drops stanzas marked `drop-me`, and an
/// undeliverable-message hook that keeps messages whose body is "keep".
struct Echo;
static KEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Module for Echo {
    const NAME: &'static str = "echo";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature("urn:test:echo");
        host.iq_handler(
            "urn:test:echo",
            IqScope::Host,
            iq_fn(|req: IqRequest| async move {
                if req.payload.attr("fail").is_some() {
                    return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable));
                }
                Ok(Some(req.payload))
            }),
        )?;
        host.filter::<ClientStanza, _, _>(Order::normal(), |_, s| async move {
            (s.stanza.attr("id") != Some("drop-me")).then_some(s)
        });
        host.filter::<LocalDelivery, _, _>(Order::normal(), |_, d| async move {
            (d.stanza.attr("id") != Some("blocked")).then_some(d)
        });
        host.hook::<UndeliverableMessage, _, _>(Order::normal(), |_, m| async move {
            let body = m
                .stanza
                .get_child("body", "jabber:client")
                .map(|b| b.text());
            if body.as_deref() == Some("keep") {
                KEPT.lock().push(m.to.to_string());
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        Ok(())
    }
}

struct NeedsEcho;
impl Module for NeedsEcho {
    const NAME: &'static str = "needs-echo";
    const DEPENDS: &'static [&'static str] = &["echo"];
    fn init(_: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        Ok(())
    }
}

fn registry() -> ModuleRegistry {
    let mut r = ModuleRegistry::new();
    r.register::<Echo>().register::<NeedsEcho>();
    r
}

async fn server() -> Arc<Server> {
    server_with("").await
}

async fn server_with(extra: &str) -> Arc<Server> {
    let storage = Storage::memory();
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
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
    let cfg = Config::from_toml(
        &format!("{extra}\n[[host]]\ndomain = 'example.org'\n"),
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &registry(),
    )
    .expect("config");
    Server::new(cfg, storage, &registry()).expect("server")
}

struct Client {
    jid: FullJid,
    handle: Arc<SessionHandle>,
    inbox: SessionInbox,
}

impl Client {
    fn online(server: &Server, jid: &str, priority: Option<i8>) -> Client {
        let jid = FullJid::new(jid).expect("jid");
        let (handle, inbox) = SessionHandle::new(jid.clone(), 16);
        assert!(server.sessions().bind(handle.clone()).is_none());
        handle.set_priority(priority);
        Client { jid, handle, inbox }
    }
    fn recv(&mut self) -> Option<Element> {
        self.inbox
            .stanzas
            .try_recv()
            .ok()
            .map(|b| b.stanza.into_element())
    }
    fn recv_all(&mut self) -> Vec<Element> {
        std::iter::from_fn(|| self.recv()).collect()
    }
    async fn send(&self, server: &Arc<Server>, xml: &str) {
        let el = parse_element(xml).expect("test stanza parses");
        if let Some(stanza) = server.stamp_from_client(&self.jid, el).expect("stamp") {
            server.route_from_client(&self.jid, stanza).await;
        }
    }
}

fn error_condition(el: &Element) -> Option<StanzaErrorCondition> {
    assert_eq!(el.attr("type"), Some("error"), "{el}");
    StanzaError::from_stanza(el).map(|e| e.condition)
}

const CHAT: &str =
    "<message xmlns='jabber:client' type='chat' to='bob@example.org'><body>hi</body></message>";

#[tokio::test]
async fn bare_jid_message_goes_to_highest_priority_resources() {
    let s = server().await;
    let alice = Client::online(&s, "alice@example.org/a", Some(0));
    let mut b1 = Client::online(&s, "bob@example.org/one", Some(5));
    let mut b2 = Client::online(&s, "bob@example.org/two", Some(5));
    let mut b3 = Client::online(&s, "bob@example.org/low", Some(1));
    let mut b4 = Client::online(&s, "bob@example.org/neg", Some(-1));
    let mut b5 = Client::online(&s, "bob@example.org/unavail", None);
    alice.send(&s, CHAT).await;
    for b in [&mut b1, &mut b2] {
        let m = b.recv().expect("top priority resources get it");
        assert_eq!(m.attr("from"), Some("alice@example.org/a"));
        assert_eq!(
            m.get_child("body", "jabber:client")
                .map(|b| b.text())
                .as_deref(),
            Some("hi")
        );
    }
    for b in [&mut b3, &mut b4, &mut b5] {
        assert!(b.recv().is_none(), "{} must not get it", b.jid);
    }
}

#[tokio::test]
async fn full_jid_delivery_and_offline_resource_fallback() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a", Some(0));
    let mut bob = Client::online(&s, "bob@example.org/home", Some(0));
    // Online full JID: delivered exactly there, whatever the type.
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='bob@example.org/home' type='groupchat'/>",
        )
        .await;
    assert_eq!(
        bob.recv().map(|m| m.attr("type").map(str::to_owned)),
        Some(Some("groupchat".into()))
    );
    // Offline resource, chat: treated as sent to the bare JID (RFC 6121 §8.5.3.2.1).
    alice
        .send(&s, "<message xmlns='jabber:client' to='bob@example.org/gone' type='chat'><body>x</body></message>")
        .await;
    assert!(bob.recv().is_some());
    // Offline resource, groupchat: service-unavailable back to the sender.
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='bob@example.org/gone' type='groupchat' id='g'/>",
        )
        .await;
    let err = alice.recv().expect("error");
    assert_eq!(err.attr("id"), Some("g"));
    assert_eq!(
        error_condition(&err),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    // Offline resource, headline: silently dropped.
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='bob@example.org/gone' type='headline'/>",
        )
        .await;
    assert!(alice.recv().is_none() && bob.recv().is_none());
}

#[tokio::test]
async fn unknown_user_unserved_domain_and_offline_user() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a", Some(0));
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='nobody@example.org' type='chat' id='1'/>",
        )
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("err")),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='x@elsewhere.example' id='2'/>",
        )
        .await;
    let e = alice.recv().expect("err");
    assert_eq!(e.attr("from"), Some("x@elsewhere.example"));
    assert_eq!(
        error_condition(&e),
        Some(StanzaErrorCondition::RemoteServerNotFound)
    );
    // Existing but offline user, no module keeps it: service-unavailable for chat...
    alice
        .send(&s, "<message xmlns='jabber:client' to='carol@example.org' type='chat' id='3'><body>x</body></message>")
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("err")),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    // ...unless a module takes it (the hook offline storage will use).
    alice
        .send(&s, "<message xmlns='jabber:client' to='carol@example.org' type='chat'><body>keep</body></message>")
        .await;
    assert!(alice.recv().is_none());
    assert!(KEPT.lock().contains(&"carol@example.org".to_string()));
    // An error is never answered with an error.
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='nobody@example.org' type='error'/>",
        )
        .await;
    assert!(alice.recv().is_none());
    // A malformed address: jid-malformed.
    alice
        .send(&s, "<message xmlns='jabber:client' to='a@b@c' id='4'/>")
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("err")),
        Some(StanzaErrorCondition::JidMalformed)
    );
}

#[tokio::test]
async fn message_without_to_goes_to_own_bare_jid() {
    let s = server().await;
    let mut a1 = Client::online(&s, "alice@example.org/one", Some(0));
    a1.send(
        &s,
        "<message xmlns='jabber:client' type='chat'><body>note</body></message>",
    )
    .await;
    let m = a1.recv().expect("delivered to self");
    assert_eq!(m.attr("to"), Some("alice@example.org"));
}

#[tokio::test]
async fn iq_semantics() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a", Some(0));
    let mut bob = Client::online(&s, "bob@example.org/b", None);
    // Handled by a module: a result with the same id, from the server.
    alice
        .send(&s, "<iq xmlns='jabber:client' type='get' id='e1' to='example.org'><q xmlns='urn:test:echo' v='1'/></iq>")
        .await;
    let r = alice.recv().expect("result");
    assert_eq!(
        (r.attr("type"), r.attr("id"), r.attr("from")),
        (Some("result"), Some("e1"), Some("example.org"))
    );
    assert_eq!(
        r.get_child("q", "urn:test:echo").and_then(|q| q.attr("v")),
        Some("1")
    );
    // A handler's error becomes the error reply.
    alice
        .send(&s, "<iq xmlns='jabber:client' type='get' id='e2' to='example.org'><q xmlns='urn:test:echo' fail='1'/></iq>")
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("e")),
        Some(StanzaErrorCondition::NotAcceptable)
    );
    // Nobody handles the namespace: service-unavailable.
    for to in ["example.org", "bob@example.org", "alice@example.org"] {
        alice
            .send(&s, &format!("<iq xmlns='jabber:client' type='get' id='u' to='{to}'><q xmlns='urn:test:none'/></iq>"))
            .await;
        assert_eq!(
            error_condition(&alice.recv().expect("e")),
            Some(StanzaErrorCondition::ServiceUnavailable),
            "to {to}"
        );
    }
    // Two payloads, or no id: bad-request.
    alice
        .send(&s, "<iq xmlns='jabber:client' type='get' id='b' to='example.org'><a xmlns='x'/><b xmlns='y'/></iq>")
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("e")),
        Some(StanzaErrorCondition::BadRequest)
    );
    alice
        .send(
            &s,
            "<iq xmlns='jabber:client' type='get' to='example.org'><q xmlns='urn:test:echo'/></iq>",
        )
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("e")),
        Some(StanzaErrorCondition::BadRequest)
    );
    // To an online full JID: passed through, and the answer comes back the same way.
    alice
        .send(&s, "<iq xmlns='jabber:client' type='get' id='p' to='bob@example.org/b'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let req = bob.recv().expect("bob gets the request");
    assert_eq!(req.attr("from"), Some("alice@example.org/a"));
    bob.send(
        &s,
        "<iq xmlns='jabber:client' type='result' id='p' to='alice@example.org/a'/>",
    )
    .await;
    assert_eq!(
        alice.recv().and_then(|r| r.attr("type").map(str::to_owned)),
        Some("result".into())
    );
    // To an offline full JID: service-unavailable; a result to one vanishes.
    alice
        .send(&s, "<iq xmlns='jabber:client' type='get' id='o' to='bob@example.org/gone'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        error_condition(&alice.recv().expect("e")),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
    alice
        .send(
            &s,
            "<iq xmlns='jabber:client' type='result' id='o' to='bob@example.org/gone'/>",
        )
        .await;
    assert!(alice.recv().is_none());
    // A result to the server is never answered.
    alice
        .send(
            &s,
            "<iq xmlns='jabber:client' type='result' id='r' to='example.org'/>",
        )
        .await;
    assert!(alice.recv().is_none());
    let _ = bob.recv_all();
}

#[tokio::test]
async fn from_is_stamped_and_spoofing_refused() {
    let s = server().await;
    let a = FullJid::new("alice@example.org/a").expect("jid");
    let stamp = |xml: &str| s.stamp_from_client(&a, parse_element(xml).expect("xml"));
    let el = stamp("<message xmlns='jabber:client'/>")
        .expect("stamped")
        .expect("routable");
    assert_eq!(el.attr("from"), Some("alice@example.org/a"));
    assert_eq!(el.from().map(|j| j.as_str()), Some("alice@example.org/a"));
    let el = stamp("<message xmlns='jabber:client' from='alice@example.org'/>")
        .expect("bare ok")
        .expect("routable");
    assert_eq!(el.attr("from"), Some("alice@example.org/a"));
    for spoof in [
        "bob@example.org",
        "alice@example.org/other",
        "example.org",
        "not a jid@@",
    ] {
        let xml = format!("<presence xmlns='jabber:client' from='{spoof}'/>");
        assert_eq!(
            stamp(&xml).unwrap_err(),
            StreamErrorCondition::InvalidFrom,
            "{spoof}"
        );
    }
    assert_eq!(
        stamp("<message xmlns='jabber:server'/>").unwrap_err(),
        StreamErrorCondition::InvalidNamespace
    );
    assert_eq!(
        stamp("<foo xmlns='jabber:client'/>").unwrap_err(),
        StreamErrorCondition::UnsupportedStanzaType
    );
}

#[tokio::test]
async fn filters_can_drop_client_stanzas() {
    let s = server().await;
    let mut alice = Client::online(&s, "alice@example.org/a", Some(0));
    let mut bob = Client::online(&s, "bob@example.org/b", Some(0));
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='bob@example.org' id='drop-me' type='chat'/>",
        )
        .await;
    assert!(bob.recv().is_none());
    // A delivery filter (blocking) drops messages; a dropped IQ request is still answered.
    alice
        .send(
            &s,
            "<message xmlns='jabber:client' to='bob@example.org/b' id='blocked' type='chat'/>",
        )
        .await;
    assert!(bob.recv().is_none());
    alice
        .send(&s, "<iq xmlns='jabber:client' to='bob@example.org/b' id='blocked' type='get'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert!(bob.recv().is_none());
    assert_eq!(
        error_condition(&alice.recv().expect("answered")),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
}

#[tokio::test]
async fn presence_priority_and_directed_presence() {
    let s = server().await;
    let alice = Client::online(&s, "alice@example.org/a", None);
    let mut bob = Client::online(&s, "bob@example.org/b", None);
    alice
        .send(
            &s,
            "<presence xmlns='jabber:client'><priority>-3</priority></presence>",
        )
        .await;
    assert_eq!(alice.handle.priority(), Some(-3));
    // Directed presence to a bare JID reaches available resources only.
    alice
        .send(&s, "<presence xmlns='jabber:client' to='bob@example.org'/>")
        .await;
    assert!(bob.recv().is_none(), "bob is not available");
    bob.send(&s, "<presence xmlns='jabber:client'/>").await;
    assert_eq!(bob.handle.priority(), Some(0));
    alice
        .send(&s, "<presence xmlns='jabber:client' to='bob@example.org'/>")
        .await;
    assert!(bob.recv().is_some());
    // To a full JID, delivered regardless; to a non-existent account, ignored.
    alice
        .send(
            &s,
            "<presence xmlns='jabber:client' to='nobody@example.org'/>",
        )
        .await;
    alice
        .send(&s, "<presence xmlns='jabber:client' type='unavailable'/>")
        .await;
    assert_eq!(alice.handle.priority(), None);
}

#[test]
fn module_registry_checks_names_and_dependencies() {
    let r = registry();
    let storage = Storage::memory();
    let cfg = Config::load(None, &registry()).expect("default config");
    let e = r
        .build_host("example.org", Some(&["bogus".to_string()]), &cfg, &storage)
        .err()
        .expect("unknown module refused")
        .to_string();
    assert!(e.contains("bogus") && e.contains("echo"), "{e}");
    let e = r
        .build_host(
            "example.org",
            Some(&["needs-echo".to_string()]),
            &cfg,
            &storage,
        )
        .err()
        .expect("missing dependency refused")
        .to_string();
    assert!(e.contains("needs-echo") && e.contains("echo"), "{e}");
    let host = r
        .build_host("example.org", Some(&[]), &cfg, &storage)
        .expect("no modules");
    assert!(
        host.features().is_empty(),
        "disabled modules advertise nothing"
    );
    let host = r
        .build_host("example.org", None, &cfg, &storage)
        .expect("all");
    assert_eq!(host.features(), ["urn:test:echo".to_string()]);
}

#[test]
fn a_namespace_has_one_handler() {
    struct Twice;
    impl Module for Twice {
        const NAME: &'static str = "twice";
        fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
            host.iq_handler("urn:x", IqScope::Host, iq_fn(|_| async { Ok(None) }))?;
            host.iq_handler("urn:x", IqScope::Host, iq_fn(|_| async { Ok(None) }))
        }
    }
    let mut r = ModuleRegistry::new();
    r.register::<Twice>();
    let cfg = Config::load(None, &registry()).expect("default config");
    assert!(r.build_host("x", None, &cfg, &Storage::memory()).is_err());
}

#[tokio::test]
async fn one_resource_among_tied_ones_when_configured() {
    let s = server_with("[messages]\nto_all_top_priority_resources = false\n").await;
    let alice = Client::online(&s, "alice@example.org/a", Some(0));
    let mut older = Client::online(&s, "bob@example.org/older", Some(3));
    let mut newer = Client::online(&s, "bob@example.org/newer", Some(3));
    alice.send(&s, CHAT).await;
    assert!(newer.recv().is_some(), "the newest of the tied resources");
    assert!(older.recv().is_none());
}

#[tokio::test]
async fn server_iq_requests_get_their_answer_an_error_or_time_out() {
    use rookery_core::IqRequestError;
    use std::time::Duration;
    let s = server().await;
    let mut svc = Client::online(&s, "bob@example.org/svc", Some(0));
    let mallory = Client::online(&s, "carol@example.org/m", Some(0));
    let request = |to: &str| {
        parse_element(&format!(
            "<iq xmlns='jabber:client' type='set' from='alice@example.org' to='{to}'><q xmlns='urn:test:q'/></iq>"
        ))
        .expect("xml")
    };

    // A result from the addressee resolves the request; a forged one from elsewhere does not.
    let s2 = s.clone();
    let waiting = tokio::spawn(async move {
        s2.send_iq_request(request("bob@example.org/svc"), Duration::from_secs(5))
            .await
    });
    let mut got = None;
    for _ in 0..100 {
        if let Some(el) = svc.recv() {
            got = Some(el);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = got.expect("the request reached the addressee");
    assert_eq!(req.attr("from"), Some("alice@example.org"));
    assert_eq!(req.attr("type"), Some("set"));
    let id = req.attr("id").expect("server-chosen id").to_owned();
    mallory
        .send(
            &s,
            &format!("<iq xmlns='jabber:client' type='result' id='{id}' to='alice@example.org'/>"),
        )
        .await;
    assert!(
        !waiting.is_finished(),
        "an answer from another JID is ignored"
    );
    svc.send(
        &s,
        &format!("<iq xmlns='jabber:client' type='result' id='{id}' to='alice@example.org'><r xmlns='urn:test:q'/></iq>"),
    )
    .await;
    let reply = waiting.await.expect("join").expect("result");
    assert!(reply.has_child("r", "urn:test:q"));
    assert_eq!(reply.attr("from"), Some("bob@example.org/svc"));

    // An error answer.
    let s2 = s.clone();
    let waiting = tokio::spawn(async move {
        s2.send_iq_request(request("bob@example.org/svc"), Duration::from_secs(5))
            .await
    });
    let req = loop {
        if let Some(el) = svc.recv() {
            break el;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let id = req.attr("id").expect("id");
    svc.send(
        &s,
        &format!("<iq xmlns='jabber:client' type='error' id='{id}' to='alice@example.org'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
    )
    .await;
    match waiting.await.expect("join") {
        Err(IqRequestError::Error(e)) => {
            assert_eq!(e.condition, StanzaErrorCondition::ItemNotFound)
        }
        other => panic!("expected the error, got {other:?}"),
    }

    // No answer: a timeout, and the pending entry is gone (a late answer resolves nothing
    // and is dropped quietly).
    let r = s
        .send_iq_request(request("bob@example.org/svc"), Duration::from_millis(50))
        .await;
    assert_eq!(r, Err(IqRequestError::Timeout(Duration::from_millis(50))));
    let late = svc.recv().expect("request");
    svc.send(
        &s,
        &format!(
            "<iq xmlns='jabber:client' type='result' id='{}' to='alice@example.org'/>",
            late.attr("id").expect("id")
        ),
    )
    .await;
    assert!(svc.recv_all().is_empty(), "nothing bounced back");

    // A resource that is not online, a remote domain, and not a request.
    assert_eq!(
        s.send_iq_request(request("bob@example.org/gone"), Duration::from_secs(1))
            .await,
        Err(IqRequestError::Error(StanzaError::service_unavailable()))
    );
    assert!(matches!(
        s.send_iq_request(request("x@remote.example/r"), Duration::from_secs(1))
            .await,
        Err(IqRequestError::Error(e)) if e.condition == StanzaErrorCondition::RemoteServerNotFound
    ));
    let result = parse_element(
        "<iq xmlns='jabber:client' type='result' from='alice@example.org' to='bob@example.org/svc'/>",
    )
    .expect("xml");
    assert_eq!(
        s.send_iq_request(result, Duration::from_secs(1)).await,
        Err(IqRequestError::NotARequest)
    );
}
