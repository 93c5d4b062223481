"""A phone's day, end to end with slixmpp: it connects with stream management, goes
inactive (CSI), receives messages, loses its network while more arrive, comes back and
resumes. It must see every message exactly once, in order, and its archive must hold the
same messages, in the same order, under the same stanza ids it saw live."""

from __future__ import annotations

import asyncio


from harness import Client, LoginError, session

SERVER_CONFIG = {"extra_toml": "[stream_management]\nresume_timeout_secs = 60"}
SID_NS = "urn:xmpp:sid:0"


async def phone_client(server, user) -> Client:
    client = Client(user.full("phone"), user.password, cafile=server.cert_path)
    for plugin in ("xep_0198", "xep_0352", "xep_0059", "xep_0297", "xep_0313"):
        client.register_plugin(plugin)
    client.plugin["xep_0198"].allow_resume = True
    enabled = asyncio.get_running_loop().create_future()
    client.add_event_handler("sm_enabled", lambda st: enabled.done() or enabled.set_result(st))
    client.enable_plaintext = False
    client.enable_starttls = True
    client.enable_direct_tls = False
    client.connect(server.host, server.c2s_port)
    reason = await asyncio.wait_for(asyncio.shield(client.outcome), 15)
    if reason is not None:
        await client.close()
        raise LoginError(reason, client)
    await asyncio.wait_for(enabled, 5)
    return client


def live_id(msg, account: str) -> str | None:
    for el in msg.xml.findall(f"{{{SID_NS}}}stanza-id"):
        if el.get("by") == account:
            return el.get("id")
    return None


async def test_every_message_once_in_order_and_archived_alike(server, alice, bob):
    phone = await phone_client(server, alice)
    seen = []  # (body, stanza id) in arrival order
    phone.add_event_handler(
        "message",
        lambda m: m["body"] and seen.append((m["body"], live_id(m, alice.jid))),
    )
    try:
        phone.send_presence()
        # The screen goes off.
        phone.plugin["xep_0352"].send_inactive()
        async with session(server, bob, resource="pc") as cb:
            for n in range(1, 4):
                cb.send_message(mto=alice.jid, mbody=f"day-{n}", mtype="chat")
                cb.send_presence(pshow="away" if n % 2 else "dnd")
            await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
            await asyncio.sleep(0.5)
            # The network goes away; messages keep coming.
            phone.transport.abort()
            await asyncio.sleep(0.3)
            for n in range(4, 8):
                cb.send_message(mto=alice.jid, mbody=f"day-{n}", mtype="chat")
            await cb.plugin["xep_0199"].ping(server.domain, timeout=5)
            # Back online: resume.
            resumed = asyncio.get_running_loop().create_future()
            phone.add_event_handler(
                "session_resumed", lambda st: resumed.done() or resumed.set_result(st)
            )
            phone.connect(server.host, server.c2s_port)
            await asyncio.wait_for(resumed, 10)
            deadline = asyncio.get_running_loop().time() + 5
            while len(seen) < 7 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # anything extra would show up now
        bodies = [b for b, _ in seen]
        assert bodies == [f"day-{n}" for n in range(1, 8)], seen
        assert all(sid for _, sid in seen), f"every live copy carries the archive id: {seen}"

        # The archive agrees: same messages, same order, same ids.
        archived = []
        async for msg in phone.plugin["xep_0313"].iterate(rsm={"max": 50}):
            result = msg["mam_result"]
            body = result["forwarded"]["stanza"]["body"]
            if body.startswith("day-"):
                archived.append((body, result["id"]))
        assert archived == seen
    finally:
        await phone.close()
