//! XEP-0157 Contact Addresses for XMPP Services: the addresses configured for a host
//! (`[host.contact]`) are published in the server's disco#info as a XEP-0128 data form of
//! FORM_TYPE `http://jabber.org/network/serverinfo`, one field per role.
//!
//! The form is built from the host's `[host.contact]` section when the module starts on the
//! host and registered with the core as a disco#info extension form, which the disco module
//! adds to its answer. The addresses are checked to be URIs when the configuration is loaded
//! (§3: "SHOULD be valid URIs"). With no address configured, no form is published.

use rookery_core::config::ConfigError;
use rookery_core::{HostBuilder, Module, ModuleError, Place, Section, SectionDecl, Spec};
use rookery_xml::Element;
use serde::{Deserialize, Serialize};

pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_TYPE: &str = "http://jabber.org/network/serverinfo";

pub struct ContactInfo;

/// XEP-0157 contact addresses of a host (`[host.contact]`): URIs (`mailto:`, `xmpp:`,
/// `https:`) per role.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ContactAddresses {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactAddresses {
    /// (XEP-0157 field var, addresses) for the roles that have any.
    pub fn fields(&self) -> Vec<(&'static str, &[String])> {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_slice()))
        .collect()
    }
}

impl Section for ContactAddresses {
    const KEY: &'static str = "contact";
    const PLACE: Place = Place::Host;
    const EXAMPLE: &'static str = r#"# Contact addresses of the service (XEP-0157), shown in service discovery. Each role takes a
# list of URIs: abuse, admin, feedback, sales, security, status, support.
[host.contact]
admin = ["mailto:admin@localhost"]
# abuse = ["mailto:abuse@localhost"]
# security = ["https://localhost/security.txt"]
"#;

    /// §3: addresses "SHOULD be valid URIs"; a bare address is a likely mistake.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (role, addrs) in self.fields() {
            for a in addrs {
                if !a.contains(':') {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{role}: '{a}' is not a URI (mailto:, xmpp:, https:...)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

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
    const CONFIG: &'static [SectionDecl] = &[SectionDecl::of::<ContactAddresses>()];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        match form(&host.section::<ContactAddresses>()) {
            Some(form) => host.add_info_form(form),
            None => tracing::debug!(host = host.domain(), "no contact addresses configured"),
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
