"""Federation with real Prosody and ejabberd (Debian's), started by the test as
`prosody.test` and `ejabberd.test` beside Rookery as `rookery.test` (`federation.py`: a DNS
server of the test's own publishes everyone's SRV records, a test CA signs everyone's
certificate; Rookery finds the peers through `[s2s.hosts]` and trusts the CA through
`[s2s] ca_files`).

With each peer: users on both sides exchange messages and subscribe to each other's presence,
an IQ gets its answer, a message to an unknown user on the peer comes back as an error; with
valid certificates both directions authenticate by SASL EXTERNAL (XEP-0178); a peer with an
untrusted certificate is accepted by dialback under the default policy and refused under
`authentication = "certificate"`; the peers reach Rookery over direct TLS (XEP-0368) and
Rookery reaches them over it."""

from __future__ import annotations

import asyncio

import pytest

import federation as federation_peers
from conftest import ROOKERY_BIN
from harness import PING_NS, RookeryServer, ServerStartError, session, toml_str

FEDERATION_PEERS = {"prosody": {}, "ejabberd": {}}
ROOKERY = federation_peers.ROOKERY_DOMAIN


def start_rookery(federation, workdir, *, domain=ROOKERY, trusted=True, direct_tls_out=False, s2s_extra=""):
    tls_port = federation_peers.pick_ports(1)[0]
    server = RookeryServer(ROOKERY_BIN, workdir, domain=domain, s2s=True)
    server.config_overrides["extra_toml"] = (
        "[s2s]\nsystem_roots = false\n"
        f"ca_files = [{toml_str(str(federation.ca_path))}]\n"
        f"connect_timeout_secs = 3\n{s2s_extra}\n"
        + _hosts_toml(federation, direct_tls_out)
        + f'\n[[listener]]\nkind = "s2s-direct-tls"\naddress = "127.0.0.1:{tls_port}"\n'
    )
    federation.install_rookery_cert(server.data_dir / "certs", trusted=trusted, domain=domain)
    federation.register_rookery(server.s2s_port, tls_port, domain=domain)
    server.s2s_tls_port = tls_port
    try:
        server.start()
    except ServerStartError as e:
        server.kill()
        pytest.fail(str(e), pytrace=False)
    return server


def _hosts_toml(federation, direct_tls: bool) -> str:
    """`[s2s.hosts]` for the peers; `tls://` for their direct TLS (XEP-0368) ports."""
    if not direct_tls:
        return federation.rookery_s2s_hosts_toml()
    hosts = federation.rookery_s2s_hosts(direct_tls=True)
    return "[s2s.hosts]\n" + "".join(f'"{d}" = "tls://{a}"\n' for d, a in sorted(hosts.items()))


@pytest.fixture(scope="module")
def rookery(federation, prosody_peer, ejabberd_peer, tmp_path_factory):
    server = start_rookery(federation, tmp_path_factory.mktemp("rookery"))
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def another_rookery(federation, rookery, tmp_path):
    """``another_rookery(name, **settings)``: one more Rookery, serving `rookery-<name>.test`
    (a domain of its own: the peers keep their streams to `rookery.test` and would use them
    for any process claiming that name)."""
    started = []

    def start(name, **settings):
        domain = f"rookery-{name}.test"
        server = start_rookery(federation, tmp_path / name, domain=domain, **settings)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()
            federation.dns.remove_service(server.domain)


@pytest.fixture(params=["prosody", "ejabberd"])
def peer(request, prosody_peer, ejabberd_peer):
    return {"prosody": prosody_peer, "ejabberd": ejabberd_peer}[request.param]


def _is_error(msg) -> bool:
    return msg["type"] == "error"


async def test_messages_both_ways(rookery, peer):
    alice, bob = rookery.add_user("alice"), peer.add_user("bob")
    async with session(rookery, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        msg = ca.make_message(mto=bob.full("p"), mbody=f"hello {peer.domain}", mtype="chat")
        msg["id"] = "out-1"
        msg.send()
        got = await cb.next_message(timeout=20)
        assert (got["body"], got["id"]) == (f"hello {peer.domain}", "out-1")
        assert got["from"].full == alice.full("r")

        reply = cb.make_message(mto=alice.full("r"), mbody="hello rookery", mtype="chat")
        reply["id"] = "in-1"
        reply.send()
        back = await ca.next_message(timeout=20, predicate=lambda m: m["id"] == "in-1")
        assert back["body"] == "hello rookery"
        assert back["from"].full == bob.full("p")


async def test_iq_to_the_peer_and_from_it(rookery, peer):
    alice, bob = rookery.add_user("alice"), peer.add_user("bob")
    async with session(rookery, alice) as ca, session(peer, bob) as cb:
        pong = await ca.iq(peer.domain, "get", f"<ping xmlns='{PING_NS}'/>", timeout=20)
        assert pong["type"] == "result", pong
        version = await ca.iq(peer.domain, "get", "<query xmlns='jabber:iq:version'/>", timeout=20)
        assert version["type"] == "result", version
        assert version.xml.find("{jabber:iq:version}query/{jabber:iq:version}name").text
        # And the other way: the peer's user asks Rookery's server.
        back = await cb.iq(ROOKERY, "get", "<query xmlns='jabber:iq:version'/>", timeout=20)
        assert back["type"] == "result", back
        assert back.xml.find("{jabber:iq:version}query/{jabber:iq:version}name").text == "Rookery"


async def test_message_to_an_unknown_user_on_the_peer_comes_back(rookery, peer):
    alice = rookery.add_user("alice")
    async with session(rookery, alice) as ca:
        msg = ca.make_message(mto=f"nobody-at-all@{peer.domain}", mbody="hello?", mtype="chat")
        msg["id"] = "nobody-1"
        msg.send()
        err = await ca.next_message(timeout=20, predicate=_is_error)
        assert err["id"] == "nobody-1"
        assert err["error"]["condition"] in ("service-unavailable", "item-not-found"), err


async def test_subscription_and_presence(rookery, peer):
    alice, bob = rookery.add_user("alice"), peer.add_user("bob")
    async with session(rookery, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        loop = asyncio.get_running_loop()
        request, online = loop.create_future(), loop.create_future()
        cb.auto_authorize = None
        cb.add_event_handler("presence_subscribe", lambda p: request.done() or request.set_result(p))

        def on_available(p):
            if p["from"].bare == bob.jid and not online.done():
                online.set_result(p)

        ca.add_event_handler("presence_available", on_available)
        cb.send_presence()
        ca.send_presence()
        await ca.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        await cb.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        ca.send_presence(pto=bob.jid, ptype="subscribe")
        got = await asyncio.wait_for(request, 20)
        assert got["from"].bare == alice.jid
        cb.send_presence(pto=alice.jid, ptype="subscribed")
        seen = await asyncio.wait_for(online, 20)
        assert seen["from"].full == bob.full("p")
        roster = await ca.iq(None, "get", "<query xmlns='jabber:iq:roster'/>", timeout=10)
        items = {i.get("jid"): i.get("subscription") for i in roster.xml.iter("{jabber:iq:roster}item")}
        assert items.get(bob.jid) == "to", items


async def test_valid_certificates_authenticate_by_sasl_external(rookery, peer):
    alice, bob = rookery.add_user("alice"), peer.add_user("bob")
    mark = peer.log_size()
    rookery_mark = len(rookery.stderr_text())
    async with session(rookery, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        # Both directions in use: Rookery → peer, then peer → Rookery.
        ca.make_message(mto=bob.full("p"), mbody="x", mtype="chat").send()
        await cb.next_message(timeout=20)
        cb.make_message(mto=alice.full("r"), mbody="y", mtype="chat").send()
        await ca.next_message(timeout=20)
    methods = peer.s2s_auth_methods(after=mark, direction="in")
    # A link opened before this test may still carry the traffic: then Rookery's log shows
    # nothing new, and the earlier authentication counts.
    log = rookery.stderr_text()
    if methods:
        assert set(methods) == {"EXTERNAL"}, methods
    assert "authenticated by dialback" not in log, "dialback used although certificates are valid"
    assert "authenticated by certificate" in log[rookery_mark:] or "authenticated by certificate" in log


async def test_untrusted_peer_certificate_falls_back_to_dialback_or_is_refused(peer, another_rookery):
    strict = another_rookery("strict", s2s_extra='authentication = "certificate"')
    try:
        strict_alice = strict.add_user("carol")
        with peer.reconfigured(trusted_cert=False):
            bob = peer.add_user("bob")
            # Rookery's links to the peer were made with the old certificate: a new server
            # process makes new ones. The default policy accepts dialback.
            lenient = another_rookery("lenient")
            try:
                lenient_alice = lenient.add_user("alice")
                async with session(lenient, lenient_alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
                    cb.make_message(mto=lenient_alice.full("r"), mbody="via dialback", mtype="chat").send()
                    got = await ca.next_message(timeout=25)
                    assert got["body"] == "via dialback"
                    ca.make_message(mto=bob.full("p"), mbody="back", mtype="chat").send()
                    got = await cb.next_message(timeout=25)
                    assert got["body"] == "back"
                assert "authenticated by dialback" in lenient.stderr_text()
            finally:
                lenient.kill()
            # The strict server refuses the untrusted peer: its message bounces.
            async with session(strict, strict_alice) as cs:
                msg = cs.make_message(mto=bob.jid, mbody="refused", mtype="chat")
                msg["id"] = "strict-1"
                msg.send()
                err = await cs.next_message(timeout=25, predicate=_is_error)
                assert err["id"] == "strict-1"
                assert err["error"]["condition"] == "remote-server-timeout"
    finally:
        strict.kill()


async def test_direct_tls_both_ways(peer, another_rookery):
    """XEP-0368 both ways: each side connects to the other's direct TLS port (the peers find
    Rookery's through `_xmpps-server`, Rookery theirs through `tls://` in `[s2s.hosts]`). A
    peer that uses bidirectional streams (Prosody) answers on the stream it was given, so
    each direction is started by its own sender on its own Rookery."""
    def link_up_direct(log: str) -> bool:
        return any("link up" in line and "direct_tls=true" in line for line in log.splitlines())

    def incoming_direct(log: str) -> bool:
        return any(
            "incoming server-to-server stream authenticated" in line and "direct_tls=true" in line
            for line in log.splitlines()
        )

    # Rookery connects.
    server = another_rookery("out", direct_tls_out=True)
    alice, bob = server.add_user("alice"), peer.add_user("bob")
    async with session(server, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        ca.make_message(mto=bob.full("p"), mbody="over direct TLS", mtype="chat").send()
        assert (await cb.next_message(timeout=20))["body"] == "over direct TLS"
        cb.make_message(mto=alice.full("r"), mbody="and back", mtype="chat").send()
        assert (await ca.next_message(timeout=20))["body"] == "and back"
    assert link_up_direct(server.stderr_text()), server.log_tail()

    # The peer connects.
    server = another_rookery("in")
    alice, bob = server.add_user("alice"), peer.add_user("bob")
    async with session(server, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        cb.make_message(mto=alice.full("r"), mbody="from the peer", mtype="chat").send()
        assert (await ca.next_message(timeout=20))["body"] == "from the peer"
        ca.make_message(mto=bob.full("p"), mbody="answered", mtype="chat").send()
        assert (await cb.next_message(timeout=20))["body"] == "answered"
    assert incoming_direct(server.stderr_text()), server.log_tail()


async def test_bidirectional_streams_where_the_peer_offers_them(peer, another_rookery):
    """XEP-0288: Prosody offers bidi and uses it; ejabberd does not, so two streams are used."""
    server = another_rookery("bidi")
    alice, bob = server.add_user("alice"), peer.add_user("bob")
    async with session(server, alice, resource="r") as ca, session(peer, bob, resource="p") as cb:
        cb.make_message(mto=alice.full("r"), mbody="ping", mtype="chat").send()
        assert (await ca.next_message(timeout=20))["body"] == "ping"
        ca.make_message(mto=bob.full("p"), mbody="pong", mtype="chat").send()
        assert (await cb.next_message(timeout=20))["body"] == "pong"
    log = server.stderr_text()
    both_ways = "used both ways" in log
    own_link = "server-to-server link up" in log
    if peer.domain.startswith("prosody"):
        assert both_ways and not own_link, log[-3000:]
    else:
        assert own_link and not both_ways, log[-3000:]


async def _join(client, room: str, nick: str):
    from test_muc import codes

    pres, *_ = await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=20)
    assert "110" in codes(pres), pres
    if "201" in codes(pres):
        # A new room: accept the default configuration (XEP-0045 §10.1.2).
        reply = await client.iq(
            room,
            "set",
            "<query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query>",
            timeout=20,
        )
        assert reply["type"] == "result", reply
    return pres


async def test_group_chat_across_servers(rookery, peer):
    """A user of the peer in a room of Rookery's, and a Rookery user in a room of the peer's."""
    import uuid

    from test_muc import muc_client

    alice, bob = rookery.add_user("alice"), peer.add_user("bob")

    def groupchat(body):
        return lambda m: m["type"] == "groupchat" and m["body"] == body

    async with muc_client(rookery, alice) as ca, muc_client(peer, bob) as cb:
        here = f"fed-{uuid.uuid4().hex[:8]}@conference.{ROOKERY}"
        await _join(ca, here, "alice")
        await _join(cb, here, "bob")
        ca.send_message(mto=here, mbody="welcome, remote occupant", mtype="groupchat")
        got = await cb.next_message(timeout=20, predicate=groupchat("welcome, remote occupant"))
        assert got["from"].full == f"{here}/alice"
        cb.send_message(mto=here, mbody="thanks from afar", mtype="groupchat")
        got = await ca.next_message(timeout=20, predicate=groupchat("thanks from afar"))
        assert got["from"].full == f"{here}/bob"

        there = f"fed-{uuid.uuid4().hex[:8]}@conference.{peer.domain}"
        await _join(cb, there, "bob")
        await _join(ca, there, "alice")
        cb.send_message(mto=there, mbody="hosted by the peer", mtype="groupchat")
        got = await ca.next_message(timeout=20, predicate=groupchat("hosted by the peer"))
        assert got["from"].full == f"{there}/bob"
