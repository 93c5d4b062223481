//! Scenarios designed but not implemented yet. Their parameters are fixed here so scripts can
//! be written against them; running one reports "not implemented" (exit status 1).
//!
//! - `muc`: ROOMS rooms with OCCUPANTS occupants each; every occupant joins, then MESSAGES
//!   groupchat messages per second are spread over the rooms for DURATION seconds; reports
//!   join time, delivered messages per second (each message reaches every occupant) and
//!   latency percentiles as `rate` does.

use super::Report;
use crate::stats::Errors;
use clap::Args;
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct MucArgs {
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    #[arg(long, default_value_t = 50)]
    pub occupants: u64,
    /// Aggregate groupchat messages per second.
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    #[arg(long, default_value_t = 0)]
    pub first: u64,
}

fn not_implemented(params: serde_json::Value, name: &str) -> Report {
    let mut errors = Errors::default();
    errors.add(
        "not-implemented",
        format!("the {name} scenario is not implemented yet"),
    );
    Report {
        params,
        results: json!({ "implemented": false }),
        server: serde_json::Value::Null,
        generator: serde_json::Value::Null,
        errors,
        ok: false,
        summary: format!("{name}: not implemented yet"),
    }
}

pub fn muc(a: &MucArgs) -> Report {
    not_implemented(
        json!({ "rooms": a.rooms, "occupants": a.occupants, "messages_per_s": a.messages,
                "duration_s": a.duration, "first": a.first }),
        "muc",
    )
}
