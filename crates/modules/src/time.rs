//! XEP-0202 Entity Time: the server's current UTC time and its offset from UTC.

use rookery_core::{iq_fn, HostBuilder, IqRequest, IqResult, IqScope, Module, ModuleError, Spec};
use rookery_xml::Element;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub const NS: &str = "urn:xmpp:time";

pub struct Time;

impl Module for Time {
    const NAME: &'static str = "time";
    const SPECS: &'static [Spec] = &[Spec {
        id: "XEP-0202",
        title: "Entity Time",
        version: "2.0",
    }];

    fn init(host: &mut HostBuilder<'_>) -> Result<(), ModuleError> {
        // The offset is read once: the `time` crate can only read the local offset safely
        // before other threads exist, and refuses otherwise; UTC is then reported, truthfully
        // paired with a UTC timestamp.
        let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
        host.add_feature(NS);
        host.iq_handler(
            NS,
            IqScope::Host,
            iq_fn(move |req: IqRequest| async move { now(req, offset) }),
        )
    }
}

fn format_offset(o: UtcOffset) -> String {
    let (h, m, _) = o.as_hms();
    let sign = if h < 0 || m < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
}

fn now(req: IqRequest, offset: UtcOffset) -> IqResult {
    req.require_get()?;
    let utc = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let stamp = utc.format(&Rfc3339).map_err(|_| {
        rookery_stanza::StanzaError::new(rookery_stanza::StanzaErrorCondition::InternalServerError)
    })?;
    Ok(Some(
        Element::new("time", NS)
            .with_child(Element::new("tzo", NS).with_text(format_offset(offset)))
            .with_child(Element::new("utc", NS).with_text(stamp)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_format_as_xep_0082() {
        assert_eq!(format_offset(UtcOffset::UTC), "+00:00");
        let o = UtcOffset::from_hms(-5, -30, 0).expect("offset");
        assert_eq!(format_offset(o), "-05:30");
        let o = UtcOffset::from_hms(9, 0, 0).expect("offset");
        assert_eq!(format_offset(o), "+09:00");
    }
}
