//! One BOSH session as a state machine without sockets or timers (XEP-0124, XEP-0206).
//!
//! It takes requests (each with a [`Ticket`] naming the HTTP request waiting for its
//! answer), what the client stream wrote, and the time; it gives back the stream events
//! the requests carried, the responses to send, and when it next needs to be woken. The
//! BOSH transport ([`super::BoshTransport`]) drives it from the session's task.
//!
//! What it enforces:
//! * requests are processed in `rid` order; one ahead of a gap waits for the gap to fill,
//!   within the window of `requests` rids (§14.2); a rid beyond the window, or a repeated
//!   one whose response is no longer kept, ends the session with `item-not-found`
//!   (§14.3); the last `requests` responses are kept for repeated requests;
//! * at most `hold` requests are held, the oldest answered when another comes (§11);
//!   output goes to the oldest held request at once, and a request held `wait` seconds is
//!   answered empty;
//! * more than `requests` unanswered requests (one more for a pause or terminate), or an
//!   empty request with none held sooner than `polling` seconds after an empty exchange
//!   answered before its `wait`, is a `policy-violation` (§11, §12);
//! * `pause` up to `maxpause` (§10); `inactivity` seconds with no request held ends the
//!   session (§9.4 of the inactivity rules: the client is gone);
//! * the output buffered while no request is held is bounded (`policy-violation` beyond).

use super::body::{terminal, Condition, Request, ResponseBody};
use bytes::Bytes;
use rookery_xml::{websocket_messages, StreamEvent, StreamHeader, NS_HTTPBIND};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Names the HTTP request an answer is for.
pub type Ticket = u64;

/// The session's terms, as its creation response states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Longest time a request is held, in seconds (the client's, capped).
    pub wait: u64,
    /// Requests held at most (the client's, capped).
    pub hold: usize,
    /// Seconds without a held request before the session is considered gone.
    pub inactivity: u64,
    /// Shortest interval between empty requests with none held.
    pub polling: u64,
    /// Longest pause a client may ask for (0: no pauses).
    pub maxpause: u64,
    /// The client asked for acknowledgements (§9.1).
    pub ack: bool,
    /// Output bytes kept while no request is held.
    pub max_buffer: usize,
    /// The protocol version both speak (`ver`).
    pub ver: String,
}

impl Params {
    /// The window of simultaneous requests (§7.2: `hold` + 1).
    pub fn requests(&self) -> usize {
        self.hold + 1
    }
}

/// Why a session is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client ended it (`type='terminate'`): the stream gets its close.
    Client,
    /// No request for `inactivity` seconds: the client is gone (its stream ends as a
    /// dropped connection).
    Inactive,
    /// The client broke a rule; it was told with this condition.
    Violation(Condition),
    /// The client stream ended (the client was sent, or will be, `type='terminate'`).
    StreamClosed,
}

/// A request waiting for output.
#[derive(Debug)]
struct Held {
    rid: u64,
    ticket: Ticket,
    since: Instant,
    /// The request had nothing for the stream.
    empty: bool,
    /// The session creation (or a restart) request: answered with the stream's header and
    /// features, whenever they come.
    awaits_header: bool,
    creation: bool,
}

/// One BOSH session.
#[derive(Debug)]
pub struct Session {
    params: Params,
    sid: String,
    /// The rid that comes next in order.
    next_rid: u64,
    /// Requests received ahead of a gap.
    pending: BTreeMap<u64, (Ticket, Request, Instant)>,
    held: VecDeque<Held>,
    /// The last responses, for repeated requests (§14.3).
    cache: VecDeque<(u64, Bytes)>,
    /// Output with no request to carry it yet.
    buffer: Vec<u8>,
    /// What the requests carried for the stream.
    events: Vec<StreamEvent>,
    event_bytes: usize,
    /// Answers to send.
    responses: Vec<(Ticket, Bytes)>,
    /// When the last response went out (inactivity counts from it).
    last_answer: Instant,
    /// The inactivity period a pause asked for, until the next request.
    paused: Option<u64>,
    /// The arrival of the previous request, if it was empty and answered empty (§12).
    last_empty: Option<Instant>,
    /// The stream's id and domain, from its header (`authid`, `from`).
    stream_id: Option<String>,
    from: Option<String>,
    lang: Option<String>,
    /// The stream asked for a restart (after SASL): the next restart request is allowed.
    restart_expected: bool,
    /// The final body of a stream the server ended, not yet delivered.
    final_body: Option<Bytes>,
    end: Option<End>,
}

impl Session {
    /// A session from its creation request (already checked: `to` served, limits).
    pub fn new(params: Params, sid: String, ticket: Ticket, req: Request, now: Instant) -> Self {
        let mut s = Session {
            params,
            sid,
            next_rid: req.rid + 1,
            pending: BTreeMap::new(),
            held: VecDeque::new(),
            cache: VecDeque::new(),
            buffer: Vec::new(),
            events: Vec::new(),
            event_bytes: req.bytes,
            responses: Vec::new(),
            last_answer: now,
            paused: None,
            last_empty: None,
            stream_id: None,
            from: req.to.clone(),
            lang: req.lang.clone(),
            restart_expected: false,
            final_body: None,
            end: None,
        };
        s.events.push(s.header_event(&req));
        s.held.push_back(Held {
            rid: req.rid,
            ticket,
            since: now,
            empty: true,
            awaits_header: true,
            creation: true,
        });
        s
    }

    pub fn sid(&self) -> &str {
        &self.sid
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Why the session is over, if it is.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// The stream events the requests carried, appended to `events`; the bytes they came
    /// in (for the stream's input rate).
    pub fn take_events(&mut self, events: &mut Vec<StreamEvent>) -> usize {
        events.append(&mut self.events);
        std::mem::take(&mut self.event_bytes)
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The responses to send now.
    pub fn take_responses(&mut self) -> std::vec::Drain<'_, (Ticket, Bytes)> {
        self.responses.drain(..)
    }

    /// Output bytes waiting for a request.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The final body of a stream the server ended, for the next request to get.
    pub fn take_final_body(&mut self) -> Option<Bytes> {
        self.final_body.take()
    }

    /// A request for this session.
    pub fn on_request(&mut self, ticket: Ticket, req: Request, now: Instant) {
        if self.end.is_some() {
            // The session no longer exists for the client (§9.4), unless it still has to
            // be told why it ended.
            let body = self
                .final_body
                .take()
                .unwrap_or_else(|| terminal(Condition::ItemNotFound).into());
            self.responses.push((ticket, body));
            return;
        }
        let rid = req.rid;
        let requests = self.params.requests() as u64;
        if rid < self.next_rid {
            return self.repeated(ticket, rid);
        }
        // §14.2: the window is the `requests` rids after the last one in order.
        if rid - (self.next_rid - 1) > requests {
            return self.fail(ticket, Condition::ItemNotFound);
        }
        if let Some((old, _, _)) = self.pending.get_mut(&rid) {
            // The same request again before its turn: the new one will get the answer.
            let old = std::mem::replace(old, ticket);
            self.responses.push((old, recoverable()));
            return;
        }
        // §11: the client may have `requests` unanswered requests, and one more to pause
        // or terminate.
        let unanswered = self.held.len() + self.pending.len() + 1;
        let extra = req.pause.is_some() || req.terminate;
        if unanswered > self.params.requests() + usize::from(extra) {
            return self.fail(ticket, Condition::PolicyViolation);
        }
        self.pending.insert(rid, (ticket, req, now));
        while let Some((ticket, req, arrived)) = self.pending.remove(&self.next_rid) {
            self.next_rid += 1;
            self.process(ticket, req, arrived, now);
            if self.end.is_some() {
                return;
            }
        }
        self.deliver(now);
    }

    /// §14.3: a rid already received.
    fn repeated(&mut self, ticket: Ticket, rid: u64) {
        if let Some(h) = self.held.iter_mut().find(|h| h.rid == rid) {
            // Still held: the earlier connection is answered with a recoverable condition
            // and the answer goes to this one.
            let old = std::mem::replace(&mut h.ticket, ticket);
            self.responses.push((old, recoverable()));
            return;
        }
        match self.cache.iter().find(|(r, _)| *r == rid) {
            Some((_, body)) => {
                let body = body.clone();
                self.responses.push((ticket, body));
            }
            None => self.fail(ticket, Condition::ItemNotFound),
        }
    }

    /// A request whose turn it is.
    fn process(&mut self, ticket: Ticket, mut req: Request, arrived: Instant, now: Instant) {
        // §10: the normal inactivity period is back with the next request.
        self.paused = None;
        let empty = req.is_empty();
        if !req.payloads.is_empty() {
            self.event_bytes += req.bytes;
        }
        let payloads = std::mem::take(&mut req.payloads)
            .into_iter()
            .map(StreamEvent::Stanza);
        if let Some(pause) = req.pause {
            if self.params.maxpause == 0 || pause > self.params.maxpause {
                return self.fail(ticket, Condition::PolicyViolation);
            }
            self.events.extend(payloads);
            // Every held request is answered now, the pause request itself empty (its
            // answer carries no payloads and is not kept for repeats).
            while !self.held.is_empty() {
                self.answer_oldest(now);
            }
            self.responses
                .push((ticket, ResponseBody::new().finish(b"").into()));
            self.last_answer = now;
            self.paused = Some(pause);
            return;
        }
        if req.terminate {
            // §13: the payloads go to the stream, then its end; held requests are answered
            // empty, the terminate request with `type='terminate'`.
            self.events.extend(payloads);
            self.events.push(StreamEvent::Close);
            for h in std::mem::take(&mut self.held) {
                self.responses
                    .push((h.ticket, ResponseBody::new().finish(b"").into()));
            }
            self.responses.push((
                ticket,
                ResponseBody::new().terminate(None).finish(b"").into(),
            ));
            self.buffer = Vec::new();
            self.end = Some(End::Client);
            return;
        }
        if req.restart {
            // XEP-0206 §5: only after the stream asked for it (SASL success).
            if !self.restart_expected {
                return self.fail(ticket, Condition::BadRequest);
            }
            self.restart_expected = false;
            if req.lang.is_some() {
                self.lang = req.lang.clone();
            }
            let header = self.header_event(&req);
            self.events.push(header);
        } else {
            // §12: an empty request with none held, too soon after an empty exchange.
            let polling = Duration::from_secs(self.params.polling);
            if empty
                && self.held.is_empty()
                && self
                    .last_empty
                    .is_some_and(|t| arrived.saturating_duration_since(t) < polling)
            {
                return self.fail(ticket, Condition::PolicyViolation);
            }
            self.events.extend(payloads);
        }
        self.held.push_back(Held {
            rid: req.rid,
            ticket,
            since: arrived,
            empty,
            awaits_header: req.restart,
            creation: false,
        });
        // §11: no more than `hold` held; the oldest is answered (a request waiting for the
        // stream's header excepted: it is answered as soon as the header comes).
        while self.held.len() > self.params.hold
            && self.held.front().is_some_and(|h| !h.awaits_header)
        {
            self.answer_oldest(now);
        }
    }

    /// The stream restarts (after SASL success, RFC 6120 §6.4.6): anything the client sent
    /// after the element that ended the old stream is discarded, and a restart request
    /// (XEP-0206 §5) is expected.
    pub fn restart(&mut self) {
        self.events.clear();
        self.restart_expected = true;
    }

    /// What the client stream wrote (XEP-0206 framing, see [`rookery_xml::Framing::Bosh`]).
    /// `Err`: the output would exceed the buffer; the session is over with
    /// `policy-violation`.
    pub fn on_output(&mut self, bytes: &[u8], now: Instant) -> Result<(), End> {
        if let Some(end) = self.end {
            // After a client's terminate or a violation nothing more is delivered.
            return match end {
                End::StreamClosed | End::Client => Ok(()),
                e => Err(e),
            };
        }
        let mut closing: Option<(Condition, Vec<u8>)> = None;
        for chunk in websocket_messages(bytes) {
            if chunk.starts_with(b"<open ") {
                // The stream's header: `authid` and `from` of the creation response.
                if let Ok(el) = parse(chunk) {
                    self.stream_id = el.attr("id").map(str::to_owned);
                    if let Some(f) = el.attr("from") {
                        self.from = Some(f.to_owned());
                    }
                }
                if let Some(h) = self.held.iter_mut().find(|h| h.awaits_header) {
                    h.awaits_header = false;
                }
            } else if chunk.starts_with(b"<close ") {
                let uri = parse(chunk)
                    .ok()
                    .and_then(|el| el.attr("see-other-uri").map(str::to_owned));
                closing.get_or_insert_with(|| match uri {
                    // §17.2 see-other-uri: the URI in a <uri/> child.
                    Some(uri) => (
                        Condition::SeeOtherUri,
                        rookery_xml::Element::new("uri", NS_HTTPBIND)
                            .with_text(uri)
                            .to_xml("")
                            .into_bytes(),
                    ),
                    None => (Condition::OtherRequest, Vec::new()),
                });
            } else if chunk.starts_with(b"<stream:error") {
                // XEP-0206 §7: a stream error ends the session, wrapped in the terminate
                // body; a few have a binding condition of their own.
                let condition = parse(chunk)
                    .ok()
                    .and_then(|el| el.children().next().map(|c| c.name().to_owned()));
                let condition = match condition.as_deref() {
                    Some("system-shutdown") => Condition::SystemShutdown,
                    Some("host-unknown") => Condition::HostUnknown,
                    _ => Condition::RemoteStreamError,
                };
                closing = Some((condition, chunk.to_vec()));
            } else {
                self.buffer.extend_from_slice(chunk);
            }
        }
        if let Some((condition, extra)) = closing {
            self.server_end(condition, &extra, now);
            return Ok(());
        }
        if self.held.is_empty() && self.buffer.len() > self.params.max_buffer {
            self.buffer = Vec::new();
            self.server_end(Condition::PolicyViolation, b"", now);
            self.end = Some(End::Violation(Condition::PolicyViolation));
            return Err(End::Violation(Condition::PolicyViolation));
        }
        self.deliver(now);
        Ok(())
    }

    /// The stream ended: the oldest held request gets `type='terminate'` with what was
    /// left (or the next request, if none is held), the others an empty body.
    fn server_end(&mut self, condition: Condition, extra: &[u8], now: Instant) {
        let mut payload = std::mem::take(&mut self.buffer);
        payload.extend_from_slice(extra);
        // A plain close (the client's own `</stream>`-equivalent answered) has no
        // condition; anything else says why.
        let condition = (condition != Condition::OtherRequest).then_some(condition);
        let body: Bytes = ResponseBody::new()
            .xmpp_prefixes()
            .terminate(condition)
            .finish(&payload)
            .into();
        let mut held = std::mem::take(&mut self.held).into_iter();
        match held.next() {
            Some(h) => self.responses.push((h.ticket, body)),
            None => self.final_body = Some(body),
        }
        for h in held {
            self.responses
                .push((h.ticket, ResponseBody::new().finish(b"").into()));
        }
        for (_, (ticket, _, _)) in std::mem::take(&mut self.pending) {
            self.responses
                .push((ticket, terminal(Condition::ItemNotFound).into()));
        }
        self.last_answer = now;
        self.end = Some(End::StreamClosed);
    }

    /// The time has come: held requests past `wait` are answered empty; a session with no
    /// request held past its inactivity period is over.
    pub fn on_timer(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        let wait = Duration::from_secs(self.params.wait);
        while self
            .held
            .front()
            .is_some_and(|h| !h.awaits_header && h.since + wait <= now)
        {
            self.answer_oldest(now);
            // A request held for its whole wait paced the client by itself: the next one
            // may come at once, whatever `polling` says (§12 is about requests answered
            // at once).
            self.last_empty = None;
        }
        if let Some(at) = self.inactive_at() {
            if at <= now {
                self.end = Some(End::Inactive);
            }
        }
    }

    /// When [`on_timer`](Self::on_timer) has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let wait = Duration::from_secs(self.params.wait);
        let answer = self
            .held
            .front()
            .filter(|h| !h.awaits_header)
            .map(|h| h.since + wait);
        match (answer, self.inactive_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn inactive_at(&self) -> Option<Instant> {
        if !self.held.is_empty() || !self.pending.is_empty() {
            return None;
        }
        let period = self.paused.unwrap_or(self.params.inactivity);
        Some(self.last_answer + Duration::from_secs(period))
    }

    /// Output goes to the oldest held request at once (§7: "as soon as possible").
    fn deliver(&mut self, now: Instant) {
        if self.buffer.is_empty() {
            return;
        }
        if self.held.front().is_some_and(|h| !h.awaits_header) {
            self.answer_oldest(now);
        }
    }

    /// Answers the oldest held request with the output buffered.
    fn answer_oldest(&mut self, now: Instant) {
        let Some(h) = self.held.pop_front() else {
            return;
        };
        let payload = std::mem::take(&mut self.buffer);
        let mut body = ResponseBody::new();
        if h.creation {
            body = self.creation_attrs(body, h.rid);
        } else if self.params.ack && self.next_rid - 1 != h.rid {
            // §9.1: the highest rid received in order, when it is not this one.
            body = body.num("ack", self.next_rid - 1);
        }
        let body: Bytes = body.finish(&payload).into();
        self.last_empty = (h.empty && payload.is_empty()).then_some(h.since);
        self.cache.push_back((h.rid, body.clone()));
        while self.cache.len() > self.params.requests() {
            self.cache.pop_front();
        }
        self.responses.push((h.ticket, body));
        self.last_answer = now;
    }

    /// §7.2 and XEP-0206 §3: the session creation response's attributes.
    fn creation_attrs(&self, body: ResponseBody, rid: u64) -> ResponseBody {
        let p = &self.params;
        let mut body = body
            .xmpp_prefixes()
            .attr("sid", &self.sid)
            .num("wait", p.wait)
            .num("requests", p.requests() as u64)
            .num("hold", p.hold as u64)
            .num("inactivity", p.inactivity)
            .num("polling", p.polling);
        if p.maxpause > 0 {
            body = body.num("maxpause", p.maxpause);
        }
        body = body.attr("ver", &p.ver);
        if let Some(from) = &self.from {
            body = body.attr("from", from);
        }
        if p.ack {
            body = body.num("ack", rid);
        }
        if let Some(id) = &self.stream_id {
            body = body.attr("authid", id);
        }
        body.attr("xmpp:version", "1.0")
            .attr("xmpp:restartlogic", "true")
    }

    /// The stream header a creation or restart request stands for.
    fn header_event(&self, req: &Request) -> StreamEvent {
        let mut attrs = Vec::new();
        if let Some(to) = req.to.as_ref().or(self.from.as_ref()) {
            attrs.push(("to".to_owned(), to.clone()));
        }
        if let Some(lang) = &self.lang {
            attrs.push(("xml:lang".to_owned(), lang.clone()));
        }
        // The version the creation request gave (XEP-0206 §3), the same after a restart.
        let version = if req.restart {
            Some("1.0".to_owned())
        } else {
            req.xmpp_version.clone()
        };
        if let Some(v) = version {
            attrs.push(("version".to_owned(), v));
        }
        StreamEvent::Open(StreamHeader {
            name: "body".to_owned(),
            ns: NS_HTTPBIND.to_owned(),
            default_ns: None,
            attrs,
        })
    }

    /// Ends the session for a client's fault: this request and every other waiting one get
    /// the terminal condition.
    fn fail(&mut self, ticket: Ticket, condition: Condition) {
        let body: Bytes = terminal(condition).into();
        for h in std::mem::take(&mut self.held) {
            self.responses.push((h.ticket, body.clone()));
        }
        for (_, (t, _, _)) in std::mem::take(&mut self.pending) {
            self.responses.push((t, body.clone()));
        }
        self.responses.push((ticket, body));
        self.buffer = Vec::new();
        self.end = Some(End::Violation(condition));
    }
}

/// §17.3: a recoverable binding condition (the request is answered, the session goes on).
fn recoverable() -> Bytes {
    ResponseBody::new().attr("type", "error").finish(b"").into()
}

fn parse(chunk: &[u8]) -> Result<rookery_xml::Element, rookery_xml::XmlError> {
    let text = std::str::from_utf8(chunk).map_err(|_| rookery_xml::XmlError::BadEncoding)?;
    rookery_xml::parse_element(text)
}

#[cfg(test)]
mod tests;
