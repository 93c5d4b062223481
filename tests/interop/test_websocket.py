"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery against the real binary, with an
independent WebSocket client (``websockets``; see wsclient.py): login, messages with a
slixmpp user over TCP, stream management resumed on a new WebSocket, the discovery
documents, and the HTTP listener's limits."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import xml.etree.ElementTree as ET

import pytest

from harness import CLIENT_NS, client_ssl_context, loopback_source, qn, session
from wsclient import FRAMING_NS, SM_NS, Refused, WsStream, bodies

SERVER_CONFIG = {"extra_toml": "[stream_management]\nresume_timeout_secs = 5"}
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
WEBSOCKET_REL = "urn:xmpp:alt-connections:websocket"


def https_request(server, request: str, timeout: float = 10.0, source: str | None = None) -> bytes:
    """Sends a raw HTTP request over TLS (SNI and certificate check for the domain) and
    returns the whole response (the request should say ``Connection: close``)."""
    ctx = client_ssl_context(server.cert_path)
    raw = socket.create_connection((server.host, server.https_port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    with ctx.wrap_socket(raw, server_hostname=server.domain) as s:
        s.sendall(request.encode())
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            out += chunk
        return out


def split_response(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def test_login_and_messages_with_a_slixmpp_user_over_tcp(server, alice, bob):
    ws = await WsStream.connect(server)
    try:
        features = await ws.open()
        assert ws.texts[0].startswith("<open ") and FRAMING_NS in ws.texts[0]
        assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
        assert "SCRAM-SHA-256" in ws.mechanisms() and "PLAIN" in ws.mechanisms()
        assert await ws.auth_scram(alice.localpart, alice.password)
        assert await ws.bind("browser") == alice.full("browser")
        await ws.send(f"<presence xmlns='{CLIENT_NS}'/>")
        async with session(server, bob, resource="desk") as b:
            await ws.message(bob.full("desk"), "hello over websocket", "w1")
            msg = await b.next_message(timeout=10)
            assert msg["body"] == "hello over websocket"
            assert msg["from"] == alice.full("browser")
            b.send_message(mto=alice.full("browser"), mbody="hello over tcp", mtype="chat")
            got = await ws.wait_for(qn(CLIENT_NS, "message"))
            assert bodies([got]) == ["hello over tcp"]
            # One element per message, declaring its namespace (RFC 7395 §3.3.3).
            assert ws.texts[-1].startswith('<message xmlns="jabber:client"'), ws.texts[-1]
        await ws.send(f"<close xmlns='{FRAMING_NS}'/>")
        rest = await ws.read_until_closed()
        assert any(e.tag == qn(FRAMING_NS, "close") for e in rest), ws.texts[-3:]
    finally:
        await ws.close()


async def test_sm_resumption_across_a_websocket_reconnect(server, alice, bob):
    ws = await WsStream.connect(server)
    await ws.login(alice, "phone")
    await ws.send(f"<enable xmlns='{SM_NS}' resume='true'/>")
    enabled = await ws.wait_for(qn(SM_NS, "enabled"))
    sm_id = enabled.get("id")
    assert sm_id and enabled.get("resume") in ("true", "1")
    async with session(server, bob, resource="pc") as b:
        for n in range(1, 4):
            b.send_message(mto=alice.full("phone"), mbody=f"before-{n}", mtype="chat")
        got = []
        while len(got) < 3:
            got += bodies([await ws.wait_for(qn(CLIENT_NS, "message"))])
        assert got == ["before-1", "before-2", "before-3"]
        # Acknowledge the first only, then lose the connection.
        await ws.send(f"<a xmlns='{SM_NS}' h='1'/>")
        ws.abort()
        await asyncio.sleep(0.3)
        for n in range(1, 3):
            b.send_message(mto=alice.full("phone"), mbody=f"away-{n}", mtype="chat")
        await b.plugin["xep_0199"].ping(server.domain, timeout=5)

        again = await WsStream.connect(server)
        try:
            await again.open()
            assert await again.auth_scram(alice.localpart, alice.password)
            await again.send(f"<resume xmlns='{SM_NS}' previd='{sm_id}' h='1'/>")
            resumed = await again.wait_for(lambda e: e.tag in (qn(SM_NS, "resumed"), qn(SM_NS, "failed")))
            assert resumed.tag == qn(SM_NS, "resumed"), again.texts[-3:]
            got = []
            while len(got) < 4:
                got += bodies([await again.wait_for(qn(CLIENT_NS, "message"))])
            assert got == ["before-2", "before-3", "away-1", "away-2"], "each once, in order"
            # The resumed session goes on both ways.
            await again.message(bob.full("pc"), "back", "b1")
            msg = await b.next_message(timeout=10)
            assert msg["body"] == "back" and msg["from"] == alice.full("phone")
        finally:
            await again.close()


def test_discovery_documents_list_the_websocket_endpoint(server):
    status, headers, body = split_response(https_request(
        server,
        f"GET /.well-known/host-meta HTTP/1.1\r\nHost: {server.domain}:{server.https_port}\r\n"
        "Origin: https://web.example\r\nConnection: close\r\n\r\n",
    ))
    assert status == 200, body
    assert headers["content-type"].startswith("application/xrd+xml")
    assert headers.get("access-control-allow-origin") == "*"
    xrd = ET.fromstring(body)
    links = {link.get("rel"): link.get("href") for link in xrd.iter(qn(XRD_NS, "Link"))}
    url = f"wss://{server.domain}:{server.https_port}/xmpp-websocket"
    bosh = f"https://{server.domain}:{server.https_port}/http-bind"
    assert links == {WEBSOCKET_REL: url, "urn:xmpp:alt-connections:xbosh": bosh}
    status, headers, body = split_response(https_request(
        server,
        f"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: {server.domain}:{server.https_port}\r\n"
        "Connection: close\r\n\r\n",
    ))
    assert status == 200, body
    assert json.loads(body) == {
        "links": [{"rel": WEBSOCKET_REL, "href": url}, {"rel": "urn:xmpp:alt-connections:xbosh", "href": bosh}]
    }
    status, _, _ = split_response(https_request(
        server, "GET /.well-known/host-meta HTTP/1.1\r\nHost: example.net\r\nConnection: close\r\n\r\n"
    ))
    assert status == 404


async def test_the_discovered_url_is_where_a_client_connects(server, alice):
    _, _, body = split_response(https_request(
        server,
        f"GET /.well-known/host-meta.json HTTP/1.1\r\nHost: {server.domain}:{server.https_port}\r\n"
        "Connection: close\r\n\r\n",
    ))
    href = json.loads(body)["links"][0]["href"]
    path = "/" + href.split("/", 3)[3]
    ws = await WsStream.connect(server, path=path)
    try:
        assert await ws.login(alice, "found") == alice.full("found")
    finally:
        await ws.close()


async def test_websocket_without_the_xmpp_subprotocol_is_refused(server):
    for protocols in (None, ("chat",)):
        with pytest.raises(Refused) as e:
            await WsStream.connect(server, subprotocols=protocols)
        assert e.value.status == 400


async def test_websocket_from_an_origin_not_allowed_is_refused(make_server):
    srv = make_server(extra_toml="[http]\ncors_origins = ['https://app.example']")
    with pytest.raises(Refused) as e:
        await WsStream.connect(srv, origin="https://evil.example")
    assert e.value.status == 403
    ws = await WsStream.connect(srv, origin="https://app.example")
    await ws.open()
    await ws.close()


async def test_plain_websocket_is_refused_while_tls_is_required(server):
    with pytest.raises(Refused) as e:
        await WsStream.connect(server, tls=False)
    assert e.value.status == 403


async def test_text_before_open_is_a_stream_error(server):
    ws = await WsStream.connect(server)
    await ws.send("hello")
    elems = await ws.read_until_closed()
    assert elems[0].tag == qn(FRAMING_NS, "open"), ws.texts
    assert ws.stream_error() == "not-well-formed", ws.texts
    assert elems[-1].tag == qn(FRAMING_NS, "close"), ws.texts


async def test_oversized_websocket_message_closes_the_connection(server, alice):
    ws = await WsStream.connect(server)
    await ws.open()
    body = "x" * (server.max_stanza_bytes + 100)
    try:
        await ws.send(f"<message xmlns='{CLIENT_NS}' to='{alice.jid}'><body>{body}</body></message>")
    except Exception:
        pass
    await ws.read_until_closed()
    assert ws.ws.close_code == 1009, ws.ws.close_code
    # Others are served as before.
    other = await WsStream.connect(server)
    assert await other.login(alice, "after") == alice.full("after")
    await other.close()


def test_request_body_over_the_limit_is_refused(server):
    status, _, _ = split_response(https_request(
        server,
        "POST /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
        "Connection: close\r\n\r\n",
    ))
    assert status == 413


def test_slow_headers_are_cut_off(make_server):
    srv = make_server(extra_toml="[http]\nheader_timeout_secs = 1")
    started = time.monotonic()
    with socket.create_connection((srv.host, srv.http_port), timeout=10) as s:
        s.sendall(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: local")
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert time.monotonic() - started < 5
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer


async def test_connections_per_address_are_shared_with_the_xmpp_ports(make_server):
    srv = make_server(extra_limits={"max_connections_per_ip": 2})
    source = loopback_source()
    tcp = socket.create_connection((srv.host, srv.c2s_port), source_address=(source, 0))
    ws = await WsStream.connect(srv, source=source)
    try:
        await ws.open()
        with pytest.raises(Exception):
            extra = await WsStream.connect(srv, source=source)
            await extra.open()
        # Another address is not affected.
        other = await WsStream.connect(srv, source=loopback_source())
        await other.open()
        await other.close()
    finally:
        tcp.close()
        await ws.close()
