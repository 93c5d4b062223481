"""Known attacks over real connections against the real binary: each test checks the answer
the server gives the attacker, that its memory (VmRSS) and descriptors stay bounded, and that
it keeps serving others afterwards (a fresh client logs in and pings in bounded time).

Also a crash test: SIGKILL under load, then database integrity and exactly-once delivery of
every offline message the server had accepted.

Covered elsewhere: 10,000-deep nesting and the per-address connection cap over the wire
(``crates/testkit/tests/attacks.rs``), spoofed ``from`` on every stanza kind
(``test_stream_errors.py::test_spoofed_from_is_invalid_from``).
"""

from __future__ import annotations

import asyncio
import random
import re
import resource
import sqlite3
import ssl
import time
import xml.etree.ElementTree as ET

import pytest

import aioraw
from aioraw import AsyncStream, open_fds, read_rss_kib
from harness import (
    CLIENT_NS,
    PING_NS,
    ROSTER_NS,
    SASL_NS,
    RawStream,
    StreamClosed,
    UserPool,
    excerpt,
    login_scram,
    loopback_source,
    qn,
    roster_item_xml,
    stream_header,
)

# SASL slow-down tests hold a stream for up to ~8 s per failure, so the module's server
# gives unauthenticated streams more time than the harness default.
SERVER_CONFIG = {"unauthenticated_timeout_secs": 20}

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pool(server):
    if server.external:
        pytest.skip("needs its own rookery process")
    users = UserPool(server, "atk", workers=2)
    users.prefetch(8)
    yield users
    users.close()


@pytest.fixture(scope="module")
def prober(pool):
    """The account of the 'fresh client' that checks the server still serves."""
    return pool.take()


@pytest.fixture(scope="module")
def attacker(pool):
    """An account that logs in and then misbehaves (each attack on a new stream)."""
    return pool.take()


def raw_stream(server, direct_tls: bool = True, source: str | None = None, timeout: float = 10.0) -> RawStream:
    return RawStream(
        server.host,
        server.tls_port if direct_tls else server.c2s_port,
        domain=server.domain,
        cafile=server.cert_path,
        direct_tls=direct_tls,
        timeout=timeout,
        source_address=source or loopback_source(),
    )


def assert_serving(server, user, limit: float = 5.0) -> float:
    """A fresh client (new connection, new source address) logs in and pings within
    ``limit`` seconds; returns the time it took."""
    started = time.monotonic()
    with raw_stream(server) as s:
        login_scram(s, user)
        reply = s.iq(f"<ping xmlns='{PING_NS}'/>", to=server.domain)
        assert reply.get("type") == "result", ET.tostring(reply)
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"login and ping took {elapsed:.1f}s"
    return elapsed


def expect_stream_error(stream: RawStream, *conditions: str, timeout: float = 10.0) -> str:
    stream.read_until_closed(timeout=timeout, eof=True)
    cond = stream.stream_error()
    assert cond in conditions, f"expected {conditions}, got {cond}; received:\n{excerpt(stream.text)}"
    assert stream.closed
    return cond


def rss(server) -> int:
    return read_rss_kib(server.proc.pid) * 1024


# -- Billion laughs and other entity tricks -------------------------------------------------


def _billion_laughs_dtd() -> str:
    """The classic: lol9 expands to 10^9 'lol's."""
    ents = ["<!ENTITY lol 'lol'>"]
    prev = "lol"
    for i in range(1, 10):
        ents.append(f"<!ENTITY lol{i} '{('&' + prev + ';') * 10}'>")
        prev = f"lol{i}"
    return "<!DOCTYPE lolz [" + "".join(ents) + "]>"


LOLZ = _billion_laughs_dtd()
XXE = "<!DOCTYPE m [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
PARAMETER_ENTITY = "<!DOCTYPE m [<!ENTITY % pe SYSTEM 'http://127.0.0.1:9/evil.dtd'> %pe;]>"


def _attack_before_header(server) -> RawStream:
    s = raw_stream(server)
    s.send("<?xml version='1.0'?>" + LOLZ + stream_header(server.domain, xml_declaration=False))
    return s


def _attack_in_stream_before_auth(server) -> RawStream:
    s = raw_stream(server)
    s.open_stream()
    s.send(LOLZ + "<message to='x@localhost'><body>&lol9;</body></message>")
    return s


def _logged_in(server, user) -> tuple[RawStream, str]:
    s = raw_stream(server)
    return s, login_scram(s, user)


ENTITY_ATTACKS = {
    "lolz-before-stream-header": lambda server, user: _attack_before_header(server),
    "lolz-in-stream-before-auth": lambda server, user: _attack_in_stream_before_auth(server),
    "lolz-after-auth": lambda server, user: _send_after_auth(
        server, user, lambda jid: LOLZ + f"<message to='{jid}'><body>&lol9;</body></message>"
    ),
    "undeclared-lol9-in-body-after-auth": lambda server, user: _send_after_auth(
        server, user, lambda jid: f"<message to='{jid}'><body>&lol9;&lol9;&lol9;</body></message>"
    ),
    "entity-in-attribute-after-auth": lambda server, user: _send_after_auth(
        server, user, lambda jid: f"<message to='&lol9;' id='&lol9;'><body/></message>"
    ),
    "external-entity-xxe-after-auth": lambda server, user: _send_after_auth(
        server, user, lambda jid: XXE + f"<message to='{jid}'><body>&xxe;</body></message>"
    ),
    "parameter-entity-after-auth": lambda server, user: _send_after_auth(
        server, user, lambda jid: PARAMETER_ENTITY + f"<message to='{jid}'><body>x</body></message>"
    ),
}


def _send_after_auth(server, user, payload) -> RawStream:
    s, jid = _logged_in(server, user)
    s.send(payload(jid))
    return s


def test_entity_expansion_attacks_are_refused_without_memory_growth(server, attacker, prober):
    user = attacker
    assert_serving(server, prober)  # warm up (TLS, SCRAM, the session paths)
    before = rss(server)
    for name, attack in ENTITY_ATTACKS.items():
        with attack(server, user) as s:
            cond = expect_stream_error(s, "restricted-xml", "not-well-formed")
            assert "root:" not in s.text, f"{name}: the server read a local file into the stream"
            assert s.text.count("lol") < 100, f"{name}: an entity was expanded: {excerpt(s.text)}"
            print(f"{name}: {cond}")
    grown = rss(server) - before
    print(f"VmRSS change over the entity attacks: {grown / 1024:+.0f} KiB")
    assert grown < 4 * MIB, f"VmRSS grew by {grown / MIB:.1f} MiB"
    assert_serving(server, prober)


# -- A 100 MiB stanza over TLS after authentication -------------------------------------------


def test_hundred_mib_stanza_is_cut_off_early(server, attacker, prober):
    limit = server.max_stanza_bytes
    user = attacker
    assert_serving(server, prober)
    before = rss(server)
    s, jid = _logged_in(server, user)
    assert s.tls
    total = 100 * MIB
    chunk = b"x" * 65536
    written = 0
    started = time.monotonic()
    with s:
        s.send(f"<message to='{jid}' type='chat' id='huge'><body>")
        while written < total and not (s.closed or s.stream_closed):
            try:
                s.transport.sendall(chunk, 5.0)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                break
            written += len(chunk)
            while s.pump(0):
                pass
        try:
            s.read_until_closed(timeout=10, eof=True)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - started
        cond = s.stream_error()
    print(f"client wrote {written / MIB:.2f} MiB in {elapsed:.2f}s before the server closed (limit {limit} bytes)")
    assert written < total, "the client sent all 100 MiB: the server kept reading"
    # What the client could write: the limit, plus the socket buffers of both ends.
    assert written < 16 * MIB, f"{written / MIB:.1f} MiB written before the connection was closed"
    assert cond == "policy-violation", excerpt(s.text)
    grown = rss(server) - before
    print(f"VmRSS change: {grown / 1024:+.0f} KiB")
    assert grown < 4 * MIB, f"VmRSS grew by {grown / MIB:.1f} MiB"
    assert_serving(server, prober)


# -- Slowloris ---------------------------------------------------------------------------------


async def _dribble(stream: AsyncStream, data: str, interval: float = 1.0, max_bytes: int | None = None) -> tuple[int, float]:
    """Send ``data`` one byte every ``interval`` seconds until it is all sent, the server
    closes the connection, or ``max_bytes`` were sent; returns (bytes sent, time of the last)."""
    sent, last = 0, time.monotonic()
    for b in data.encode()[:max_bytes]:
        if stream.closed:
            break
        try:
            await stream.send(bytes([b]), timeout=5)
        except (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError):
            break
        sent, last = sent + 1, time.monotonic()
        if await stream.wait_closed(interval):
            break
    return sent, last


async def test_slowloris_is_cut_off_at_the_authentication_deadline(make_server):
    """Three connections send one byte per second — a stream header in the clear, a stream
    header over direct TLS, and (after a complete header) an <auth/> element over TLS — and
    are closed with connection-timeout at the 3 s deadline although bytes keep arriving; a
    ClientHello sent the same way is dropped at the 2 s TLS handshake limit.
    Meanwhile an authenticated session dribbles a stanza the same way: the server keeps
    serving others (there is no per-stanza time limit once bound: that session stays open
    for as long as it keeps dribbling; what bounds it is max_stanza_bytes)."""
    deadline, handshake_limit = 3, 2
    srv = make_server(unauthenticated_timeout_secs=deadline, extra_limits={"tls_handshake_timeout_secs": handshake_limit})
    user, prober = srv.add_user("slow"), srv.add_user("probe")
    header = stream_header(srv.domain)
    auth = f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>" + "biwsbj1zbG93LHI9YWJjZGVmZ2hpams=" + "</auth>"

    async def pre_auth(kind: str):
        direct = kind != "plain-header"
        started = time.monotonic()
        s = await AsyncStream.connect(
            srv.host, srv.tls_port if direct else srv.c2s_port, domain=srv.domain, cafile=srv.cert_path,
            direct_tls=direct, source=loopback_source(),
        )
        try:
            if kind == "tls-auth-element":
                await s.open_stream()
                sent, last = await _dribble(s, auth)
            else:
                sent, last = await _dribble(s, header)
            await s.read_until_closed(timeout=10)
            closed = time.monotonic()
            return kind, sent, closed - started, closed - last, s.stream_error(), s.text
        finally:
            await s.close()

    async def tls_handshake():
        # A TLS record header announcing a 512-byte ClientHello, then its bytes one by one.
        started = time.monotonic()
        s = await AsyncStream.connect(srv.host, srv.tls_port, domain=srv.domain, direct_tls=False, source=loopback_source())
        try:
            sent, _ = await _dribble(s, "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03" + "r" * 60)
            await s.read_until_closed(timeout=10)
            return sent, time.monotonic() - started, s.data
        finally:
            await s.close()

    async def post_auth():
        s = await aioraw.login(srv, user, "dribbler", source=loopback_source())
        try:
            sent, _ = await _dribble(s, f"<message to='{user.jid}' type='chat'><body>" + "z" * 100, max_bytes=deadline + 3)
            return sent, s.closed, s.stream_error()
        finally:
            await s.close()

    async def probe():
        # Past the deadline, while the authenticated dribbler is still going.
        await asyncio.sleep(deadline + 0.5)
        return await asyncio.to_thread(assert_serving, srv, prober)

    kinds = ["plain-header", "tls-header", "tls-auth-element"]
    results = await asyncio.gather(*(pre_auth(k) for k in kinds), post_auth(), probe(), tls_handshake())
    for kind, sent, lifetime, since_last_byte, cond, text in results[:3]:
        assert cond == "connection-timeout", f"{kind}: {excerpt(text)}"
        assert deadline - 0.5 <= lifetime <= deadline + 2, f"{kind}: closed after {lifetime:.1f}s"
        assert sent >= deadline - 1 and since_last_byte < 1.5, (
            f"{kind}: bytes were not arriving until the end ({sent} sent, last {since_last_byte:.1f}s before the close)"
        )
    sent, lifetime, data = results[5]
    assert handshake_limit - 0.5 <= lifetime <= handshake_limit + 2 and sent >= handshake_limit - 1, (
        f"a TLS handshake dribbled byte by byte was closed after {lifetime:.1f}s ({sent} bytes sent)"
    )
    assert not data.startswith(b"<"), "no XMPP before the handshake"
    sent, closed, cond = results[3]
    print(f"authenticated dribbler: {sent} bytes over {sent}s, closed by the server: {closed} ({cond})")
    # The authentication deadline ends at binding; a bound session is not timed out by it.
    assert sent == deadline + 3 and cond is None, f"the bound session was closed ({cond})"
    await asyncio.to_thread(assert_serving, srv, prober)


# -- A flood of connections that never authenticate ------------------------------------------

FLOOD_COUNT, FLOOD_DEADLINE = 5000, 5


def _flood_source(round_: int, i: int) -> str:
    # 500 addresses per round, 10 connections from each.
    return f"127.{100 + round_}.{(i // 10) // 250}.{(i // 10) % 250 + 2}"


async def _flood_round(srv, round_: int, user, base_rss: int, base_fds: int) -> dict:
    """Opens FLOOD_COUNT connections that never authenticate (half send a stream header,
    half nothing), logs a legitimate client in while they are all open, and waits for the
    server to close them all."""
    pid = srv.proc.pid
    count, deadline = FLOOD_COUNT, FLOOD_DEADLINE
    opened = 0
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(200)

    header = stream_header(srv.domain).encode()

    async def one(i: int):
        # Bare asyncio streams (no parser): opening 5,000 must take well under the deadline.
        nonlocal opened
        async with gate:
            started = time.monotonic()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(srv.host, srv.c2s_port, local_addr=(_flood_source(round_, i), 0)), 20
            )
            if i % 2 == 0:
                writer.write(header)
        opened += 1
        if opened == count:
            all_open.set()
        data = bytearray()
        try:
            async with asyncio.timeout(deadline + 20):
                while chunk := await reader.read(65536):
                    data += chunk
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        text = data.decode(errors="replace")
        cond = re.search(r"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams", text)
        return time.monotonic() - started, cond.group(1) if cond else None, text

    flood_started = time.monotonic()
    flood = asyncio.gather(*(one(i) for i in range(count)))
    try:
        await asyncio.wait_for(all_open.wait(), 30)
        open_after = time.monotonic() - flood_started
        peak_rss, peak_fds = rss(srv), open_fds(pid)
        login_time = await asyncio.to_thread(assert_serving, srv, user, 5.0)
    finally:
        results = await asyncio.wait_for(flood, 60)
    # Descriptors are released at once; memory is given a moment.
    for _ in range(30):
        after_fds, after_rss = open_fds(pid), rss(srv)
        if after_fds <= base_fds + 5 and after_rss <= base_rss + 16 * MIB:
            break
        await asyncio.sleep(0.1)
    print(
        f"flood round {round_}: {count} connections open after {open_after:.1f}s; server fds {base_fds} -> "
        f"{peak_fds} -> {after_fds}, VmRSS {base_rss / MIB:.1f} -> {peak_rss / MIB:.1f} -> {after_rss / MIB:.1f} MiB; "
        f"legitimate login+ping {login_time:.2f}s"
    )
    return dict(
        results=results, open_after=open_after, peak_rss=peak_rss, peak_fds=peak_fds,
        after_rss=after_rss, after_fds=after_fds, login_time=login_time,
    )


@pytest.fixture(scope="module")
def flood(tmp_path_factory):
    """Two rounds of FLOOD_COUNT unauthenticated connections against a server with a
    FLOOD_DEADLINE s authentication deadline; returns (baseline RSS, baseline fds, rounds)."""
    from conftest import EXTERNAL, start_rookery

    if EXTERNAL:
        pytest.skip("needs its own rookery process")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < FLOOD_COUNT + 1000:
        pytest.skip(f"open files limit {hard} is too low for {FLOOD_COUNT} connections")
    srv = start_rookery(
        tmp_path_factory.mktemp("flood"), unauthenticated_timeout_secs=FLOOD_DEADLINE, log_level="info"
    )
    try:
        user = srv.add_user("legit")
        assert_serving(srv, user)
        time.sleep(0.5)
        base_rss, base_fds = rss(srv), open_fds(srv.proc.pid)

        async def both_rounds():
            return [await _flood_round(srv, r, user, base_rss, base_fds) for r in range(2)]

        rounds = asyncio.run(both_rounds())
        assert_serving(srv, user)
        yield base_rss, base_fds, rounds
    finally:
        srv.kill()


def test_unauthenticated_flood_times_out_while_others_are_served(flood):
    """5,000 connections from 500 loopback addresses that never authenticate: all are open at
    once (the server holds them), a legitimate client logs in and pings meanwhile, every one
    is closed with connection-timeout at the deadline, and the descriptors are released."""
    base_rss, base_fds, rounds = flood
    first = rounds[0]
    results = first["results"]
    assert first["open_after"] < FLOOD_DEADLINE, f"opening took {first['open_after']:.1f}s: not all open at once"
    assert first["peak_fds"] >= base_fds + FLOOD_COUNT * 0.9, f"the server held {first['peak_fds'] - base_fds} connections"
    assert first["login_time"] < 5.0
    not_timed_out = [r for r in results if r[1] != "connection-timeout"]
    assert not not_timed_out, [excerpt(r[2], 300) for r in not_timed_out[:3]]
    lifetimes = sorted(r[0] for r in results)
    assert lifetimes[0] >= FLOOD_DEADLINE - 0.5, f"a connection was closed after {lifetimes[0]:.1f}s"
    assert lifetimes[-1] <= FLOOD_DEADLINE + 10, f"a connection was closed only after {lifetimes[-1]:.1f}s"
    for _, _, text in random.sample(results, 5):
        assert "<connection-timeout" in text and text.endswith("</stream:stream>"), excerpt(text)
    for r in rounds:
        assert r["after_fds"] <= base_fds + 5, f"{r['after_fds']} descriptors open, {base_fds} before the flood"


def test_unauthenticated_flood_memory_is_bounded_and_reused(flood):
    """Memory per unauthenticated connection is small, and a second flood reuses what the
    first one left allocated (no leak)."""
    base_rss, _, (first, second) = flood
    per_connection = (first["peak_rss"] - base_rss) / FLOOD_COUNT
    print(f"~{per_connection / 1024:.1f} KiB of VmRSS per unauthenticated connection")
    assert per_connection < 32 * 1024, f"{per_connection / 1024:.1f} KiB per connection"
    # A leak would add the first round's growth again; allocator fragmentation adds a little.
    slack = max(8 * MIB, (first["peak_rss"] - base_rss) / 3)
    assert second["peak_rss"] <= first["peak_rss"] + slack, (
        f"the second flood grew VmRSS from {first['peak_rss'] / MIB:.1f} to {second['peak_rss'] / MIB:.1f} MiB"
    )
    assert second["after_rss"] <= first["after_rss"] + slack


def test_unauthenticated_flood_memory_returns_near_baseline(flood):
    # Once an expected failure (what the flood left was kept near its peak); since each
    # connection's task is the stream's own future and the parser keeps nothing between
    # stanzas, what is left after the flood is within 16 MiB of the baseline.
    base_rss, _, rounds = flood
    after = rounds[-1]["after_rss"]
    assert after <= base_rss + 16 * MIB, f"VmRSS {after / MIB:.1f} MiB after the flood, {base_rss / MIB:.1f} before"


# -- Password guessing ---------------------------------------------------------------------


def test_password_guessing_is_slowed_down_and_the_real_user_is_not_locked_out(server, pool, prober):
    """Five wrong SCRAM attempts on one stream: each failure is answered later than the one
    before (250 ms doubling), and the fifth ends the stream with policy-violation
    (max_auth_attempts = 5). The account's owner, from another address, logs in at once."""
    victim = pool.take()
    s = raw_stream(server, source=loopback_source())
    latencies = []
    with s:
        s.open_stream()
        for attempt in range(5):
            started = time.monotonic()
            result = s.auth_scram(victim.localpart, f"guess-{attempt}")
            latencies.append(time.monotonic() - started)
            assert not result.ok and result.condition == "not-authorized", result
        expect_stream_error(s, "policy-violation")
    print("failure latencies:", ", ".join(f"{t:.2f}s" for t in latencies))
    for i, (got, want) in enumerate(zip(latencies, [0.25, 0.5, 1.0, 2.0, 4.0])):
        assert want * 0.9 <= got <= want + 1.0, f"attempt {i + 1}: answered after {got:.2f}s, expected ~{want}s"
    # The real user, from another address, with the right password: not held back.
    started = time.monotonic()
    with raw_stream(server, source=loopback_source()) as real:
        login_scram(real, victim)
        assert real.iq(f"<ping xmlns='{PING_NS}'/>", to=server.domain).get("type") == "result"
    assert time.monotonic() - started < 2.0, f"the real user waited {time.monotonic() - started:.1f}s"
    assert_serving(server, prober)


@pytest.fixture(scope="module")
def parallel_guesses(server, pool):
    """20 wrong SCRAM attempts against one account from one address, all at once (one
    connection each): (seconds until each failure was answered, conditions, total seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    victim = pool.take()
    source = loopback_source()
    streams = [raw_stream(server, source=source, timeout=12) for _ in range(20)]
    try:
        for s in streams:
            s.open_stream()

        def guess(args):
            i, s = args
            started = time.monotonic()
            try:
                result = s.auth_scram(victim.localpart, f"parallel-guess-{i}")
            except (TimeoutError, StreamClosed) as e:
                return float("inf"), f"no answer: {e}"[:200]
            return time.monotonic() - started, result.condition

        started = time.monotonic()
        with ThreadPoolExecutor(len(streams)) as ex:
            out = list(ex.map(guess, enumerate(streams)))
        total = time.monotonic() - started
    finally:
        for s in streams:
            s.close()
    return [t for t, _ in out], [c for _, c in out], total


def test_parallel_guesses_are_queued_not_multiplied(server, prober, parallel_guesses):
    latencies, conditions, total = parallel_guesses
    print("parallel failure latencies:", ", ".join(f"{t:.1f}" for t in sorted(latencies)), f"total {total:.1f}s")
    answered = [(t, c) for t, c in zip(latencies, conditions) if t != float("inf")]
    assert answered and all(c == "not-authorized" for _, c in answered), conditions
    # Answers for one address are queued one after another with the doubling delay, so 20
    # connections at once get no more answers in 10 s than one connection would
    # (0.25 + 0.5 + 1 + 2 + 4 s): parallelism does not multiply the guessing rate.
    answered_within_10s = sum(1 for t in latencies if t <= 10)
    assert answered_within_10s <= 6, f"{answered_within_10s} guesses answered within 10 s"
    assert min(latencies) < 1.0
    assert_serving(server, prober)


# -- Namespace confusion ---------------------------------------------------------------------


def _stanza_on_stream(server, user, after_auth: bool, payload) -> RawStream:
    s = raw_stream(server)
    if after_auth:
        jid = login_scram(s, user)
    else:
        s.open_stream()
        jid = f"nobody@{server.domain}/x"
    s.send(payload(jid))
    return s


NAMESPACE_CASES = [
    # (id, payload, expected condition, the stage where the server is known to answer otherwise)
    (
        "jabber-server-message",
        lambda jid: f"<message xmlns='jabber:server' from='{jid}' to='{jid}' type='chat'><body>s2s?</body></message>",
        "invalid-namespace",
        None,
    ),
    (
        "jabber-server-iq",
        lambda jid: f"<iq xmlns='jabber:server' type='get' id='s' to='localhost'><ping xmlns='{PING_NS}'/></iq>",
        "invalid-namespace",
        None,
    ),
    ("unknown-element-in-jabber-client", lambda jid: "<frobnicate/>", "unsupported-stanza-type", None),
    (
        "unknown-namespace",
        lambda jid: "<foo xmlns='urn:example:unknown'><bar/></foo>",
        "unsupported-stanza-type",
        None,
    ),
    (
        "message-in-unknown-namespace",
        lambda jid: f"<message xmlns='urn:example:unknown' to='{jid}'><body>x</body></message>",
        "unsupported-stanza-type",
        None,
    ),
    (
        "dialback-on-client-stream",
        lambda jid: "<db:result xmlns:db='jabber:server:dialback' from='evil.example' to='localhost'>key</db:result>",
        "unsupported-stanza-type",
        None,
    ),
]

NS_WEAKNESS = (
    "server weakness: once a resource is bound, a first-level element in a namespace other than "
    "jabber:client is answered with invalid-namespace (core::Server::stamp_from_client), where "
    "RFC 6120 §4.9.3.22 says unsupported-stanza-type (as the server does before authentication)"
)


def _namespace_params():
    for case_id, payload, cond, xfail_stage in NAMESPACE_CASES:
        for stage in ("before-auth", "after-auth"):
            marks = [pytest.mark.xfail(strict=True, reason=NS_WEAKNESS)] if xfail_stage == stage else []
            yield pytest.param(stage == "after-auth", payload, cond, id=f"{case_id}-{stage}", marks=marks)


@pytest.mark.parametrize("after_auth, payload, condition", list(_namespace_params()))
def test_namespace_confusion(server, attacker, prober, after_auth, payload, condition):
    with _stanza_on_stream(server, attacker, after_auth, payload) as s:
        expect_stream_error(s, condition)
    assert_serving(server, prober)


# -- SIGKILL under load -----------------------------------------------------------------------


def _check_database(path) -> None:
    db = sqlite3.connect(str(path), timeout=10)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()


async def _subscribe_mutually(a: AsyncStream, a_jid: str, b: AsyncStream, b_jid: str) -> None:
    for x, x_jid, y, y_jid in ((a, a_jid, b, b_jid), (b, b_jid, a, a_jid)):
        await x.send(f"<presence to='{y_jid}' type='subscribe'/>")
        await x.ping()
        await y.send(f"<presence to='{x_jid}' type='subscribed'/>")
        await y.ping()


async def _roster(s: AsyncStream) -> dict[str, ET.Element]:
    iq_id = s.next_id("roster")
    await s.send(f"<iq type='get' id='{iq_id}'><query xmlns='{ROSTER_NS}'/></iq>")
    reply = await s.wait_for(lambda e: e.get("id") == iq_id, 10, "roster result")
    assert reply.get("type") == "result", ET.tostring(reply)
    return {i.get("jid"): i for i in reply.find(qn(ROSTER_NS, "query")).findall(qn(ROSTER_NS, "item"))}


async def test_sigkill_under_load_keeps_the_database_and_every_accepted_offline_message(make_server):
    """20 clients chat with each other and write to 10 offline accounts at a steady rate; the
    server is killed with SIGKILL mid-traffic and restarted on the same data dir. The database
    passes SQLite's integrity and foreign-key checks, every offline message the server had
    accepted (sent before a ping that was answered, and not bounced) is delivered exactly once,
    nothing else is invented or repeated, and the rosters made before the load are intact."""
    t0 = time.monotonic()
    phase = lambda name: print(f"[{time.monotonic() - t0:5.1f}s] {name}")  # noqa: E731
    srv = make_server(log_level="info", extra_limits={"max_offline_messages": 5000})
    users = UserPool(srv, "crash", workers=3)
    try:
        users.prefetch(30)
        senders = [users.take() for _ in range(20)]
        offline = [users.take() for _ in range(10)]
    finally:
        users.close()

    phase("accounts created")
    # Before the load: pairs (0,1), (2,3)... are mutually subscribed, and each sender has one
    # offline account on its roster with a name and a group.
    streams = list(await asyncio.gather(*(aioraw.login(srv, u, "load", source=loopback_source()) for u in senders)))
    try:
        for s in streams:
            await s.send("<presence/>")
        await asyncio.gather(
            *(_subscribe_mutually(streams[i], senders[i].jid, streams[i + 1], senders[i + 1].jid) for i in range(0, 20, 2))
        )
        for i, s in enumerate(streams):
            item = roster_item_xml(offline[i % 10].jid, name=f"friend {i}", groups=["offline friends"])
            iq_id = s.next_id("rset")
            await s.send(f"<iq type='set' id='{iq_id}'><query xmlns='{ROSTER_NS}'>{item}</query></iq>")
            reply = await s.wait_for(lambda e, iq_id=iq_id: e.get("id") == iq_id, 10)
            assert reply.get("type") == "result", ET.tostring(reply)
        for i, s in enumerate(streams):
            roster = await _roster(s)
            assert roster[senders[i ^ 1].jid].get("subscription") == "both", ET.tostring(roster[senders[i ^ 1].jid])

        # The load: every 50 ms a message, alternately to the partner (online) and to an
        # offline account; a ping every 6 messages confirms what was sent before it.
        sent_offline: dict[str, str] = {}  # body -> recipient bare JID
        confirmed: set[str] = set()
        online_sent = 0

        async def load(i: int, s: AsyncStream) -> None:
            nonlocal online_sent
            n, unconfirmed = 0, []
            while not s.closed:
                body = f"s{i}-m{n}"
                if n % 2 == 0:
                    to = offline[(i + n // 2) % 10].jid
                    sent_offline[body] = to
                    unconfirmed.append(body)
                else:
                    to = senders[i ^ 1].jid
                    online_sent += 1
                try:
                    await s.message(to, body, msg_id=body)
                    n += 1
                    if n % 6 == 0:
                        batch, unconfirmed = unconfirmed, []
                        await s.ping(timeout=5)
                        confirmed.update(batch)
                    await asyncio.sleep(0.05)
                except (AssertionError, ConnectionError, OSError, TimeoutError, aioraw.AsyncStreamClosed):
                    return

        phase("rosters set up")
        tasks = [asyncio.create_task(load(i, s)) for i, s in enumerate(streams)]
        await asyncio.sleep(3.0)
        srv.kill()  # SIGKILL, mid-traffic
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        bounced = {e.get("id") for s in streams for e in s.received() if e.get("type") == "error"}
        online_received = sum(1 for s in streams for e in s.received() if e.get("type") == "chat")
    finally:
        for s in streams:
            await s.close()
    print(
        f"before the kill: {len(sent_offline)} offline messages sent, {len(confirmed)} confirmed, "
        f"{online_sent} online sent, {online_received} online received, {len(bounced)} bounced"
    )
    assert not bounced & set(sent_offline), f"offline messages bounced: {sorted(bounced)[:5]}"
    assert len(confirmed) >= 100 and online_received >= 50, "the load did not get going"

    db_path = srv.data_dir / "rookery.db"
    _check_database(db_path)  # as the kill left it (SQLite recovers the WAL on open)
    phase("killed and checked")
    srv.start()
    phase("restarted")

    async def collect(user, again: bool = False) -> list[str]:
        """Log in, become available, return the bodies of the messages received (waiting for
        every confirmed one, unless ``again``, then a second for duplicates)."""
        expected = set() if again else {b for b, to in sent_offline.items() if to == user.jid and b in confirmed}
        s = await aioraw.login(srv, user, "back", source=loopback_source())
        try:
            await s.send("<presence/>")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                got = {e.findtext(qn(CLIENT_NS, "body")) for e in s.received()}
                if expected <= got:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # any duplicate would follow
            await s.ping()
            return [e.findtext(qn(CLIENT_NS, "body")) for e in s.received()]
        finally:
            await s.close()

    delivered = await asyncio.gather(*(collect(u) for u in offline))
    for user, bodies in zip(offline, delivered):
        mine = {b for b, to in sent_offline.items() if to == user.jid}
        counts = {b: bodies.count(b) for b in set(bodies)}
        lost = sorted(b for b in mine & confirmed if b not in counts)
        repeated = sorted(b for b, c in counts.items() if c > 1)
        invented = sorted(b for b in counts if b not in mine)
        assert not lost, f"{user.jid}: {len(lost)} accepted messages lost, e.g. {lost[:5]}"
        assert not repeated, f"{user.jid}: delivered more than once: {repeated[:5]}"
        assert not invented, f"{user.jid}: messages that were not sent to it: {invented[:5]}"
    total = sum(len(b) for b in delivered)
    print(f"after the restart: {total} offline messages delivered ({total - len(confirmed)} beyond the confirmed)")

    phase("offline messages checked")
    # Not again at the next login; rosters and subscriptions as they were.
    again = await asyncio.gather(*(collect(u, again=True) for u in offline[:3]))
    assert again == [[], [], []], again

    async def roster_after(i: int):
        s = await aioraw.login(srv, senders[i], "check", source=loopback_source())
        try:
            return await _roster(s)
        finally:
            await s.close()

    rosters = await asyncio.gather(*(roster_after(i) for i in range(20)))
    for i, roster in enumerate(rosters):
        partner = roster.get(senders[i ^ 1].jid)
        assert partner is not None and partner.get("subscription") == "both", ET.tostring(partner) if partner else roster
        friend = roster.get(offline[i % 10].jid)
        assert friend is not None and friend.get("name") == f"friend {i}", roster
        assert [g.text for g in friend.findall(qn(ROSTER_NS, "group"))] == ["offline friends"]
    phase("rosters checked")
    await asyncio.to_thread(assert_serving, srv, senders[0])
    rc, _, _ = srv.stop()
    assert rc == 0
    _check_database(db_path)
