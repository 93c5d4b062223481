"""Offline messages (RFC 6121 §8.5.2.2, XEP-0160) with delayed-delivery stamps (XEP-0203):
storage, delivery at the next available presence, the quota, and durability across a
graceful restart and a SIGKILL."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest

from harness import (
    CLIENT_NS,
    DELAY_NS,
    UserPool,
    im_login,
    messages,
    qn,
    restart_server,
    send_presence,
    session,
    stanza_error_condition,
    sync,
    unique_localpart,
)

SERVER_CONFIG = {"extra_limits": {"max_offline_messages": 3}}

# After the expected messages, how long to watch for a duplicate.
GRACE = 0.7


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "off", workers=2)
    users.prefetch(8)
    yield users
    users.close()


def send_chat(stream, to: str, body: str, *, mtype: str | None = "chat", msg_id: str | None = None) -> str:
    msg_id = msg_id or unique_localpart("m")
    type_attr = f" type='{mtype}'" if mtype else ""
    stream.send(f"<message to='{to}'{type_attr} id='{msg_id}'><body>{body}</body></message>")
    return msg_id


def receive(stream, already, count: int, timeout: float = 5.0) -> list:
    """``count`` messages: those in ``already`` first, then the next to arrive; then make sure
    no further message follows within ``GRACE`` seconds."""
    got = messages(already)
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{len(got)} of {count} messages arrived: {[body(m) for m in got]}")
        try:
            got.append(stream.wait_for(qn(CLIENT_NS, "message"), remaining))
        except TimeoutError:
            continue
    extra = []
    try:
        extra.append(stream.wait_for(qn(CLIENT_NS, "message"), GRACE))
    except TimeoutError:
        pass
    assert not extra and len(got) == count, f"more than {count} messages: {[body(m) for m in got + extra]}"
    return got


def body(m) -> str | None:
    return m.findtext(qn(CLIENT_NS, "body"))


def assert_delay(m, domain: str, not_before: float) -> None:
    delay = m.find(qn(DELAY_NS, "delay"))
    assert delay is not None, "no XEP-0203 <delay/>"
    assert delay.get("from") == domain
    stamp = datetime.datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and stamp.utcoffset() == datetime.timedelta(0), "stamp not in UTC"
    assert not_before - 1 <= stamp.timestamp() <= time.time() + 1, f"stamp {stamp} out of range"


# -- Storage and delivery ----------------------------------------------------------------------


async def test_stored_and_delivered_in_order_with_delay(server, raw, pool):
    user, sender = pool.take(), pool.take()
    started = time.time()
    c = raw()
    im_login(c, sender, "c")
    ids = [
        send_chat(c, user.jid, "one"),
        send_chat(c, user.jid, "two", mtype=None),  # normal
        send_chat(c, user.full("gone"), "three"),  # offline resource: handled as the bare JID
    ]
    # Not stored (XEP-0160 §3, RFC 6121 §8.5.2.2): a headline, a message without a body.
    c.send(f"<message to='{user.jid}' type='headline' id='h1'><body>news</body></message>")
    c.send(f"<message to='{user.jid}' type='chat' id='cs1'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    errors = [e for e in sync(c) if e.get("type") == "error"]
    assert errors == [], "storing offline is not an error"

    # A real client library sees them with their delay stamps.
    async with session(server, user, resource="phone") as client:
        client.register_plugin("xep_0203")
        client.send_presence()
        got = [await client.next_message(timeout=5) for _ in range(3)]
        assert [m["body"] for m in got] == ["one", "two", "three"]
        assert [m["id"] for m in got] == ids
        assert [m["type"] for m in got] == ["chat", "normal", "chat"]
        for m in got:
            assert m["from"].full == sender.full("c")
            assert m["to"].bare == user.jid
            assert m["delay"]["from"].full == server.domain
            stamp = m["delay"]["stamp"]
            assert started - 1 <= stamp.timestamp() <= time.time() + 1
        await asyncio.sleep(GRACE)
        assert client.inbox.empty(), "headline or body-less message stored, or a message repeated"

    # Delivered once: the next login gets nothing.
    again = raw()
    got = im_login(again, user, "again")
    assert receive(again, got, 0) == []


def test_wire_form_of_offline_message(server, raw, pool):
    user, sender = pool.take(), pool.take()
    started = time.time()
    c = raw()
    im_login(c, sender, "c")
    c.send(
        f"<message to='{user.jid}' type='chat' id='w1'><body>kept &amp; stamped</body>"
        "<thread>t-7</thread><x xmlns='urn:example:extra'><keep/></x></message>"
    )
    sync(c)
    u = raw()
    [m] = receive(u, im_login(u, user, "desk"), 1)
    assert (m.get("id"), m.get("type"), m.get("from")) == ("w1", "chat", sender.full("c"))
    assert m.get("to") in (user.jid, user.full("desk"))
    assert body(m) == "kept & stamped"
    assert m.findtext(qn(CLIENT_NS, "thread")) == "t-7"
    assert m.find("{urn:example:extra}x/{urn:example:extra}keep") is not None, "extension lost in storage"
    assert_delay(m, server.domain, started)


def test_not_delivered_to_negative_priority(server, raw, pool):
    user, sender = pool.take(), pool.take()
    c = raw()
    im_login(c, sender, "c")
    send_chat(c, user.jid, "for later")
    sync(c)
    u = raw()
    got = im_login(u, user, "shy", priority=-1)
    assert receive(u, got, 0) == [], "offline message delivered to a negative priority"
    send_presence(u, priority=1)
    [m] = receive(u, [], 1)
    assert body(m) == "for later"


def test_quota(server, raw, pool):
    user, sender = pool.take(), pool.take()
    c = raw()
    im_login(c, sender, "c")
    for i in range(3):
        send_chat(c, user.jid, f"q{i}")
    assert [e for e in sync(c) if e.get("type") == "error"] == []
    send_chat(c, user.jid, "q3", msg_id="over-quota")
    bounce = c.wait_for(lambda e: e.tag == qn(CLIENT_NS, "message") and e.get("type") == "error", 5, what="bounce")
    assert bounce.get("id") == "over-quota"
    assert bounce.get("from") == user.jid
    assert stanza_error_condition(bounce) == ("cancel", "service-unavailable")
    u = raw()
    got = receive(u, im_login(u, user, "u"), 3)
    assert [body(m) for m in got] == ["q0", "q1", "q2"]


# -- Durability --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_offline_messages_survive_restart(make_server, raw_factory, how):
    srv = make_server()
    user, sender = srv.add_user("off"), srv.add_user("snd")
    c = raw_factory(srv)
    im_login(c, sender, "c")
    sent = [f"{how}-{i}" for i in range(5)]
    for b in sent:
        send_chat(c, user.jid, b)
    # Nothing more than the sends having been processed: one ping round trip.
    assert [e for e in sync(c) if e.get("type") == "error"] == []
    rc = restart_server(srv, kill=(how == "sigkill"))
    if how == "graceful":
        assert rc == 0, srv.log_tail()
    c.close()
    u = raw_factory(srv)
    got = receive(u, im_login(u, user, "back"), len(sent))
    assert [body(m) for m in got] == sent, "lost, repeated or reordered across the restart"
    for m in got:
        assert m.find(qn(DELAY_NS, "delay")) is not None
    # And not again at the next login.
    again = raw_factory(srv)
    assert receive(again, im_login(again, user, "again"), 0) == []
