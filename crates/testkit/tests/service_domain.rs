//! The routes of the router, end to end over a client connection: a module that claims a
//! service domain gets what is addressed to it and answers from it; the host's disco#items
//! lists it; a domain with no route gets `remote-server-not-found`.

use async_trait::async_trait;
use rookery_core::{HostBuilder, Module, ModuleError, Service, ServiceHandle};
use rookery_stanza::{error_reply, iq_result, ns, Stanza, StanzaError, StanzaKind};
use rookery_testkit::{RawClient, TestServer};
use rookery_xml::Element;
use rustls::version::TLS13;

const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// A test service on `echo.<host>`: answers disco#info to its domain, echoes messages sent
/// to any JID in it back from that JID, and refuses every other request.
struct EchoService;

#[async_trait]
impl Service for EchoService {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza) {
        let reply = match stanza.kind() {
            StanzaKind::Iq => {
                let is_disco = stanza.has_child("query", DISCO_INFO)
                    && stanza.to().is_some_and(|to| to == service.domain());
                if !stanza.iq_type().is_some_and(|t| t.is_request()) {
                    None
                } else if is_disco {
                    let info = Element::new("query", DISCO_INFO)
                        .with_child(
                            Element::new("identity", DISCO_INFO)
                                .with_attr("category", "conference")
                                .with_attr("type", "text")
                                .with_attr("name", "Echo"),
                        )
                        .with_child(
                            Element::new("feature", DISCO_INFO).with_attr("var", DISCO_INFO),
                        );
                    Some(iq_result(&stanza, Some(info)))
                } else {
                    error_reply(&stanza, &StanzaError::service_unavailable())
                }
            }
            StanzaKind::Message if !stanza.is_error() => {
                let body = stanza
                    .get_child("body", ns::CLIENT)
                    .map(Element::text)
                    .unwrap_or_default();
                let mut echo = Element::new("message", ns::CLIENT)
                    .with_attr("type", "chat")
                    .with_child(
                        Element::new("body", ns::CLIENT).with_text(format!("echo: {body}")),
                    );
                if let Some(from) = stanza.from() {
                    echo.set_attr("to", from.as_str());
                }
                if let Some(to) = stanza.to() {
                    echo.set_attr("from", to.as_str());
                }
                Some(echo)
            }
            _ => None,
        };
        if let Some(reply) = reply {
            service
                .send(reply)
                .await
                .expect("the service sends from its domain");
        }
    }
}

struct Echo;
impl Module for Echo {
    const NAME: &'static str = "test-echo-service";
    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let domain = format!("echo.{}", host.domain());
        host.service_domain(&domain, Some("Echo service"), EchoService)
    }
}

async fn start() -> TestServer {
    let mut registry = rookery_modules::registry();
    registry.register::<Echo>();
    let t = TestServer::start_with_registry("", "", &registry).await;
    t.add_user("alice", "pw").await;
    t
}

async fn login(t: &TestServer) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    c
}

#[tokio::test]
async fn a_service_domain_answers_disco_and_messages_to_its_jids() {
    let t = start().await;
    let mut c = login(&t).await;

    c.send("<iq type='get' id='items' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    let got = c.read_until("</iq>").await;
    assert!(
        got.contains("jid=\"echo.localhost\"") && got.contains("name=\"Echo service\""),
        "the host lists the service domain: {got}"
    );

    c.send(&format!(
        "<iq type='get' id='info' to='echo.localhost'><query xmlns='{DISCO_INFO}'/></iq>"
    ))
    .await;
    let got = c.read_until("</iq>").await;
    assert!(
        got.contains("id=\"info\"") && got.contains("type=\"result\""),
        "{got}"
    );
    assert!(
        got.contains("from=\"echo.localhost\"") && got.contains("to=\"alice@localhost/r\""),
        "{got}"
    );
    assert!(got.contains("category=\"conference\""), "{got}");

    c.send(
        "<message type='chat' id='m1' to='room@echo.localhost/nick'><body>hello</body></message>",
    )
    .await;
    let got = c.read_until("</message>").await;
    assert!(got.contains("echo: hello"), "{got}");
    assert!(got.contains("from=\"room@echo.localhost/nick\""), "{got}");

    // The service answers for itself: an unknown request gets its error, once.
    c.send(
        "<iq type='get' id='v' to='room@echo.localhost'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let got = c.read_until("</iq>").await;
    assert!(
        got.contains("id=\"v\"") && got.contains("service-unavailable"),
        "{got}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_domain_without_a_route_is_answered_remote_server_not_found() {
    let t = start().await;
    let mut c = login(&t).await;
    c.send("<message type='chat' id='m' to='juliet@remote.example'><body>hi</body></message>")
        .await;
    let got = c.read_until("</message>").await;
    assert!(
        got.contains("remote-server-not-found") && got.contains("id=\"m\""),
        "{got}"
    );
    c.send("<iq type='get' id='q' to='remote.example'><query xmlns='jabber:iq:version'/></iq>")
        .await;
    let got = c.read_until("</iq>").await;
    assert!(
        got.contains("remote-server-not-found") && got.contains("id=\"q\""),
        "{got}"
    );
    c.send("<presence type='subscribe' id='s' to='juliet@remote.example'/>")
        .await;
    let got = c.read_until("</presence>").await;
    assert!(
        got.contains("remote-server-not-found") && got.contains("id=\"s\""),
        "{got}"
    );
    t.stop().await;
}
