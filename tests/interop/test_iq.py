"""Server IQ services: ping, disco, version, time; IQ errors and routing."""

from __future__ import annotations

import datetime
import re

import pytest

from harness import (
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    PING_NS,
    TIME_NS,
    VERSION_NS,
    session,
)

REQUIRED_FEATURES = {DISCO_INFO_NS, PING_NS, VERSION_NS, TIME_NS}


def _query(reply, ns: str, name: str = "query"):
    return reply.xml.find(f"{{{ns}}}{name}")


async def test_ping_server(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "result"
        assert reply["from"].full == server.domain
        # A ping result carries no payload.
        assert len(reply.xml) == 0


async def test_iq_without_to_is_answered_on_behalf_of_account(server, alice):
    """An IQ with no 'to' is handled by the server on behalf of the account
    (RFC 6120 s10.3.3): it gets an answer, result or error, never silence."""
    async with session(server, alice) as c:
        reply = await c.iq(None, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] in ("result", "error")
        if reply["type"] == "error":
            assert reply["from"].full in ("", alice.jid), reply["from"]
            assert reply["error"]["condition"]


async def test_disco_info_on_server(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        assert reply["type"] == "result"
        query = _query(reply, DISCO_INFO_NS)
        assert query is not None
        features = {f.get("var") for f in query.findall(f"{{{DISCO_INFO_NS}}}feature")}
        missing = REQUIRED_FEATURES - features
        assert not missing, f"missing features {missing}; got {features}"
        identities = {(i.get("category"), i.get("type")) for i in query.findall(f"{{{DISCO_INFO_NS}}}identity")}
        assert ("server", "im") in identities, identities


async def test_disco_info_with_slixmpp_plugin(server, alice):
    async with session(server, alice) as c:
        info = await c.plugin["xep_0030"].get_info(jid=server.domain, timeout=5)
        assert REQUIRED_FEATURES <= set(info["disco_info"]["features"])
        assert any(cat == "server" and typ == "im" for cat, typ, *_ in info["disco_info"]["identities"])


async def test_disco_items_on_server(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert reply["type"] == "result"
        query = _query(reply, DISCO_ITEMS_NS)
        assert query is not None
        for item in query.findall(f"{{{DISCO_ITEMS_NS}}}item"):
            assert item.get("jid")


async def test_version(server, alice):
    if server.external:
        pytest.skip("checks rookery's name")
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<query xmlns='{VERSION_NS}'/>")
        assert reply["type"] == "result"
        query = _query(reply, VERSION_NS)
        assert query.findtext(f"{{{VERSION_NS}}}name") == "Rookery"
        version = query.findtext(f"{{{VERSION_NS}}}version")
        assert version and re.match(r"^\d+\.\d+", version), version


async def test_version_with_slixmpp_plugin(server, alice):
    async with session(server, alice) as c:
        reply = await c.plugin["xep_0092"].get_version(server.domain, timeout=5)
        assert reply["type"] == "result"
        assert reply["software_version"]["name"]
        assert reply["software_version"]["version"]


async def test_time(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, "get", f"<time xmlns='{TIME_NS}'/>")
        assert reply["type"] == "result"
        t = _query(reply, TIME_NS, "time")
        tzo = t.findtext(f"{{{TIME_NS}}}tzo")
        utc = t.findtext(f"{{{TIME_NS}}}utc")
        assert tzo and re.fullmatch(r"Z|[+-]\d{2}:\d{2}", tzo), tzo
        assert utc and re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", utc), utc
        server_now = datetime.datetime.fromisoformat(utc.replace("Z", "+00:00"))
        skew = abs((server_now - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
        assert skew < 60, f"server clock off by {skew}s"


@pytest.mark.parametrize("itype", ["get", "set"])
async def test_unknown_namespace_is_service_unavailable(server, alice, itype):
    async with session(server, alice) as c:
        reply = await c.iq(server.domain, itype, "<query xmlns='urn:example:no-such-protocol'/>")
        assert reply["type"] == "error"
        assert reply["error"]["condition"] == "service-unavailable"
        assert reply["error"]["type"] == "cancel"
        assert reply["from"].full == server.domain


async def test_iq_to_offline_full_jid_is_service_unavailable(server, alice, bob):
    async with session(server, alice) as c:
        reply = await c.iq(bob.full("not-connected"), "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "error"
        assert reply["error"]["condition"] == "service-unavailable"
        assert reply["from"].full == bob.full("not-connected")


async def test_iq_routed_between_users_and_back(server, alice, bob):
    """Alice's IQ reaches Bob's client; Bob's client's answer comes back to Alice."""
    async with session(server, alice) as ca, session(server, bob) as cb:
        reply = await ca.iq(cb.boundjid.full, "get", f"<query xmlns='{VERSION_NS}'/>")
        assert reply["type"] == "result"
        assert reply["from"].full == cb.boundjid.full
        assert _query(reply, VERSION_NS).findtext(f"{{{VERSION_NS}}}name")  # slixmpp answered


async def test_raw_iq_roundtrip_keeps_id(server, raw, alice):
    stream = raw()
    stream.login(alice)
    reply = stream.iq(f"<query xmlns='{DISCO_INFO_NS}'/>", to=server.domain)
    assert reply.get("type") == "result"
    assert reply.get("from") == server.domain
    assert reply.get("to") == stream.jid


async def test_modules_setting_limits_services(make_server):
    """With host modules = ["disco", "ping"], version and time are gone (and not advertised)."""
    srv = make_server(modules=["disco", "ping"])
    user = srv.add_user("mod")
    async with session(srv, user) as c:
        info = await c.iq(srv.domain, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        features = {f.get("var") for f in _query(info, DISCO_INFO_NS).findall(f"{{{DISCO_INFO_NS}}}feature")}
        assert DISCO_INFO_NS in features and PING_NS in features
        assert VERSION_NS not in features and TIME_NS not in features
        for payload in (f"<query xmlns='{VERSION_NS}'/>", f"<time xmlns='{TIME_NS}'/>"):
            reply = await c.iq(srv.domain, "get", payload)
            assert reply["type"] == "error"
            assert reply["error"]["condition"] == "service-unavailable"
        pong = await c.iq(srv.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert pong["type"] == "result"
