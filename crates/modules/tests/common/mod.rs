//! The in-process harness of the module tests: a server with in-memory storage and a few
//! accounts, and sessions that are queues instead of sockets, driven through the real core.
#![allow(dead_code)] // each test file uses its own part of the harness

use rookery_core::events::{SessionBound, SessionClosed};
use rookery_core::{Config, ModuleRegistry, Server, SessionHandle, SessionInbox};
use rookery_stanza::{FullJid, StanzaError, StanzaErrorCondition};
use rookery_storage::Storage;
use rookery_xml::{parse_element, Element};
use std::sync::Arc;

pub const D: &str = "example.org";

/// example.org with alice, bob, carol, dave; other.org with eve. `top` goes before the
/// hosts, `host` into example.org's table.
pub async fn server_with(top: &str, host: &str) -> Arc<Server> {
    server_with_registry(top, host, &rookery_modules::registry()).await
}

/// [`server_with`] for a build with other modules (a test's own, observing events).
pub async fn server_with_registry(top: &str, host: &str, registry: &ModuleRegistry) -> Arc<Server> {
    let storage = Storage::memory();
    let accounts = [
        (D, "alice"),
        (D, "bob"),
        (D, "carol"),
        (D, "dave"),
        ("other.org", "eve"),
    ];
    for (i, (domain, user)) in accounts.into_iter().enumerate() {
        storage
            .accounts
            .create_account(
                domain,
                user,
                &rookery_storage::conformance::sample_all(i as u8),
            )
            .await
            .expect("account");
    }
    let cfg = Config::from_toml(
        &format!("{top}\n[[host]]\ndomain = '{D}'\n{host}\n[[host]]\ndomain = 'other.org'\n"),
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
        registry,
    )
    .expect("config");
    Server::new(cfg, storage, registry).expect("server")
}

pub async fn server() -> Arc<Server> {
    server_with("", "").await
}

pub struct Client {
    pub jid: FullJid,
    pub handle: Arc<SessionHandle>,
    pub inbox: SessionInbox,
    pub server: Arc<Server>,
}

impl Client {
    /// Bound as the c2s stream does it: registered, then `SessionBound` run.
    pub async fn bind(server: &Arc<Server>, jid: &str) -> Client {
        let jid = FullJid::new(jid).expect("jid");
        let (handle, inbox) = SessionHandle::new(jid.clone(), 256);
        server.sessions().bind(handle.clone());
        let host = server.host(jid.domain().as_str()).expect("host").clone();
        host.hooks()
            .run(
                server,
                SessionBound {
                    session: handle.clone(),
                },
            )
            .await;
        Client {
            jid,
            handle,
            inbox,
            server: server.clone(),
        }
    }
    /// Bound, roster requested, initial presence sent; queue drained.
    pub async fn online(server: &Arc<Server>, jid: &str) -> Client {
        let mut c = Client::bind(server, jid).await;
        c.send("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>")
            .await;
        c.send("<presence/>").await;
        c.drain();
        c
    }
    pub async fn send(&self, xml: &str) {
        let el = parse_element(&add_client_ns(xml))
            .unwrap_or_else(|e| panic!("bad test xml {xml}: {e}"));
        if let Some(stanza) = self.server.stamp_from_client(&self.jid, el).expect("stamp") {
            self.server.route_from_client(&self.jid, stanza).await;
        }
    }
    /// Everything queued for this session, acknowledged as written (as the connection would).
    pub fn drain(&mut self) -> Vec<Element> {
        std::iter::from_fn(|| self.inbox.stanzas.try_recv().ok())
            .map(|o| {
                let o = *o;
                if let Some(w) = o.written {
                    let _ = w.send(());
                }
                o.stanza.into_element()
            })
            .collect()
    }
    /// Like `drain`, waiting (bounded) until `n` stanzas arrived.
    pub async fn drain_at_least(&mut self, n: usize) -> Vec<Element> {
        let mut got = Vec::new();
        for _ in 0..200 {
            got.extend(self.drain());
            if got.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        got
    }
    /// Sends an IQ and returns the answer with its id.
    pub async fn ask(&mut self, xml: &str, id: &str) -> Element {
        self.send(xml).await;
        let got = self.drain();
        reply(&got, id).clone()
    }
    pub async fn close(self) {
        let was_available = self.handle.priority().is_some();
        self.server.sessions().unbind(&self.handle);
        let host = self
            .server
            .host(self.jid.domain().as_str())
            .expect("host")
            .clone();
        host.hooks()
            .run(
                &self.server,
                SessionClosed {
                    session: self.handle.clone(),
                    was_available,
                },
            )
            .await;
    }
}

pub fn add_client_ns(xml: &str) -> String {
    // Put the top-level element in jabber:client, as the stream would.
    let end = xml.find([' ', '>', '/']).expect("tag");
    format!("{} xmlns='jabber:client'{}", &xml[..end], &xml[end..])
}

pub fn reply<'a>(got: &'a [Element], id: &str) -> &'a Element {
    got.iter()
        .find(|e| e.attr("id") == Some(id) && e.attr("type") != Some("set"))
        .unwrap_or_else(|| panic!("no reply to {id} in {got:?}"))
}

pub fn condition(el: &Element) -> Option<StanzaErrorCondition> {
    StanzaError::from_stanza(el).map(|e| e.condition)
}

pub fn assert_result(el: &Element) {
    assert_eq!(el.attr("type"), Some("result"), "{el:?}");
}

pub fn presences<'a>(got: &'a [Element], ptype: Option<&str>) -> Vec<&'a Element> {
    got.iter()
        .filter(|e| e.name() == "presence" && e.attr("type") == ptype)
        .collect()
}
