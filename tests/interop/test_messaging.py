"""Message routing between local users, and bounces."""

from __future__ import annotations

import asyncio

from harness import CLIENT_NS, PING_NS, qn, session


def _is_error(msg) -> bool:
    return msg["type"] == "error"


async def test_chat_both_ways(server, alice, bob):
    async with session(server, alice, resource="a") as ca, session(server, bob, resource="b") as cb:
        body = "hello <bob> & \"friends\" — ünïcödé ☃"
        msg = ca.make_message(mto=cb.boundjid.full, mbody=body, mtype="chat")
        msg["id"] = "msg-a-1"
        msg.send()
        got = await cb.next_message(timeout=5)
        assert got["type"] == "chat"
        assert got["body"] == body
        assert got["id"] == "msg-a-1"
        assert got["from"].full == alice.full("a")
        assert got["to"].full == bob.full("b")

        reply = cb.make_message(mto=got["from"], mbody="hi alice", mtype="chat")
        reply["id"] = "msg-b-1"
        reply.send()
        back = await ca.next_message(timeout=5)
        assert (back["type"], back["body"], back["id"]) == ("chat", "hi alice", "msg-b-1")
        assert back["from"].full == bob.full("b")
        assert not ca.stream_errors and not cb.stream_errors


async def test_normal_message_type_preserved(server, alice, bob):
    async with session(server, alice) as ca, session(server, bob) as cb:
        msg = ca.make_message(mto=cb.boundjid.full, mbody="no type attribute")
        msg["id"] = "plain-1"
        msg.send()
        got = await cb.next_message(timeout=5)
        assert got["body"] == "no type attribute"
        assert got["type"] in ("normal", "")  # absent type means normal
        assert got["from"].full == ca.boundjid.full


async def test_message_to_bare_jid_reaches_online_resource(server, alice, bob):
    async with session(server, alice) as ca, session(server, bob, resource="only") as cb:
        # Available resources get bare-JID messages (RFC 6121 s8.5.2.1).
        ca.send_presence()
        cb.send_presence()
        await asyncio.sleep(0.2)
        msg = ca.make_message(mto=bob.jid, mbody="to your bare jid", mtype="chat")
        msg["id"] = "bare-1"
        msg.send()
        got = await cb.next_message(timeout=5, predicate=lambda m: m["body"] == "to your bare jid")
        assert got["id"] == "bare-1"
        assert got["from"].full == ca.boundjid.full
        assert got["to"].bare == bob.jid


async def test_message_to_unknown_local_user_bounces_service_unavailable(server, alice):
    async with session(server, alice) as ca:
        target = f"no-such-user-xyz@{server.domain}"
        msg = ca.make_message(mto=target, mbody="anyone?", mtype="chat")
        msg["id"] = "unknown-1"
        msg.send()
        err = await ca.next_message(timeout=5, predicate=_is_error)
        assert err["id"] == "unknown-1"
        assert err["from"].bare == target
        assert err["error"]["condition"] == "service-unavailable"
        assert err["error"]["type"] == "cancel"


async def test_message_to_unserved_domain_bounces_remote_server_not_found(server, alice):
    async with session(server, alice) as ca:
        msg = ca.make_message(mto="someone@nonexistent.example", mbody="far away", mtype="chat")
        msg["id"] = "remote-1"
        msg.send()
        err = await ca.next_message(timeout=10, predicate=_is_error)
        assert err["id"] == "remote-1"
        assert err["error"]["condition"] == "remote-server-not-found"
        assert err["error"]["type"] == "cancel"
        # The session survives the bounce.
        reply = await ca.iq(server.domain, "get", f"<ping xmlns='{PING_NS}'/>")
        assert reply["type"] == "result"


async def test_many_messages_arrive_in_order(server, alice, bob):
    async with session(server, alice) as ca, session(server, bob) as cb:
        for i in range(50):
            m = ca.make_message(mto=cb.boundjid.full, mbody=f"n{i}", mtype="chat")
            m["id"] = f"seq-{i}"
            m.send()
        bodies = [(await cb.next_message(timeout=5))["body"] for _ in range(50)]
        assert bodies == [f"n{i}" for i in range(50)]


def test_raw_message_routing_after_auth(server, raw, alice, bob):
    """The same exchange by hand: what goes over the wire is what arrives."""
    sa = raw()
    ja = sa.login(alice, resource="wire")
    sb = raw(direct_tls=True)
    jb = sb.login(bob, resource="wire")
    sa.send(f"<message to='{jb}' type='chat' id='w1'><body>over the wire</body><thread>t-1</thread></message>")
    got = sb.wait_for(qn(CLIENT_NS, "message"), timeout=5)
    assert got.get("from") == ja
    assert got.get("to") == jb
    assert got.get("id") == "w1"
    assert got.get("type") == "chat"
    assert got.findtext(qn(CLIENT_NS, "body")) == "over the wire"
    assert got.findtext(qn(CLIENT_NS, "thread")) == "t-1"
