//! XEP-0199 XMPP Ping: the server answers pings addressed to it.

use rookery_core::{iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Spec};

pub const NS: &str = "urn:xmpp:ping";

pub struct Ping;

impl Module for Ping {
    const NAME: &'static str = "ping";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0199",
        title: "XMPP Ping",
        version: "2.0.1",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        host.add_feature(NS);
        host.iq_handler(NS, IqScope::Host, iq_fn(pong))
    }
}

async fn pong(req: IqRequest) -> IqResult {
    req.require_get()?;
    Ok(None)
}
