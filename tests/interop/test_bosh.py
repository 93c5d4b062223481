"""BOSH (XEP-0124, XEP-0206) against the real binary, with a raw client on ``http.client``:
session creation and its terms, SCRAM, the restart, binding, a message round trip with a
slixmpp user on TCP; every BOSH condition: terminate, unknown sid, the rid window,
repeated rids, too many requests, polling too fast, pause, inactivity, wait and hold,
stream errors, bad requests, body size, sessions per address; CORS and discovery.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import time
import xml.etree.ElementTree as ET

import pytest

from harness import BIND_NS, CLIENT_NS, SASL_NS, STREAM_NS, client_ssl_context, qn, saslname, session

HTTPBIND_NS = "http://jabber.org/protocol/httpbind"
XBOSH_NS = "urn:xmpp:xbosh"

SERVER_CONFIG = {
    "extra_toml": "[bosh]\nmax_wait_secs = 10\nmax_hold = 2\ninactivity_secs = 3\n"
    "polling_secs = 1\nmax_pause_secs = 5\nsessions_per_ip = 100\n",
}


class Connection(http.client.HTTPSConnection):
    """HTTPS to the server's address, the TLS name being its domain (what the certificate
    names)."""

    def __init__(self, server, timeout: float = 30):
        super().__init__(server.host, server.https_port, context=client_ssl_context(server.cert_path), timeout=timeout)
        self.domain = server.domain

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.domain)


def post(server, body: str, headers: dict[str, str] | None = None, method: str = "POST"):
    """One HTTPS request on a connection of its own; returns (status, headers, text)."""
    conn = Connection(server)
    h = {"Host": server.domain, "Content-Type": "text/xml; charset=utf-8"}
    h.update(headers or {})
    conn.request(method, "/http-bind", body=body.encode() if body else None, headers=h)
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, text


def condition(body: ET.Element) -> str | None:
    """The condition of a terminate body ('' without one), None if it is not one."""
    if body.get("type") != "terminate":
        return None
    return body.get("condition", "")


class Bosh:
    """One BOSH session, requests sent one after another (or concurrently with ``apost``)."""

    def __init__(self, server):
        self.server = server
        self.rid = random.randint(1_000_000, 9_000_000)
        self.sid = ""
        self.created: ET.Element | None = None
        self.received: list[ET.Element] = []

    def create(self, attrs: str = "wait='5' hold='1'") -> ET.Element:
        status, _, text = post(
            self.server,
            f"<body content='text/xml; charset=utf-8' rid='{self.rid}' to='{self.server.domain}' "
            f"ver='1.6' xml:lang='en' xmpp:version='1.0' {attrs} xmlns='{HTTPBIND_NS}' "
            f"xmlns:xmpp='{XBOSH_NS}'/>",
        )
        assert status == 200, text
        self.created = ET.fromstring(text)
        self.sid = self.created.get("sid", "")
        return self.created

    def body(self, attrs: str = "", payload: str = "", rid: int | None = None) -> str:
        if rid is None:
            self.rid += 1
            rid = self.rid
        if payload:
            return f"<body rid='{rid}' sid='{self.sid}' {attrs} xmlns='{HTTPBIND_NS}'>{payload}</body>"
        return f"<body rid='{rid}' sid='{self.sid}' {attrs} xmlns='{HTTPBIND_NS}'/>"

    def send_body(self, body: str) -> ET.Element:
        status, _, text = post(self.server, body)
        assert status == 200, text
        el = ET.fromstring(text)
        assert el.tag == qn(HTTPBIND_NS, "body"), text
        self.received.append(el)
        return el

    def req(self, attrs: str = "", payload: str = "") -> ET.Element:
        return self.send_body(self.body(attrs, payload))

    async def apost(self, body: str) -> ET.Element:
        return await asyncio.to_thread(self.send_body, body)

    def until(self, match, first: ET.Element | None = None, timeout: float = 20.0) -> ET.Element:
        """Polls until a payload for which ``match`` holds arrives; returns it."""
        deadline = time.monotonic() + timeout
        body = first if first is not None else self.req()
        while True:
            assert condition(body) is None, ET.tostring(body)
            for child in body:
                if match(child):
                    return child
            assert time.monotonic() < deadline, "timed out"
            body = self.req()

    def login(self, user) -> ET.Element:
        """SCRAM-SHA-256, then the restart; returns the new features."""
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={saslname(user.localpart)},r={cnonce}"
        sasl = lambda e: e.tag.startswith("{" + SASL_NS + "}")  # noqa: E731
        answer = self.until(
            sasl,
            self.req(
                payload=f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>"
                f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>"
            ),
        )
        assert answer.tag == qn(SASL_NS, "challenge"), ET.tostring(answer)
        server_first = base64.b64decode(answer.text or "").decode()
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", user.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        final_no_proof = f"c=biws,r={attrs['r']}"
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{first_bare},{server_first},{final_no_proof}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        final = f"{final_no_proof},p={base64.b64encode(proof).decode()}"
        answer = self.until(
            sasl,
            self.req(payload=f"<response xmlns='{SASL_NS}'>{base64.b64encode(final.encode()).decode()}</response>"),
        )
        assert answer.tag == qn(SASL_NS, "success"), ET.tostring(answer)
        return self.restart()

    def restart(self) -> ET.Element:
        first = self.req(f"to='{self.server.domain}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='{XBOSH_NS}'")
        return self.until(lambda e: e.tag == qn(STREAM_NS, "features"), first)

    def bind(self, resource: str) -> str:
        first = self.req(
            payload=f"<iq xmlns='{CLIENT_NS}' type='set' id='bind'><bind xmlns='{BIND_NS}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        iq = self.until(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "bind", first)
        jid = iq.find(f"{qn(BIND_NS, 'bind')}/{qn(BIND_NS, 'jid')}")
        assert jid is not None
        return jid.text or ""


def test_session_creation_terms(server):
    c = Bosh(server)
    created = c.create("wait='600' hold='5' ack='1'")
    # XEP-0124 §7.2: wait and hold capped by the server, requests = hold + 1.
    assert created.get("wait") == "10"
    assert created.get("hold") == "2"
    assert created.get("requests") == "3"
    assert created.get("inactivity") == "3"
    assert created.get("polling") == "1"
    assert created.get("maxpause") == "5"
    assert created.get("ver") == "1.6"
    assert created.get("from") == server.domain
    assert created.get("ack") == str(c.rid)
    assert created.get("authid")
    # XEP-0206 §3.
    assert created.get(qn(XBOSH_NS, "version")) == "1.0"
    assert created.get(qn(XBOSH_NS, "restartlogic")) == "true"
    features = created.find(qn(STREAM_NS, "features"))
    assert features is not None, ET.tostring(created)
    mechanisms = [m.text for m in features.iter(qn(SASL_NS, "mechanism"))]
    assert "SCRAM-SHA-256" in mechanisms
    assert not [m for m in mechanisms if m.endswith("-PLUS")], "no channel to bind to"


async def test_login_bind_and_message_round_trip_with_a_slixmpp_user(server, alice, bob):
    c = Bosh(server)
    await asyncio.to_thread(c.create)
    features = await asyncio.to_thread(c.login, alice)
    assert features.find(qn(BIND_NS, "bind")) is not None
    jid = await asyncio.to_thread(c.bind, "web")
    assert jid == alice.full("web")
    async with session(server, bob, "desk") as slix:
        got: asyncio.Queue = asyncio.Queue()
        slix.add_event_handler("message", lambda m: got.put_nowait(m))
        await asyncio.to_thread(
            c.req,
            "",
            f"<message xmlns='{CLIENT_NS}' type='chat' to='{bob.full('desk')}' id='b1'><body>hello over BOSH</body></message>",
        )
        m = await asyncio.wait_for(got.get(), 10)
        assert m["body"] == "hello over BOSH"
        assert str(m["from"]) == alice.full("web")
        slix.send_message(mto=alice.full("web"), mbody="hello from TCP", mtype="chat")
        msg = await asyncio.to_thread(
            c.until, lambda e: e.tag == qn(CLIENT_NS, "message") and e.findtext(qn(CLIENT_NS, "body")) == "hello from TCP"
        )
        assert msg.get("from") == bob.full("desk")
    done = await asyncio.to_thread(c.req, "type='terminate'", f"<presence xmlns='{CLIENT_NS}' type='unavailable'/>")
    assert condition(done) == ""


def test_restart_before_authentication_is_a_bad_request(server):
    c = Bosh(server)
    c.create()
    body = c.req(f"xmpp:restart='true' xmlns:xmpp='{XBOSH_NS}'")
    assert condition(body) == "bad-request"


def test_terminate_and_unknown_sid(server):
    c = Bosh(server)
    c.create()
    assert condition(c.req("type='terminate'")) == ""
    assert condition(c.req()) == "item-not-found"
    status, _, text = post(server, f"<body rid='5' sid='no-such-session' xmlns='{HTTPBIND_NS}'/>")
    assert status == 200
    assert condition(ET.fromstring(text)) == "item-not-found"


def test_rid_out_of_window(server):
    c = Bosh(server)
    c.create("wait='5' hold='1'")
    # requests = 2: after the creation rid, the window is the next two.
    c.rid += 2
    assert condition(c.req()) == "item-not-found"


def test_repeated_rid_gets_the_same_response(server):
    c = Bosh(server)
    created = c.create()
    again = c.send_body(c.body(rid=c.rid))
    assert ET.tostring(again) == ET.tostring(created)


async def test_too_many_requests(server):
    c = Bosh(server)
    c.create("wait='5' hold='1'")
    r1, r2, r3 = c.body(), c.body(), c.body()
    held = asyncio.create_task(c.apost(r1))
    await asyncio.sleep(0.3)
    ahead = asyncio.create_task(c.apost(r3))
    await asyncio.sleep(0.3)
    third = await c.apost(r2)
    assert condition(third) == "policy-violation"
    assert condition(await held) == "policy-violation"
    assert condition(await ahead) == "policy-violation"


def test_polling_too_fast(server):
    c = Bosh(server)
    created = c.create("wait='5' hold='0'")
    assert created.get("requests") == "1"
    assert condition(c.req()) is None
    assert condition(c.req()) == "policy-violation"


async def test_wait_and_hold(server):
    c = Bosh(server)
    c.create("wait='1' hold='1'")
    start = time.monotonic()
    body = await c.apost(c.body())
    assert time.monotonic() - start >= 0.9
    assert condition(body) is None and len(body) == 0
    # hold=1: a held request is answered (empty) when the next comes.
    first = asyncio.create_task(c.apost(c.body()))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    second = asyncio.create_task(c.apost(c.body()))
    assert condition(await first) is None
    assert time.monotonic() - start < 0.8
    assert condition(await second) is None


def test_pause(server):
    c = Bosh(server)
    c.create("wait='1' hold='1'")
    # Within maxpause: answered at once, and the session outlives the inactivity period
    # (3 s; and within the 5 s this configuration gives to authenticate).
    assert condition(c.req("pause='5'")) is None
    time.sleep(3.3)
    assert condition(c.req()) is None
    assert condition(c.req("pause='6'")) == "policy-violation"


def test_inactivity_ends_the_session(server):
    c = Bosh(server)
    c.create()
    time.sleep(4)
    assert condition(c.req()) == "item-not-found"


def test_stream_error_is_a_terminate_wrapping_it(server):
    c = Bosh(server)
    c.create()
    # A stanza before authentication: the stream ends with a stream error.
    body = c.req(payload=f"<message xmlns='{CLIENT_NS}' to='x@{server.domain}'><body>x</body></message>")
    if condition(body) is None:
        body = c.req()
    assert condition(body) == "remote-stream-error", ET.tostring(body)
    assert body.find(qn(STREAM_NS, "error")) is not None, ET.tostring(body)


def test_bad_requests(server):
    assert post(server, "hello")[0] == 400
    assert post(server, "<html/>")[0] == 400
    status, _, text = post(server, f"<body rid='x' xmlns='{HTTPBIND_NS}'/>")
    assert status == 200 and condition(ET.fromstring(text)) == "bad-request"
    status, _, text = post(
        server,
        f"<body rid='1' to='example.org' xmpp:version='1.0' xmlns='{HTTPBIND_NS}' xmlns:xmpp='{XBOSH_NS}'/>",
    )
    assert condition(ET.fromstring(text)) == "host-unknown"
    assert post(server, "", method="GET")[0] == 405


def test_oversized_body_is_refused(server):
    # limits.max_stanza_bytes is 65536 here; a body may hold one stanza and its wrapper.
    # Refused by its declared length, before the body is read (so it is not sent here:
    # the server closes the connection after its answer).
    conn = Connection(server)
    conn.putrequest("POST", "/http-bind", skip_host=True)
    conn.putheader("Host", server.domain)
    conn.putheader("Content-Length", str(65536 + 4096 + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413


def test_cors_and_discovery(server):
    status, headers, _ = post(
        server,
        "",
        {"Origin": "https://web.example", "Access-Control-Request-Method": "POST"},
        method="OPTIONS",
    )
    assert status == 204
    assert headers.get("access-control-allow-origin") == "*"
    assert "POST" in headers.get("access-control-allow-methods", "")
    conn = Connection(server)
    conn.request("GET", "/.well-known/host-meta.json", headers={"Host": server.domain})
    links = json.loads(conn.getresponse().read())["links"]
    assert {"rel": "urn:xmpp:alt-connections:xbosh", "href": f"https://{server.domain}/http-bind"} in links


def test_sessions_per_address(make_server):
    srv = make_server(extra_toml="[bosh]\nsessions_per_ip = 2\n")
    a, b, c = Bosh(srv), Bosh(srv), Bosh(srv)
    assert a.create().get("sid")
    assert b.create().get("sid")
    assert condition(c.create()) == "policy-violation"
