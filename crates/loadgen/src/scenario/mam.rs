//! Message archive queries (XEP-0313): account FIRST sends MESSAGES chat messages to account
//! FIRST+1 over the wire (both online; the receiver reads them all), so the sender's archive
//! holds at least MESSAGES messages; then the sender queries its archive QUERIES times for
//! each of four kinds of page and the run reports the latency percentiles of each:
//!
//! - `last`: the newest page (an empty RSM `<before/>`);
//! - `start`: a page from the middle, by a `start` time taken while filling;
//! - `with`: the newest page of the conversation with the receiver (`with` filter);
//! - `after`: the page after an id picked from the middle of the archive (RSM `<after/>`).
//!
//! Every answer is checked: a full page of results, each carrying the query id, and a
//! `<fin/>` whose count covers what was sent. Filling runs in chunks of FILL_CHUNK messages,
//! each confirmed by a ping answered after the server processed (and archived) them.

use super::{login_many, Mark, Report, CLOSE_WAIT};
use crate::client::{Conn, ConnReader, LoginOpts, Target};
use crate::scan::{self, Event};
use crate::stats;
use clap::Args;
use serde_json::json;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";

#[derive(Args, Debug, Clone)]
pub struct MamArgs {
    /// Messages sent (and archived) before querying.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// The sender's account number; the receiver is FIRST+1.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Queries of each kind.
    #[arg(long, default_value_t = 200)]
    pub queries: u64,
    /// Results per page (`<max/>`).
    #[arg(long, default_value_t = 50)]
    pub page_size: u64,
    /// Messages sent between two confirmations while filling.
    #[arg(long, default_value_t = 500)]
    pub fill_chunk: u64,
    /// Longest time for filling the archive, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub fill_timeout: u64,
}

/// XEP-0082 DateTime (UTC, microseconds) of a Unix time in microseconds.
fn xep82(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let micros = unix_us % 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The receiver: reads (and discards) until it has seen `want` messages or the stream ends.
async fn receive(
    mut rd: ConnReader,
    want: u64,
    got: Arc<AtomicU64>,
    deadline: Instant,
) -> ConnReader {
    loop {
        loop {
            match rd.scanner.next_event() {
                Ok(Some(Event::Element(r))) => {
                    if scan::root_name(rd.scanner.slice(r)) == b"message" {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(Event::StreamOpen(_))) => {}
                Ok(Some(Event::StreamClose)) | Err(_) => return rd,
                Ok(None) => break,
            }
        }
        if got.load(Ordering::Relaxed) >= want {
            return rd;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read_some()).await {
            Ok(Ok(_)) => {}
            _ => return rd,
        }
    }
}

/// What one query returned.
struct Page {
    results: u64,
    count: Option<u64>,
    complete: bool,
    first_id: Option<String>,
}

/// Sends one archive query and reads its results and answer.
async fn query(
    conn: &mut Conn,
    n: u64,
    form: &str,
    rsm: &str,
    timeout: Duration,
) -> Result<Page, String> {
    let id = format!("mq{n}");
    let _ = write!(
        conn.out,
        "<iq type='set' id='{id}'><query xmlns='{NS_MAM}' queryid='{id}'>\
         <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>{NS_MAM}</value></field>{form}</x><set xmlns='{NS_RSM}'>{rsm}</set></query></iq>"
    );
    conn.flush().await.map_err(|e| e.detail)?;
    let until = Instant::now() + timeout;
    let mut page = Page {
        results: 0,
        count: None,
        complete: false,
        first_id: None,
    };
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let el = conn.next_element(left).await.map_err(|e| e.detail)?;
        match scan::root_name(&el) {
            b"message" => {
                if let Some(result) = scan::child_tag(&el, b"result") {
                    if scan::tag_attr(result, b"queryid") != Some(id.as_bytes()) {
                        return Err("a result without our query id".into());
                    }
                    if page.first_id.is_none() {
                        page.first_id = scan::tag_attr(result, b"id")
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                    }
                    page.results += 1;
                }
            }
            b"iq" if scan::attr(&el, b"id") == Some(id.as_bytes()) => {
                if scan::attr(&el, b"type") != Some(b"result") {
                    return Err(format!("query refused: {}", String::from_utf8_lossy(&el)));
                }
                let fin = scan::child_tag(&el, b"fin").ok_or("no <fin/>")?;
                page.complete = scan::tag_attr(fin, b"complete") == Some(b"true");
                page.count = scan::child_text(&el, b"count")
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| c.parse().ok());
                return Ok(page);
            }
            b"iq" => conn.answer_server_iq(&el),
            _ => {}
        }
    }
}

pub async fn run(t: Arc<Target>, a: &MamArgs, server_pid: Option<u32>) -> Report {
    let params = json!({
        "messages": a.messages, "first": a.first, "queries": a.queries,
        "page_size": a.page_size, "fill_chunk": a.fill_chunk,
    });
    let (sessions, errors) = login_many(
        &t,
        vec![a.first, a.first + 1],
        |i| format!("mam{i}"),
        2,
        LoginOpts::default(),
    )
    .await;
    let mut sessions = sessions.into_iter();
    let (Some(Some((mut sender, _))), Some(Some((receiver, _)))) =
        (sessions.next(), sessions.next())
    else {
        return Report::failed(params, errors, "mam: login failed");
    };
    let mut errors = errors;
    let receiver_jid = t.bare_jid(a.first + 1);

    // Fill.
    let fill_started = Instant::now();
    let deadline = fill_started + Duration::from_secs(a.fill_timeout);
    let got = Arc::new(AtomicU64::new(0));
    let (rd, wr) = receiver.split();
    let reader = tokio::spawn(receive(rd, a.messages, got.clone(), deadline));
    let chunk = a.fill_chunk.max(1);
    let (mut sent, mut chunk_no) = (0u64, 0u64);
    let mut start_times = Vec::new();
    while sent < a.messages {
        let n = chunk.min(a.messages - sent);
        // A time just before this chunk: a `start` there begins a page inside the archive.
        start_times.push(unix_us());
        for i in sent..sent + n {
            let _ = write!(
                sender.out,
                "<message to='{receiver_jid}' type='chat' id='a{i}'><body>archived message {i}</body></message>"
            );
        }
        let _ = write!(
            sender.out,
            "<iq type='get' id='fill{chunk_no}' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            t.domain
        );
        if let Err(e) = sender.flush().await {
            errors.add(e.kind, e.detail);
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = sender.wait_iq(&format!("fill{chunk_no}"), left).await {
            errors.add(e.kind, e.detail);
            break;
        }
        sent += n;
        chunk_no += 1;
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    let reader = reader.await;
    let received = got.load(Ordering::Relaxed);
    if received < sent {
        errors.add(
            "lost",
            format!("{} of {sent} messages not received", sent - received),
        );
    }
    match reader {
        Ok(rd) => wr.close(rd, CLOSE_WAIT).await,
        Err(e) => errors.add("task", e.to_string()),
    }
    if sent < a.messages {
        return Report::failed(
            params,
            errors,
            format!("mam: filling stopped after {sent} messages"),
        );
    }

    // Query.
    let timeout = t.step_timeout;
    let max = a.page_size;
    // Ids from the middle half of the archive, for the `after` queries: the first result of
    // pages starting at times spread over it.
    let mid: Vec<u64> = if start_times.len() >= 4 {
        start_times[start_times.len() / 4..start_times.len() * 3 / 4].to_vec()
    } else {
        start_times.clone()
    };
    let mut ids = Vec::new();
    for (i, ts) in mid.iter().enumerate().take(32) {
        let form = format!("<field var='start'><value>{}</value></field>", xep82(*ts));
        match query(
            &mut sender,
            1_000_000 + i as u64,
            &form,
            "<max>1</max>",
            timeout,
        )
        .await
        {
            Ok(Page {
                first_id: Some(id), ..
            }) => ids.push(id),
            Ok(_) => errors.add("mam", "a start page was empty"),
            Err(e) => errors.add("mam", e),
        }
    }
    if ids.is_empty() {
        return Report::failed(params, errors, "mam: no ids to page after");
    }
    let kinds = ["last", "start", "with", "after"];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); kinds.len()];
    let mut archive_count = None;
    let before = Mark::now(server_pid);
    let mut qn = 0u64;
    for round in 0..a.queries {
        for (k, kind) in kinds.iter().enumerate() {
            let (form, rsm) = match *kind {
                "last" => (String::new(), format!("<max>{max}</max><before/>")),
                "start" => {
                    let ts = mid[round as usize % mid.len()];
                    (
                        format!("<field var='start'><value>{}</value></field>", xep82(ts)),
                        format!("<max>{max}</max>"),
                    )
                }
                "with" => (
                    format!("<field var='with'><value>{receiver_jid}</value></field>"),
                    format!("<max>{max}</max><before/>"),
                ),
                _ => (
                    String::new(),
                    format!(
                        "<max>{max}</max><after>{}</after>",
                        ids[round as usize % ids.len()]
                    ),
                ),
            };
            qn += 1;
            let started = Instant::now();
            match query(&mut sender, qn, &form, &rsm, timeout).await {
                Ok(page) => {
                    latencies[k].push(started.elapsed().as_micros() as u64);
                    if page.results != max {
                        errors.add(
                            "mam",
                            format!("{kind}: {} results, expected {max}", page.results),
                        );
                    }
                    // Paging backwards from the end, `complete` means the start was reached.
                    let whole = page.count.is_some_and(|c| c <= max);
                    if (*kind == "last" || *kind == "with") && page.complete != whole {
                        errors.add(
                            "mam",
                            format!("{kind}: complete={} on the last page", page.complete),
                        );
                    }
                    // Every kind but `start` (whose set begins mid-archive) counts the
                    // whole archive.
                    match page.count {
                        _ if *kind == "start" => {}
                        Some(c) if c >= a.messages => archive_count = Some(c),
                        other => {
                            errors.add("mam", format!("{kind}: count {other:?} < {}", a.messages))
                        }
                    }
                }
                Err(e) => errors.add("mam", format!("{kind}: {e}")),
            }
        }
    }
    let after = Mark::now(server_pid);
    let (server, generator) = before.until(&after);
    let total: usize = latencies.iter().map(Vec::len).sum();
    let query_s = after.at.duration_since(before.at).as_secs_f64();
    let mut per_kind = serde_json::Map::new();
    let mut summary = format!(
        "filled {sent} messages in {fill_s:.1} s ({:.0} msg/s); {total} queries",
        sent as f64 / fill_s.max(1e-9)
    );
    for (k, kind) in kinds.iter().enumerate() {
        let pct = stats::percentiles_ms(&mut latencies[k]);
        summary.push_str(&format!(
            "; {kind} p50 {} ms p99 {} ms",
            pct["p50"], pct["p99"]
        ));
        per_kind.insert((*kind).to_owned(), pct);
    }
    sender.close(CLOSE_WAIT).await;
    let ok = errors.total() == 0;
    Report {
        params,
        results: json!({
            "filled": sent,
            "received": received,
            "fill_s": stats::round3(fill_s),
            "fill_msg_per_s": stats::round3(sent as f64 / fill_s.max(1e-9)),
            "archive_count": archive_count,
            "queries": total,
            "queries_per_s": stats::round3(total as f64 / query_s.max(1e-9)),
            "latency_ms": per_kind,
        }),
        server,
        generator,
        errors,
        ok,
        summary,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn xep82_stamps() {
        assert_eq!(super::xep82(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::xep82(1_275_868_800_250_000),
            "2010-06-07T00:00:00.250000Z"
        );
        assert_eq!(
            super::xep82(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
    }
}
