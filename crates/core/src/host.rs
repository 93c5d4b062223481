//! A virtual host: one served domain with the modules enabled on it.

use crate::hooks::Hooks;
use crate::iq::{IqHandler, IqScope};
use crate::preauth::PreAuthHandler;
use crate::server::Server;
use rookery_xml::Element;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub category: String,
    pub kind: String,
    pub name: Option<String>,
}

pub struct Host {
    pub(crate) domain: String,
    pub(crate) modules: Vec<&'static str>,
    pub(crate) iq_handlers: HashMap<IqScope, HashMap<String, Arc<dyn IqHandler>>>,
    pub(crate) features: Vec<String>,
    pub(crate) account_features: Vec<String>,
    pub(crate) identities: Vec<Identity>,
    pub(crate) disco_items: Vec<(String, Option<String>)>,
    pub(crate) stream_features: Vec<Element>,
    pub(crate) bind_inline_features: Vec<String>,
    pub(crate) pre_auth_handlers: HashMap<String, Arc<dyn PreAuthHandler>>,
    pub(crate) pre_auth_features: Vec<Element>,
    /// What the modules of the build, enabled here or not, answer before authentication.
    pub(crate) pre_auth_namespaces: Vec<&'static str>,
    pub(crate) info_forms: Vec<Element>,
    pub(crate) hooks: Hooks<Arc<Server>>,
    /// Service domains its modules claimed; the server's router takes them over.
    pub(crate) services: Vec<crate::module::ServiceClaim>,
    /// HTTP handlers its modules registered; the server collects them.
    pub(crate) http_handlers: Vec<crate::http::HttpMount>,
}

impl Host {
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// Names of the modules enabled here, in initialisation order.
    pub fn modules(&self) -> &[&'static str] {
        &self.modules
    }
    /// The disco features of the server on this host, sorted.
    pub fn features(&self) -> &[String] {
        &self.features
    }
    /// The disco features of the accounts on this host (beyond disco itself), sorted.
    pub fn account_features(&self) -> &[String] {
        &self.account_features
    }
    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }
    pub fn disco_items(&self) -> &[(String, Option<String>)] {
        &self.disco_items
    }
    pub fn hooks(&self) -> &Hooks<Arc<Server>> {
        &self.hooks
    }
    /// Stream features modules offer after authentication.
    pub fn stream_features(&self) -> &[Element] {
        &self.stream_features
    }
    /// Features modules let clients enable inline in a Bind 2 request (XEP-0386).
    pub fn bind_inline_features(&self) -> &[String] {
        &self.bind_inline_features
    }
    /// The handler of IQs in `ns` on streams not authenticated yet ([`crate::preauth`]).
    pub fn pre_auth_handler(&self, ns: &str) -> Option<&Arc<dyn PreAuthHandler>> {
        self.pre_auth_handlers.get(ns)
    }
    /// Whether an IQ whose payload is in `ns`, on a stream of this host that is not
    /// authenticated yet, is answered rather than ending the stream: some module of the build
    /// declares the namespace ([`crate::Module::PRE_AUTH`]). Where this host has no handler
    /// for it (the module is not enabled here) the answer is `service-unavailable` and the
    /// stream stays open, as XEP-0077 §3.1 has a host without in-band registration answer;
    /// any other IQ before authentication ends the stream with `not-authorized` (RFC 6120
    /// §4.9.3.12).
    pub fn answers_before_auth(&self, ns: &str) -> bool {
        self.pre_auth_namespaces.contains(&ns)
    }
    /// XEP-0128 data forms modules add to the server's disco#info.
    pub fn info_forms(&self) -> &[Element] {
        &self.info_forms
    }
    /// Stream features modules offer before authentication (with TLS).
    pub fn pre_auth_features(&self) -> &[Element] {
        &self.pre_auth_features
    }
    pub fn iq_handler(&self, ns: &str, scope: IqScope) -> Option<&Arc<dyn IqHandler>> {
        self.iq_handlers.get(&scope)?.get(ns)
    }
}
