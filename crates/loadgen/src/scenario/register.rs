//! Account creation by in-band registration (XEP-0077), for servers whose bench configuration
//! allows it: after TLS, `jabber:iq:register` sets for accounts FIRST..FIRST+COUNT, several
//! per stream. An account that already exists (`conflict`) counts as present, not as an error.

use super::Report;
use crate::client::{ClientError, Conn, Target};
use crate::scan;
use crate::stats::{self, Errors};
use clap::Args;
use serde_json::json;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    /// Accounts to create.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// First account number.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Streams registering at once.
    #[arg(long, default_value_t = 20)]
    pub concurrency: usize,
    /// Registrations sent on one stream before it is closed.
    #[arg(long, default_value_t = 20)]
    pub per_connection: u64,
}

#[derive(Default)]
struct Tally {
    created: u64,
    existed: u64,
    errors: Errors,
}

async fn register_batch(
    t: &Target,
    accounts: &[u64],
    tally: &mut Tally,
) -> Result<(), ClientError> {
    let mut conn = Conn::connect_tls(t, accounts[0]).await?;
    for &n in accounts {
        let id = format!("reg{n}");
        let _ = write!(
            conn.out,
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{}</username>\
             <password>{}</password></query></iq>",
            scan::escape(&t.user(n)),
            scan::escape(&t.password(n))
        );
        conn.flush().await?;
        match conn.wait_iq(&id, t.step_timeout).await {
            Ok(_) => tally.created += 1,
            Err(e) if e.kind == "iq-error" && e.detail.ends_with("conflict") => tally.existed += 1,
            Err(e) if e.kind == "iq-error" => tally.errors.add(e.kind, e.detail),
            Err(e) => {
                conn.close(super::CLOSE_WAIT).await;
                return Err(e);
            }
        }
    }
    conn.close(super::CLOSE_WAIT).await;
    Ok(())
}

pub async fn run(t: Arc<Target>, a: &RegisterArgs) -> Report {
    let params = json!({
        "count": a.count, "first": a.first, "concurrency": a.concurrency,
        "per_connection": a.per_connection,
    });
    let per = a.per_connection.max(1);
    let batches = a.count.div_ceil(per);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (t, next, first, count) = (t.clone(), next.clone(), a.first, a.count);
        set.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let lo = first + b * per;
                let hi = (lo + per).min(first + count);
                let accounts: Vec<u64> = (lo..hi).collect();
                if let Err(e) = register_batch(&t, &accounts, &mut tally).await {
                    tally
                        .errors
                        .add(e.kind, format!("accounts {lo}..{hi}: {}", e.detail));
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(t) => {
                all.created += t.created;
                all.existed += t.existed;
                all.errors.merge(t.errors);
            }
            Err(e) => all.errors.add("task", e.to_string()),
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let present = all.created + all.existed;
    Report {
        params,
        results: json!({
            "created": all.created,
            "existed": all.existed,
            "wall_s": stats::round3(wall),
            "per_s": stats::round3(if wall > 0.0 { all.created as f64 / wall } else { 0.0 }),
        }),
        server: serde_json::Value::Null,
        generator: serde_json::Value::Null,
        ok: present == a.count,
        summary: format!(
            "{} created, {} already present of {} in {wall:.1}s",
            all.created, all.existed, a.count
        ),
        errors: all.errors,
    }
}
