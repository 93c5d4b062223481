"""Roster management (RFC 6121 §2) and roster versioning (XEP-0237).

Most checks run over raw streams so that every push, result and error is seen exactly as
the server wrote it. A resource is "interested" once it has requested the roster (§2.1.6):
only such resources get roster pushes.
"""

from __future__ import annotations

import pytest

from conftest import EXTERNAL, start_rookery
from harness import (
    CLIENT_NS,
    ROSTER_NS,
    ROSTERVER_FEATURE_NS,
    RosterEntry,
    UserPool,
    im_login,
    login_scram,
    presences,
    qn,
    request,
    roster_get,
    roster_item_xml,
    roster_of,
    roster_pushes,
    roster_set,
    send_presence,
    stanza_error_condition,
    sync,
    unique_localpart,
)


@pytest.fixture(scope="module")
def pool(server):
    users = UserPool(server, "roster", workers=2)
    users.prefetch(13)
    yield users
    users.close()


@pytest.fixture(scope="module")
def validator(pool):
    """One account for the validation tests: each uses its own contact JIDs."""
    return pool.take()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server whose rosters hold at most two items."""
    if EXTERNAL:
        pytest.skip("needs its own rookery process (ROOKERY_INTEROP_EXTERNAL is set)")
    srv = start_rookery(tmp_path_factory.mktemp("roster-small"), extra_limits={"max_roster_items": 2})
    try:
        yield srv
    finally:
        srv.kill()


def contact_jid(server, prefix: str = "contact") -> str:
    """A JID for a roster item (roster items need not be accounts)."""
    return f"{unique_localpart(prefix)}@{server.domain}"


def query_of(reply):
    return reply.find(qn(ROSTER_NS, "query"))


def items_of(stream) -> dict:
    reply = roster_get(stream)
    assert reply.get("type") == "result", reply
    return roster_of(query_of(reply))


def assert_error(reply, condition: str, etype: str | None = None) -> None:
    assert reply.get("type") == "error", f"expected {condition}, got a {reply.get('type')}"
    got_type, got = stanza_error_condition(reply)
    assert got == condition, f"expected {condition}, got {got}"
    if etype is not None:
        assert got_type == etype, f"{condition}: error type {got_type}, expected {etype}"


def ack_pushes(stream, pushes) -> None:
    """A client answers every roster push (§2.1.6)."""
    for push in pushes:
        stream.send(f"<iq type='result' id='{push.get('id')}'/>")


def check_push(push, stream, user, jid: str, versioned: bool = False) -> RosterEntry:
    """The push is addressed to the resource, comes from the account itself, and carries
    exactly one item for ``jid``; returns that item. ``versioned``: the resource uses roster
    versioning, so the push carries the new version (RFC 6121 §2.6.3)."""
    assert push.get("to") == stream.jid, push.attrib
    # §2.1.6: a push has no 'from' or the account's bare JID (clients must ignore others).
    assert push.get("from") in (None, user.jid), push.attrib
    assert push.get("id"), "a push has an id"
    query = query_of(push)
    if versioned:
        assert query.get("ver"), "no 'ver' on a push to a resource that uses versioning"
    items = roster_of(query)
    assert list(items) == [jid], f"a push carries exactly one item: {list(items)}"
    return items[jid]


# -- Get ----------------------------------------------------------------------------------


def test_rosterver_stream_feature(server, raw, pool):
    stream = raw()
    login_scram(stream, pool.take(), "feature")
    assert stream.features.find(qn(ROSTERVER_FEATURE_NS, "ver")) is not None, "XEP-0237 §2.1 feature missing"


def test_get_empty_roster(server, raw, pool):
    stream = raw()
    login_scram(stream, pool.take(), "get")
    reply = roster_get(stream)
    assert reply.get("type") == "result"
    assert query_of(reply) is not None and roster_of(query_of(reply)) == {}
    # XEP-0237 §2.2: an empty 'ver' asks for the roster and its version.
    reply = roster_get(stream, ver="")
    assert reply.get("type") == "result"
    query = query_of(reply)
    assert query is not None and query.get("ver"), "no version with ver=''"
    assert roster_of(query) == {}


def test_get_addressed_to_own_bare_jid(server, raw, pool):
    user = pool.take()
    stream = raw()
    login_scram(stream, user, "own")
    reply = roster_get(stream, to=user.jid)
    assert reply.get("type") == "result"
    assert query_of(reply) is not None


# -- Set: add, update, pushes ------------------------------------------------------------------


def test_add_pushes_to_every_interested_resource(server, raw, pool):
    user = pool.take()
    r1, r2, r3 = raw(), raw(), raw()
    im_login(r1, user, "one")  # interested and available
    im_login(r2, user, "two", available=False)  # interested, not available
    im_login(r3, user, "three", roster=False)  # available, never asked for the roster
    for stream in (r1, r2):  # both use roster versioning (XEP-0237)
        assert query_of(roster_get(stream, ver="")).get("ver")
    nurse = contact_jid(server, "nurse")

    before, reply = request(
        r1, f"<query xmlns='{ROSTER_NS}'>{roster_item_xml(nurse, name='Nurse', groups=['Servants', 'Friends'])}</query>", itype="set"
    )
    assert reply.get("type") == "result"
    assert len(reply) == 0, "a roster set is answered with an empty result (§2.3.2)"
    seen = {s: roster_pushes(sync(s)) for s in (r1, r2, r3)}
    pushes_r1 = roster_pushes(before) + seen[r1]
    assert len(pushes_r1) == 1, f"the resource that made the change gets one push: {len(pushes_r1)}"
    assert len(seen[r2]) == 1, f"the other interested resource gets one push: {len(seen[r2])}"
    assert seen[r3] == [], "a resource that never requested the roster gets no push"
    versions = set()
    for stream, push in ((r1, pushes_r1[0]), (r2, seen[r2][0])):
        item = check_push(push, stream, user, nurse, versioned=True)
        assert (item.name, sorted(item.groups), item.subscription, item.ask) == (
            "Nurse",
            ["Friends", "Servants"],
            "none",
            None,
        )
        versions.add(query_of(push).get("ver"))
    ack_pushes(r1, pushes_r1)
    ack_pushes(r2, seen[r2])
    assert len(versions) == 1, f"one change, one version: {versions}"

    # What the server stored, seen from the third resource.
    reply = roster_get(r3, ver="")
    assert query_of(reply).get("ver") in versions
    item = roster_of(query_of(reply))[nurse]
    assert (item.name, sorted(item.groups), item.subscription, item.ask) == (
        "Nurse",
        ["Friends", "Servants"],
        "none",
        None,
    )
    # Answering the pushes caused no error.
    assert not [e for e in sync(r1) + sync(r2) if e.get("type") == "error"]


def test_update_name_and_groups(server, raw, pool):
    user = pool.take()
    r1, r2 = raw(), raw()
    im_login(r1, user, "one")
    im_login(r2, user, "two")
    jid = contact_jid(server, "friar")
    assert roster_set(r1, roster_item_xml(jid, name="Friar", groups=["Church"])).get("type") == "result"
    sync(r2)
    # The client cannot set the subscription state: 'subscription' (other than "remove") and
    # 'ask' in a roster set are not the client's to change (§2.1.2.2, §2.1.2.5).
    reply = roster_set(
        r1, roster_item_xml(jid, name="Friar Laurence", groups=["Verona", "Monks"], subscription="both", extra=" ask='subscribe'")
    )
    assert reply.get("type") == "result"
    pushes = roster_pushes(sync(r2))
    assert len(pushes) == 1
    item = check_push(pushes[0], r2, user, jid)
    assert (item.name, sorted(item.groups), item.subscription, item.ask) == (
        "Friar Laurence",
        ["Monks", "Verona"],
        "none",
        None,
    )
    stored = items_of(r2)[jid]
    assert (stored.name, sorted(stored.groups), stored.subscription, stored.ask) == (
        "Friar Laurence",
        ["Monks", "Verona"],
        "none",
        None,
    )
    # An update without groups leaves the item in no group; without a name, with none.
    assert roster_set(r1, roster_item_xml(jid)).get("type") == "result"
    stored = items_of(r2)[jid]
    assert (stored.name, stored.groups) == (None, [])


# -- Remove ------------------------------------------------------------------------------------


def test_remove_pushes_subscription_remove(server, raw, pool):
    user = pool.take()
    r1, r2, r3 = raw(), raw(), raw()
    im_login(r1, user, "one")
    im_login(r2, user, "two")
    im_login(r3, user, "three", roster=False)
    jid = contact_jid(server, "tybalt")
    assert roster_set(r1, roster_item_xml(jid, name="Tybalt")).get("type") == "result"
    for s in (r1, r2, r3):
        sync(s)

    reply = roster_set(r1, roster_item_xml(jid, subscription="remove"))
    assert reply.get("type") == "result"
    p2 = roster_pushes(sync(r2))
    assert len(p2) == 1
    item = check_push(p2[0], r2, user, jid)
    assert item.subscription == "remove"
    assert roster_pushes(sync(r3)) == []
    assert jid not in items_of(r1)


def test_remove_unknown_item_is_item_not_found(server, raw, pool):
    stream = raw()
    im_login(stream, pool.take(), "one")
    reply = roster_set(stream, roster_item_xml(contact_jid(server, "ghost"), subscription="remove"))
    assert_error(reply, "item-not-found")  # §2.5.3


def test_remove_cancels_subscriptions_both_ways(server, raw, pool):
    """§2.5.2: removing a contact with a subscription both ways sends unsubscribe and
    unsubscribed for the user; the contact's item drops to subscription 'none' and the
    contact stops seeing the user's presence."""
    user, contact = pool.take(), pool.take()
    u, c = raw(), raw()
    im_login(u, user, "u")
    im_login(c, contact, "c")
    for actor, target, ptype in (
        (u, contact, "subscribe"),
        (c, user, "subscribed"),
        (c, user, "subscribe"),
        (u, contact, "subscribed"),
    ):
        send_presence(actor, to=target.jid, ptype=ptype)
        sync(actor)
    sync(c)
    assert items_of(u)[contact.jid].subscription == "both"
    assert items_of(c)[user.jid].subscription == "both"

    assert roster_set(u, roster_item_xml(contact.jid, subscription="remove")).get("type") == "result"
    got = sync(c)
    assert presences(got, "unsubscribe", from_=user.jid), "contact got no unsubscribe"
    assert presences(got, "unsubscribed", from_=user.jid), "contact got no unsubscribed"
    assert presences(got, "unavailable", from_=user.jid), "contact still believes the user is online"
    assert contact.jid not in items_of(u)
    after = items_of(c)[user.jid]
    assert (after.subscription, after.ask) == ("none", None)
    # The user's presence no longer reaches the contact.
    send_presence(u, status="still here")
    sync(u)
    assert presences(sync(c), None, from_=user.jid) == []


# -- Versioning (XEP-0237) ---------------------------------------------------------------------


def test_versioning(server, raw, pool):
    user = pool.take()
    stream = raw()
    login_scram(stream, user, "ver")
    first = query_of(roster_get(stream, ver=""))
    v1 = first.get("ver")
    assert v1

    # Same version: an empty result, the roster is not sent again (§2.3).
    reply = roster_get(stream, ver=v1)
    assert reply.get("type") == "result"
    assert len(reply) == 0, "unchanged roster: the result must be empty"

    jid = contact_jid(server, "balthasar")
    before, reply = request(stream, f"<query xmlns='{ROSTER_NS}'>{roster_item_xml(jid, name='Balthasar')}</query>", itype="set")
    assert reply.get("type") == "result"
    pushes = roster_pushes(before + sync(stream))
    assert pushes, "the interested resource that made the change got no push"
    v2 = query_of(pushes[-1]).get("ver")
    assert v2 and v2 != v1, "a change gives a new version"

    # An old version: the whole roster, with the current version.
    reply = roster_get(stream, ver=v1)
    query = query_of(reply)
    assert query is not None, "an outdated version must be answered with the roster"
    assert query.get("ver") == v2
    assert list(roster_of(query)) == [jid]
    assert len(roster_get(stream, ver=v2)) == 0

    assert roster_set(stream, roster_item_xml(jid, subscription="remove")).get("type") == "result"
    query = query_of(roster_get(stream, ver=v2))
    assert query is not None and query.get("ver") not in (v1, v2)
    assert roster_of(query) == {}
    # An unknown version string is also answered with the roster.
    query = query_of(roster_get(stream, ver="not-a-version-we-gave"))
    assert query is not None and query.get("ver")


# -- Validation (§2.3.3) -----------------------------------------------------------------------

LONG = "n" * 1024
LONG_MULTIBYTE = "é" * 512  # 512 characters, 1024 bytes


@pytest.mark.parametrize(
    "make_items, condition, etype",
    [
        pytest.param(
            lambda s, me: roster_item_xml(contact_jid(s)) + roster_item_xml(contact_jid(s)),
            "bad-request",
            "modify",
            id="two-items",
        ),
        pytest.param(lambda s, me: roster_item_xml(contact_jid(s), name=LONG), "not-acceptable", "modify", id="name-1024-bytes"),
        pytest.param(
            lambda s, me: roster_item_xml(contact_jid(s), name=LONG_MULTIBYTE),
            "not-acceptable",
            "modify",
            id="name-512-chars-1024-bytes",
        ),
        pytest.param(lambda s, me: roster_item_xml(contact_jid(s), groups=[""]), "not-acceptable", "modify", id="empty-group"),
        pytest.param(lambda s, me: roster_item_xml(contact_jid(s), groups=[LONG]), "not-acceptable", "modify", id="group-1024-bytes"),
        pytest.param(
            lambda s, me: roster_item_xml(contact_jid(s), groups=["Friends", "Friends"]),
            "bad-request",
            "modify",
            id="duplicate-groups",
        ),
        pytest.param(lambda s, me: roster_item_xml(me.jid), "not-allowed", None, id="self"),
        pytest.param(lambda s, me: roster_item_xml("a@b@c"), "jid-malformed", None, id="malformed-jid"),
    ],
)
def test_invalid_set_is_refused(server, raw, validator, make_items, condition, etype):
    user = validator
    stream = raw()
    im_login(stream, user, unique_localpart("v"))
    before = items_of(stream)
    items = make_items(server, user)
    reply = roster_set(stream, items)
    assert_error(reply, condition, etype)
    assert roster_pushes(sync(stream)) == [], "a refused set pushes nothing"
    assert items_of(stream) == before, "a refused set changes nothing"


def test_longest_name_and_group_are_accepted(server, raw, validator):
    stream = raw()
    im_login(stream, validator, unique_localpart("v"))
    jid = contact_jid(server, "long")
    name = "é" * 511 + "x"  # 1023 bytes
    group = "g" * 1023
    assert roster_set(stream, roster_item_xml(jid, name=name, groups=[group])).get("type") == "result"
    item = items_of(stream)[jid]
    assert (item.name, item.groups) == (name, [group])


# -- Limits and authorisation ------------------------------------------------------------------


def test_roster_size_limit(small_server, raw_factory):
    user = small_server.add_user("full")
    stream = raw_factory(small_server)
    im_login(stream, user, "limit")
    a, b, c = (contact_jid(small_server, p) for p in ("a", "b", "c"))
    assert roster_set(stream, roster_item_xml(a)).get("type") == "result"
    assert roster_set(stream, roster_item_xml(b)).get("type") == "result"
    assert_error(roster_set(stream, roster_item_xml(c)), "not-allowed")
    assert set(items_of(stream)) == {a, b}
    # Updating an item of a full roster is still allowed.
    assert roster_set(stream, roster_item_xml(a, name="Renamed", groups=["G"])).get("type") == "result"
    assert items_of(stream)[a].name == "Renamed"
    # Room again after a removal.
    assert roster_set(stream, roster_item_xml(b, subscription="remove")).get("type") == "result"
    assert roster_set(stream, roster_item_xml(c)).get("type") == "result"
    assert set(items_of(stream)) == {a, c}


def test_other_users_roster_is_forbidden(server, raw, pool):
    alice, bob = pool.take(), pool.take()
    sa, sb = raw(), raw()
    im_login(sa, alice, "a")
    im_login(sb, bob, "b")
    assert_error(roster_get(sa, to=bob.jid), "forbidden")
    assert_error(roster_set(sa, roster_item_xml(contact_jid(server)), to=bob.jid), "forbidden")
    assert items_of(sb) == {}
    assert roster_pushes(sync(sb)) == []
    # Bob's session never saw Alice's requests.
    assert not [e for e in sb.elements if e.tag == qn(CLIENT_NS, "iq") and e.get("from", "").startswith(alice.jid)]
