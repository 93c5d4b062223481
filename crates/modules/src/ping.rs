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
        host.iq_handler(NS, IqScope::Host, iq_fn(pong))?;
        // A ping without `to` is addressed to the sender's own account (RFC 6120 §10.3.3),
        // which the server answers; another account's bare JID is not answered for, so a
        // ping can't tell whether an account exists.
        host.iq_handler(
            NS,
            IqScope::Account,
            iq_fn(|req: IqRequest| async move {
                if req.to.to_bare() != req.from.to_bare() {
                    return Err(rookery_stanza::StanzaError::service_unavailable());
                }
                pong(req).await
            }),
        )
    }
}

async fn pong(req: IqRequest) -> IqResult {
    req.require_get()?;
    Ok(None)
}
