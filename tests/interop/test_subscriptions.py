"""Presence subscriptions (RFC 6121 §3): the complete state table of Appendix A, pre-approval
(§3.4), pending requests and the sender's bare JID.

The Appendix A tables are written out below as data, from the RFC. Each of the 72 cases
(9 states x 8 actions) takes two fresh accounts, the "user" and the "contact", reaches the
state with subscribe/subscribed over the wire, applies the action and checks what the
server stored for the user: the roster item's subscription and ask attributes (roster get),
whether the stanza was delivered, and whether an inbound request is still pending — seen on
the wire by logging a new resource of the user in: a pending request is delivered to it
(§3.1.3). Both accounts live on this server, so the contact's side must be the mirror image.

"Fresh" means a pair of accounts that have never had anything to do with each other: a
relationship is a property of the pair, so the accounts of the module are paired off, every
pair used once (creating 150 accounts would take most of a minute in a debug build).
"""

from __future__ import annotations

import itertools
import math

import pytest

from harness import (
    PRE_APPROVAL_FEATURE_NS,
    UserPool,
    im_login,
    login_scram,
    presences,
    qn,
    roster_get,
    roster_of,
    roster_pushes,
    send_presence,
    sync,
)

# -- RFC 6121 Appendix A ---------------------------------------------------------------------

NONE = "None"
NPO = "None + Pending Out"
NPI = "None + Pending In"
NPOI = "None + Pending Out/In"
TO = "To"
TPI = "To + Pending In"
FROM = "From"
FPO = "From + Pending Out"
BOTH = "Both"
STATES = [NONE, NPO, NPI, NPOI, TO, TPI, FROM, FPO, BOTH]

# A.1: the state of the user's relationship with the contact, as the user's server stores it:
# (roster 'subscription', pending out = ask='subscribe', pending in = a request waiting).
STATE = {
    NONE: ("none", False, False),
    NPO: ("none", True, False),
    NPI: ("none", False, True),
    NPOI: ("none", True, True),
    TO: ("to", False, False),
    TPI: ("to", False, True),
    FROM: ("from", False, False),
    FPO: ("from", True, False),
    BOTH: ("both", False, False),
}

# The same relationship seen from the contact's side.
MIRROR = {NONE: NONE, NPO: NPI, NPI: NPO, NPOI: NPOI, TO: FROM, TPI: FPO, FROM: TO, FPO: TPI, BOTH: BOTH}

# Each table: existing state -> (ROUTE? for A.2 / DELIVER? for A.3, new state; None = "no state
# change").
A2_1_OUTBOUND_SUBSCRIBE = {
    NONE: (True, NPO),
    NPO: (True, None),
    NPI: (True, NPOI),
    NPOI: (True, None),
    TO: (True, None),
    TPI: (True, None),
    FROM: (True, FPO),
    FPO: (True, None),
    BOTH: (True, None),
}
A2_2_OUTBOUND_UNSUBSCRIBE = {
    NONE: (True, None),
    NPO: (True, NONE),
    NPI: (True, None),
    NPOI: (True, NPI),
    TO: (True, NONE),
    TPI: (True, NPI),
    FROM: (True, None),
    FPO: (True, FROM),
    BOTH: (True, FROM),
}
A2_3_OUTBOUND_SUBSCRIBED = {
    NONE: (False, None),
    NPO: (False, None),
    NPI: (True, FROM),
    NPOI: (True, FPO),
    TO: (False, None),
    TPI: (True, BOTH),
    FROM: (False, None),
    FPO: (False, None),
    BOTH: (False, None),
}
A2_4_OUTBOUND_UNSUBSCRIBED = {
    NONE: (False, None),
    NPO: (False, None),
    NPI: (True, NONE),
    NPOI: (True, NPO),
    TO: (False, None),
    TPI: (True, TO),
    FROM: (True, NONE),
    FPO: (True, NPO),
    BOTH: (True, TO),
}
# "no *" rows: the server SHOULD auto-reply with "subscribed" for the user.
A3_1_INBOUND_SUBSCRIBE = {
    NONE: (True, NPI),
    NPO: (True, NPOI),
    NPI: (False, None),
    NPOI: (False, None),
    TO: (True, TPI),
    TPI: (False, None),
    FROM: (False, None),
    FPO: (False, None),
    BOTH: (False, None),
}
A3_2_INBOUND_UNSUBSCRIBE = {
    NONE: (False, None),
    NPO: (False, None),
    NPI: (True, NONE),
    NPOI: (True, NPO),
    TO: (False, None),
    TPI: (True, TO),
    FROM: (True, NONE),
    FPO: (True, NPO),
    BOTH: (True, TO),
}
A3_3_INBOUND_SUBSCRIBED = {
    NONE: (False, None),
    NPO: (True, TO),
    NPI: (False, None),
    NPOI: (True, TPI),
    TO: (False, None),
    TPI: (False, None),
    FROM: (False, None),
    FPO: (True, BOTH),
    BOTH: (False, None),
}
A3_4_INBOUND_UNSUBSCRIBED = {
    NONE: (False, None),
    NPO: (True, NONE),
    NPI: (False, None),
    NPOI: (True, NPI),
    TO: (True, NONE),
    TPI: (True, NPI),
    FROM: (False, None),
    FPO: (True, FROM),
    BOTH: (True, FROM),
}

OUTBOUND = {
    "subscribe": ("A.2.1", A2_1_OUTBOUND_SUBSCRIBE),
    "unsubscribe": ("A.2.2", A2_2_OUTBOUND_UNSUBSCRIBE),
    "subscribed": ("A.2.3", A2_3_OUTBOUND_SUBSCRIBED),
    "unsubscribed": ("A.2.4", A2_4_OUTBOUND_UNSUBSCRIBED),
}
INBOUND = {
    "subscribe": ("A.3.1", A3_1_INBOUND_SUBSCRIBE),
    "unsubscribe": ("A.3.2", A3_2_INBOUND_UNSUBSCRIBE),
    "subscribed": ("A.3.3", A3_3_INBOUND_SUBSCRIBED),
    "unsubscribed": ("A.3.4", A3_4_INBOUND_UNSUBSCRIBED),
}

# How each state is reached from scratch: (who sends, presence type), in order.
PATH = {
    NONE: [],
    NPO: [("user", "subscribe")],
    NPI: [("contact", "subscribe")],
    NPOI: [("user", "subscribe"), ("contact", "subscribe")],
    TO: [("user", "subscribe"), ("contact", "subscribed")],
    TPI: [("user", "subscribe"), ("contact", "subscribed"), ("contact", "subscribe")],
    FROM: [("contact", "subscribe"), ("user", "subscribed")],
    FPO: [("contact", "subscribe"), ("user", "subscribed"), ("user", "subscribe")],
    BOTH: [("user", "subscribe"), ("contact", "subscribed"), ("contact", "subscribe"), ("user", "subscribed")],
}


def after(table: dict, state: str) -> str:
    new = table[state][1]
    return state if new is None else new


def simulate(steps) -> str:
    """The user's state after ``steps`` from "None", by the tables alone."""
    state = NONE
    for actor, ptype in steps:
        if actor == "user":
            state = after(OUTBOUND[ptype][1], state)
        else:
            routed = OUTBOUND[ptype][1][MIRROR[state]][0]
            if routed:
                state = after(INBOUND[ptype][1], state)
    return state


CASES = [
    pytest.param(direction, ptype, state, id=f"{section}-{ptype}-{state.replace(' ', '').replace('/', '')}")
    for direction, tables in (("outbound", OUTBOUND), ("inbound", INBOUND))
    for ptype, (section, _table) in tables.items()
    for state in STATES
]


def test_tables_are_consistent():
    """The data above, checked against itself: each path reaches its state; what one side's
    table does, the other side's table mirrors; a stanza the contact's server does not route
    changes nothing for the user."""
    for state, steps in PATH.items():
        assert simulate(steps) == state, state
    for ptype in OUTBOUND:
        out_table, in_table = OUTBOUND[ptype][1], INBOUND[ptype][1]
        for state in STATES:
            routed, _ = out_table[state]
            if routed:
                assert MIRROR[after(out_table, state)] == after(in_table, MIRROR[state]), (ptype, state)
            else:
                assert in_table[MIRROR[state]] == (False, None), (ptype, state)


# -- Fixtures ----------------------------------------------------------------------------------


class FreshPairs:
    """Accounts of this module paired off: ``take()`` returns (user, contact), two accounts
    that have never been paired before, and ``resource()`` a resource name not used before."""

    def __init__(self, server, pairs_needed: int):
        # The smallest n with n(n-1)/2 >= pairs_needed.
        n = math.ceil((1 + math.sqrt(1 + 8 * pairs_needed)) / 2)
        pool = UserPool(server, "sub", workers=3)
        pool.prefetch(n)
        try:
            self.accounts = [pool.take() for _ in range(n)]
        finally:
            pool.close()
        self._pairs = itertools.combinations(self.accounts, 2)
        self._resources = itertools.count()

    def take(self):
        try:
            return next(self._pairs)
        except StopIteration:
            raise AssertionError("no fresh pair of accounts left: raise pairs_needed") from None

    def resource(self, prefix: str) -> str:
        return f"{prefix}{next(self._resources)}"


@pytest.fixture(scope="module")
def fresh(server):
    return FreshPairs(server, len(CASES) + 16)


class Pair:
    """A user and a contact, each with one interested, available resource."""

    def __init__(self, server, raw_factory, fresh: FreshPairs):
        self.server = server
        self.raw_factory = raw_factory
        self.fresh = fresh
        self.user, self.contact = fresh.take()
        self.u_resource = fresh.resource("u")
        self.c_resource = fresh.resource("c")
        self.u = raw_factory(server)
        im_login(self.u, self.user, self.u_resource)
        self.c = raw_factory(server)
        im_login(self.c, self.contact, self.c_resource)

    def stream(self, who: str):
        return self.u if who == "user" else self.c

    def send(self, who: str, ptype: str) -> None:
        """``who`` sends a subscription stanza of ``ptype`` to the other's bare JID and the
        server has processed it when this returns."""
        target = self.contact.jid if who == "user" else self.user.jid
        send_presence(self.stream(who), to=target, ptype=ptype)
        sync(self.stream(who))

    def item(self, who: str):
        """(subscription, ask) of the roster item for the other side; ("none", None) when
        there is no item."""
        other = self.contact.jid if who == "user" else self.user.jid
        reply = roster_get(self.stream(who))
        assert reply.get("type") == "result"
        entry = roster_of(reply.find(qn("jabber:iq:roster", "query"))).get(other)
        if entry is None:
            return ("none", None)
        return (entry.subscription, entry.ask)

    def pending_in(self) -> list:
        """Subscription requests from the contact delivered to a new available resource of
        the user (§3.1.3: a pending request is delivered when the user becomes available)."""
        stream = self.raw_factory(self.server)
        got = im_login(stream, self.user, self.fresh.resource("check"), roster=False)
        stream.close()
        return presences(got, "subscribe", from_=self.contact.jid)


def expected_item(state: str):
    sub, pending_out, _ = STATE[state]
    return (sub, "subscribe" if pending_out else None)


@pytest.fixture
def pair(server, raw_factory, fresh):
    return Pair(server, raw_factory, fresh)


# -- Appendix A --------------------------------------------------------------------------------


@pytest.mark.parametrize("direction, ptype, state", CASES)
def test_appendix_a(pair, direction, ptype, state):
    section, table = (OUTBOUND if direction == "outbound" else INBOUND)[ptype]
    flag, _ = table[state]
    new_state = after(table, state)

    for actor, step in PATH[state]:
        pair.send(actor, step)
    sync(pair.u)
    sync(pair.c)
    assert pair.item("user") == expected_item(state), f"could not reach {state!r} with {PATH[state]}"
    assert pair.item("contact") == expected_item(MIRROR[state]), f"contact side of {state!r}"

    if direction == "outbound":
        send_presence(pair.u, to=pair.contact.jid, ptype=ptype)
        to_user = sync(pair.u)
        to_contact = sync(pair.c)
        # Routed (A.2), then delivered by the contact's server (A.3 for the mirror state).
        delivered = flag and INBOUND[ptype][1][MIRROR[state]][0]
        got = presences(to_contact, ptype, from_=pair.user.jid)
        assert len(got) == (1 if delivered else 0), (
            f"{section} {ptype!r} in {state!r}: contact got {len(got)} (expected delivery: {delivered})"
        )
        for p in got:
            assert p.get("from") == pair.user.jid, "subscription stanzas carry the bare JID (§3.1.2)"
    else:
        send_presence(pair.c, to=pair.user.jid, ptype=ptype)
        sync(pair.c)
        to_user = sync(pair.u)
        got = presences(to_user, ptype, from_=pair.contact.jid)
        assert len(got) == (1 if flag else 0), f"{section} {ptype!r} in {state!r}: DELIVER? is {'yes' if flag else 'no'}"
        for p in got:
            assert p.get("from") == pair.contact.jid, "subscription stanzas carry the bare JID (§3.1.3)"

    assert pair.item("user") == expected_item(new_state), f"{section} {ptype!r} in {state!r} -> {new_state!r}"
    assert pair.item("contact") == expected_item(MIRROR[new_state]), f"contact side of {new_state!r}"
    if expected_item(new_state) != expected_item(state):
        pushed = [
            (e.subscription, e.ask)
            for push in roster_pushes(to_user)
            for e in roster_of(push.find(qn("jabber:iq:roster", "query"))).values()
            if e.jid == pair.contact.jid
        ]
        assert expected_item(new_state) in pushed, f"no roster push of the new state; pushes: {pushed}"
    pending = pair.pending_in()
    assert len(pending) == (1 if STATE[new_state][2] else 0), (
        f"{section} {ptype!r} in {state!r} -> {new_state!r}: pending inbound request delivered "
        f"{len(pending)} time(s) to a new resource"
    )


# -- Pre-approval (§3.4) -----------------------------------------------------------------------


def test_pre_approval_stream_feature(server, raw, fresh):
    stream = raw()
    login_scram(stream, fresh.accounts[0], fresh.resource("f"))
    assert stream.features.find(qn(PRE_APPROVAL_FEATURE_NS, "sub")) is not None, "no pre-approval feature"


def test_pre_approval(pair):
    # The user approves before being asked: not routed, kept on the item (approved='true').
    send_presence(pair.u, to=pair.contact.jid, ptype="subscribed")
    to_user = sync(pair.u)
    assert presences(sync(pair.c), "subscribed") == [], "a pre-approval is not routed"
    reply = roster_get(pair.u)
    entry = roster_of(reply.find(qn("jabber:iq:roster", "query")))[pair.contact.jid]
    assert (entry.subscription, entry.ask, entry.approved) == ("none", None, True)
    pushed = [
        e for push in roster_pushes(to_user) for e in roster_of(push.find(qn("jabber:iq:roster", "query"))).values()
    ]
    assert any(e.jid == pair.contact.jid and e.approved for e in pushed), "no roster push with approved='true'"

    # The contact asks: approved at once for the user, who is not asked.
    send_presence(pair.c, to=pair.user.jid, ptype="subscribe")
    to_contact = sync(pair.c)
    to_user = sync(pair.u)
    assert presences(to_user, "subscribe") == [], "a pre-approved request is not delivered to the user"
    granted = presences(to_contact, "subscribed", from_=pair.user.jid)
    assert [p.get("from") for p in granted] == [pair.user.jid]
    # The contact now sees the user's presence.
    assert presences(to_contact, None, from_=pair.user.full(pair.u_resource)), "no presence after approval"
    assert pair.item("user") == ("from", None)
    entry = roster_of(roster_get(pair.u).find(qn("jabber:iq:roster", "query")))[pair.contact.jid]
    assert not entry.approved, "the pre-approval is used up"
    assert pair.item("contact") == ("to", None)
    assert pair.pending_in() == []


def test_pre_approval_when_already_pending_out(pair):
    """A user who has asked for the contact's presence ("None + Pending Out") can pre-approve
    too; the contact's request is then approved without asking, giving "Both" once the
    contact approves."""
    pair.send("user", "subscribe")
    pair.send("user", "subscribed")
    assert pair.item("user") == ("none", "subscribe")
    pair.send("contact", "subscribe")
    assert pair.item("user") == ("from", "subscribe")
    pair.send("contact", "subscribed")
    assert pair.item("user") == ("both", None)
    assert pair.item("contact") == ("both", None)


# -- Pending requests and addresses ------------------------------------------------------------


def test_pending_request_redelivered_at_each_login_until_answered(server, raw_factory, fresh):
    user, contact = fresh.take()
    c = raw_factory(server)
    im_login(c, contact, fresh.resource("c"))
    send_presence(c, to=user.jid, ptype="subscribe")
    sync(c)

    def login(resource: str, **kw):
        stream = raw_factory(server)
        got = im_login(stream, user, fresh.resource(resource), **kw)
        return stream, presences(got, "subscribe", from_=contact.jid)

    # Connected but not available: not delivered (only available resources get it).
    quiet, got = login("quiet", available=False)
    assert got == []
    send_presence(quiet)
    assert presences(sync(quiet), "subscribe", from_=contact.jid), "not delivered on becoming available"
    quiet.close()
    for resource in ("first", "second"):
        stream, got = login(resource)
        assert len(got) == 1, f"login {resource}: {len(got)} requests"
        assert got[0].get("from") == contact.jid
        stream.close()
    stream, got = login("answer")
    assert len(got) == 1
    send_presence(stream, to=contact.jid, ptype="subscribed")
    sync(stream)
    stream.close()
    _, got = login("after")
    assert got == [], "an answered request is not delivered again"


def test_denied_request_is_not_redelivered(server, raw_factory, fresh):
    user, contact = fresh.take()
    c = raw_factory(server)
    im_login(c, contact, fresh.resource("c"))
    send_presence(c, to=user.jid, ptype="subscribe")
    sync(c)
    u = raw_factory(server)
    got = im_login(u, user, fresh.resource("u"))
    assert presences(got, "subscribe", from_=contact.jid)
    send_presence(u, to=contact.jid, ptype="unsubscribed")
    sync(u)
    assert presences(sync(c), "unsubscribed", from_=user.jid), "the denial reaches the contact"
    again = raw_factory(server)
    assert presences(im_login(again, user, fresh.resource("again")), "subscribe", from_=contact.jid) == []


@pytest.mark.parametrize("ptype", ["subscribe", "subscribed", "unsubscribe", "unsubscribed"])
def test_subscription_stanza_from_full_jid_arrives_with_bare_jid(pair, ptype):
    """§3.1.2 and the like: the server stamps subscription stanzas with the sender's bare JID,
    even when the client sent them from a full JID and to the contact's full JID."""
    # Reach a state where the stanza is delivered: A.3 DELIVER? yes for the user.
    setup = {
        "subscribe": [],
        "subscribed": [("user", "subscribe")],
        "unsubscribe": [("contact", "subscribe"), ("user", "subscribed")],
        "unsubscribed": [("user", "subscribe"), ("contact", "subscribed")],
    }[ptype]
    for actor, step in setup:
        pair.send(actor, step)
    sync(pair.u)
    pair.c.send(
        f"<presence from='{pair.contact.full(pair.c_resource)}' to='{pair.user.full(pair.u_resource)}' "
        f"type='{ptype}' id='s1'/>"
    )
    sync(pair.c)
    got = presences(sync(pair.u), ptype)
    assert len(got) == 1, f"{ptype}: {len(got)} delivered"
    assert got[0].get("from") == pair.contact.jid
