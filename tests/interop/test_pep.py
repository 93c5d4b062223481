"""Personal Eventing (XEP-0163) on every account, driven with slixmpp's PubSub plugins
(xep_0060, xep_0163, xep_0115, xep_0172, xep_0223): OMEMO key publication as Conversations and
OMEMO 2 clients do it (publish-options, the precondition-not-met recovery), notifications
filtered by real entity capabilities (`+notify`), the last item on presence with a delay,
access models refusing outsiders, retract/purge/delete notifications, limits, persistence
across a restart and a SIGKILL, and account deletion.

Contacts' capabilities are resolved by the server asynchronously (one disco#info query per
verification string): a test knows a contact's `+notify` interest is known when the last
item of a node it asked for arrives (XEP-0163 §4.3.2). Absence is shown with a ping round
trip of the recipient after the publisher's result, then a short wait."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ElementBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from harness import (
    CLIENT_NS,
    DELAY_NS,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    ROSTER_NS,
    STANZA_ERR_NS,
    User,
    UserPool,
    im_login,
    local_name,
    namespace_of,
    qn,
    restart_server,
    roster_get,
    roster_item_xml,
    roster_of,
    roster_set,
    send_presence,
    session,
    sync,
)

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"
EVENT = PUBSUB + "#event"
ERRORS = PUBSUB + "#errors"
PUBLISH_OPTIONS = PUBSUB + "#publish-options"
NODE_CONFIG = PUBSUB + "#node_config"
DATA = "jabber:x:data"

GEOLOC = "http://jabber.org/protocol/geoloc"
NICK = "http://jabber.org/protocol/nick"
AXOLOTL = "eu.siacs.conversations.axolotl"
AXOLOTL_DEVICES = AXOLOTL + ".devicelist"
OMEMO2 = "urn:xmpp:omemo:2"
OMEMO2_DEVICES = OMEMO2 + ":devices"
OMEMO2_BUNDLES = OMEMO2 + ":bundles"

PLUGINS = ("xep_0004", "xep_0059", "xep_0060", "xep_0115", "xep_0163")
QUIET = 0.5  # seconds after a ping round trip with nothing arriving that count as "none sent"
IQ_TIMEOUT = 10


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "pep", workers=3)
    users.prefetch(33)
    yield users
    users.close()


# -- Setup helpers -----------------------------------------------------------------------------


def befriend(server, raw_factory, a: User, b: User, groups: tuple[str, ...] = ()) -> None:
    """A mutual presence subscription between ``a`` and ``b`` ("both" on each side), set up
    over raw streams; ``groups`` puts ``b`` in those groups of ``a``'s roster."""
    sa, sb = raw_factory(server), raw_factory(server)
    im_login(sa, a, "setup", available=False)
    im_login(sb, b, "setup", available=False)
    for actor, target, ptype in (
        (sa, b, "subscribe"),
        (sb, a, "subscribed"),
        (sb, a, "subscribe"),
        (sa, b, "subscribed"),
    ):
        send_presence(actor, to=target.jid, ptype=ptype)
        sync(actor)
    if groups:
        reply = roster_set(sa, roster_item_xml(b.jid, groups=groups))
        assert reply.get("type") == "result", ET.tostring(reply)
    item = roster_of(roster_get(sa).find(qn(ROSTER_NS, "query")))[b.jid]
    assert item.subscription == "both" and sorted(item.groups) == sorted(groups), item
    sa.close()
    sb.close()


@contextlib.asynccontextmanager
async def pep_client(server, user: User, resource: str, *, notify=(), available=True, plugins=()):
    """A slixmpp session with the PubSub plugins. ``notify`` lists the nodes it wants
    notifications of (xep_0163 ``add_interest``: ``<node>+notify`` in its caps); with
    ``available`` it sends initial presence carrying its XEP-0115 caps. Notifications
    received are collected in ``c.events`` (message elements)."""
    async with session(server, user, resource=resource, plugins=PLUGINS + tuple(plugins)) as c:
        c.events = []
        c.events_changed = asyncio.Event()

        def record(msg):
            c.events.append(msg.xml)
            c.events_changed.set()

        c.register_handler(Callback("pubsub events", MatchXPath(f"{{{CLIENT_NS}}}message/{{{EVENT}}}event"), record))
        for ns in notify:
            c.plugin["xep_0163"].add_interest(ns)
        await c.plugin["xep_0115"].update_caps(broadcast=False)
        if available:
            c.send_presence()
        yield c


# -- Requests ----------------------------------------------------------------------------------


async def answer(request):
    """The reply to a slixmpp request, an error reply included."""
    try:
        return await asyncio.wait_for(request, IQ_TIMEOUT)
    except IqError as e:
        return e.iq
    except IqTimeout as e:
        raise AssertionError("no reply to a pubsub request") from e


def form(c, form_type: str, fields: dict, ftype: str = "submit"):
    f = c.plugin["xep_0004"].stanza.Form()
    f["type"] = ftype
    f.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in fields.items():
        if isinstance(value, (list, tuple)):
            f.add_field(var=var, ftype="list-multi", value=list(value))
        else:
            f.add_field(var=var, value=value)
    return f


async def publish(c, node: str, item_id: str | None, payload: str, options: dict | None = None, to=None):
    """Publish one item (with publish-options when given) through xep_0060."""
    opts = form(c, PUBLISH_OPTIONS, options) if options else None
    return await answer(
        c.plugin["xep_0060"].publish(to, node, id=item_id, payload=ET.fromstring(payload), options=opts)
    )


async def get_items(c, owner: str | None, node: str, ids=None, max_items=None):
    """(reply, [(id, payload element or None)]) of an items request to ``owner``'s PEP service."""
    reply = await answer(c.plugin["xep_0060"].get_items(owner, node, item_ids=ids, max_items=max_items))
    items = []
    if reply["type"] == "result":
        el = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items")
        assert el is not None and el.get("node") == node, reply
        for item in el.findall(qn(PUBSUB, "item")):
            children = list(item)
            items.append((item.get("id"), children[0] if children else None))
    return reply, items


async def read_items(c, owner: str | None, node: str, ids=None, max_items=None):
    """[(id, payload element or None)] of an items request that must succeed."""
    reply, items = await get_items(c, owner, node, ids=ids, max_items=max_items)
    ok(reply)
    return items


async def get_config(c, node: str, to=None) -> dict:
    """The owner's configuration form of a node: var -> values."""
    reply = await answer(c.plugin["xep_0060"].get_node_config(to, node))
    assert reply["type"] == "result", reply
    x = reply.xml.find(f"{{{OWNER}}}pubsub/{{{OWNER}}}configure/{{{DATA}}}x")
    assert x is not None, reply
    return {f.get("var"): [v.text or "" for v in f.findall(qn(DATA, "value"))] for f in x.findall(qn(DATA, "field"))}


async def configure(c, node: str, fields: dict, to=None):
    return await answer(c.plugin["xep_0060"].set_node_config(to, node, form(c, NODE_CONFIG, fields)))


async def ping(c) -> None:
    reply = await c.iq(c.boundjid.domain, "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert reply["type"] == "result", reply


def error_of(reply) -> tuple[str | None, str | None, str | None]:
    """(error type, defined condition, pubsub#errors condition) of an error reply."""
    assert reply["type"] == "error", f"expected an error, got {reply}"
    err = reply.xml.find(qn(CLIENT_NS, "error"))
    cond = next(
        (local_name(c.tag) for c in err if namespace_of(c.tag) == STANZA_ERR_NS and local_name(c.tag) != "text"),
        None,
    )
    specific = next((local_name(c.tag) for c in err if namespace_of(c.tag) == ERRORS), None)
    return err.get("type"), cond, specific


def ok(reply):
    assert reply["type"] == "result", f"expected a result, got {reply}"
    return reply


# -- Notifications -----------------------------------------------------------------------------


def event_child(msg: ET.Element) -> ET.Element | None:
    ev = msg.find(qn(EVENT, "event"))
    return None if ev is None or len(ev) == 0 else ev[0]


def published(node: str, item_id: str | None = None):
    def pred(msg):
        child = event_child(msg)
        if child is None or child.tag != qn(EVENT, "items") or child.get("node") != node:
            return False
        return any(item_id is None or i.get("id") == item_id for i in child.findall(qn(EVENT, "item")))

    return pred


def retracted(node: str, item_id: str):
    def pred(msg):
        child = event_child(msg)
        return (
            child is not None
            and child.tag == qn(EVENT, "items")
            and child.get("node") == node
            and any(r.get("id") == item_id for r in child.findall(qn(EVENT, "retract")))
        )

    return pred


def node_event(kind: str, node: str):
    def pred(msg):
        child = event_child(msg)
        return child is not None and child.tag == qn(EVENT, kind) and child.get("node") == node

    return pred


def any_event(node: str):
    def pred(msg):
        child = event_child(msg)
        return child is not None and child.get("node") == node

    return pred


def payload_of(msg: ET.Element) -> ET.Element | None:
    item = event_child(msg).find(qn(EVENT, "item"))
    return None if item is None or len(item) == 0 else item[0]


async def wait_event(c, pred, timeout: float = 5.0, what: str = "notification") -> ET.Element:
    """The first collected notification matching ``pred`` (removed from ``c.events``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for i, msg in enumerate(c.events):
            if pred(msg):
                del c.events[i]
                return msg
        c.events_changed.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            got = [ET.tostring(m).decode() for m in c.events]
            raise AssertionError(f"{c.boundjid}: no {what} within {timeout}s; collected: {got}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(c.events_changed.wait(), remaining)


async def assert_no_event(c, pred, what: str = "notification") -> None:
    await ping(c)
    await asyncio.sleep(QUIET)
    found = [ET.tostring(m).decode() for m in c.events if pred(m)]
    assert not found, f"{c.boundjid} got an unexpected {what}: {found}"


def check_envelope(msg: ET.Element, owner: User, delayed: bool) -> None:
    """A PEP notification: a headline from the owner's bare JID; a last published item
    carries a XEP-0203 delay, a live one does not."""
    assert msg.get("type") == "headline", ET.tostring(msg)
    assert msg.get("from") == owner.jid, ET.tostring(msg)
    delay = msg.find(qn(DELAY_NS, "delay"))
    if delayed:
        assert delay is not None and delay.get("stamp"), f"no delay on a last published item: {ET.tostring(msg)}"
    else:
        assert delay is None, f"a live notification carries a delay: {ET.tostring(msg)}"


# -- Payloads ----------------------------------------------------------------------------------


def geoloc(locality: str) -> str:
    return f"<geoloc xmlns='{GEOLOC}'><locality>{locality}</locality></geoloc>"


def nick(name: str) -> str:
    return f"<nick xmlns='{NICK}'>{name}</nick>"


def axolotl_devices(*ids: int) -> str:
    return f"<list xmlns='{AXOLOTL}'>" + "".join(f"<device id='{i}'/>" for i in ids) + "</list>"


def key(seed: str, n: int) -> str:
    """A base64-looking key of the usual length (33 bytes encoded)."""
    return (uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}-{n}").hex + "A" * 12)[:44]


def axolotl_bundle(device: int, prekeys: int = 100) -> str:
    pre = "".join(f"<preKeyPublic preKeyId='{i}'>{key('pre', i)}</preKeyPublic>" for i in range(1, prekeys + 1))
    return (
        f"<bundle xmlns='{AXOLOTL}'>"
        f"<signedPreKeyPublic signedPreKeyId='1'>{key('spk', device)}</signedPreKeyPublic>"
        f"<signedPreKeySignature>{key('sig', device) * 2}</signedPreKeySignature>"
        f"<identityKey>{key('ik', device)}</identityKey>"
        f"<prekeys>{pre}</prekeys></bundle>"
    )


def omemo2_devices(*ids: int) -> str:
    return f"<devices xmlns='{OMEMO2}'>" + "".join(f"<device id='{i}' label='dev {i}'/>" for i in ids) + "</devices>"


def omemo2_bundle(device: int, prekeys: int = 25) -> str:
    pks = "".join(f"<pk id='{i}'>{key('pk2', i)}</pk>" for i in range(1, prekeys + 1))
    return (
        f"<bundle xmlns='{OMEMO2}'><spk id='1'>{key('spk2', device)}</spk>"
        f"<spks>{key('spks2', device) * 2}</spks><ik>{key('ik2', device)}</ik>"
        f"<prekeys>{pks}</prekeys></bundle>"
    )


# -- Stored state ------------------------------------------------------------------------------


def stored_items(srv, user: User) -> dict[str, list[str]]:
    """node -> item ids (newest first) of ``user``'s PEP service, read from the SQLite file."""
    assert not srv.external, "the stored state is read in rookery's own data directory"
    db = sqlite3.connect(f"file:{srv.data_dir / 'rookery.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT n.node, i.item_id FROM pubsub_services s JOIN pubsub_nodes n ON n.service_id = s.id "
            "LEFT JOIN pubsub_items i ON i.node_id = n.id WHERE s.domain = ? AND s.username = ? "
            "ORDER BY n.node, i.seq DESC",
            (user.domain, user.localpart),
        ).fetchall()
    finally:
        db.close()
    out: dict[str, list[str]] = {}
    for node, item in rows:
        out.setdefault(node, [])
        if item is not None:
            out[node].append(item)
    return out


# -- Discovery, OMEMO, XEP-0223 ----------------------------------------------------------------


async def test_pep_is_advertised_on_the_account(server, pool):
    alice = pool.take()
    async with pep_client(server, alice, "desk", available=False) as a:
        info = await a.iq(alice.jid, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        identities = {(i.get("category"), i.get("type")) for i in info.xml.iter(qn(DISCO_INFO_NS, "identity"))}
        features = {f.get("var") for f in info.xml.iter(qn(DISCO_INFO_NS, "feature"))}
        assert ("pubsub", "pep") in identities, info
        assert {PUBSUB, PUBSUB + "#publish-options", PUBSUB + "#filtered-notifications", PUBSUB + "#auto-create"} <= features


async def test_omemo_legacy_device_list_and_bundle_readable_by_contact_and_stranger(server, pool, raw_factory):
    alice, bob, eve = pool.take(), pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    device = 1234567
    bundles = f"{AXOLOTL}.bundles:{device}"
    open_ = {"pubsub#access_model": "open"}
    async with pep_client(server, alice, "conversations") as a:
        r = ok(await publish(a, AXOLOTL_DEVICES, "current", axolotl_devices(device), open_))
        assert r.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item").get("id") == "current"
        ok(await publish(a, bundles, "current", axolotl_bundle(device), open_))
        for node in (AXOLOTL_DEVICES, bundles):
            config = await get_config(a, node)
            assert config["pubsub#access_model"] == ["open"], (node, config)
            assert config["pubsub#max_items"] == ["1"], (node, config)

    # A contact and a stranger both fetch what a client starting a session needs.
    for reader in (bob, eve):
        async with pep_client(server, reader, "reader", available=False) as r:
            items = await read_items(r, alice.jid, AXOLOTL_DEVICES)
            [(item_id, lst)] = items
            assert item_id == "current" and lst.tag == qn(AXOLOTL, "list")
            assert [d.get("id") for d in lst.findall(qn(AXOLOTL, "device"))] == [str(device)]
            items = await read_items(r, alice.jid, bundles, max_items=1)
            [(item_id, bundle)] = items
            assert bundle.tag == qn(AXOLOTL, "bundle")
            assert bundle.findtext(qn(AXOLOTL, "identityKey")) == key("ik", device)
            assert len(bundle.findall(f"{{{AXOLOTL}}}prekeys/{{{AXOLOTL}}}preKeyPublic")) == 100
    if not server.external:
        assert stored_items(server, alice) == {AXOLOTL_DEVICES: ["current"], bundles: ["current"]}


async def test_omemo2_devices_and_bundles_with_max_items(server, pool):
    alice, eve = pool.take(), pool.take()
    devices_opts = {"pubsub#access_model": "open", "pubsub#max_items": "1"}
    bundle_opts = {"pubsub#access_model": "open", "pubsub#max_items": "max"}
    async with pep_client(server, alice, "omemo2") as a:
        ok(await publish(a, OMEMO2_DEVICES, "current", omemo2_devices(11), devices_opts))
        ok(await publish(a, OMEMO2_BUNDLES, "11", omemo2_bundle(11), bundle_opts))
        # A second device joins: its bundle is one more item of the same node, the device
        # list is replaced; both publications meet the node's configuration.
        ok(await publish(a, OMEMO2_BUNDLES, "22", omemo2_bundle(22), bundle_opts))
        ok(await publish(a, OMEMO2_DEVICES, "current", omemo2_devices(11, 22), devices_opts))
        config = await get_config(a, OMEMO2_BUNDLES)
        assert config["pubsub#max_items"] == ["max"] and config["pubsub#access_model"] == ["open"], config
        config = await get_config(a, OMEMO2_DEVICES)
        assert config["pubsub#max_items"] == ["1"], config
    async with pep_client(server, eve, "stranger", available=False) as e:
        items = await read_items(e, alice.jid, OMEMO2_DEVICES)
        [(_, devices)] = items
        assert [d.get("id") for d in devices.findall(qn(OMEMO2, "device"))] == ["11", "22"]
        items = await read_items(e, alice.jid, OMEMO2_BUNDLES, ids=["22"])
        assert [i for i, _ in items] == ["22"] and items[0][1].findtext(qn(OMEMO2, "ik")) == key("ik2", 22)
        items = await read_items(e, alice.jid, OMEMO2_BUNDLES)
        assert sorted(i for i, _ in items) == ["11", "22"]
    if not server.external:
        assert stored_items(server, alice) == {OMEMO2_BUNDLES: ["22", "11"], OMEMO2_DEVICES: ["current"]}


async def test_precondition_not_met_then_reconfigure_and_republish(server, pool):
    """Conversations' recovery: the device list node exists with the default (presence)
    access; publishing with access_model=open fails with precondition-not-met; the client
    reconfigures the node and publishes again."""
    alice, eve = pool.take(), pool.take()
    async with pep_client(server, alice, "conversations") as a:
        ok(await publish(a, AXOLOTL_DEVICES, "current", axolotl_devices(1)))
        assert (await get_config(a, AXOLOTL_DEVICES))["pubsub#access_model"] == ["presence"]
        refused = await publish(a, AXOLOTL_DEVICES, "current", axolotl_devices(1, 2), {"pubsub#access_model": "open"})
        assert error_of(refused) == ("cancel", "conflict", "precondition-not-met")
        # Nothing changed: the old list is still the item.
        items = await read_items(a, None, AXOLOTL_DEVICES)
        assert [d.get("id") for d in items[0][1]] == ["1"]

        ok(await configure(a, AXOLOTL_DEVICES, {"pubsub#access_model": "open"}))
        assert (await get_config(a, AXOLOTL_DEVICES))["pubsub#access_model"] == ["open"]
        ok(await publish(a, AXOLOTL_DEVICES, "current", axolotl_devices(1, 2), {"pubsub#access_model": "open"}))
    async with pep_client(server, eve, "stranger", available=False) as e:
        items = await read_items(e, alice.jid, AXOLOTL_DEVICES)
        assert [d.get("id") for d in items[0][1]] == ["1", "2"]


class Notes(ElementBase):
    namespace = "urn:example:private-notes"
    name = "notes"
    plugin_attrib = "notes"


async def test_xep_0223_private_storage_is_whitelisted(server, pool, raw_factory):
    """xep_0223's store() publishes with persist_items and access_model=whitelist: even a
    contact with a presence subscription cannot read it."""
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    node = "urn:example:private-notes"
    async with pep_client(server, alice, "desk", plugins=("xep_0223",)) as a:
        notes = Notes(xml=ET.fromstring("<notes xmlns='urn:example:private-notes'><note>buy milk</note></notes>"))
        ok(await answer(a.plugin["xep_0223"].store(notes, node=node, id="current")))
        config = await get_config(a, node)
        assert config["pubsub#access_model"] == ["whitelist"] and config["pubsub#persist_items"] == ["1"], config
        items = await read_items(a, None, node)
        assert items[0][1].findtext("{urn:example:private-notes}note") == "buy milk"
    async with pep_client(server, bob, "contact", available=False) as b:
        assert error_of((await get_items(b, alice.jid, node))[0]) == ("cancel", "not-allowed", "closed-node")


# -- Notifications and capabilities ------------------------------------------------------------


async def test_notifications_follow_notify_in_caps(server, pool, raw_factory):
    alice, bob, carol = pool.take(), pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    befriend(server, raw_factory, alice, carol)
    async with pep_client(server, alice, "desk") as a:
        # A first location and a nick: each interested resource gets the last item when its
        # caps are resolved, which shows that the server knows its interest.
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        ok(await publish(a, NICK, "current", nick("Alice")))
        async with (
            pep_client(server, bob, "phone", notify=[GEOLOC]) as b,
            pep_client(server, carol, "pc", notify=[NICK]) as c,
            pep_client(server, alice, "tablet", notify=[GEOLOC]) as a2,
        ):
            for client, node, who in ((b, GEOLOC, "bob"), (c, NICK, "carol"), (a2, GEOLOC, "alice's tablet")):
                last = await wait_event(client, published(node, "current"), timeout=10, what=f"last {node} for {who}")
                check_envelope(last, alice, delayed=True)
            assert payload_of(last).findtext(qn(GEOLOC, "locality")) == "Elsinore"

            ok(await publish(a, GEOLOC, "current", geoloc("Copenhagen")))
            for client in (b, a2):
                live = await wait_event(client, published(GEOLOC, "current"), what="live geoloc")
                check_envelope(live, alice, delayed=False)
                assert payload_of(live).findtext(qn(GEOLOC, "locality")) == "Copenhagen"
            # carol is a contact too, but her caps do not ask for geoloc.
            await assert_no_event(c, any_event(GEOLOC), "geoloc notification")
            # A nick change reaches carol and not bob.
            ok(await publish(a, NICK, "current", nick("Alice L.")))
            live = await wait_event(c, published(NICK, "current"), what="live nick")
            check_envelope(live, alice, delayed=False)
            await assert_no_event(b, any_event(NICK), "nick notification")


async def test_last_nick_on_presence_with_delay(server, pool, raw_factory):
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk", plugins=("xep_0172",)) as a:
        # bob is offline: XEP-0172 published through slixmpp's plugin.
        ok(await answer(a.plugin["xep_0172"].publish_nick("Alice in Wonderland")))
        async with pep_client(server, bob, "phone", plugins=("xep_0172",)) as b:
            got = asyncio.get_running_loop().create_future()
            b.add_event_handler("user_nick_publish", lambda msg: got.done() or got.set_result(msg))
            last = await wait_event(b, published(NICK, "current"), timeout=10, what="last nick on presence")
            check_envelope(last, alice, delayed=True)
            assert payload_of(last).text == "Alice in Wonderland"
            assert last.find(qn(DELAY_NS, "delay")).get("from") == alice.jid
            # slixmpp's own PEP handling recognised it too.
            msg = await asyncio.wait_for(got, 5)
            assert msg["pubsub_event"]["items"]["node"] == NICK


async def test_explicit_subscription_without_caps(server, pool, raw_factory):
    """A contact whose client announces no interest subscribes explicitly (XEP-0060 §6.1): it
    gets the last item at once (§6.1.7), then every publication, until it unsubscribes."""
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk") as a, pep_client(server, bob, "phone") as b:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        reply = ok(await answer(b.plugin["xep_0060"].subscribe(alice.jid, GEOLOC)))
        sub = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
        assert (sub.get("jid"), sub.get("subscription")) == (bob.jid, "subscribed"), reply
        last = await wait_event(b, published(GEOLOC, "current"), what="last item on subscription")
        check_envelope(last, alice, delayed=True)
        ok(await publish(a, GEOLOC, "current", geoloc("Copenhagen")))
        live = await wait_event(b, published(GEOLOC, "current"), what="notification to a subscriber")
        check_envelope(live, alice, delayed=False)
        ok(await answer(b.plugin["xep_0060"].unsubscribe(alice.jid, GEOLOC)))
        ok(await publish(a, GEOLOC, "current", geoloc("Helsingør")))
        await assert_no_event(b, any_event(GEOLOC), "notification after unsubscribing")


async def test_no_notifications_to_a_blocked_contact(server, pool, raw_factory):
    """XEP-0163 §4.3.2: a PEP service MUST NOT send notifications to a contact the owner
    has blocked (XEP-0191)."""
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk") as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        async with pep_client(server, bob, "phone", notify=[GEOLOC]) as b:
            await wait_event(b, published(GEOLOC, "current"), timeout=10, what="last item on presence")
            reply = await a.iq(None, "set", f"<block xmlns='urn:xmpp:blocking'><item jid='{bob.jid}'/></block>")
            ok(reply)
            ok(await publish(a, GEOLOC, "current", geoloc("Copenhagen")))
            await assert_no_event(b, any_event(GEOLOC), "notification to a blocked contact")


async def test_losing_the_presence_subscription_ends_notifications(server, pool, raw_factory):
    """XEP-0163 §7: access to a presence node is recalculated when the presence subscription
    changes: once alice cancels bob's subscription to her presence, bob — explicitly
    subscribed and interested through caps — gets no more notifications nor items."""
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk") as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        async with pep_client(server, bob, "phone", notify=[GEOLOC]) as b:
            await wait_event(b, published(GEOLOC, "current"), timeout=10, what="last item on presence")
            ok(await answer(b.plugin["xep_0060"].subscribe(alice.jid, GEOLOC)))
            await wait_event(b, published(GEOLOC, "current"), what="last item on subscription")
            a.send_presence(pto=bob.jid, ptype="unsubscribed")
            await ping(a)
            ok(await publish(a, GEOLOC, "current", geoloc("Copenhagen")))
            await assert_no_event(b, any_event(GEOLOC), "notification after losing the presence subscription")
            assert error_of((await get_items(b, alice.jid, GEOLOC))[0])[2] == "presence-subscription-required"


# -- Access models -----------------------------------------------------------------------------


async def test_access_models_refuse_outsiders(server, pool, raw_factory):
    alice, bob, carol, eve = pool.take(), pool.take(), pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob, groups=("Friends",))
    befriend(server, raw_factory, alice, carol, groups=("Colleagues",))
    whitelist, roster = "urn:example:whitelisted", "urn:example:friends-only"
    async with pep_client(server, alice, "desk") as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        ok(await publish(a, whitelist, "w1", "<w xmlns='urn:example'/>", {"pubsub#access_model": "whitelist"}))
        ok(
            await publish(
                a,
                roster,
                "r1",
                "<r xmlns='urn:example'/>",
                {"pubsub#access_model": "roster", "pubsub#roster_groups_allowed": ["Friends"]},
            )
        )
        async with (
            pep_client(server, bob, "b", available=False) as b,
            pep_client(server, carol, "c", available=False) as c,
            pep_client(server, eve, "e", available=False) as e,
        ):
            # presence: contacts read, a stranger is refused (XEP-0060 §6.5.9.3).
            for reader in (b, c):
                ok((await get_items(reader, alice.jid, GEOLOC))[0])
            assert error_of((await get_items(e, alice.jid, GEOLOC))[0]) == (
                "auth",
                "not-authorized",
                "presence-subscription-required",
            )
            # whitelist: even a contact is refused (§6.5.9.5) until the owner affiliates it.
            for reader in (b, e):
                assert error_of((await get_items(reader, alice.jid, whitelist))[0]) == (
                    "cancel",
                    "not-allowed",
                    "closed-node",
                )
            ok(await answer(a.plugin["xep_0060"].modify_affiliations(None, whitelist, [(bob.jid, "member")])))
            items = await read_items(b, alice.jid, whitelist)
            assert [i for i, _ in items] == ["w1"]
            assert error_of((await get_items(e, alice.jid, whitelist))[0])[1] == "not-allowed"
            # roster: the "Friends" group reads; a contact in another group and a stranger not
            # (§6.5.9.4).
            items = await read_items(b, alice.jid, roster)
            assert [i for i, _ in items] == ["r1"]
            for reader in (c, e):
                assert error_of((await get_items(reader, alice.jid, roster))[0]) == (
                    "auth",
                    "not-authorized",
                    "not-in-roster-group",
                )
            # Subscribing is refused the same way.
            refused = await answer(e.plugin["xep_0060"].subscribe(alice.jid, GEOLOC))
            assert error_of(refused) == ("auth", "not-authorized", "presence-subscription-required")
            # Only the owner publishes to its PEP nodes.
            assert error_of(await publish(b, GEOLOC, "x", geoloc("Elsewhere"), to=alice.jid))[1] == "forbidden"
            # disco#items of the account lists only what the requester may see.
            for reader, visible in ((b, {GEOLOC, whitelist, roster}), (c, {GEOLOC}), (e, set())):
                items = await reader.iq(alice.jid, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
                nodes = {i.get("node") for i in items.xml.iter(qn(DISCO_ITEMS_NS, "item"))}
                assert nodes == visible, (reader.boundjid, nodes)


# -- Retract, purge, delete --------------------------------------------------------------------


async def test_retract_purge_and_delete_reach_an_interested_contact(server, pool, raw_factory):
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    node = "urn:example:pep:feed"
    async with pep_client(server, alice, "desk") as a:
        ok(await publish(a, node, "a0", "<entry xmlns='urn:example:pep'>zero</entry>", {"pubsub#max_items": "10"}))
        async with pep_client(server, bob, "phone", notify=[node]) as b:
            await wait_event(b, published(node, "a0"), timeout=10, what="last item on presence")
            for i in (1, 2):
                ok(await publish(a, node, f"a{i}", f"<entry xmlns='urn:example:pep'>{i}</entry>"))
                check_envelope(await wait_event(b, published(node, f"a{i}")), alice, delayed=False)

            ok(await answer(a.plugin["xep_0060"].retract(None, node, "a1", notify=True)))
            check_envelope(await wait_event(b, retracted(node, "a1"), what="retraction"), alice, delayed=False)
            items = await read_items(a, None, node)
            assert [i for i, _ in items] == ["a2", "a0"]
            assert server.external or stored_items(server, alice)[node] == ["a2", "a0"]
            # Retracting what is not there.
            assert error_of(await answer(a.plugin["xep_0060"].retract(None, node, "a1")))[1] == "item-not-found"

            ok(await answer(a.plugin["xep_0060"].purge(None, node)))
            await wait_event(b, node_event("purge", node), what="purge")
            items = await read_items(b, alice.jid, node)
            assert items == []
            assert server.external or stored_items(server, alice)[node] == []

            ok(await answer(a.plugin["xep_0060"].delete_node(None, node)))
            await wait_event(b, node_event("delete", node), what="delete")
            assert error_of((await get_items(b, alice.jid, node))[0])[1] == "item-not-found"
            assert server.external or node not in stored_items(server, alice)


# -- Limits ------------------------------------------------------------------------------------


async def test_item_size_and_node_count_limits(make_server):
    srv = make_server(extra_toml="[pep]\nmax_item_bytes = 1024\nmax_nodes = 3\n")
    alice = srv.add_user("pep")
    big = f"<blob xmlns='urn:example:big'>{'x' * 2000}</blob>"
    async with pep_client(srv, alice, "desk", available=False) as a:
        # On a new node: refused, and no node left behind.
        refused = await publish(a, "urn:example:big", "b1", big)
        assert error_of(refused) == ("modify", "not-acceptable", "payload-too-big")
        assert stored_items(srv, alice) == {}
        # On an existing node: refused, the item there stays.
        ok(await publish(a, "urn:example:small", "s1", "<small xmlns='urn:example:big'/>"))
        refused = await publish(a, "urn:example:small", "s1", big)
        assert error_of(refused) == ("modify", "not-acceptable", "payload-too-big")
        items = await read_items(a, None, "urn:example:small")
        assert items[0][1].tag == "{urn:example:big}small"
        assert stored_items(srv, alice) == {"urn:example:small": ["s1"]}

        ok(await publish(a, "urn:example:n2", "i", "<n xmlns='urn:example'/>"))
        ok(await publish(a, "urn:example:n3", "i", "<n xmlns='urn:example'/>"))
        for attempt in (
            publish(a, "urn:example:n4", "i", "<n xmlns='urn:example'/>"),
            answer(a.plugin["xep_0060"].create_node(None, "urn:example:n4")),
        ):
            assert error_of(await attempt) == ("cancel", "not-allowed", "max-nodes-exceeded")
        assert sorted(stored_items(srv, alice)) == ["urn:example:n2", "urn:example:n3", "urn:example:small"]


# -- Persistence -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
async def test_items_and_config_survive_restart(make_server, how):
    srv = make_server()
    alice, eve = srv.add_user("pep"), srv.add_user("eve")
    node = "urn:example:durable"
    options = {"pubsub#access_model": "open", "pubsub#max_items": "5"}
    async with pep_client(srv, alice, "desk", available=False) as a:
        ok(await publish(a, node, "one", "<d xmlns='urn:example'>1</d>", options))
        ok(await configure(a, node, {"pubsub#title": "Durable things"}))
        ok(await publish(a, node, "two", "<d xmlns='urn:example'>2</d>", options))
        if how == "sigkill":
            # Killed as soon as the result is here: it was committed before it was sent.
            srv.kill()
            a.abort()
    assert stored_items(srv, alice) == {node: ["two", "one"]}
    restart_server(srv, kill=(how == "sigkill"))
    async with pep_client(srv, eve, "stranger", available=False) as e:
        items = await read_items(e, alice.jid, node)
        assert [(i, p.text) for i, p in items] == [("two", "2"), ("one", "1")]
    async with pep_client(srv, alice, "desk", available=False) as a:
        config = await get_config(a, node)
        assert config["pubsub#access_model"] == ["open"], config
        assert config["pubsub#max_items"] == ["5"], config
        assert config["pubsub#title"] == ["Durable things"], config
        # The precondition is still met after the restart.
        ok(await publish(a, node, "three", "<d xmlns='urn:example'>3</d>", options))


# -- Account deletion --------------------------------------------------------------------------


async def test_account_deletion_removes_the_nodes(server, pool):
    """Deleting an account deletes its PEP nodes with their items, and its subscriptions and
    affiliations on the PubSub service."""
    if server.external:
        pytest.skip("reads rookery's data directory")
    alice, eve = pool.take(), pool.take()
    svc = f"pubsub.{server.domain}"
    node = "deletion-" + eve.localpart
    async with pep_client(server, eve, "owner", available=False) as e:
        ok(await answer(e.plugin["xep_0060"].create_node(svc, node)))
        ok(await answer(e.plugin["xep_0060"].modify_affiliations(svc, node, [(alice.jid, "publisher")])))
    async with pep_client(server, alice, "desk", available=False) as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore"), {"pubsub#access_model": "open"}))
        ok(await publish(a, AXOLOTL_DEVICES, "current", axolotl_devices(7), {"pubsub#access_model": "open"}))
        ok(await answer(a.plugin["xep_0060"].subscribe(svc, node)))
    assert sorted(stored_items(server, alice)) == sorted([GEOLOC, AXOLOTL_DEVICES])
    res = server.user("delete", alice.jid)
    assert res.returncode == 0, res.stderr
    assert stored_items(server, alice) == {}
    res = server.user("add", alice.jid, "--password", alice.password)
    assert res.returncode == 0, res.stderr
    async with pep_client(server, alice, "fresh", available=False) as a:
        items = await a.iq(alice.jid, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert list(items.xml.iter(qn(DISCO_ITEMS_NS, "item"))) == [], items
        affs = ok(await answer(a.plugin["xep_0060"].get_affiliations(None)))
        assert affs.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}affiliations/{{{PUBSUB}}}affiliation") == []
        assert error_of((await get_items(a, None, GEOLOC))[0])[1] == "item-not-found"
    async with pep_client(server, eve, "stranger", available=False) as e:
        assert error_of((await get_items(e, alice.jid, AXOLOTL_DEVICES))[0])[1] == "item-not-found"
        subs = ok(await answer(e.plugin["xep_0060"].get_node_subscriptions(svc, node)))
        assert subs.xml.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}subscriptions/{{{OWNER}}}subscription") == []
        affs = ok(await answer(e.plugin["xep_0060"].get_node_affiliations(svc, node)))
        assert {
            x.get("jid"): x.get("affiliation")
            for x in affs.xml.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}affiliations/{{{OWNER}}}affiliation")
        } == {eve.jid: "owner"}


# -- Last items and the owner's presence ------------------------------------------------------
#
# XEP-0163 §4.3.2: a contact that comes online asking for a node gets its last item, whether
# the owner is online or not; the answers to the owner's own probes when it logs in are not a
# contact coming online, and send nothing again.


async def test_last_item_on_presence_while_the_owner_is_offline(server, pool, raw_factory):
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk", available=False) as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
    await asyncio.sleep(0.3)  # the server notices the close
    async with pep_client(server, bob, "phone", notify=[GEOLOC]) as b:
        await wait_event(b, published(GEOLOC, "current"), timeout=3, what="last item, owner offline")


async def test_owner_login_sends_no_last_items_again(server, pool, raw_factory):
    alice, bob = pool.take(), pool.take()
    befriend(server, raw_factory, alice, bob)
    async with pep_client(server, alice, "desk") as a:
        ok(await publish(a, GEOLOC, "current", geoloc("Elsinore")))
        async with pep_client(server, bob, "phone", notify=[GEOLOC]) as b:
            await wait_event(b, published(GEOLOC, "current"), timeout=10, what="last item on presence")
            await a.close()
            await asyncio.sleep(0.3)
            async with pep_client(server, alice, "laptop") as a2:
                await ping(a2)
                await asyncio.sleep(QUIET)
                await assert_no_event(b, any_event(GEOLOC), "last item again when the owner logs in")
