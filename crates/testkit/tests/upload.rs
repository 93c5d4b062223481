//! HTTP File Upload (XEP-0363) end to end: slots requested over XMPP, files PUT and fetched
//! over the HTTPS listener with hyper's client, trusting the generated certificate.

use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rookery_testkit::{RawClient, TestServer, DOMAIN, TIMEOUT};
use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const NS: &str = "urn:xmpp:http:upload:0";

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

async fn start(host_extra: &str) -> TestServer {
    let t = TestServer::start_with_host(
        "",
        &format!(
            "[host.upload]\nmax_file_size = 1000\nquota_per_user_per_day = 1500\n\
             denied_content_types = ['application/x-evil']\n{host_extra}"
        ),
    )
    .await;
    t.add_user("alice", "pw").await;
    t
}

async fn login(t: &TestServer) -> RawClient {
    let mut c = RawClient::direct_tls(t.direct_tls, t.client_tls(&[&TLS13])).await;
    c.open_stream().await;
    c.login_plain("alice", "pw", "r").await;
    c
}

/// Asks for a slot; the answer's text.
async fn request(c: &mut RawClient, attrs: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='slot' to='upload.{DOMAIN}'><request xmlns='{NS}' {attrs}/></iq>"
    ))
    .await;
    c.read_until("</iq>").await
}

/// The (put, get) URLs of a slot answer.
fn urls(answer: &str) -> (String, String) {
    let put = between(answer, "<put url=\"", "\"").expect("put url");
    let get = between(answer, "<get url=\"", "\"").expect("get url");
    (put.replace("&amp;", "&"), get.replace("&amp;", "&"))
}

/// The path and query of one of our URLs.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").expect("https URL");
    rest[rest.find('/').expect("path")..].to_owned()
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

async fn tls(t: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(t.https)
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(t.client_tls(&[&TLS13]))
        .connect(ServerName::try_from(DOMAIN).expect("name"), tcp)
        .await
        .expect("TLS")
}

/// One HTTP/1.1 request over a new HTTPS connection.
async fn http(
    t: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let io = TokioIo::new(tls(t).await);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", DOMAIN);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

async fn put(t: &TestServer, url: &str, body: &[u8]) -> u16 {
    let len = body.len().to_string();
    http(t, "PUT", &path_of(url), &[("content-length", &len)], body)
        .await
        .status
}

#[tokio::test]
async fn disco_announces_the_service_and_its_limit() {
    let t = start("").await;
    let mut c = login(&t).await;
    c.send(&format!(
        "<iq type='get' id='info' to='upload.{DOMAIN}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ))
    .await;
    let got = c.read_until("</iq>").await;
    assert!(
        got.contains("category=\"store\"") && got.contains("type=\"file\""),
        "{got}"
    );
    assert!(got.contains(&format!("var=\"{NS}\"")), "{got}");
    assert!(
        got.contains("var=\"max-file-size\"") && got.contains("<value>1000</value>"),
        "§3's form: {got}"
    );
    c.send(&format!(
        "<iq type='get' id='items' to='{DOMAIN}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
    ))
    .await;
    let got = c.read_until("</iq>").await;
    assert!(got.contains(&format!("jid=\"upload.{DOMAIN}\"")), "{got}");
}

#[tokio::test]
async fn a_file_goes_up_once_and_comes_down_with_safe_headers() {
    let t = start("").await;
    let mut c = login(&t).await;
    let got = request(
        &mut c,
        "filename='../../etc/x.html' size='11' content-type='text/html'",
    )
    .await;
    assert!(
        got.contains("type=\"result\"") && got.contains("<slot"),
        "{got}"
    );
    let (put_url, get_url) = urls(&got);
    assert!(
        get_url.ends_with("/x.html"),
        "the name is cleaned: {get_url}"
    );
    assert!(!get_url.contains(".."), "{get_url}");
    assert!(put_url.starts_with(&format!("{get_url}?v=")), "{put_url}");

    // Nothing is served before the upload.
    assert_eq!(
        http(&t, "GET", &path_of(&get_url), &[], b"").await.status,
        404
    );
    // Wrong sizes.
    assert_eq!(put(&t, &put_url, b"hello world!").await, 413);
    assert_eq!(put(&t, &put_url, b"hello").await, 400);
    // A changed signature, or expiry.
    let forged = put_url.replace("&s=", "&s=00");
    assert_eq!(put(&t, &forged, b"hello world").await, 403);
    let later = put_url.replacen("?v=", "?v=9", 1);
    assert_eq!(put(&t, &later, b"hello world").await, 403);
    // The real one, once.
    assert_eq!(put(&t, &put_url, b"hello world").await, 201);
    assert_eq!(
        put(&t, &put_url, b"hello world").await,
        409,
        "a slot takes one upload"
    );

    let a = http(
        &t,
        "GET",
        &path_of(&get_url),
        &[("origin", "https://web.example")],
        b"",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"hello world");
    let h = |name: &str| {
        a.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(h("content-type"), "text/html");
    assert_eq!(h("x-content-type-options"), "nosniff");
    assert!(h("content-security-policy").contains("sandbox"));
    assert!(
        h("content-disposition").starts_with("attachment;"),
        "{}",
        h("content-disposition")
    );
    assert_eq!(h("access-control-allow-origin"), "*");

    let a = http(&t, "HEAD", &path_of(&get_url), &[], b"").await;
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    assert_eq!(
        a.headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some("11")
    );

    // An image is shown in place.
    let got = request(
        &mut c,
        "filename='cat.png' size='3' content-type='image/png'",
    )
    .await;
    let (put_url, get_url) = urls(&got);
    assert_eq!(put(&t, &put_url, b"png").await, 201);
    let a = http(&t, "GET", &path_of(&get_url), &[], b"").await;
    assert_eq!(
        a.headers
            .get("content-disposition")
            .and_then(|v| v.to_str().ok()),
        Some("inline; filename*=UTF-8''cat.png")
    );
}

#[tokio::test]
async fn paths_that_are_not_a_slot_are_not_found() {
    let t = start("").await;
    let mut c = login(&t).await;
    let got = request(&mut c, "filename='a.txt' size='2'").await;
    let (put_url, get_url) = urls(&got);
    assert_eq!(put(&t, &put_url, b"ok").await, 201);
    let path = path_of(&get_url);
    let base = &path[..path.rfind('/').expect("name")];
    let mount = &base[..base.rfind('/').expect("id")];
    for p in [
        format!("{base}/../a.txt"),
        format!("{base}%2Fa.txt"),
        format!("{base}/a.txt/x"),
        format!("{base}/A.txt"),
        format!("{mount}/../../../etc/passwd"),
        format!("{mount}/..%2F..%2Fsecret"),
        format!("{mount}/secret"),
    ] {
        let a = http(&t, "GET", &p, &[], b"").await;
        assert_eq!(a.status, 404, "{p}");
    }
}

#[tokio::test]
async fn a_partial_upload_is_never_visible_and_the_slot_stays_usable() {
    let t = start("").await;
    let mut c = login(&t).await;
    let got = request(&mut c, "filename='big.bin' size='100'").await;
    let (put_url, get_url) = urls(&got);
    let mut s = tls(&t).await;
    s.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nhost: {DOMAIN}\r\ncontent-length: 100\r\n\r\n{}",
            path_of(&put_url),
            "x".repeat(40)
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    s.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http(&t, "GET", &path_of(&get_url), &[], b"").await.status,
        404,
        "half a file is not served"
    );
    drop(s);
    // Once the connection is gone, its temporary file is too, and the slot can be used.
    let mut status = 0;
    for _ in 0..50 {
        status = put(&t, &put_url, &[b'y'; 100]).await;
        if status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 201);
    let a = http(&t, "GET", &path_of(&get_url), &[], b"").await;
    assert_eq!(a.body, vec![b'y'; 100]);
    let tmp = t.server.config().data_dir.join("upload").join("tmp");
    let left = std::fs::read_dir(tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no temporary file is left");
}

#[tokio::test]
async fn requests_are_refused_as_section_5_says() {
    let t = start("").await;
    let mut c = login(&t).await;
    let got = request(&mut c, "filename='a.bin' size='1001'").await;
    assert!(
        got.contains("type=\"error\"") && got.contains("<not-acceptable"),
        "{got}"
    );
    assert!(
        got.contains(&format!(
            "<file-too-large xmlns=\"{NS}\"><max-file-size>1000</max-file-size>"
        )),
        "{got}"
    );
    for attrs in [
        "filename='a.bin'",
        "size='10'",
        "filename='..' size='10'",
        "filename='a' size='-1'",
        "filename='a' size='x'",
    ] {
        let got = request(&mut c, attrs).await;
        assert!(got.contains("<bad-request"), "{attrs}: {got}");
    }
    let got = request(
        &mut c,
        "filename='a' size='1' content-type='text/plain\r\nX: y'",
    )
    .await;
    assert!(got.contains("<bad-request"), "{got}");
    let got = request(
        &mut c,
        "filename='a' size='1' content-type='application/x-evil'",
    )
    .await;
    assert!(got.contains("<forbidden"), "{got}");

    // The quota: 1500 bytes a day.
    let got = request(&mut c, "filename='a' size='1000'").await;
    assert!(got.contains("<slot"), "{got}");
    let got = request(&mut c, "filename='b' size='600'").await;
    assert!(
        got.contains("<resource-constraint") && got.contains("type=\"wait\""),
        "{got}"
    );
    assert!(
        got.contains(&format!("<retry xmlns=\"{NS}\" stamp=\"")),
        "{got}"
    );
    let got = request(&mut c, "filename='b' size='500'").await;
    assert!(got.contains("<slot"), "what fits is still given: {got}");
}

#[tokio::test]
async fn an_expired_slot_is_refused() {
    let t = start("slot_lifetime_secs = 1\n").await;
    let mut c = login(&t).await;
    let got = request(&mut c, "filename='late.txt' size='2'").await;
    let (put_url, _) = urls(&got);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(put(&t, &put_url, b"ok").await, 403);
}

#[tokio::test]
async fn deleting_an_account_deletes_its_files() {
    let t = start("").await;
    let mut c = login(&t).await;
    let got = request(&mut c, "filename='mine.txt' size='2'").await;
    let (put_url, get_url) = urls(&got);
    assert_eq!(put(&t, &put_url, b"ok").await, 201);
    assert!(t
        .server
        .storage()
        .accounts
        .delete_account(DOMAIN, "alice")
        .await
        .expect("delete"));
    assert_eq!(
        http(&t, "GET", &path_of(&get_url), &[], b"").await.status,
        404
    );
    let dir = t.server.config().data_dir.join("upload");
    let removed = rookery_modules::upload::files::expire(t.server.storage(), &dir, None, 10)
        .await
        .expect("sweep");
    assert_eq!(
        removed, 1,
        "the sweep removes the file whose record went with the account"
    );
    let secret = std::fs::metadata(dir.join("secret")).expect("secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(secret.len(), 32);
}
