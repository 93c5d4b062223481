"""Stream-level errors (RFC 6120 s4.9), provoked over raw sockets."""

from __future__ import annotations

import time

import pytest

from harness import CLIENT_NS, PING_NS, STREAM_NS, excerpt, qn, stream_header

UNAUTH_TIMEOUT = 3
MAX_STANZA = 10000
SERVER_CONFIG = {"unauthenticated_timeout_secs": UNAUTH_TIMEOUT, "max_stanza_bytes": MAX_STANZA}


def expect_stream_error(stream, *conditions: str, timeout: float = 5.0) -> str:
    """Read until the server closes; check it sent a stream header, then a stream
    error with one of ``conditions``, then closed the stream and the connection."""
    stream.read_until_closed(timeout=timeout, eof=True)
    cond = stream.stream_error()
    assert cond in conditions, f"expected stream error {conditions}, got {cond}; received:\n{excerpt(stream.text)}"
    assert stream.stream_attrs is not None, "no stream header before the stream error"
    assert stream.stream_closed, "stream error not followed by </stream:stream>"
    assert stream.closed
    return cond


def _limit(server) -> int:
    return getattr(server, "max_stanza_bytes", MAX_STANZA)


def _timeout(server) -> int:
    return getattr(server, "unauthenticated_timeout_secs", UNAUTH_TIMEOUT)


# -- not-well-formed / restricted-xml ----------------------------------------


def test_malformed_xml_in_stream(server, raw):
    stream = raw()
    stream.open_stream()
    stream.send("<message><body>mismatched</mesage>")
    expect_stream_error(stream, "not-well-formed")


def test_malformed_xml_after_auth(server, raw, alice):
    stream = raw()
    stream.login(alice)
    stream.send("<iq type='get' id='x'><query xmlns='urn:example:q'></iq>")
    expect_stream_error(stream, "not-well-formed")


def test_garbage_instead_of_stream_header(server, raw):
    stream = raw()
    stream.send("this is not XML at all\r\n")
    expect_stream_error(stream, "not-well-formed")


@pytest.mark.parametrize(
    "before_header, after_header",
    [
        pytest.param("<?xml version='1.0'?><!DOCTYPE stream:stream>", "", id="doctype"),
        pytest.param(
            "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY boom 'kaboom'>]>", "", id="entity-declaration"
        ),
        pytest.param("", "<!-- a comment -->", id="comment"),
        pytest.param("", "<?some-pi with data?>", id="processing-instruction"),
        pytest.param("", "<!DOCTYPE late>", id="doctype-inside-stream"),
        pytest.param("", "<message><body>&undeclared;</body></message>", id="undeclared-entity"),
    ],
)
def test_restricted_xml(server, raw, before_header, after_header):
    stream = raw()
    header = stream_header(server.domain, xml_declaration=not before_header)
    stream.send(before_header + header)
    if not before_header:
        stream.wait_for(qn(STREAM_NS, "features"))
        stream.send(after_header)
    expect_stream_error(stream, "restricted-xml", "not-well-formed")


def test_predefined_entities_and_char_refs_are_fine(server, raw, alice):
    """Control for the above: the XML that is allowed goes through intact."""
    stream = raw()
    jid = stream.login(alice)
    stream.send(
        f"<message to='{jid}' id='ents' type='chat'><body>a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos; "
        "&#9731; &#x263A;</body></message>"
    )
    got = stream.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("id") == "ents")
    assert got.findtext(qn(CLIENT_NS, "body")) == "a & b <c> \"d\" 'e' \u2603 \u263a"


# -- policy-violation (stanza size) ----------------------------------------


def _big_message(to: str, size: int) -> str:
    head = f"<message to='{to}' type='chat' id='big'><body>"
    tail = "</body></message>"
    return head + "x" * (size - len(head) - len(tail)) + tail


def test_oversized_stanza_before_auth(server, raw):
    stream = raw()
    stream.open_stream()
    stream.send_tolerant(_big_message(f"someone@{server.domain}", _limit(server) + 5000))
    expect_stream_error(stream, "policy-violation")


def test_oversized_stanza_before_auth_over_tls(server, raw):
    stream = raw(direct_tls=True)
    stream.open_stream()
    stream.send_tolerant(_big_message(f"someone@{server.domain}", _limit(server) + 5000))
    expect_stream_error(stream, "policy-violation")


def test_oversized_stanza_after_auth(server, raw, alice):
    stream = raw()
    jid = stream.login(alice)
    stream.send_tolerant(_big_message(jid, _limit(server) + 5000))
    expect_stream_error(stream, "policy-violation")


def test_stanza_under_the_limit_after_auth_is_delivered(server, raw, alice):
    stream = raw()
    jid = stream.login(alice)
    msg = _big_message(jid, _limit(server) * 8 // 10)
    stream.send(msg)
    got = stream.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("id") == "big")
    assert len(got.findtext(qn(CLIENT_NS, "body"))) > _limit(server) // 2
    assert stream.stream_error() is None


# -- stream header problems ---------------------------------------------------


def test_wrong_stream_namespace(server, raw):
    stream = raw()
    stream.open_stream(header=stream_header(server.domain, stream_ns="http://example.com/not-streams"), wait_features=False)
    expect_stream_error(stream, "invalid-namespace")


def test_unserved_host(server, raw):
    stream = raw()
    stream.open_stream(header=stream_header("unserved.example"), wait_features=False)
    expect_stream_error(stream, "host-unknown")


def test_unserved_host_on_direct_tls(server, raw):
    stream = raw(direct_tls=True)
    stream.open_stream(header=stream_header("unserved.example"), wait_features=False)
    expect_stream_error(stream, "host-unknown")


# -- invalid-from -------------------------------------------------------------


@pytest.fixture(scope="module")
def spoof_pair(server):
    """Two accounts shared by the spoofing cases (each case uses a new stream)."""
    return server.add_user("alice"), server.add_user("bob")


@pytest.mark.parametrize(
    "spoofed",
    [
        pytest.param(lambda bob, domain: bob.full("res"), id="other-user-full"),
        pytest.param(lambda bob, domain: bob.jid, id="other-user-bare"),
        pytest.param(lambda bob, domain: domain, id="server-itself"),
        pytest.param(lambda bob, domain: "someone@elsewhere.example/x", id="other-domain"),
    ],
)
@pytest.mark.parametrize(
    "stanza",
    [
        pytest.param(
            "<message from='{fake}' to='{to}' type='chat' id='spoof'><body>it is me</body></message>", id="message"
        ),
        pytest.param("<presence from='{fake}'/>", id="presence-broadcast"),
        pytest.param("<presence from='{fake}' to='{to}' type='subscribed'/>", id="presence-directed"),
        pytest.param(f"<iq from='{{fake}}' to='{{to}}' type='get' id='spoof'><ping xmlns='{PING_NS}'/></iq>", id="iq"),
    ],
)
def test_spoofed_from_is_invalid_from(server, raw, spoof_pair, spoofed, stanza):
    """Every stanza kind, with another user's full and bare JID, the server's domain and a
    remote domain as 'from': invalid-from."""
    alice, bob = spoof_pair
    stream = raw()
    stream.login(alice)
    fake = spoofed(bob, server.domain)
    stream.send(stanza.format(fake=fake, to=bob.jid))
    expect_stream_error(stream, "invalid-from")


def test_own_full_jid_as_from_is_accepted(server, raw, alice):
    stream = raw()
    jid = stream.login(alice)
    stream.send(f"<iq type='get' id='own-from' from='{jid}' to='{server.domain}'><ping xmlns='{PING_NS}'/></iq>")
    reply = stream.wait_for(lambda e: e.tag == qn(CLIENT_NS, "iq") and e.get("id") == "own-from")
    assert reply.get("type") == "result"
    assert stream.stream_error() is None


# -- timeouts and keepalives ------------------------------------------------


def test_silent_connections_time_out(server, raw):
    """Both a connection that says nothing and one that stops after the stream
    header get connection-timeout after the configured time (checked together)."""
    limit = _timeout(server)
    started = time.monotonic()
    silent = raw()
    opened = raw()
    opened.open_stream()
    for stream in (silent, opened):
        stream.read_until_closed(timeout=limit + 6, eof=True)
        elapsed = time.monotonic() - started
        assert stream.stream_error() == "connection-timeout", stream.text
        assert stream.stream_closed
        assert limit - 1 <= elapsed <= limit + 6, f"closed after {elapsed:.1f}s, limit {limit}s"


def test_whitespace_keepalive_before_auth(server, raw, alice):
    stream = raw()
    stream.open_stream()
    for _ in range(3):
        stream.send(" \n\t ")
        time.sleep(0.1)
    stream.starttls()
    stream.send("\n")
    result = stream.auth_plain(alice.localpart, alice.password)
    assert result.ok, result.condition
    stream.open_stream()
    stream.send("  \r\n")
    assert stream.bind()
    assert stream.stream_error() is None


def test_whitespace_keepalive_keeps_authenticated_session(server, raw, alice):
    """An authenticated session that only sends whitespace keepalives for longer than
    the unauthenticated timeout is neither timed out nor otherwise disturbed."""
    stream = raw()
    stream.login(alice)
    deadline = time.monotonic() + _timeout(server) + 1.5
    while time.monotonic() < deadline:
        stream.send(" ")
        stream.pump(0.5)
    assert stream.stream_error() is None, stream.text
    assert not stream.closed
    reply = stream.iq(f"<ping xmlns='{PING_NS}'/>", to=server.domain)
    assert reply.get("type") == "result"
