"""Stream management (XEP-0198) with slixmpp's implementation: acks, resumption after a
killed TCP connection with no loss and no duplicate, and expiry into offline storage."""

from __future__ import annotations

import asyncio

import pytest

from harness import Client, LoginError, session

SERVER_CONFIG = {"extra_toml": "[stream_management]\nresume_timeout_secs = 3"}


async def sm_client(server, user, resource: str) -> Client:
    """A slixmpp client with XEP-0198 (resumption requested), logged in and enabled."""
    client = Client(user.full(resource), user.password, cafile=server.cert_path)
    client.register_plugin("xep_0198")
    client.plugin["xep_0198"].allow_resume = True
    enabled = asyncio.get_running_loop().create_future()
    client.add_event_handler(
        "sm_enabled", lambda st: enabled.done() or enabled.set_result(st)
    )
    client.enable_plaintext = False
    client.enable_starttls = True
    client.enable_direct_tls = False
    client.connect(server.host, server.c2s_port)
    reason = await asyncio.wait_for(asyncio.shield(client.outcome), 15)
    if reason is not None:
        await client.close()
        raise LoginError(reason, client)
    stanza = await asyncio.wait_for(enabled, 5)
    assert stanza["resume"] in (True, "true", "1"), stanza
    assert stanza["id"], stanza
    return client


def kill_connection(client: Client) -> None:
    """Drop the TCP connection without a closing stream (a phone losing its network)."""
    client.transport.abort()


async def reconnect_and_resume(server, client: Client) -> None:
    resumed = asyncio.get_running_loop().create_future()
    client.add_event_handler(
        "session_resumed", lambda st: resumed.done() or resumed.set_result(st)
    )
    client.connect(server.host, server.c2s_port)
    await asyncio.wait_for(resumed, 10)


async def collect_bodies(client: Client, want: int, timeout: float = 5.0) -> list[str]:
    bodies = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(bodies) < want:
        msg = await client.next_message(timeout=max(0.01, deadline - loop.time()))
        if msg["body"]:
            bodies.append(msg["body"])
    return bodies


async def test_resume_after_killed_connection_delivers_everything_once(server, alice, bob):
    phone = await sm_client(server, alice, "phone")
    try:
        phone.send_presence()
        async with session(server, bob, resource="pc") as cb:
            for n in range(1, 6):
                cb.send_message(mto=alice.full("phone"), mbody=f"before-{n}", mtype="chat")
            assert await collect_bodies(phone, 5) == [f"before-{n}" for n in range(1, 6)]
            # Some of those may not be acknowledged yet when the connection dies; the
            # server must resend exactly those (slixmpp reports what it handled).
            kill_connection(phone)
            await asyncio.sleep(0.3)
            for n in range(1, 6):
                cb.send_message(mto=alice.full("phone"), mbody=f"away-{n}", mtype="chat")
            # Bob's own round trip: the messages were routed before alice comes back.
            await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
            await reconnect_and_resume(server, phone)
            got = await collect_bodies(phone, 5)
            assert got == [f"away-{n}" for n in range(1, 6)]
            # Nothing more: no duplicate of what was received before the kill.
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                extra = await phone.next_message(timeout=1.0)
                pytest.fail(f"unexpected extra message {extra}")
            # The resumed session still has its resource and works both ways.
            assert phone.boundjid.full == alice.full("phone")
            phone.send_message(mto=bob.full("pc"), mbody="back", mtype="chat")
            back = await cb.next_message(timeout=5, predicate=lambda m: m["body"] == "back")
            assert back["from"].full == alice.full("phone")
    finally:
        await phone.close()


async def test_session_not_resumed_in_time_sends_messages_offline(server, alice, bob):
    phone = await sm_client(server, alice, "phone")
    phone.send_presence()
    async with session(server, bob, resource="pc") as cb:
        kill_connection(phone)
        await asyncio.sleep(0.3)
        cb.send_message(mto=alice.jid, mbody="while-away", mtype="chat")
        await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
        # The resumption time (3 s) runs out: the held message goes to offline storage.
        await asyncio.sleep(4.5)
        await phone.close()
        async with session(server, alice, resource="laptop") as laptop:
            laptop.send_presence()
            got = await laptop.next_message(
                timeout=5, predicate=lambda m: m["body"] == "while-away"
            )
            assert got.xml.find("{urn:xmpp:delay}delay") is not None
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                await laptop.next_message(
                    timeout=1.0, predicate=lambda m: m["body"] == "while-away"
                )
