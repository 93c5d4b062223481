//! Archive queries (XEP-0313 §4): the query form, XEP-0059 result set management, the
//! result messages and the `<fin/>` answer, and the archive metadata (XEP-0313 §5).

use super::config::ArchiveConfig;
use rookery_core::{IqRequest, Server};
use rookery_stanza::{random_id, BareJid, Jid, StanzaError, StanzaErrorCondition};
use rookery_storage::{
    ArchiveBound, ArchiveEntry, ArchiveFilter, ArchivePage, ArchiveQuery, PageRequest,
    StorageError, WithFilter,
};
use rookery_xml::Element;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{NS, NS_DATA, NS_DELAY, NS_FORWARD, NS_RSM};

/// Why a query was refused, and the stanza error each answer carries.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("field '{0}' is not supported")]
    UnknownField(String),
    #[error("the form is not a submitted urn:xmpp:mam:2 form")]
    WrongForm,
    #[error("field '{field}': {why}")]
    BadValue { field: &'static str, why: String },
    #[error("<set/>: {0}")]
    BadRsm(String),
    #[error("<set/>: <index/> is not supported; page by id")]
    IndexNotSupported,
}

impl From<QueryError> for StanzaError {
    fn from(e: QueryError) -> Self {
        let condition = match &e {
            // XEP-0313 §4.1.5: an unrecognised field is feature-not-implemented.
            QueryError::UnknownField(_) => StanzaErrorCondition::FeatureNotImplemented,
            // XEP-0059 §2.6: an entity that does not support paging by index says so.
            QueryError::IndexNotSupported => StanzaErrorCondition::FeatureNotImplemented,
            QueryError::WrongForm => StanzaErrorCondition::NotAcceptable,
            QueryError::BadValue { .. } | QueryError::BadRsm(_) => StanzaErrorCondition::BadRequest,
        };
        StanzaError::new(condition).with_text(e.to_string())
    }
}

/// A parsed `<query/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    pub query_id: Option<String>,
    pub query: ArchiveQuery,
    /// `<flip-page/>` (#extended): send the page newest first.
    pub flip_page: bool,
}

/// The form a client fetches with an empty `<query/>` get (XEP-0313 §4.1.5).
pub fn form() -> Element {
    let field = |var: &str, kind: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
    };
    Element::new("query", NS).with_child(
        Element::new("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(
                field("FORM_TYPE", "hidden")
                    .with_child(Element::new("value", NS_DATA).with_text(NS)),
            )
            .with_child(field("with", "jid-single"))
            .with_child(field("start", "text-single"))
            .with_child(field("end", "text-single"))
            .with_child(field("before-id", "text-single"))
            .with_child(field("after-id", "text-single"))
            .with_child(
                field("ids", "list-multi").with_child(
                    Element::new("validate", "http://jabber.org/protocol/xdata-validate")
                        .with_attr("datatype", "xs:string")
                        .with_child(Element::new(
                            "open",
                            "http://jabber.org/protocol/xdata-validate",
                        )),
                ),
            ),
    )
}

fn values(field: &Element) -> Vec<String> {
    field
        .children()
        .filter(|c| c.is("value", NS_DATA))
        .map(Element::text)
        .collect()
}

/// The one value of a single-valued field (none or several: bad-request).
fn single(field: &Element, name: &'static str) -> Result<String, QueryError> {
    match values(field).as_slice() {
        [v] => Ok(v.trim().to_owned()),
        _ => Err(QueryError::BadValue {
            field: name,
            why: "needs exactly one <value/>".into(),
        }),
    }
}

/// An XEP-0082 DateTime as microseconds since the epoch.
fn timestamp(field: &Element, name: &'static str) -> Result<i64, QueryError> {
    let text = single(field, name)?;
    let t = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| QueryError::BadValue {
        field: name,
        why: format!("'{text}' is not an XEP-0082 DateTime: {e}"),
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| QueryError::BadValue {
        field: name,
        why: "out of range".into(),
    })
}

fn text_of(el: &Element, name: &str) -> Option<String> {
    el.get_child(name, NS_RSM)
        .map(|c| c.text().trim().to_owned())
}

/// Reads a `<query/>` set. `max` is capped at `archive.max_page_size`; without `<max/>`
/// a page holds `archive.default_page_size` results.
pub fn parse(query: &Element, cfg: &ArchiveConfig) -> Result<ParsedQuery, QueryError> {
    let mut filter = ArchiveFilter::default();
    if let Some(x) = query.get_child("x", NS_DATA) {
        if x.attr("type").is_some_and(|t| t != "submit") {
            return Err(QueryError::WrongForm);
        }
        for field in x.children().filter(|c| c.is("field", NS_DATA)) {
            match field.attr("var").unwrap_or_default() {
                "FORM_TYPE" => {
                    if single(field, "FORM_TYPE")? != NS {
                        return Err(QueryError::WrongForm);
                    }
                }
                "with" => {
                    let text = single(field, "with")?;
                    let jid = Jid::new(&text).map_err(|e| QueryError::BadValue {
                        field: "with",
                        why: format!("'{text}' is not a JID: {e}"),
                    })?;
                    filter.with = Some(WithFilter {
                        bare: jid.to_bare().to_string(),
                        resource: jid.resource().map(|r| r.to_string()),
                    });
                }
                "start" => filter.start_us = Some(timestamp(field, "start")?),
                "end" => filter.end_us = Some(timestamp(field, "end")?),
                "after-id" => filter.after_id = Some(single(field, "after-id")?),
                "before-id" => filter.before_id = Some(single(field, "before-id")?),
                "ids" => {
                    filter.ids = Some(values(field).iter().map(|v| v.trim().to_owned()).collect())
                }
                other => return Err(QueryError::UnknownField(other.to_owned())),
            }
        }
    }
    let mut max = cfg.default_page_size;
    let mut page = PageRequest::First;
    if let Some(set) = query.get_child("set", NS_RSM) {
        if let Some(m) = text_of(set, "max") {
            max = m
                .parse::<usize>()
                .map_err(|_| QueryError::BadRsm(format!("<max/> '{m}' is not a number")))?;
        }
        if set.has_child("index", NS_RSM) {
            // Jumping to an index (XEP-0059 §2.6) is optional; MAM clients page by id.
            return Err(QueryError::IndexNotSupported);
        }
        page = match (text_of(set, "after"), text_of(set, "before")) {
            (Some(_), Some(_)) => {
                // XEP-0313 §9: undefined; before-id and after-id express a range.
                return Err(QueryError::BadRsm(
                    "<after/> and <before/> together are undefined; use after-id and before-id"
                        .into(),
                ));
            }
            (Some(a), None) if a.is_empty() => {
                return Err(QueryError::BadRsm("<after/> needs an id".into()))
            }
            (Some(a), None) => PageRequest::After(a),
            // XEP-0059 §2.5: an empty <before/> asks for the last page.
            (None, Some(b)) if b.is_empty() => PageRequest::Last,
            (None, Some(b)) => PageRequest::Before(b),
            (None, None) => PageRequest::First,
        };
    }
    Ok(ParsedQuery {
        query_id: query.attr("queryid").map(str::to_owned),
        query: ArchiveQuery {
            filter,
            page,
            max: max.min(cfg.max_page_size),
        },
        flip_page: query.has_child("flip-page", NS),
    })
}

/// An XEP-0082 DateTime (UTC, microseconds when not whole seconds).
pub fn stamp(timestamp_us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The result message for one archived message (XEP-0313 §4.2): the stored stanza,
/// forwarded (XEP-0297) with its archiving time (XEP-0203).
fn result_message(
    req: &IqRequest,
    query_id: Option<&str>,
    entry: &ArchiveEntry,
) -> Result<Element, StorageError> {
    Ok(result_for(
        &req.from.to_bare().to_string(),
        &req.from,
        query_id,
        entry,
        stored_message(entry)?,
    ))
}

/// The message an entry holds.
pub fn stored_message(entry: &ArchiveEntry) -> Result<Element, StorageError> {
    rookery_xml::parse_element(&entry.stanza)
        .map_err(|e| StorageError::Corrupt(format!("archived message {}: {e}", entry.id)))
}

/// The result message (§4.2) from archive `archive` to `to` for `entry`, whose message
/// (as the caller wants it shown) is `stored`.
pub fn result_for(
    archive: &str,
    to: &Jid,
    query_id: Option<&str>,
    entry: &ArchiveEntry,
    stored: Element,
) -> Element {
    let mut result = Element::new("result", NS).with_attr("id", entry.id.clone());
    if let Some(q) = query_id {
        result.set_attr("queryid", q);
    }
    result.push_child(
        Element::new("forwarded", NS_FORWARD)
            .with_child(
                Element::new("delay", NS_DELAY).with_attr("stamp", stamp(entry.timestamp_us)),
            )
            .with_child(stored),
    );
    Element::new("message", "jabber:client")
        .with_attr("from", archive)
        .with_attr("to", to.to_string())
        .with_attr("id", random_id(12))
        .with_child(result)
}

/// The `<set/>` describing a page (XEP-0059 §2.2).
fn rsm_set(page: &ArchivePage) -> Element {
    let mut set = Element::new("set", NS_RSM);
    if let (Some(first), Some(last), Some(index)) =
        (page.entries.first(), page.entries.last(), page.first_index)
    {
        set.push_child(
            Element::new("first", NS_RSM)
                .with_attr("index", index.to_string())
                .with_text(first.id.clone()),
        );
        set.push_child(Element::new("last", NS_RSM).with_text(last.id.clone()));
    }
    set.push_child(Element::new("count", NS_RSM).with_text(page.count.to_string()));
    set
}

/// Runs a query: sends the page's results to the querying resource, then answers with
/// `<fin/>` (§4.3). At most one page (`archive.max_page_size` messages) is held at a time.
pub async fn run(req: &IqRequest) -> Result<Element, StanzaError> {
    let parsed = parse(
        &req.payload,
        &req.server.config().section::<ArchiveConfig>(),
    )?;
    let bare = req.from.to_bare();
    let (domain, user) = (
        bare.domain().as_str(),
        bare.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let page = match req
        .server
        .storage()
        .archive
        .query_archive(domain, user, &parsed.query)
        .await
    {
        Ok(p) => p,
        // §4.1.3, §4.3.2: an id that is not in the archive.
        Err(StorageError::NotFound) => {
            return Err(StanzaError::new(StanzaErrorCondition::ItemNotFound)
                .with_text("no message with that id in the archive"))
        }
        Err(e) => {
            tracing::error!(error = %e, "archive query failed");
            return Err(StanzaError::new(StanzaErrorCondition::InternalServerError));
        }
    };
    let session = req.session().ok_or_else(StanzaError::service_unavailable)?;
    let order: Box<dyn Iterator<Item = &ArchiveEntry>> = if parsed.flip_page {
        Box::new(page.entries.iter().rev())
    } else {
        Box::new(page.entries.iter())
    };
    for entry in order {
        let msg = match result_message(req, parsed.query_id.as_deref(), entry) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "unreadable archived message");
                return Err(StanzaError::new(StanzaErrorCondition::InternalServerError));
            }
        };
        // Results go on the session's queue before the IQ answer the core queues after
        // this returns, so the client sees every result before <fin/>.
        if session.deliver(msg).is_err() {
            return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint));
        }
    }
    Ok(fin(&page, parsed.query_id.as_deref()))
}

/// The `<fin/>` that ends the results of a query (§4.3).
pub fn fin(page: &ArchivePage, query_id: Option<&str>) -> Element {
    let mut fin =
        Element::new("fin", NS).with_attr("complete", if page.complete { "true" } else { "false" });
    if let Some(q) = query_id {
        fin.set_attr("queryid", q);
    }
    fin.with_child(rsm_set(page))
}

/// `<metadata/>` (XEP-0313 §5): the first and last archived messages, or nothing.
pub async fn metadata(req: &IqRequest) -> Result<Element, StanzaError> {
    metadata_of(&req.server, &req.from.to_bare()).await
}

/// The `<metadata/>` of one account's archive (also sent in a Bind 2 `<bound/>`).
pub async fn metadata_of(server: &Server, bare: &BareJid) -> Result<Element, StanzaError> {
    let bounds = server
        .storage()
        .archive
        .archive_bounds(
            bare.domain().as_str(),
            bare.node().map(|n| n.as_str()).unwrap_or_default(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "archive metadata failed");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })?;
    Ok(metadata_element(bounds))
}

/// `<metadata/>` for an archive's first and last entries.
pub fn metadata_element(bounds: Option<(ArchiveBound, ArchiveBound)>) -> Element {
    let mut el = Element::new("metadata", NS);
    if let Some((first, last)) = bounds {
        for (name, b) in [("start", first), ("end", last)] {
            el.push_child(
                Element::new(name, NS)
                    .with_attr("id", b.id)
                    .with_attr("timestamp", stamp(b.timestamp_us)),
            );
        }
    }
    el
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ArchiveConfig {
        ArchiveConfig {
            default_page_size: 20,
            max_page_size: 100,
            ..ArchiveConfig::default()
        }
    }

    fn q(xml: &str) -> Result<ParsedQuery, QueryError> {
        let el = rookery_xml::parse_element(xml).expect("xml");
        parse(&el, &cfg())
    }

    fn form(fields: &str) -> String {
        format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='q1'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x></query>"
        )
    }

    #[test]
    fn fields_become_the_filter() {
        let p = q(&form(
            "<field var='with'><value>Juliet@Capulet.lit/Balcony</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54.5+02:00</value></field>\
             <field var='after-id'><value>a</value></field>\
             <field var='before-id'><value>b</value></field>\
             <field var='ids'><value>x</value><value>y</value></field>",
        ))
        .expect("valid");
        let f = &p.query.filter;
        assert_eq!(p.query_id.as_deref(), Some("q1"));
        assert_eq!(
            f.with,
            Some(WithFilter {
                bare: "juliet@capulet.lit".into(),
                resource: Some("Balcony".into())
            })
        );
        assert_eq!(f.start_us, Some(1_275_868_800_000_000));
        assert_eq!(f.end_us, Some(1_278_501_834_500_000));
        assert_eq!(
            (f.after_id.as_deref(), f.before_id.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(f.ids, Some(vec!["x".into(), "y".into()]));
        assert_eq!(
            (p.query.page.clone(), p.query.max, p.flip_page),
            (PageRequest::First, 20, false)
        );
        let bare = q(&form(
            "<field var='with'><value>juliet@capulet.lit</value></field>",
        ))
        .expect("ok");
        assert_eq!(bare.query.filter.with.and_then(|w| w.resource), None);
    }

    #[test]
    fn rsm_pages_and_the_cap() {
        let rsm = |inner: &str| {
            q(&format!(
                "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>{inner}</set><flip-page/></query>"
            ))
        };
        let p = rsm("<max>10</max><before/>").expect("ok");
        assert_eq!(
            (p.query.page, p.query.max, p.flip_page),
            (PageRequest::Last, 10, true)
        );
        assert_eq!(
            rsm("<max>5000</max><after>x</after>").expect("ok").query,
            ArchiveQuery {
                filter: ArchiveFilter::default(),
                page: PageRequest::After("x".into()),
                max: 100,
            }
        );
        assert_eq!(
            rsm("<before>y</before>").expect("ok").query.page,
            PageRequest::Before("y".into())
        );
        for bad in [
            "<max>-1</max>",
            "<max>ten</max>",
            "<after/>",
            "<after>a</after><before>b</before>",
        ] {
            assert!(matches!(rsm(bad), Err(QueryError::BadRsm(_))), "{bad}");
        }
        assert_eq!(rsm("<index>3</index>"), Err(QueryError::IndexNotSupported));
    }

    #[test]
    fn malformed_forms_get_their_errors() {
        let cases = [
            (
                "<field var='start'><value>yesterday</value></field>",
                StanzaErrorCondition::BadRequest,
            ),
            (
                "<field var='with'><value>@@</value></field>",
                StanzaErrorCondition::BadRequest,
            ),
            ("<field var='with'/>", StanzaErrorCondition::BadRequest),
            (
                "<field var='include-groupchat'><value>true</value></field>",
                StanzaErrorCondition::FeatureNotImplemented,
            ),
        ];
        for (field, want) in cases {
            let e = q(&form(field)).expect_err(field);
            assert_eq!(StanzaError::from(e).condition, want, "{field}");
        }
        let wrong_type = "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>";
        assert_eq!(q(wrong_type), Err(QueryError::WrongForm));
        let not_submit =
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'/></query>";
        assert_eq!(q(not_submit), Err(QueryError::WrongForm));
    }

    #[test]
    fn stamps_are_xep_0082() {
        assert_eq!(stamp(1_275_868_800_000_000), "2010-06-07T00:00:00Z");
        assert_eq!(stamp(1_275_868_800_250_000), "2010-06-07T00:00:00.25Z");
    }
}
