"""The server keeping forms of the same data in step, seen by slixmpp clients using its own
plugins: bookmarks written as XEP-0402 (bookmarks 2) read back as XEP-0048 private XML
(XEP-0049) and the legacy PEP node, and the reverse (XEP-0411); an avatar published with
XEP-0084 read back as a vcard-temp photo (XEP-0054) and as the XEP-0153 hash in the
presence a contact receives, and a vCard photo read back as XEP-0084 metadata and data
(XEP-0398)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

from slixmpp.plugins.xep_0048.stanza import Bookmarks
from slixmpp.plugins.xep_0402.stanza import Conference

from harness import DISCO_INFO_NS, qn, session

B2 = "urn:xmpp:bookmarks:1"
LEGACY = "storage:bookmarks"
AVATAR_META = "urn:xmpp:avatar:metadata"
UPDATE_NS = "vcard-temp:x:update"

COUNCIL = "council@conference.underhill.org"
ORCHARD = "orchard@conference.shakespeare.lit"

BOOKMARK_PLUGINS = ["xep_0004", "xep_0060", "xep_0163", "xep_0223", "xep_0402", "xep_0048"]
# XEP-0402 §3.3: what the node is created with (xep_0223 adds persistence and whitelist).
BOOKMARKS2_PROFILE = {
    "pubsub#max_items": "max",
    "pubsub#send_last_published_item": "never",
}


def png(seed: int, size: int = 300) -> bytes:
    """Image bytes: a PNG signature and header, then filler."""
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x20\x00\x00\x00\x20"
    return header + bytes((i * 31 + seed) % 256 for i in range(size))


async def eventually(check, timeout: float = 5.0, interval: float = 0.1):
    """Calls the async ``check`` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(interval)


def open_access(client):
    """Publish-options asking for an open node (what avatar clients send)."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(
        var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options"
    )
    form.add_field(var="pubsub#access_model", value="open")
    return form


async def announce_interest(client, nodes=()) -> None:
    """Sends available presence with caps asking for notifications of ``nodes`` (XEP-0163
    §4.3.1) and waits until the server asked what they stand for and got the answer; a ping
    round trip after it lets the server take the answer in. A feature of this call alone
    makes the caps new to the server, so it asks even if another test's client had the
    same plugins."""
    answered = asyncio.Event()

    def watch(stanza):
        if (
            stanza.name == "iq"
            and stanza["type"] == "result"
            and stanza.xml.find(f"{{{DISCO_INFO_NS}}}query[@node]") is not None
        ):
            answered.set()
        return stanza

    client.add_filter("out", watch)
    for node in nodes:
        client.plugin["xep_0163"].add_interest(node)
    client.plugin["xep_0030"].add_feature(f"urn:example:interop:{uuid.uuid4().hex}")
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    client.send_presence()
    await asyncio.wait_for(answered.wait(), 5)
    await client.plugin["xep_0199"].ping(client.boundjid.domain, timeout=5)
    await asyncio.sleep(0.2)


async def mutual_subscription(a, b) -> None:
    """``a`` and ``b`` subscribe to each other (slixmpp approves and subscribes back by
    default); both ask for their roster first, so they get its pushes (RFC 6121 §2.1.6)."""
    await a.get_roster(timeout=5)
    await b.get_roster(timeout=5)
    a.send_presence_subscription(pto=b.boundjid.bare)
    b.send_presence_subscription(pto=a.boundjid.bare)

    async def both():
        return (
            a.client_roster[b.boundjid.bare]["subscription"] == "both"
            and b.client_roster[a.boundjid.bare]["subscription"] == "both"
        )

    assert await eventually(both), "the subscriptions did not complete"


# -- bookmarks ---------------------------------------------------------------------------------


async def test_the_account_announces_the_conversions(server, alice):
    async with session(server, alice) as c:
        reply = await c.iq(alice.jid, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        features = {f.get("var") for f in reply.xml.iter(qn(DISCO_INFO_NS, "feature"))}
        for f in (
            "urn:xmpp:bookmarks:1#compat",
            "urn:xmpp:bookmarks:1#compat-pep",
            "urn:xmpp:bookmarks-conversion:0",
            "urn:xmpp:pep-vcard-conversion:0",
        ):
            assert f in features, f


async def test_bookmarks2_are_read_back_as_xep0048(server, alice):
    async with session(server, alice, plugins=BOOKMARK_PLUGINS) as c:
        c.plugin["xep_0223"].node_profiles[B2] = BOOKMARKS2_PROFILE
        for room, name, autojoin, nick in (
            (COUNCIL, "Council of Oberon", True, "Puck"),
            (ORCHARD, "The Orchard", False, None),
        ):
            conf = Conference()
            conf["name"] = name
            conf["autojoin"] = autojoin
            if nick:
                conf["nick"] = nick
            await c.plugin["xep_0223"].store(conf, node=B2, id=room, timeout=5)

        # Private XML, as a XEP-0048 1.0 client reads it.
        result = await c.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
        rooms = {
            conf["jid"]: (conf["name"], conf["autojoin"], conf["nick"])
            for conf in result["private"]["bookmarks"]["conferences"]
        }
        assert rooms == {
            COUNCIL: ("Council of Oberon", True, "Puck"),
            ORCHARD: ("The Orchard", False, ""),
        }
        # The XEP-0048 PEP node, as a XEP-0048 1.1 client reads it.
        result = await c.plugin["xep_0048"].get_bookmarks(method="xep_0223", timeout=5)
        legacy = result["pubsub"]["items"]["item"]["bookmarks"]
        assert {conf["jid"] for conf in legacy["conferences"]} == {COUNCIL, ORCHARD}

        # A retraction (XEP-0402 §3.5) reaches both.
        await c.plugin["xep_0060"].retract(alice.jid, B2, ORCHARD, notify=True, timeout=5)
        result = await c.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=5)
        assert [conf["jid"] for conf in result["private"]["bookmarks"]["conferences"]] == [
            COUNCIL
        ]


async def test_xep0048_private_xml_is_read_back_as_bookmarks2(server, alice):
    async with (
        session(server, alice, resource="old", plugins=BOOKMARK_PLUGINS) as old,
        session(
            server,
            alice,
            resource="new",
            plugins=["xep_0030", "xep_0115", "xep_0060", "xep_0163", "xep_0402"],
        ) as new,
    ):
        # The bookmarks 2 client wants notifications (XEP-0402 §3.1) through its caps.
        notifications: asyncio.Queue = asyncio.Queue()
        new.add_event_handler("pubsub_publish", notifications.put_nowait)
        await announce_interest(new, [B2])

        storage = Bookmarks()
        storage.add_conference(COUNCIL, "Puck", name="Council of Oberon", autojoin=True)
        storage.add_conference(ORCHARD, "Juliet", name="The Orchard")
        storage.add_url("http://example.org/works", name="Works")
        await old.plugin["xep_0048"].set_bookmarks(storage, method="xep_0049", timeout=5)

        seen = set()
        while len(seen) < 2:
            msg = await asyncio.wait_for(notifications.get(), 5)
            items = msg["pubsub_event"]["items"]
            if items["node"] == B2:
                for item in items:
                    seen.add(item["id"])
        assert seen == {COUNCIL, ORCHARD}

        result = await new.plugin["xep_0060"].get_items(alice.jid, B2, timeout=5)
        rooms = {
            item["id"]: (
                item["conference"]["name"],
                item["conference"]["autojoin"],
                item["conference"]["nick"],
            )
            for item in result["pubsub"]["items"]
        }
        assert rooms == {
            COUNCIL: ("Council of Oberon", True, "Puck"),
            ORCHARD: ("The Orchard", False, "Juliet"),
        }

        # The legacy client drops a room: its item is retracted.
        storage = Bookmarks()
        storage.add_conference(COUNCIL, "Puck", name="Council of Oberon", autojoin=True)
        await old.plugin["xep_0048"].set_bookmarks(storage, method="xep_0049", timeout=5)
        result = await new.plugin["xep_0060"].get_items(alice.jid, B2, timeout=5)
        assert [item["id"] for item in result["pubsub"]["items"]] == [COUNCIL]


# -- avatars -----------------------------------------------------------------------------------


async def test_a_xep0084_avatar_becomes_the_vcard_photo_and_the_presence_hash(server, alice, bob):
    async with (
        session(
            server, alice, plugins=["xep_0004", "xep_0060", "xep_0163", "xep_0084", "xep_0054"]
        ) as a,
        session(server, bob, plugins=["xep_0054", "xep_0153"]) as b,
    ):
        presences: asyncio.Queue = asyncio.Queue()
        b.add_event_handler(
            "presence_available",
            lambda p: p["from"].bare == alice.jid and presences.put_nowait(p),
        )
        a.send_presence()
        b.send_presence()
        await mutual_subscription(a, b)

        image = png(1)
        digest = hashlib.sha1(image).hexdigest()
        # XEP-0084 §3.1–§3.2, with the open access XEP-0398 §7 asks for before copying.
        await a.plugin["xep_0084"].publish_avatar(image, options=open_access(a), timeout=5)
        await a.plugin["xep_0084"].publish_avatar_metadata(
            {"id": digest, "type": "image/png", "bytes": len(image)},
            options=open_access(a),
            timeout=5,
        )

        # bob reads alice's vCard (XEP-0153 §3.2) and finds the avatar.
        result = await b.plugin["xep_0054"].get_vcard(alice.jid, cached=False, timeout=5)
        photo = result["vcard_temp"]["PHOTO"]
        assert photo["BINVAL"] == image
        assert photo["TYPE"] == "image/png"

        # alice's next presence carries the hash, though her client knows nothing of it.
        while not presences.empty():
            presences.get_nowait()
        a.send_presence(pstatus="with an avatar")
        while True:
            p = await asyncio.wait_for(presences.get(), 5)
            if p["status"] == "with an avatar":
                break
        assert p.xml.findtext(f"{{{UPDATE_NS}}}x/{{{UPDATE_NS}}}photo") == digest


async def test_a_vcard_photo_becomes_the_xep0084_avatar(server, alice, bob):
    async with (
        session(server, alice, plugins=["xep_0054", "xep_0153"]) as a,
        session(
            server,
            bob,
            plugins=["xep_0030", "xep_0115", "xep_0060", "xep_0163", "xep_0084", "xep_0054"],
        ) as b,
    ):
        metadata: asyncio.Queue = asyncio.Queue()
        b.add_event_handler(
            "avatar_metadata_publish",
            lambda m: m["from"].bare == alice.jid and metadata.put_nowait(m),
        )
        # xep_0084 announces avatar_metadata+notify in bob's caps (XEP-0084 §5.1); alice's
        # account learns them from bob's presence once they are subscribed.
        a.send_presence()
        await announce_interest(b)
        await mutual_subscription(a, b)
        b.send_presence()
        await b.plugin["xep_0199"].ping(b.boundjid.domain, timeout=5)

        image = png(2)
        digest = hashlib.sha1(image).hexdigest()
        await a.plugin["xep_0153"].set_avatar(avatar=image, mtype="image/png", timeout=5)

        # bob hears of it as a XEP-0084 client does, then fetches the data.
        while True:
            msg = await asyncio.wait_for(metadata.get(), 5)
            infos = msg["pubsub_event"]["items"]["item"]["avatar_metadata"]["items"]
            if infos:
                break
        info = infos[0]
        assert info["id"] == digest
        assert info["type"] == "image/png"
        assert int(info["bytes"]) == len(image)
        result = await b.plugin["xep_0084"].retrieve_avatar(alice.jid, digest, timeout=5)
        assert result["pubsub"]["items"]["item"]["avatar_data"]["value"] == image

        # And the vCard still holds it, for XEP-0153 clients.
        result = await b.plugin["xep_0054"].get_vcard(alice.jid, cached=False, timeout=5)
        assert result["vcard_temp"]["PHOTO"]["BINVAL"] == image
