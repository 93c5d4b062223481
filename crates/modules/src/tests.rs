//! Each module answered through the core's router, as a client would see it.

use crate::registry;
use rookery_core::{Config, Server, SessionHandle, SessionInbox};
use rookery_stanza::{FullJid, StanzaError, StanzaErrorCondition};
use rookery_storage::Storage;
use rookery_xml::{parse_element, Element};
use std::sync::Arc;

fn server(modules: Option<&[&str]>) -> Arc<Server> {
    let list = modules
        .map(|m| {
            format!(
                "modules = [{}]",
                m.iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .unwrap_or_default();
    let cfg = Config::from_toml(
        &format!("[[host]]\ndomain = 'example.org'\n{list}\n"),
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        &registry(),
    )
    .expect("config");
    Server::new(cfg, Storage::memory(), &registry()).expect("server")
}

async fn ask(server: &Arc<Server>, xml: &str) -> Element {
    let jid = FullJid::new("alice@example.org/r").expect("jid");
    let (handle, mut inbox): (_, SessionInbox) = SessionHandle::new(jid.clone(), 8);
    server.sessions().bind(handle.clone());
    let el = server
        .stamp_from_client(&jid, parse_element(xml).expect("xml"))
        .expect("stamp")
        .expect("routable");
    server.route_from_client(&jid, el).await;
    server.sessions().unbind(&handle);
    inbox
        .stanzas
        .try_recv()
        .expect("one answer")
        .stanza
        .into_element()
}

fn iq(payload: &str) -> String {
    format!("<iq xmlns='jabber:client' type='get' id='q1' to='example.org'>{payload}</iq>")
}

#[tokio::test]
async fn disco_lists_exactly_the_enabled_features() {
    let s = server(None);
    let r = ask(
        &s,
        &iq("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let q = r.get_child("query", crate::disco::NS_INFO).expect("query");
    let features: Vec<_> = q
        .children()
        .filter(|c| c.name() == "feature")
        .filter_map(|c| c.attr("var"))
        .collect();
    assert_eq!(
        features,
        [
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/pubsub#publish",
            "jabber:iq:last",
            "jabber:iq:private",
            "jabber:iq:register",
            "jabber:iq:version",
            "msgoffline",
            "urn:xmpp:blocking",
            "urn:xmpp:carbons:2",
            "urn:xmpp:ping",
            "urn:xmpp:time",
            "vcard-temp"
        ]
    );
    let id = q
        .get_child("identity", crate::disco::NS_INFO)
        .expect("identity");
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("server"), Some("im"))
    );

    // With ping disabled, it is neither advertised nor answered.
    let s = server(Some(&["disco", "version"]));
    let r = ask(
        &s,
        &iq("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
    )
    .await;
    let text = r.to_string();
    assert!(
        !text.contains("urn:xmpp:ping") && text.contains("jabber:iq:version"),
        "{text}"
    );
    let r = ask(&s, &iq("<ping xmlns='urn:xmpp:ping'/>")).await;
    assert_eq!(
        StanzaError::from_stanza(&r).map(|e| e.condition),
        Some(StanzaErrorCondition::ServiceUnavailable)
    );
}

#[tokio::test]
async fn disco_items_and_unknown_nodes() {
    let s = server(None);
    let r = ask(
        &s,
        &iq("<query xmlns='http://jabber.org/protocol/disco#items'/>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = ask(
        &s,
        &iq("<query xmlns='http://jabber.org/protocol/disco#info' node='nope'/>"),
    )
    .await;
    assert_eq!(
        StanzaError::from_stanza(&r).map(|e| e.condition),
        Some(StanzaErrorCondition::ItemNotFound)
    );
}

#[tokio::test]
async fn ping_version_time() {
    let s = server(None);
    let r = ask(&s, &iq("<ping xmlns='urn:xmpp:ping'/>")).await;
    assert_eq!((r.attr("type"), r.attr("id")), (Some("result"), Some("q1")));
    assert_eq!(r.children().count(), 0);

    let r = ask(&s, &iq("<query xmlns='jabber:iq:version'/>")).await;
    let q = r.get_child("query", "jabber:iq:version").expect("query");
    assert_eq!(
        q.get_child("name", "jabber:iq:version")
            .map(|n| n.text())
            .as_deref(),
        Some("Rookery")
    );
    assert!(q.get_child("version", "jabber:iq:version").is_some());

    let r = ask(&s, &iq("<time xmlns='urn:xmpp:time'/>")).await;
    let t = r.get_child("time", "urn:xmpp:time").expect("time");
    let utc = t.get_child("utc", "urn:xmpp:time").expect("utc").text();
    assert!(utc.ends_with('Z') && utc.len() == 20, "{utc}");
    assert!(t.get_child("tzo", "urn:xmpp:time").is_some());

    // Without `to`: the sender's own account, answered by the server.
    let r = ask(
        &s,
        "<iq xmlns='jabber:client' type='get' id='own'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));

    // A set where only get is defined: bad-request.
    let r = ask(
        &s,
        "<iq xmlns='jabber:client' type='set' id='s' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    assert_eq!(
        StanzaError::from_stanza(&r).map(|e| e.condition),
        Some(StanzaErrorCondition::BadRequest)
    );
}
