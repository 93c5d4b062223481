"""Federation between two Rookery processes (RFC 6120 server-to-server streams): users on
`rookery.test` and `other.test` exchange messages, IQs and presence subscriptions; errors from
the peer come back; a stopped peer bounces `remote-server-timeout` and is reached again once it
is back; a peer that sends for a domain it did not authenticate is cut off with `invalid-from`.

Each server finds the other through `[s2s.hosts]` (both domains are under .test, which is
never looked up in DNS). Their certificates are self-signed, so the links authenticate with
Server Dialback (XEP-0220) over TLS, each server verifying the other's key with it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import xml.etree.ElementTree as ET

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import ROOKERY_BIN
from harness import PING_NS, RookeryServer, ServerStartError, session

A, B = "rookery.test", "other.test"


GATEWAY = f"gateway.{A}"
# A TURN service on A, whose credentials are for A's own accounts only.
EXTDISCO = """
[host.extdisco]
secret = "turn secret"
[[host.extdisco.services]]
type = "turn"
host = "turn.rookery.test"
port = 3478
"""
GATEWAY_SECRET = "the gateway's secret"


def _pair_config(peer: RookeryServer, extra: str = "") -> str:
    hosts = f"\"{peer.domain}\" = \"127.0.0.1:{peer.s2s_port}\"\n"
    # The services of A's server and the component attached to it are reached through it.
    for sub in ("pubsub", "conference") + (("gateway",) if peer.domain == A else ()):
        hosts += f"\"{sub}.{peer.domain}\" = \"127.0.0.1:{peer.s2s_port}\"\n"
    return f"[s2s]\nconnect_timeout_secs = 2\n{extra}\n[s2s.hosts]\n{hosts}"


def _make_pair(tmp, extra_a: str = "", extra_b: str = ""):
    a = RookeryServer(
        ROOKERY_BIN,
        tmp / "a",
        domain=A,
        s2s=True,
        components={GATEWAY: GATEWAY_SECRET},
        host_extra=EXTDISCO,
    )
    b = RookeryServer(ROOKERY_BIN, tmp / "b", domain=B, s2s=True)
    a.config_overrides["extra_toml"] = _pair_config(b, extra_a)
    b.config_overrides["extra_toml"] = _pair_config(a, extra_b)
    return a, b


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    a, b = _make_pair(tmp_path_factory.mktemp("s2s"))
    try:
        a.start()
        b.start()
    except ServerStartError as e:
        a.kill()
        b.kill()
        pytest.fail(str(e), pytrace=False)
    try:
        yield a, b
    finally:
        a.kill()
        b.kill()


def _is_error(msg) -> bool:
    return msg["type"] == "error"


async def test_messages_go_both_ways(pair):
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice, resource="a") as ca, session(b, bob, resource="b") as cb:
        msg = ca.make_message(mto=bob.full("b"), mbody="hello from rookery.test", mtype="chat")
        msg["id"] = "fed-1"
        msg.send()
        got = await cb.next_message(timeout=15)
        assert (got["body"], got["id"], got["type"]) == ("hello from rookery.test", "fed-1", "chat")
        assert got["from"].full == alice.full("a")
        assert got["to"].bare == bob.jid

        reply = cb.make_message(mto=got["from"], mbody="hello back", mtype="chat")
        reply["id"] = "fed-2"
        reply.send()
        back = await ca.next_message(timeout=15)
        assert (back["body"], back["id"]) == ("hello back", "fed-2")
        assert back["from"].full == bob.full("b")
    assert "authenticated by dialback" in a.stderr_text() + b.stderr_text()


async def test_iq_to_the_peer_server_and_a_remote_account(pair):
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice) as ca, session(b, bob):
        pong = await ca.iq(B, "get", f"<ping xmlns='{PING_NS}'/>", timeout=15)
        assert pong["type"] == "result"
        assert pong["from"].full == B
        version = await ca.iq(B, "get", "<query xmlns='jabber:iq:version'/>", timeout=15)
        assert version["type"] == "result"
        assert version.xml.find("{jabber:iq:version}query/{jabber:iq:version}name").text
        # An IQ to a remote account's bare JID is answered by its server for it.
        info = await ca.iq(bob.jid, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", timeout=15)
        assert info["type"] == "result", info


async def test_message_to_an_unknown_remote_user_comes_back_as_an_error(pair):
    a, _ = pair
    alice = a.add_user("alice")
    async with session(a, alice) as ca:
        msg = ca.make_message(mto=f"nobody-here@{B}", mbody="anyone?", mtype="chat")
        msg["id"] = "fed-missing"
        msg.send()
        err = await ca.next_message(timeout=15, predicate=_is_error)
        assert err["id"] == "fed-missing"
        assert err["from"].bare == f"nobody-here@{B}"
        assert err["error"]["condition"] == "service-unavailable"


async def test_subscription_and_presence_across_servers(pair):
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice, resource="a") as ca, session(b, bob, resource="b") as cb:
        subscribe = asyncio.get_running_loop().create_future()
        cb.add_event_handler("presence_subscribe", lambda p: subscribe.done() or subscribe.set_result(p))
        cb.auto_authorize = None  # answer by hand below
        # Available, so that the request and the presence are delivered now (RFC 6121 §3.1.3).
        cb.send_presence()
        ca.send_presence()
        await ca.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        await cb.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        ca.send_presence(pto=bob.jid, ptype="subscribe")
        request = await asyncio.wait_for(subscribe, 15)
        assert request["from"].bare == alice.jid

        online = asyncio.get_running_loop().create_future()

        def on_available(p):
            if p["from"].bare == bob.jid and not online.done():
                online.set_result(p)

        ca.add_event_handler("presence_available", on_available)
        cb.send_presence(pto=alice.jid, ptype="subscribed")
        cb.send_presence(pstatus="here")
        seen = await asyncio.wait_for(online, 15)
        assert seen["from"].full == bob.full("b")

        roster = await ca.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        items = {i.get("jid"): i.get("subscription") for i in roster.xml.iter("{jabber:iq:roster}item")}
        assert items.get(bob.jid) == "to", items


async def test_a_stopped_peer_bounces_then_is_reached_again(tmp_path):
    a, b = _make_pair(tmp_path)
    a.start()
    try:
        alice = a.add_user("alice")
        async with session(a, alice) as ca:
            msg = ca.make_message(mto=f"bob@{B}", mbody="are you there?", mtype="chat")
            msg["id"] = "down-1"
            msg.send()
            err = await ca.next_message(timeout=15, predicate=_is_error)
            assert err["id"] == "down-1"
            assert err["error"]["condition"] == "remote-server-timeout"

            b.start()
            bob = b.add_user("bob")
            async with session(b, bob) as cb:
                msg = ca.make_message(mto=cb.boundjid.full, mbody="now?", mtype="chat")
                msg["id"] = "down-2"
                msg.send()
                got = await cb.next_message(timeout=15)
                assert (got["body"], got["id"]) == ("now?", "down-2")
    finally:
        a.kill()
        b.kill()


def _read_until(sock, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} in {data!r}")
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        if not chunk:
            break
        data += chunk
    return data


def _raw_s2s(server: RookeryServer, from_domain: str):
    """A raw server-to-server stream to `server` claiming `from_domain`, after STARTTLS."""
    sock = socket.create_connection(("127.0.0.1", server.s2s_port), timeout=10)
    header = (
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
        f"xmlns:stream='http://etherx.jabber.org/streams' from='{from_domain}' to='{server.domain}' version='1.0'>"
    ).encode()
    sock.sendall(header)
    features = _read_until(sock, b"</stream:features>")
    assert b"<starttls" in features and b"<required" in features, features
    sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    _read_until(sock, b"<proceed")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock, server_hostname=server.domain)
    tls.sendall(header)
    features = _read_until(tls, b"</stream:features>")
    return tls, features


def test_stanzas_from_an_unauthenticated_domain_end_the_stream(pair):
    a, _ = pair
    tls, features = _raw_s2s(a, "evil.test")
    # The untrusted stream is offered dialback, not SASL EXTERNAL.
    assert b"urn:xmpp:features:dialback" in features, features
    assert b"EXTERNAL" not in features
    tls.sendall(
        f"<message from='mallory@evil.test/x' to='someone@{A}' type='chat'><body>spoof</body></message>".encode()
    )
    answer = _read_until(tls, b"</stream:stream>")
    assert b"invalid-from" in answer, answer
    tls.close()


def test_a_forged_dialback_key_is_refused(pair):
    a, b = pair
    # Claim to be other.test with a made-up key: rookery.test asks other.test, which did not
    # make it.
    tls, _ = _raw_s2s(a, B)
    tls.sendall(f"<db:result from='{B}' to='{A}'>0123456789abcdef</db:result>".encode())
    answer = _read_until(tls, b"<db:result", timeout=15)
    answer += _read_until(tls, b"/>", timeout=5) if b"/>" not in answer.split(b"<db:result")[-1] else b""
    result = answer.split(b"<db:result")[-1]
    assert b"type='invalid'" in result or b'type="invalid"' in result, answer
    tls.sendall(f"<message from='x@{B}/r' to='y@{A}'><body>no</body></message>".encode())
    closing = _read_until(tls, b"</stream:stream>")
    assert b"invalid-from" in closing, closing
    tls.close()


def test_a_stream_to_a_domain_not_served_is_host_unknown(pair):
    a, _ = pair
    sock = socket.create_connection(("127.0.0.1", a.s2s_port), timeout=10)
    sock.sendall(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
        b"from='x.test' to='not-served.test' version='1.0'>"
    )
    answer = _read_until(sock, b"</stream:stream>")
    assert b"host-unknown" in answer, answer
    sock.close()


async def test_push_notifications_reach_an_app_server_on_another_server(pair):
    """XEP-0357 with the app server's push service on the other server: the publish goes
    over the federation link, from the account's bare JID."""
    from test_push import app_server, answer, enable_push, next_push, summary

    a, b = pair
    user, contact, push = a.add_user("user"), a.add_user("contact"), b.add_user("push")
    async with app_server(b, push) as app, session(a, contact) as sender:
        await enable_push(a, user, app.boundjid.full)
        sender.make_message(mto=user.jid, mbody="wake up", mtype="chat").send()
        iq = await next_push(app, timeout=15)
        fields = summary(iq, user, app.boundjid.full)
        assert fields["message-count"] == "1"
        assert fields["last-message-sender"] == sender.boundjid.full
        answer(app, iq)


async def test_carbons_and_archive_of_a_federated_chat(pair):
    """A chat with a remote contact is archived on the local side (both directions) and the
    user's other client gets carbons of it (XEP-0280, XEP-0313)."""
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice, resource="phone") as phone, session(a, alice, resource="desk") as desk, session(
        b, bob, resource="b"
    ) as cb:
        for c in (phone, desk):
            reply = await c.iq(None, "set", "<enable xmlns='urn:xmpp:carbons:2'/>")
            assert reply["type"] == "result"
        out = phone.make_message(mto=bob.full("b"), mbody="sent from the phone", mtype="chat")
        out["id"] = "carbon-out"
        out.send()
        assert (await cb.next_message(timeout=15))["body"] == "sent from the phone"
        sent_copy = await desk.next_message(timeout=10)
        forwarded = sent_copy.xml.find(
            "{urn:xmpp:carbons:2}sent/{urn:xmpp:forward:0}forwarded/{jabber:client}message"
        )
        assert forwarded is not None and forwarded.get("id") == "carbon-out", sent_copy
        cb.make_message(mto=alice.full("phone"), mbody="reply from afar", mtype="chat").send()
        got_reply = await phone.next_message(timeout=15, predicate=lambda m: m["body"] == "reply from afar")
        assert got_reply["from"].bare == bob.jid
        received_copy = await desk.next_message(timeout=10)
        forwarded = received_copy.xml.find(
            "{urn:xmpp:carbons:2}received/{urn:xmpp:forward:0}forwarded/{jabber:client}message"
        )
        assert forwarded is not None and forwarded.findtext("{jabber:client}body") == "reply from afar"
    # Read the archive with a fresh client: both messages are there, with the remote JID.
    async with session(a, alice, resource="later") as later:
        got = []
        later.register_handler(
            Callback("mam result", MatchXPath("{jabber:client}message/{urn:xmpp:mam:2}result"), got.append)
        )
        done = await later.iq(None, "set", "<query xmlns='urn:xmpp:mam:2' queryid='q2'/>", timeout=10)
        assert done["type"] == "result", done
        await asyncio.sleep(0.3)
        bodies = {
            m.xml.findtext("{urn:xmpp:mam:2}result/{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body")
            for m in got
        }
        assert {"sent from the phone", "reply from afar"} <= bodies, bodies


async def test_a_component_talks_to_users_on_another_server(pair):
    """XEP-0114 and federation together: a component attached to rookery.test answers a user
    of other.test, whose server reaches the component's domain through rookery.test."""
    from test_component import connect_gateway

    a, b = pair
    bob = b.add_user("bob")
    gateway = await connect_gateway(a, GATEWAY, GATEWAY_SECRET)
    try:
        async with session(b, bob, resource="b") as cb:
            msg = cb.make_message(mto=f"bot@{GATEWAY}", mbody="hello gateway", mtype="chat")
            msg.send()
            got = await asyncio.wait_for(gateway.received.get(), 15)
            assert got["from"].full == bob.full("b")
            echo = await cb.next_message(timeout=15)
            assert echo["body"] == "echo: hello gateway"
            assert echo["from"].bare == f"bot@{GATEWAY}"
    finally:
        await gateway.close()


async def test_a_remote_subscriber_of_the_pubsub_service(pair):
    """XEP-0060 across servers: bob on other.test subscribes to a node of pubsub.rookery.test
    and gets its notifications over the federation link."""
    from test_pep import answer, ok, pep_client, published, wait_event
    from test_pubsub_service import create, entry, publish_to

    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    svc, node = f"pubsub.{A}", "federated-news"
    async with pep_client(a, alice, "desk") as pa, pep_client(b, bob, "b") as pb:
        ok(await create(pa, svc, node))
        reply = ok(await answer(pb.plugin["xep_0060"].subscribe(svc, node, timeout=15)))
        sub = reply.xml.find("{http://jabber.org/protocol/pubsub}pubsub/{http://jabber.org/protocol/pubsub}subscription")
        assert sub is not None and sub.get("jid") == bob.jid and sub.get("subscription") == "subscribed", reply
        ok(await publish_to(pa, svc, node, "n1", entry(1)))
        got = await wait_event(pb, published(node, "n1"), timeout=15, what="notification across servers")
        assert got.get("from") == svc


async def test_presence_probe_after_login_across_servers(pair):
    """RFC 6121 §4.3: a user with a subscription to a remote contact learns the contact's
    presence at login, from the probe its server sends over the federation link."""
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice, resource="a") as ca, session(b, bob, resource="b") as cb:
        request = asyncio.get_running_loop().create_future()
        cb.auto_authorize = None
        cb.add_event_handler("presence_subscribe", lambda p: request.done() or request.set_result(p))
        cb.send_presence(pstatus="always here")
        ca.send_presence()
        await cb.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        ca.send_presence(pto=bob.jid, ptype="subscribe")
        await asyncio.wait_for(request, 15)
        cb.send_presence(pto=alice.jid, ptype="subscribed")
        roster = None
        for _ in range(50):
            roster = await ca.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
            items = {i.get("jid"): i.get("subscription") for i in roster.xml.iter("{jabber:iq:roster}item")}
            if items.get(bob.jid) == "to":
                break
            await asyncio.sleep(0.1)
        await ca.close()
        # A new login: the server probes bob's server, which answers with his presence.
        async with session(a, alice, resource="again") as again:
            seen = asyncio.get_running_loop().create_future()
            again.add_event_handler(
                "presence_available", lambda p: p["from"].bare == bob.jid and not seen.done() and seen.set_result(p)
            )
            again.send_presence()
            got = await asyncio.wait_for(seen, 15)
            assert got["from"].full == bob.full("b")
            assert got["status"] == "always here"


async def test_an_idle_link_closes_and_comes_back(tmp_path):
    a, b = _make_pair(tmp_path, extra_a="idle_timeout_secs = 1", extra_b="idle_timeout_secs = 1")
    a.start()
    b.start()
    try:
        alice, bob = a.add_user("alice"), b.add_user("bob")
        async with session(a, alice, resource="a") as ca, session(b, bob, resource="b") as cb:
            for i in range(2):
                msg = ca.make_message(mto=bob.full("b"), mbody=f"round {i}", mtype="chat")
                msg.send()
                assert (await cb.next_message(timeout=15))["body"] == f"round {i}"
                if i == 0:
                    # Whichever side notices first closes the link in order.
                    deadline = time.monotonic() + 10
                    while "closing an idle" not in a.stderr_text() + b.stderr_text():
                        assert time.monotonic() < deadline, "the idle link was not closed"
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(0.3)
        # Two links were set up: the first closed when idle, the second for round 1.
        assert a.stderr_text().count("server-to-server link up") == 2
    finally:
        a.kill()
        b.kill()


async def test_input_rate_limit_slows_a_peer_without_loss(tmp_path):
    """`[s2s] max_bytes_per_second` on the receiving side: a burst from the peer is read more
    slowly (the stream is not read while over the rate), and every message arrives, in order."""
    a, b = _make_pair(tmp_path, extra_b="max_bytes_per_second = 3000")
    a.start()
    b.start()
    try:
        alice, bob = a.add_user("alice"), b.add_user("bob")
        async with session(a, alice, resource="a") as ca, session(b, bob, resource="b") as cb:
            ca.make_message(mto=bob.full("b"), mbody="warm-up", mtype="chat").send()
            assert (await cb.next_message(timeout=15))["body"] == "warm-up"
            filler = "x" * 250
            started = time.monotonic()
            for i in range(40):
                ca.make_message(mto=bob.full("b"), mbody=f"{i} {filler}", mtype="chat").send()
            got = [await cb.next_message(timeout=30) for _ in range(40)]
            elapsed = time.monotonic() - started
        assert [int(m["body"].split()[0]) for m in got] == list(range(40))
        # About 14 KB at 3,000 bytes/s after a 6,000-byte burst: well over a second.
        assert elapsed > 1.0, elapsed
    finally:
        a.kill()
        b.kill()


async def test_turn_credentials_are_not_given_to_remote_users(pair):
    """XEP-0215 across servers: a user of other.test asking rookery.test for its services is
    refused (`forbidden`); rookery.test's own user gets them with credentials."""
    a, b = pair
    alice, bob = a.add_user("alice"), b.add_user("bob")
    async with session(a, alice) as ca, session(b, bob) as cb:
        own = await ca.iq(A, "get", "<services xmlns='urn:xmpp:extdisco:2'/>", timeout=15)
        assert own["type"] == "result", own
        service = own.xml.find("{urn:xmpp:extdisco:2}services/{urn:xmpp:extdisco:2}service")
        assert service is not None and service.get("username", "").endswith(":" + alice.jid)
        remote = await cb.iq(A, "get", "<services xmlns='urn:xmpp:extdisco:2'/>", timeout=15)
        assert remote["type"] == "error" and remote["error"]["condition"] == "forbidden", remote
