"""The PubSub service domain (XEP-0060, ``pubsub.<domain>``) with slixmpp's xep_0060 plugin:
discovery, node creation (named, instant, create-and-configure), configuration, subscriptions
with options, notifications from the service, retrieval with RSM paging both ways, the
owner's use cases (subscriptions, affiliations, purge, delete with redirect), the authorize
access model with the owner's approval, the error cases of §6–§8, and limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from slixmpp.plugins.xep_0059 import Set as RsmSet
from slixmpp.plugins.xep_0060.stanza import Pubsub
from slixmpp.xmlstream import register_stanza_plugin

from harness import (
    CLIENT_NS,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    UserPool,
    login_scram,
    qn,
    restart_server,
    stanza_error_condition,
)
from test_pep import (
    DATA,
    EVENT,
    NODE_CONFIG,
    OWNER,
    PUBSUB,
    answer,
    assert_no_event,
    configure,
    error_of,
    form,
    get_config,
    get_items,
    node_event,
    ok,
    payload_of,
    pep_client,
    published,
    read_items,
    wait_event,
)

RSM = "http://jabber.org/protocol/rsm"
SUBSCRIBE_OPTIONS = PUBSUB + "#subscribe_options"
SUBSCRIBE_AUTHORIZATION = PUBSUB + "#subscribe_authorization"


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "ps", workers=3)
    users.prefetch(17)
    yield users
    users.close()


def service(server) -> str:
    return f"pubsub.{server.domain}"


def entry(i: int) -> str:
    return f"<entry xmlns='http://www.w3.org/2005/Atom'><title>post {i}</title></entry>"


async def create(c, svc: str, node: str | None, config: dict | None = None):
    cfg = form(c, NODE_CONFIG, config) if config else None
    return await answer(c.plugin["xep_0060"].create_node(svc, node, config=cfg))


async def publish_to(c, svc: str, node: str, item_id: str | None, payload: str):
    return await answer(c.plugin["xep_0060"].publish(svc, node, id=item_id, payload=ET.fromstring(payload)))


def subscription_of(reply) -> ET.Element:
    sub = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
    assert sub is not None, reply
    return sub


async def node_subscriptions(c, svc: str, node: str) -> dict[str, str]:
    reply = ok(await answer(c.plugin["xep_0060"].get_node_subscriptions(svc, node)))
    subs = reply.xml.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}subscriptions/{{{OWNER}}}subscription")
    return {s.get("jid"): s.get("subscription") for s in subs}


async def node_affiliations(c, svc: str, node: str) -> dict[str, str]:
    reply = ok(await answer(c.plugin["xep_0060"].get_node_affiliations(svc, node)))
    affs = reply.xml.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}affiliations/{{{OWNER}}}affiliation")
    return {a.get("jid"): a.get("affiliation") for a in affs}


async def own_subscriptions(c, svc: str) -> dict[str, str]:
    reply = ok(await answer(c.plugin["xep_0060"].get_subscriptions(svc)))
    subs = reply.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscriptions/{{{PUBSUB}}}subscription")
    return {s.get("node"): s.get("subscription") for s in subs}


def ids(items) -> list[str]:
    return [i for i, _ in items]


# -- Discovery ---------------------------------------------------------------------------------


async def test_service_discovery(server, pool):
    alice = pool.take()
    svc = service(server)
    async with pep_client(server, alice, "desk", available=False) as a:
        host_items = await a.plugin["xep_0030"].get_items(server.domain, timeout=10)
        assert svc in {jid for jid, _node, _name in host_items["disco_items"]["items"]}
        info = await a.iq(svc, "get", f"<query xmlns='{DISCO_INFO_NS}'/>")
        identities = {(i.get("category"), i.get("type")) for i in info.xml.iter(qn(DISCO_INFO_NS, "identity"))}
        features = {f.get("var") for f in info.xml.iter(qn(DISCO_INFO_NS, "feature"))}
        assert identities == {("pubsub", "service")}, identities
        assert {
            PUBSUB,
            PUBSUB + "#create-nodes",
            PUBSUB + "#instant-nodes",
            PUBSUB + "#create-and-configure",
            PUBSUB + "#publish",
            PUBSUB + "#subscribe",
            PUBSUB + "#retrieve-items",
            PUBSUB + "#rsm",
            PUBSUB + "#access-authorize",
            PUBSUB + "#modify-affiliations",
            PUBSUB + "#manage-subscriptions",
        } <= features, features
        # Leaf nodes only: no collections (XEP-0248).
        assert not any("collections" in f for f in features), features

        node = "disco-" + alice.localpart
        assert (await create(a, svc, node, {"pubsub#title": "Disco test"}))["type"] == "result"
        ok(await publish_to(a, svc, node, "x1", entry(1)))
        listed = await a.iq(svc, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        nodes = {(i.get("jid"), i.get("node"), i.get("name")) for i in listed.xml.iter(qn(DISCO_ITEMS_NS, "item"))}
        assert (svc, node, "Disco test") in nodes, nodes
        node_info = await a.iq(svc, "get", f"<query xmlns='{DISCO_INFO_NS}' node='{node}'/>")
        assert node_info["type"] == "result", node_info
        assert ("pubsub", "leaf") in {
            (i.get("category"), i.get("type")) for i in node_info.xml.iter(qn(DISCO_INFO_NS, "identity"))
        }
        meta = node_info.xml.find(f"{{{DISCO_INFO_NS}}}query/{{{DATA}}}x")
        assert meta is not None and meta.get("type") == "result", node_info
        node_items = await a.iq(svc, "get", f"<query xmlns='{DISCO_ITEMS_NS}' node='{node}'/>")
        assert [i.get("name") for i in node_items.xml.iter(qn(DISCO_ITEMS_NS, "item"))] == ["x1"]
        unknown = await a.iq(svc, "get", f"<query xmlns='{DISCO_INFO_NS}' node='no-such-node'/>")
        assert error_of(unknown)[1] == "item-not-found"


# -- Creation and configuration ----------------------------------------------------------------


async def test_create_instant_and_configure(server, pool):
    alice, bob = pool.take(), pool.take()
    svc = service(server)
    node = "blog-" + alice.localpart
    async with pep_client(server, alice, "desk", available=False) as a, pep_client(
        server, bob, "b", available=False
    ) as b:
        # Create and configure in one request (§8.1.3).
        ok(await create(a, svc, node, {"pubsub#title": "Princely musings", "pubsub#max_items": "100"}))
        assert error_of(await create(b, svc, node)) == ("cancel", "conflict", None)
        config = await get_config(a, node, to=svc)
        assert config["pubsub#title"] == ["Princely musings"]
        assert config["pubsub#max_items"] == ["100"]
        assert config["pubsub#access_model"] == ["open"]
        assert config["pubsub#node_type"] == ["leaf"]
        ok(await configure(a, node, {"pubsub#title": "Musings", "pubsub#notify_config": "1"}, to=svc))
        assert (await get_config(a, node, to=svc))["pubsub#title"] == ["Musings"]
        # Instant node (§8.1.2): the service names it.
        reply = ok(await create(a, svc, None))
        instant = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}create").get("node")
        assert instant
        assert (await get_config(a, instant, to=svc))["pubsub#access_model"] == ["open"]
        affs = ok(await answer(a.plugin["xep_0060"].get_affiliations(svc)))
        mine = {
            x.get("node"): x.get("affiliation")
            for x in affs.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}affiliations/{{{PUBSUB}}}affiliation")
        }
        assert mine.get(node) == "owner" and mine.get(instant) == "owner", mine
        # The service's default configuration (§8.3).
        default = ok(await answer(a.plugin["xep_0060"].get_node_config(svc)))
        fields = default.xml.findall(f"{{{OWNER}}}pubsub/{{{OWNER}}}default/{{{DATA}}}x/{{{DATA}}}field")
        assert {f.get("var") for f in fields} >= {"pubsub#access_model", "pubsub#max_items"}

        # A non-owner may neither read nor change the configuration (§8.2.3.3), nor delete or purge.
        assert error_of(await answer(b.plugin["xep_0060"].get_node_config(svc, node))) == ("auth", "forbidden", None)
        assert error_of(await configure(b, node, {"pubsub#title": "Mine now"}, to=svc)) == ("auth", "forbidden", None)
        assert error_of(await answer(b.plugin["xep_0060"].delete_node(svc, node)))[1] == "forbidden"
        assert error_of(await answer(b.plugin["xep_0060"].purge(svc, node)))[1] == "forbidden"
        assert (await get_config(a, node, to=svc))["pubsub#title"] == ["Musings"]
        # Only leaf nodes.
        refused = await answer(a.plugin["xep_0060"].create_node(svc, node + "-c", config=form(a, NODE_CONFIG, {}), ntype="collection"))
        assert error_of(refused) == ("cancel", "feature-not-implemented", "unsupported")
        unsupported = refused.xml.find(f"{{{CLIENT_NS}}}error/{{{PUBSUB}#errors}}unsupported")
        assert unsupported.get("feature") == "collections"
        # A bad value changes nothing (§8.2.5).
        assert error_of(await configure(a, node, {"pubsub#max_items": "0", "pubsub#title": "x"}, to=svc))[1] == "not-acceptable"
        assert (await get_config(a, node, to=svc))["pubsub#title"] == ["Musings"]


async def test_errors_for_unknown_nodes_and_other_jids(server, pool):
    alice, bob = pool.take(), pool.take()
    svc = service(server)
    node = "errors-" + alice.localpart
    async with pep_client(server, alice, "desk", available=False) as a, pep_client(
        server, bob, "b", available=False
    ) as b:
        ok(await create(a, svc, node))
        ps = b.plugin["xep_0060"]
        for request in (
            get_items(b, svc, "no-such-node"),
            answer(ps.subscribe(svc, "no-such-node")),
            answer(ps.unsubscribe(svc, "no-such-node")),
            answer(a.plugin["xep_0060"].get_node_config(svc, "no-such-node")),
            answer(a.plugin["xep_0060"].delete_node(svc, "no-such-node")),
            answer(a.plugin["xep_0060"].purge(svc, "no-such-node")),
            answer(a.plugin["xep_0060"].get_node_subscriptions(svc, "no-such-node")),
        ):
            reply = await request
            reply = reply[0] if isinstance(reply, tuple) else reply
            assert error_of(reply) == ("cancel", "item-not-found", None), reply
        # Subscribing another entity (§6.1.3.1).
        refused = await answer(ps.subscribe(svc, node, subscribee=alice.jid))
        assert error_of(refused) == ("modify", "bad-request", "invalid-jid")
        # Unsubscribing when not subscribed (§6.2.3.2).
        refused = await answer(ps.unsubscribe(svc, node))
        assert error_of(refused) == ("cancel", "unexpected-request", "not-subscribed")
        # Unsubscribing someone else (§6.2.3.3).
        ok(await answer(a.plugin["xep_0060"].subscribe(svc, node)))
        refused = await answer(ps.unsubscribe(svc, node, subscribee=alice.jid))
        assert error_of(refused) == ("modify", "bad-request", "invalid-jid")
        assert await node_subscriptions(a, svc, node) == {alice.jid: "subscribed"}


# -- Subscriptions and notifications -----------------------------------------------------------


async def test_subscribe_with_options_and_notifications_from_the_service(server, pool):
    alice, bob, carol = pool.take(), pool.take(), pool.take()
    svc = service(server)
    node = "news-" + alice.localpart
    async with (
        pep_client(server, alice, "desk") as a,
        pep_client(server, bob, "b") as b,
        pep_client(server, carol, "c") as c,
    ):
        ok(await create(a, svc, node))
        # Subscribe and configure (§6.3.7): bob wants delivery, carol does not.
        reply = ok(
            await answer(
                b.plugin["xep_0060"].subscribe(svc, node, options=form(b, SUBSCRIBE_OPTIONS, {"pubsub#deliver": "1"}))
            )
        )
        sub = subscription_of(reply)
        assert (sub.get("node"), sub.get("jid"), sub.get("subscription")) == (node, bob.jid, "subscribed")
        assert sub.get("subid")
        ok(
            await answer(
                c.plugin["xep_0060"].subscribe(svc, node, options=form(c, SUBSCRIBE_OPTIONS, {"pubsub#deliver": "0"}))
            )
        )
        options = ok(await answer(c.plugin["xep_0060"].get_subscription_options(svc, node, carol.jid)))
        fields = {
            f.get("var"): f.findtext(qn(DATA, "value"))
            for f in options.xml.iter(qn(DATA, "field"))
        }
        assert fields["pubsub#deliver"] in ("0", "false"), fields
        assert await own_subscriptions(b, svc) == {node: "subscribed"}

        ok(await publish_to(a, svc, node, "n1", entry(1)))
        got = await wait_event(b, published(node, "n1"), what="notification from the service")
        assert got.get("from") == svc and got.get("type") == "headline", ET.tostring(got)
        assert payload_of(got).findtext("{http://www.w3.org/2005/Atom}title") == "post 1"
        await assert_no_event(c, published(node), "notification with delivery off")
        # The publisher is not subscribed: nothing for alice either.
        await assert_no_event(a, published(node), "notification to a non-subscriber")
        # Without an id, the service makes one up and says which (§7.1.2).
        reply = ok(await answer(a.plugin["xep_0060"].publish(svc, node, payload=ET.fromstring(entry(9)))))
        made_up = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item").get("id")
        assert made_up
        await wait_event(b, published(node, made_up))
        # A configuration change is announced when the node says so (§8.2.4, notify_config).
        ok(await configure(a, node, {"pubsub#notify_config": "1", "pubsub#title": "Daily news"}, to=svc))
        changed = await wait_event(b, node_event("configuration", node), what="configuration notification")
        fields = {
            f.get("var"): f.findtext(qn(DATA, "value"))
            for f in changed.iter(qn(DATA, "field"))
        }
        assert fields.get("pubsub#title") == "Daily news", ET.tostring(changed)
        await assert_no_event(c, node_event("configuration", node), "configuration notification with delivery off")

        # carol turns delivery on (§6.3.5) and gets the next one.
        ok(
            await c.iq(
                svc,
                "set",
                f"<pubsub xmlns='{PUBSUB}'><options node='{node}' jid='{carol.jid}'>"
                f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{SUBSCRIBE_OPTIONS}</value></field>"
                "<field var='pubsub#deliver'><value>1</value></field></x></options></pubsub>",
            )
        )
        ok(await publish_to(a, svc, node, "n2", entry(2)))
        for client in (b, c):
            await wait_event(client, published(node, "n2"))

        # bob unsubscribes: no more notifications; a second unsubscribe is an error.
        ok(await answer(b.plugin["xep_0060"].unsubscribe(svc, node)))
        ok(await publish_to(a, svc, node, "n3", entry(3)))
        await wait_event(c, published(node, "n3"))
        await assert_no_event(b, published(node), "notification after unsubscribing")
        assert error_of(await answer(b.plugin["xep_0060"].unsubscribe(svc, node))) == (
            "cancel",
            "unexpected-request",
            "not-subscribed",
        )
        assert await own_subscriptions(b, svc) == {}


# -- Retrieval ---------------------------------------------------------------------------------


async def rsm_page(c, svc: str, node: str, rsm: str):
    reply = ok(
        await c.iq(svc, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{node}'/><set xmlns='{RSM}'>{rsm}</set></pubsub>")
    )
    items = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items")
    got = [i.get("id") for i in items.findall(qn(PUBSUB, "item"))]
    s = reply.xml.find(f"{{{PUBSUB}}}pubsub/{{{RSM}}}set")
    assert s is not None, f"no RSM set in the answer: {reply}"
    first = s.find(qn(RSM, "first"))
    meta = {
        "count": int(s.findtext(qn(RSM, "count"))),
        "first": None if first is None else first.text,
        "index": None if first is None else int(first.get("index")),
        "last": s.findtext(qn(RSM, "last")),
    }
    if got:
        assert meta["first"] == got[0] and meta["last"] == got[-1], (got, meta)
    return got, meta


async def test_retrieve_with_rsm_paging_both_ways(server, pool):
    alice, bob = pool.take(), pool.take()
    svc = service(server)
    node = "paged-" + alice.localpart
    async with pep_client(server, alice, "desk", available=False) as a, pep_client(
        server, bob, "b", available=False
    ) as b:
        ok(await create(a, svc, node, {"pubsub#max_items": "100"}))
        for i in range(30):
            ok(await publish_to(a, svc, node, f"i{i:02d}", entry(i)))
        newest_first = [f"i{i:02d}" for i in reversed(range(30))]

        # Forwards from the newest, 10 at a time.
        seen, rsm = [], "<max>10</max>"
        for page in range(3):
            got, meta = await rsm_page(b, svc, node, rsm)
            assert got == newest_first[10 * page : 10 * page + 10], (page, got)
            assert meta["count"] == 30 and meta["index"] == 10 * page, meta
            seen += got
            rsm = f"<max>10</max><after>{meta['last']}</after>"
        got, meta = await rsm_page(b, svc, node, rsm)
        assert got == [] and meta["count"] == 30
        assert seen == newest_first

        # Backwards, 10 at a time, from the oldest item the forward pass ended on: each page
        # holds the items just newer than the first of the one before.
        seen, cursor = ["i00"], "i00"
        for page in range(3):
            got, meta = await rsm_page(b, svc, node, f"<max>10</max><before>{cursor}</before>")
            want = newest_first[max(0, 19 - 10 * page) : 29 - 10 * page]
            assert got == want, (page, got)
            assert meta["count"] == 30 and meta["index"] == max(0, 19 - 10 * page), meta
            seen = got + seen
            cursor = meta["first"]
        got, meta = await rsm_page(b, svc, node, f"<max>10</max><before>{cursor}</before>")
        assert got == [] and meta["count"] == 30
        assert seen == newest_first

        # The latest N (§6.5.7) and items by id (§6.5.8).
        items = await read_items(b, svc, node, max_items=5)
        assert ids(items) == newest_first[:5]
        items = await read_items(b, svc, node, ids=["i03", "i17"])
        assert sorted(ids(items)) == ["i03", "i17"]
        assert items[0][1].findtext("{http://www.w3.org/2005/Atom}title") in ("post 3", "post 17")
        # Paging from an id that is not there.
        reply = await b.iq(
            svc, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{node}'/><set xmlns='{RSM}'><max>10</max><after>nope</after></set></pubsub>"
        )
        assert error_of(reply)[1] == "item-not-found"

        # slixmpp's own RSM iterator reads every item once.
        register_stanza_plugin(Pubsub, RsmSet)
        collected = []
        async for page in b.plugin["xep_0060"].get_items(svc, node, iterator=True):
            collected += [i.get("id") for i in page.xml.iter(qn(PUBSUB, "item"))]
        assert collected == newest_first


async def test_rsm_empty_before_asks_for_the_last_page(server, pool):
    alice = pool.take()
    svc = service(server)
    node = "last-page-" + alice.localpart
    async with pep_client(server, alice, "desk", available=False) as a:
        ok(await create(a, svc, node, {"pubsub#max_items": "100"}))
        for i in range(15):
            ok(await publish_to(a, svc, node, f"i{i:02d}", entry(i)))
        got, meta = await rsm_page(a, svc, node, "<max>10</max><before/>")
        assert got == [f"i{i:02d}" for i in reversed(range(10))], got
        assert meta["count"] == 15 and meta["index"] == 5, meta


# -- Owner use cases ---------------------------------------------------------------------------


async def test_owner_manages_subscriptions_affiliations_purge_and_delete(server, pool):
    alice, bob, carol, dave = pool.take(), pool.take(), pool.take(), pool.take()
    svc = service(server)
    node = "owned-" + alice.localpart
    async with (
        pep_client(server, alice, "desk") as a,
        pep_client(server, bob, "b") as b,
        pep_client(server, carol, "c") as c,
        pep_client(server, dave, "d") as d,
    ):
        ok(await create(a, svc, node))
        for client in (b, c):
            ok(await answer(client.plugin["xep_0060"].subscribe(svc, node)))
        assert await node_subscriptions(a, svc, node) == {bob.jid: "subscribed", carol.jid: "subscribed"}
        # Non-owners cannot list or change them.
        assert error_of(await answer(b.plugin["xep_0060"].get_node_subscriptions(svc, node)))[1] == "forbidden"

        # The owner removes carol's subscription (§8.8.2).
        ok(await answer(a.plugin["xep_0060"].modify_subscriptions(svc, node, [(carol.jid, "none")])))
        assert await node_subscriptions(a, svc, node) == {bob.jid: "subscribed"}
        assert await own_subscriptions(c, svc) == {}

        # Affiliations (§8.9): bob may publish once he is a publisher; dave is banned.
        assert await node_affiliations(a, svc, node) == {alice.jid: "owner"}
        assert error_of(await publish_to(b, svc, node, "b0", entry(0))) == ("auth", "forbidden", None)
        ok(
            await answer(
                a.plugin["xep_0060"].modify_affiliations(svc, node, [(bob.jid, "publisher"), (dave.jid, "outcast")])
            )
        )
        assert await node_affiliations(a, svc, node) == {
            alice.jid: "owner",
            bob.jid: "publisher",
            dave.jid: "outcast",
        }
        # A delta entry without an affiliation changes nothing; the others apply (§8.9.2.1).
        ok(
            await a.iq(
                svc,
                "set",
                f"<pubsub xmlns='{OWNER}'><affiliations node='{node}'><affiliation jid='{bob.jid}'/>"
                f"<affiliation jid='{carol.jid}' affiliation='member'/></affiliations></pubsub>",
            )
        )
        assert await node_affiliations(a, svc, node) == {
            alice.jid: "owner",
            bob.jid: "publisher",
            carol.jid: "member",
            dave.jid: "outcast",
        }
        ok(await publish_to(b, svc, node, "b1", entry(1)))
        await wait_event(b, published(node, "b1"))
        await assert_no_event(c, published(node), "notification after the owner removed the subscription")
        reply = ok(await answer(b.plugin["xep_0060"].get_affiliations(svc)))
        assert {
            x.get("node"): x.get("affiliation")
            for x in reply.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}affiliations/{{{PUBSUB}}}affiliation")
        } == {node: "publisher"}
        # An outcast can do nothing (§4.1).
        assert error_of(await publish_to(d, svc, node, "d1", entry(1))) == ("auth", "forbidden", None)
        assert error_of(await answer(d.plugin["xep_0060"].subscribe(svc, node))) == ("auth", "forbidden", None)
        assert error_of((await get_items(d, svc, node))[0]) == ("auth", "forbidden", None)
        # The node keeps an owner.
        refused = await answer(a.plugin["xep_0060"].modify_affiliations(svc, node, [(alice.jid, "none")]))
        assert refused["type"] == "error"
        assert (await node_affiliations(a, svc, node))[alice.jid] == "owner"

        # Purge (§8.5): subscribers hear of it, the items are gone.
        ok(await publish_to(a, svc, node, "a2", entry(2)))
        await wait_event(b, published(node, "a2"))
        ok(await answer(a.plugin["xep_0060"].purge(svc, node)))
        purge = await wait_event(b, node_event("purge", node), what="purge notification")
        assert purge.get("from") == svc
        items = await read_items(b, svc, node)
        assert items == []

        # Delete with a redirect (§8.4.1): subscribers hear of it, the node is gone.
        ok(
            await a.iq(
                svc,
                "set",
                f"<pubsub xmlns='{OWNER}'><delete node='{node}'><redirect uri='xmpp:{svc}?;node=elsewhere'/></delete></pubsub>",
            )
        )
        deleted = await wait_event(b, node_event("delete", node), what="delete notification")
        redirect = deleted.find(f"{{{EVENT}}}event/{{{EVENT}}}delete/{{{EVENT}}}redirect")
        assert redirect is not None and redirect.get("uri") == f"xmpp:{svc}?;node=elsewhere", ET.tostring(deleted)
        assert error_of((await get_items(b, svc, node))[0])[1] == "item-not-found"
        listed = await a.iq(svc, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert node not in {i.get("node") for i in listed.xml.iter(qn(DISCO_ITEMS_NS, "item"))}
        assert await own_subscriptions(b, svc) == {}


async def test_authorize_access_model_waits_for_the_owner(server, pool):
    alice, bob = pool.take(), pool.take()
    svc = service(server)
    node = "private-" + alice.localpart
    async with pep_client(server, alice, "desk") as a, pep_client(server, bob, "b") as b:
        ok(await create(a, svc, node, {"pubsub#access_model": "authorize"}))
        ok(await publish_to(a, svc, node, "secret", entry(42)))
        sub = subscription_of(ok(await answer(b.plugin["xep_0060"].subscribe(svc, node))))
        assert sub.get("subscription") == "pending"
        # Asking again while pending (§6.1.3.7).
        again = await answer(b.plugin["xep_0060"].subscribe(svc, node))
        assert error_of(again) == ("auth", "not-authorized", "pending-subscription")
        # The owner is asked (§8.6) with a subscribe_authorization form.
        request = await a.next_message(
            timeout=5, predicate=lambda m: m.xml.find(f"{{{DATA}}}x") is not None and m["from"] == svc
        )
        x = request.xml.find(f"{{{DATA}}}x")
        values = {f.get("var"): f.findtext(qn(DATA, "value")) for f in x.findall(qn(DATA, "field"))}
        assert values["FORM_TYPE"] == SUBSCRIBE_AUTHORIZATION
        assert values["pubsub#node"] == node and values["pubsub#subscriber_jid"] == bob.jid
        # Pending: no items yet (§6.5.9.6... not-subscribed).
        assert error_of((await get_items(b, svc, node))[0]) == ("auth", "not-authorized", "not-subscribed")
        assert await node_subscriptions(a, svc, node) == {bob.jid: "pending"}

        # The owner approves through the subscriptions management (§8.8.2).
        ok(await answer(a.plugin["xep_0060"].modify_subscriptions(svc, node, [(bob.jid, "subscribed")])))
        note = await wait_event(
            b,
            lambda m: (m.find(f"{{{EVENT}}}event/{{{EVENT}}}subscription") is not None),
            what="subscription state notification",
        )
        state = note.find(f"{{{EVENT}}}event/{{{EVENT}}}subscription")
        assert (state.get("node"), state.get("jid"), state.get("subscription")) == (node, bob.jid, "subscribed")
        items = await read_items(b, svc, node)
        assert ids(items) == ["secret"]
        assert await own_subscriptions(b, svc) == {node: "subscribed"}
        # Subscribing again keeps the approval.
        sub = subscription_of(ok(await answer(b.plugin["xep_0060"].subscribe(svc, node))))
        assert sub.get("subscription") == "subscribed"
        assert await node_subscriptions(a, svc, node) == {bob.jid: "subscribed"}
        ok(await publish_to(a, svc, node, "next", entry(43)))
        await wait_event(b, published(node, "next"))


# -- Limits ------------------------------------------------------------------------------------


async def test_service_limits(make_server, raw_factory):
    srv = make_server(host_extra="[host.pubsub]\nmax_nodes = 2\nmax_item_bytes = 512\nmax_subscriptions = 1\n")
    alice = srv.add_user("ps")
    svc = service(srv)
    async with pep_client(srv, alice, "desk", available=False) as a:
        ok(await create(a, svc, "one"))
        big = f"<blob xmlns='urn:example'>{'x' * 1000}</blob>"
        assert error_of(await publish_to(a, svc, "one", "big", big)) == ("modify", "not-acceptable", "payload-too-big")
        items = await read_items(a, svc, "one")
        assert items == []
        ok(await create(a, svc, "two"))
        for attempt in (create(a, svc, "three"), create(a, svc, None), publish_to(a, svc, "four", "i", entry(1))):
            assert error_of(await attempt) == ("cancel", "not-allowed", "max-nodes-exceeded")
        listed = await a.iq(svc, "get", f"<query xmlns='{DISCO_ITEMS_NS}'/>")
        assert {i.get("node") for i in listed.xml.iter(qn(DISCO_ITEMS_NS, "item"))} == {"one", "two"}
        # One subscription per subscriber here (§6.1.3.9). slixmpp 1.17 cannot read a
        # policy-violation error (its list of conditions predates RFC 6120), so the refused
        # request goes over a raw stream.
        ok(await answer(a.plugin["xep_0060"].subscribe(svc, "one")))
        stream = raw_factory(srv)
        login_scram(stream, alice, "raw")
        refused = stream.iq(f"<pubsub xmlns='{PUBSUB}'><subscribe node='two' jid='{alice.jid}'/></pubsub>", to=svc, itype="set")
        assert stanza_error_condition(refused) == ("wait", "policy-violation"), ET.tostring(refused)
        assert refused.find(f"{{{CLIENT_NS}}}error/{{{PUBSUB}#errors}}too-many-subscriptions") is not None
        assert await own_subscriptions(a, svc) == {"one": "subscribed"}


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
async def test_nodes_survive_restart(make_server, how):
    srv = make_server()
    alice, bob = srv.add_user("ps"), srv.add_user("ps")
    svc = service(srv)
    async with pep_client(srv, alice, "desk", available=False) as a, pep_client(
        srv, bob, "b", available=False
    ) as b:
        ok(await create(a, svc, "kept", {"pubsub#title": "Kept", "pubsub#max_items": "10"}))
        ok(await answer(b.plugin["xep_0060"].subscribe(svc, "kept")))
        ok(await answer(a.plugin["xep_0060"].modify_affiliations(svc, "kept", [(bob.jid, "publisher")])))
        ok(await publish_to(a, svc, "kept", "k1", entry(1)))
        ok(await publish_to(b, svc, "kept", "k2", entry(2)))
        if how == "sigkill":
            # Killed as soon as the last result is here: it was committed before it was sent.
            srv.kill()
            a.abort()
            b.abort()
    restart_server(srv, kill=(how == "sigkill"))
    async with pep_client(srv, alice, "desk", available=False) as a:
        items = await read_items(a, svc, "kept")
        assert ids(items) == ["k2", "k1"]
        config = await get_config(a, "kept", to=svc)
        assert config["pubsub#title"] == ["Kept"] and config["pubsub#max_items"] == ["10"], config
        assert await node_subscriptions(a, svc, "kept") == {bob.jid: "subscribed"}
        assert await node_affiliations(a, svc, "kept") == {alice.jid: "owner", bob.jid: "publisher"}

