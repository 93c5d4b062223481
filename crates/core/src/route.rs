//! Where a stanza goes. [`Server::destination`](crate::Server::destination) decides it in one
//! place, by the domain of the `to` address:
//!
//! * a virtual host of this server ([`Destination::Host`]): local accounts and the server
//!   itself, under the rules of RFC 6120 §10 and RFC 6121 §8.5;
//! * a **service domain** ([`Destination::Service`]): a domain a module on one of the hosts
//!   claimed with [`HostBuilder::service_domain`](crate::HostBuilder::service_domain)
//!   (group chat, PubSub, upload, proxies). Its [`Service`] receives every stanza addressed
//!   to the domain or to any JID in it, and sends from it with a [`ServiceHandle`];
//! * an external component attached to the server under its domain (XEP-0114) or a remote
//!   domain reached over server-to-server streams (RFC 6120 §10.4): both are an
//!   [`ExternalRoute`] that a transport provides ([`Destination::External`]);
//! * nothing ([`Destination::Unrouted`]): answered `remote-server-not-found` in exactly one
//!   place (`Server::no_route`).

use crate::server::Server;
use async_trait::async_trait;
use rookery_stanza::{Jid, Stanza, StanzaError};
use rookery_xml::Element;
use std::sync::{Arc, Weak};

/// The route the router chose for a domain.
pub enum Destination {
    Host(Arc<crate::Host>),
    Service(Arc<ServiceDomain>),
    External(Arc<dyn ExternalRoute>),
    Unrouted,
}

/// Why a stanza could not be handed to an external route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route is gone or cannot reach the domain; the sender is answered with this error.
    #[error("unroutable: {0}")]
    Unroutable(StanzaError),
}

/// Why a component could not be attached under its domain ([`Server::attach_component`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// A virtual host or a module's service domain serves the domain.
    #[error("the domain is served by this server")]
    Served,
    /// Another connection holds the domain.
    #[error("a component is attached under the domain already")]
    Attached,
}

/// A way out of this server for stanzas to one domain: an external component's stream or a
/// server-to-server connection. Implemented by a transport.
#[async_trait]
pub trait ExternalRoute: Send + Sync + 'static {
    /// Takes a stanza for the route's domain. Must not wait for the peer: queue and return.
    async fn send(&self, stanza: Stanza) -> Result<(), RouteError>;
}

/// The routes to domains that are neither served here nor attached as components: the
/// federation side of the router, which a server-to-server transport implements.
pub trait RemoteRoutes: Send + Sync + 'static {
    /// The route to `domain`, or `None` when it cannot be reached (the sender then gets
    /// `remote-server-not-found`).
    fn route_to(&self, domain: &str) -> Option<Arc<dyn ExternalRoute>>;
}

/// A module's service on its own domain (e.g. `conference.example.org`).
///
/// It receives every stanza addressed to the domain or to any JID in it, whoever sent it,
/// in the sender's task (like IQ handlers and hooks, so one sender's stanzas keep their
/// order). Every IQ get or set it receives must be answered with one result or error
/// (RFC 6120 §8.2.3), sent with [`ServiceHandle::send`]; an error stanza is never answered
/// with an error.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    async fn receive(&self, service: &ServiceHandle, stanza: Stanza);
}

/// A service domain as the router knows it.
pub struct ServiceDomain {
    pub(crate) domain: Jid,
    pub(crate) host: String,
    pub(crate) module: &'static str,
    pub(crate) service: Arc<dyn Service>,
}

impl ServiceDomain {
    /// The domain JID the service answers for.
    pub fn domain(&self) -> &Jid {
        &self.domain
    }
    /// The virtual host whose module serves it.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The module that claimed it.
    pub fn module(&self) -> &'static str {
        self.module
    }
}

/// Why a service could not send a stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSendError {
    /// Not a stanza with valid addresses.
    #[error("not a stanza with a valid 'to'")]
    NotAStanza,
    /// The `from` is not the service's domain or a JID in it.
    #[error("a service sends from its own domain only")]
    ForeignFrom,
    /// The server is shutting down.
    #[error("the server is gone")]
    ServerGone,
}

/// What a service uses to send stanzas from its domain. Cheap to clone; it does not keep the
/// server alive, so a service may hold one.
#[derive(Clone)]
pub struct ServiceHandle {
    pub(crate) server: Weak<Server>,
    pub(crate) domain: Jid,
}

impl ServiceHandle {
    pub fn domain(&self) -> &Jid {
        &self.domain
    }

    /// The server, while it runs.
    pub fn server(&self) -> Option<Arc<Server>> {
        self.server.upgrade()
    }

    /// Routes a stanza from the service's domain (or a JID in it, e.g. a room occupant) like
    /// any other entity's: to local accounts after their delivery filters, to other services,
    /// outward through external routes. A missing `from` is the domain itself.
    pub async fn send(&self, mut stanza: Element) -> Result<(), ServiceSendError> {
        if stanza.attr("from").is_none() {
            stanza.set_attr("from", self.domain.as_str());
        }
        let stanza = Stanza::parse(stanza).map_err(|_| ServiceSendError::NotAStanza)?;
        self.send_stanza(stanza).await
    }

    /// [`send`](Self::send) for a stanza whose header is set (`from` in the service's domain,
    /// a `to`). A notification to many (room occupants, subscribers) is one stanza
    /// [`readdressed`](Stanza::readdressed) to each: one element, serialised once for all.
    pub async fn send_stanza(&self, stanza: Stanza) -> Result<(), ServiceSendError> {
        let server = self.server.upgrade().ok_or(ServiceSendError::ServerGone)?;
        match stanza.from() {
            Some(from) if from.domain() == self.domain.domain() => {}
            _ => return Err(ServiceSendError::ForeignFrom),
        }
        if stanza.to().is_none() {
            return Err(ServiceSendError::NotAStanza);
        }
        server.route_from_entity(stanza).await;
        Ok(())
    }
}
