"""The federation harness itself (federation.py): Prosody (prosody.test) and ejabberd
(ejabberd.test) federating with each other over loopback, found through the test's DNS
server and trusting the test CA. No Rookery process is involved: these tests show that the
peers a Rookery federation test talks to work, and how they behave under each certificate
policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

import federation as fed_mod
from harness import CLIENT_NS, PING_NS, VERSION_NS, session

# Both peers allow dialback and present certificates from the test CA unless a test says
# otherwise (Peer.reconfigured).
FEDERATION_PEERS = {"prosody": {}, "ejabberd": {}}

# The first message over a new s2s link waits for DNS, TLS and authentication (and, with
# dialback, a connection back): generous, but bounded.
LINK_TIMEOUT = 20


class PresenceLog:
    """Every presence a client receives, kept; ``await log.wait(predicate)`` finds a match
    among those already seen or waits for the next."""

    def __init__(self, client):
        self.seen: list = []
        self.changed = asyncio.Event()
        client.register_handler(Callback("federation presence", MatchXPath(f"{{{CLIENT_NS}}}presence"), self._add))

    def _add(self, pres) -> None:
        self.seen.append(pres)
        self.changed.set()

    async def wait(self, predicate, timeout: float = LINK_TIMEOUT):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for pres in self.seen:
                if predicate(pres):
                    return pres
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching presence within {timeout}s (seen: {[str(p) for p in self.seen]})")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


async def _exchange(ca, cb, tag: str) -> None:
    """A chat message from ca to cb and an answer back."""
    ca.make_message(mto=cb.boundjid.full, mbody=f"hello {tag}", mtype="chat", mfrom=None).send()
    got = await cb.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] != "error")
    assert got["body"] == f"hello {tag}"
    assert got["from"].full == ca.boundjid.full
    cb.make_message(mto=got["from"], mbody=f"back {tag}", mtype="chat").send()
    back = await ca.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] != "error")
    assert back["body"] == f"back {tag}"
    assert back["from"].full == cb.boundjid.full


def test_dns_server_answers_for_the_peers(federation, prosody_peer, ejabberd_peer):
    dns = federation.dns
    found, records = dns.answer("_xmpp-server._tcp.prosody.test", "SRV")
    assert found and records[0].rdata.port == prosody_peer.s2s_port
    assert str(records[0].rdata.target) == "127.0.0.1."
    found, records = dns.answer("_xmpps-server._tcp.ejabberd.test", "SRV")
    assert found and records[0].rdata.port == ejabberd_peer.s2s_tls_port
    # Subdomains (MUC) are served by their parent's s2s listener.
    found, records = dns.answer("_xmpp-server._tcp.conference.ejabberd.test", "SRV")
    assert found and records[0].rdata.port == ejabberd_peer.s2s_port
    found, records = dns.answer("conference.prosody.test", "A")
    assert found and str(records[0].rdata) == "127.0.0.1"
    # Unknown domains: a refusing port (s2s), NXDOMAIN otherwise.
    found, records = dns.answer("_xmpp-server._tcp.nowhere.test", "SRV")
    assert found and records[0].rdata.port == dns.refusing_port
    assert dns.answer("nowhere.test", "A") == (False, [])
    # What a Rookery configuration gets.
    hosts = federation.rookery_s2s_hosts()
    assert hosts["prosody.test"] == f"127.0.0.1:{prosody_peer.s2s_port}"
    assert hosts["ejabberd.test"] == f"127.0.0.1:{ejabberd_peer.s2s_port}"
    assert federation.rookery_s2s_hosts(direct_tls=True)["conference.ejabberd.test"] == (
        f"127.0.0.1:{ejabberd_peer.s2s_tls_port}"
    )
    assert f'"prosody.test" = "127.0.0.1:{prosody_peer.s2s_port}"' in federation.rookery_s2s_hosts_toml()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", federation.dns_address)
    for port in (prosody_peer.c2s_port, prosody_peer.s2s_port, ejabberd_peer.c2s_port, ejabberd_peer.s2s_port):
        assert port not in fed_mod.RESERVED_PORTS


async def test_messages_presence_and_iq_between_prosody_and_ejabberd(federation, prosody_peer, ejabberd_peer):
    alice = prosody_peer.add_user("alice")
    bob = ejabberd_peer.add_user("bob")
    prosody_mark, ejabberd_mark = prosody_peer.log_size(), ejabberd_peer.log_size()
    async with session(prosody_peer, alice, resource="a") as ca, session(ejabberd_peer, bob, resource="b") as cb:
        ca.auto_authorize = cb.auto_authorize = None  # subscriptions answered by hand below
        ca.auto_subscribe = cb.auto_subscribe = False
        pa, pb = PresenceLog(ca), PresenceLog(cb)
        ca.send_presence()
        cb.send_presence()

        await _exchange(ca, cb, "from prosody")
        await _exchange(cb, ca, "from ejabberd")

        # alice subscribes to bob; bob approves; alice then sees bob's presence.
        ca.send_presence(pto=bob.jid, ptype="subscribe")
        req = await pb.wait(lambda p: p["type"] == "subscribe")
        assert req["from"].bare == alice.jid
        cb.send_presence(pto=alice.jid, ptype="subscribed")
        seen = await pa.wait(lambda p: p["type"] == "available" and p["from"].bare == bob.jid)
        assert seen["from"].full == cb.boundjid.full
        roster = await ca.get_roster()
        assert roster["roster"]["items"][bob.jid]["subscription"] == "to"

        # IQs across the link: ping and software version of the other server.
        pong = await ca.iq(ejabberd_peer.domain, "get", f"<ping xmlns='{PING_NS}'/>", timeout=LINK_TIMEOUT)
        assert pong["type"] == "result"
        version = await cb.iq(prosody_peer.domain, "get", f"<query xmlns='{VERSION_NS}'/>", timeout=LINK_TIMEOUT)
        assert version["type"] == "result"
        assert version.xml.find(f"{{{VERSION_NS}}}query/{{{VERSION_NS}}}name").text == "Prosody"
        version = await ca.iq(ejabberd_peer.domain, "get", f"<query xmlns='{VERSION_NS}'/>", timeout=LINK_TIMEOUT)
        assert version.xml.find(f"{{{VERSION_NS}}}query/{{{VERSION_NS}}}name").text == "ejabberd"

    # Both found each other through the test's DNS server.
    # Both prefer XEP-0368 direct TLS, published with the higher priority.
    asked = set(federation.dns.queries)
    assert ("_xmpps-server._tcp.ejabberd.test", "SRV") in asked
    assert ("_xmpps-server._tcp.prosody.test", "SRV") in asked
    tls_in_prosody = r"New connection .* on server FD \d+ \(127\.0\.0\.1, %d\)" % prosody_peer.s2s_tls_port
    assert prosody_peer.log_lines(tls_in_prosody, after=prosody_mark, wait=5), "ejabberd did not use direct TLS"
    tls_in_ejabberd = r"Accepted connection 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:%d" % ejabberd_peer.s2s_tls_port
    assert ejabberd_peer.log_lines(tls_in_ejabberd, after=ejabberd_mark, wait=5), "Prosody did not use direct TLS"
    # Valid certificates on both sides: authenticated with SASL EXTERNAL, no dialback.
    for peer in (prosody_peer, ejabberd_peer):
        for direction in ("in", "out"):
            assert set(peer.s2s_auth_methods(direction=direction)) == {"EXTERNAL"}, (peer.kind, direction)


async def test_untrusted_certificate_falls_back_to_dialback_or_is_refused(prosody_peer, ejabberd_peer):
    alice = prosody_peer.add_user("alice")
    bob = ejabberd_peer.add_user("bob")
    with ejabberd_peer.reconfigured(trusted_cert=False):
        # Prosody allows dialback: the link works, authenticated by dialback.
        mark = prosody_peer.log_size()
        async with session(prosody_peer, alice) as ca, session(ejabberd_peer, bob) as cb:
            await _exchange(ca, cb, "over dialback")
            await _exchange(cb, ca, "over dialback too")
        # ejabberd's link into Prosody: its certificate fails, dialback instead of EXTERNAL.
        assert set(prosody_peer.s2s_auth_methods(after=mark, direction="in")) == {"dialback"}
        # Prosody's link into ejabberd: Prosody's certificate is good, so EXTERNAL; that
        # ejabberd's own certificate is not trusted is no reason to refuse without
        # s2s_secure_auth.
        assert set(prosody_peer.s2s_auth_methods(after=mark, direction="out")) == {"EXTERNAL"}

        # Prosody requires authenticated certificates: the message bounces, both ways.
        with prosody_peer.reconfigured(secure_auth=True):
            async with session(prosody_peer, alice) as ca, session(ejabberd_peer, bob) as cb:
                msg = ca.make_message(mto=bob.jid, mbody="refused?", mtype="chat")
                msg["id"] = "secure-1"
                msg.send()
                err = await ca.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] == "error")
                assert err["id"] == "secure-1"
                assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout", "not-authorized", "policy-violation")

                msg = cb.make_message(mto=alice.jid, mbody="refused too?", mtype="chat")
                msg["id"] = "secure-2"
                msg.send()
                err = await cb.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] == "error")
                assert err["id"] == "secure-2"
                assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout", "not-authorized", "policy-violation")
                with pytest.raises(asyncio.TimeoutError):
                    await ca.next_message(timeout=1, predicate=lambda m: m["type"] != "error")


async def test_unknown_domain_bounces_at_once(federation, prosody_peer, ejabberd_peer):
    """A domain the DNS server does not know: its s2s SRV record leads to a refusing port, so
    each peer bounces the message at once (and none resolves the name elsewhere)."""
    for peer in (prosody_peer, ejabberd_peer):
        user = peer.add_user("lonely")
        async with session(peer, user) as client:
            msg = client.make_message(mto="someone@nowhere.test", mbody="anyone?", mtype="chat")
            msg["id"] = f"nowhere-{peer.kind}"
            msg.send()
            err = await client.next_message(timeout=10, predicate=lambda m: m["type"] == "error")
            assert err["id"] == f"nowhere-{peer.kind}"
            assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout"), (peer.kind, str(err))
    assert ("_xmpp-server._tcp.nowhere.test", "SRV") in federation.dns.queries


async def test_ejabberd_secure_auth_takes_valid_certificates_only(prosody_peer, ejabberd_peer):
    """ejabberd without dialback (secure_auth): SASL EXTERNAL with Prosody's good certificate;
    Prosody presenting an untrusted one is refused."""
    alice = prosody_peer.add_user("alice")
    bob = ejabberd_peer.add_user("bob")
    with ejabberd_peer.reconfigured(secure_auth=True):
        mark = ejabberd_peer.log_size()
        async with session(prosody_peer, alice) as ca, session(ejabberd_peer, bob) as cb:
            await _exchange(cb, ca, "secure")
            await _exchange(ca, cb, "secure too")
        assert set(ejabberd_peer.s2s_auth_methods(after=mark)) == {"EXTERNAL"}

        with prosody_peer.reconfigured(trusted_cert=False):
            async with session(prosody_peer, alice) as ca, session(ejabberd_peer, bob) as cb:
                msg = cb.make_message(mto=alice.jid, mbody="refused?", mtype="chat")
                msg["id"] = "ej-secure-1"
                msg.send()
                err = await cb.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] == "error")
                assert err["id"] == "ej-secure-1"
                msg = ca.make_message(mto=bob.jid, mbody="refused too?", mtype="chat")
                msg["id"] = "ej-secure-2"
                msg.send()
                err = await ca.next_message(timeout=LINK_TIMEOUT, predicate=lambda m: m["type"] == "error")
                assert err["id"] == "ej-secure-2"
                with pytest.raises(asyncio.TimeoutError):
                    await cb.next_message(timeout=1, predicate=lambda m: m["type"] != "error")
