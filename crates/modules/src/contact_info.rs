//! XEP-0157 Contact Addresses for XMPP Services: the addresses configured for a host
//! (`[host.contact]`) are published in the server's disco#info as a XEP-0128 data form of
//! FORM_TYPE `http://jabber.org/network/serverinfo`, one field per role.
//!
//! The disco module owns the disco#info answer, and the core has no way for a module to add
//! a data form to it; so this module only declares the feature: when it is enabled on a host,
//! the disco module asks [`server_info_form`] for the form (see `disco.rs`). The addresses
//! are checked to be URIs when the configuration is loaded (§3: "SHOULD be valid URIs").
//! With no address configured, no form is published.

use rookery_core::config::ContactAddresses;
use rookery_core::{HostBuilder, Module, ModuleError, Server, Spec};
use rookery_xml::Element;

pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_TYPE: &str = "http://jabber.org/network/serverinfo";

pub struct ContactInfo;

impl Module for ContactInfo {
    const NAME: &'static str = "contact_info";
    const DEPENDS: &'static [&'static str] = &["disco"];
    const SPECS: &'static [Spec] = &[
        Spec {
            id: "XEP-0157",
            title: "Contact Addresses for XMPP Services",
            version: "1.1.1",
        },
        Spec {
            id: "XEP-0128",
            title: "Service Discovery Extensions",
            version: "1.0.1",
        },
    ];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        let configured = host
            .config()
            .host(host.domain())
            .is_some_and(|h| !h.contact.fields().is_empty());
        if !configured {
            tracing::debug!(host = host.domain(), "no contact addresses configured");
        }
        Ok(())
    }
}

/// The form for a host's addresses; `None` when there are none.
pub fn form(contact: &ContactAddresses) -> Option<Element> {
    let fields = contact.fields();
    if fields.is_empty() {
        return None;
    }
    let mut x = Element::new("x", NS_DATA).with_attr("type", "result");
    x.push_child(
        Element::new("field", NS_DATA)
            .with_attr("var", "FORM_TYPE")
            .with_attr("type", "hidden")
            .with_child(Element::new("value", NS_DATA).with_text(FORM_TYPE)),
    );
    for (var, addresses) in fields {
        let mut field = Element::new("field", NS_DATA).with_attr("var", var);
        for a in addresses {
            field.push_child(Element::new("value", NS_DATA).with_text(a.clone()));
        }
        x.push_child(field);
    }
    Some(x)
}

/// The form disco adds to the server's disco#info of `domain`.
pub fn server_info_form(server: &Server, domain: &str) -> Option<Element> {
    form(&server.config().host(domain)?.contact)
}
