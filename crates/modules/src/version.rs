//! XEP-0092 Software Version. The operating system is not disclosed (the XEP makes it
//! optional, and it helps attackers more than users).

use rookery_core::{iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Spec};
use rookery_xml::Element;

pub const NS: &str = "jabber:iq:version";

pub struct Version;

impl Module for Version {
    const NAME: &'static str = "version";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0092",
        title: "Software Version",
        version: "1.1",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Host, iq_fn(version))
    }
}

async fn version(req: IqRequest) -> IqResult {
    req.require_get()?;
    Ok(Some(
        Element::new("query", NS)
            .with_child(Element::new("name", NS).with_text("Rookery"))
            .with_child(Element::new("version", NS).with_text(env!("CARGO_PKG_VERSION"))),
    ))
}
