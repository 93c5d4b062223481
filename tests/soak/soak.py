#!/usr/bin/env python3
"""Soak test (not part of the test suite): a steady load of logins, messages and presence
against a fresh `rookery serve`, for a configurable time, sampling the server's memory
(VmRSS), open descriptors, message throughput and latency every interval, then printing a
before/after table.

    .venv/bin/python tests/soak/soak.py                 # 10 minutes
    ROOKERY_BIN=target/release/rookery python tests/soak/soak.py --duration 120 --interval 30

The load, per second by default: 20 resident clients in 10 mutually subscribed pairs, each
sending 5 messages to its partner (100 messages/s, latency measured from send to receipt),
plus 1 message/s each to the offline churn accounts; every resident changes its presence
every 10 s (broadcast to its partner); 2 churn loops log an account in (SCRAM over direct
TLS), send presence, receive what was stored for it, ping and log out, over and over.

Everything runs on loopback; the server is started in a temporary directory and stopped
at the end (SIGTERM, then SIGKILL if needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "interop"))

import aioraw  # noqa: E402
from aioraw import AsyncStream, open_fds, read_rss_kib  # noqa: E402
from harness import CLIENT_NS, RookeryServer, UserPool, loopback_source, qn  # noqa: E402


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


class Stats:
    """Counters for the current sampling window."""

    def __init__(self) -> None:
        self.reset()
        self.errors_total = 0
        self.sent_total = 0
        self.received_total = 0
        self.logins_total = 0

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.login_times: list[float] = []
        self.sent = 0
        self.received = 0
        self.logins = 0
        self.errors = 0
        self.presences = 0
        self.offline_delivered = 0


class Soak:
    def __init__(self, args, server: RookeryServer, residents, churners):
        self.args = args
        self.server = server
        self.residents = residents
        self.churners = churners
        self.stats = Stats()
        self.stop = asyncio.Event()
        self.streams: list[AsyncStream] = []

    def on_resident_element(self, elem) -> bool:
        if elem.tag == qn(CLIENT_NS, "message"):
            body = elem.findtext(qn(CLIENT_NS, "body")) or ""
            if elem.get("type") == "error":
                self.stats.errors += 1
                self.stats.errors_total += 1
            elif body.startswith("t="):
                sent = int(body[2:].split(";", 1)[0])
                self.stats.latencies.append((time.monotonic_ns() - sent) / 1e9)
                self.stats.received += 1
                self.stats.received_total += 1
            return True
        if elem.tag == qn(CLIENT_NS, "presence"):
            self.stats.presences += 1
            return True
        return False

    async def resident(self, i: int, s: AsyncStream) -> None:
        partner = self.residents[i ^ 1].jid
        period = 1.0 / self.args.msg_rate
        next_send = time.monotonic() + random.random() * period
        next_presence = time.monotonic() + random.random() * 10
        next_offline = time.monotonic() + random.random()
        n = 0
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_presence:
                    await s.send(f"<presence><status>soak {n}</status></presence>")
                    next_presence += 10
                if now >= next_offline and self.churners:
                    to = random.choice(self.churners).jid
                    await s.send(f"<message to='{to}' type='chat'><body>stored {i}-{n}</body></message>")
                    next_offline += 1.0 / self.args.offline_rate if self.args.offline_rate > 0 else 1e9
                await s.send(f"<message to='{partner}' type='chat'><body>t={time.monotonic_ns()};{i}-{n}</body></message>")
                self.stats.sent += 1
                self.stats.sent_total += 1
                n += 1
                if n % 50 == 0:
                    await s.ping(timeout=30)
                    s.trim()
            except (ConnectionError, OSError, TimeoutError, AssertionError, aioraw.AsyncStreamClosed) as e:
                print(f"resident {i}: {type(e).__name__}: {e}", file=sys.stderr)
                self.stats.errors += 1
                self.stats.errors_total += 1
                return
            next_send += period
            await asyncio.sleep(max(0.0, next_send - time.monotonic()))

    async def churn(self, k: int) -> None:
        while not self.stop.is_set():
            user = random.choice(self.churners)
            started = time.monotonic()
            s = None
            try:
                s = await aioraw.login(self.server, user, f"churn{k}", source=loopback_source(), timeout=30)
                self.stats.login_times.append(time.monotonic() - started)
                self.stats.logins += 1
                self.stats.logins_total += 1
                await s.send("<presence/>")
                await asyncio.sleep(0.3)  # stored messages arrive
                await s.ping(timeout=30)
                self.stats.offline_delivered += len(s.received("message"))
                await s.send("</stream:stream>")
            except (ConnectionError, OSError, TimeoutError, AssertionError, aioraw.AsyncStreamClosed) as e:
                print(f"churn {k}: {type(e).__name__}: {e}", file=sys.stderr)
                self.stats.errors += 1
                self.stats.errors_total += 1
            finally:
                if s is not None:
                    await s.close()
            await asyncio.sleep(0.2)

    def sample(self, t: float) -> dict:
        pid = self.server.proc.pid
        st = self.stats
        row = {
            "t": t,
            "rss_mib": read_rss_kib(pid) / 1024,
            "fds": open_fds(pid),
            "msgs_s": st.received / self.args.interval,
            "p50": percentile(st.latencies, 50),
            "p99": percentile(st.latencies, 99),
            "login_p50": percentile(st.login_times, 50),
            "logins": st.logins,
            "offline": st.offline_delivered,
            "errors": st.errors,
        }
        st.reset()
        return row


HEADER = (
    f"{'time':>6} {'VmRSS MiB':>9} {'fds':>5} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'login p50 ms':>12} {'logins':>6} {'to churn':>8} {'errors':>6}"
)


def print_row(row: dict) -> None:
    print(
        f"{row['t']:>5.0f}s {row['rss_mib']:>9.1f} {row['fds']:>5} {row['msgs_s']:>7.1f} {fmt_ms(row['p50']):>7} "
        f"{fmt_ms(row['p99']):>7} {fmt_ms(row['login_p50']):>12} {row['logins']:>6} {row['offline']:>8} {row['errors']:>6}",
        flush=True,
    )


async def run(args) -> int:
    binary = Path(os.environ.get("ROOKERY_BIN") or REPO / "target" / "debug" / "rookery")
    with tempfile.TemporaryDirectory(prefix="rookery-soak-") as tmp:
        server = RookeryServer(binary, Path(tmp), log_level="warn", extra_limits={"max_offline_messages": 100000})
        server.start()
        try:
            return await soak(args, server)
        finally:
            rc, _, err = server.stop(signal.SIGTERM, timeout=15)
            if rc != 0:
                print(f"server exit code {rc}\n{err[-2000:]}", file=sys.stderr)


async def soak(args, server: RookeryServer) -> int:
    print(f"creating {args.residents + args.churn_accounts} accounts...", flush=True)
    pool = UserPool(server, "soak", workers=3)
    try:
        pool.prefetch(args.residents + args.churn_accounts)
        residents = [pool.take() for _ in range(args.residents)]
        churners = [pool.take() for _ in range(args.churn_accounts)]
    finally:
        pool.close()
    pid = server.proc.pid
    await asyncio.sleep(1)
    before = {"rss_mib": read_rss_kib(pid) / 1024, "fds": open_fds(pid)}

    soak = Soak(args, server, residents, churners)
    streams = await asyncio.gather(*(aioraw.login(server, u, "soak", source=loopback_source()) for u in residents))
    soak.streams = list(streams)
    # Mutual subscriptions in pairs, so presence changes are broadcast.
    for i in range(0, len(streams) - 1, 2):
        a, b = streams[i], streams[i + 1]
        for x, y, yj, xj in ((a, b, residents[i + 1].jid, residents[i].jid), (b, a, residents[i].jid, residents[i + 1].jid)):
            await x.send(f"<presence to='{yj}' type='subscribe'/>")
            await x.ping()
            await y.send(f"<presence to='{xj}' type='subscribed'/>")
            await y.ping()
    for s in streams:
        s.on_element = soak.on_resident_element
        await s.send("<presence/>")
        s.trim()

    print(
        f"load: {args.residents} residents x {args.msg_rate} msg/s, {args.offline_rate} msg/s each to "
        f"{args.churn_accounts} churn accounts, {args.churn_loops} login loops; "
        f"{args.duration}s, sample every {args.interval}s",
        flush=True,
    )
    print(HEADER, flush=True)
    started = time.monotonic()
    tasks = [asyncio.create_task(soak.resident(i, s)) for i, s in enumerate(streams)]
    tasks += [asyncio.create_task(soak.churn(k)) for k in range(args.churn_loops)]
    rows = []
    try:
        while time.monotonic() - started < args.duration:
            await asyncio.sleep(min(args.interval, max(0.0, args.duration - (time.monotonic() - started))))
            row = soak.sample(time.monotonic() - started)
            rows.append(row)
            print_row(row)
    finally:
        soak.stop.set()
        await asyncio.wait(tasks, timeout=40)
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.close()
    await asyncio.sleep(5)
    after = {"rss_mib": read_rss_kib(pid) / 1024, "fds": open_fds(pid)}

    first, last = rows[0], rows[-1]
    print()
    print(f"{'':24} {'before load':>12} {'first sample':>12} {'last sample':>12} {'after load':>12}")
    print(
        f"{'VmRSS (MiB)':24} {before['rss_mib']:>12.1f} {first['rss_mib']:>12.1f} "
        f"{last['rss_mib']:>12.1f} {after['rss_mib']:>12.1f}"
    )
    print(f"{'open fds':24} {before['fds']:>12} {first['fds']:>12} {last['fds']:>12} {after['fds']:>12}")
    print(f"{'messages/s':24} {'':>12} {first['msgs_s']:>12.1f} {last['msgs_s']:>12.1f} {'':>12}")
    print(f"{'latency p50 (ms)':24} {'':>12} {fmt_ms(first['p50']):>12} {fmt_ms(last['p50']):>12} {'':>12}")
    print(f"{'latency p99 (ms)':24} {'':>12} {fmt_ms(first['p99']):>12} {fmt_ms(last['p99']):>12} {'':>12}")
    print(f"{'login p50 (ms)':24} {'':>12} {fmt_ms(first['login_p50']):>12} {fmt_ms(last['login_p50']):>12} {'':>12}")
    st = soak.stats
    print(
        f"\ntotals: {st.sent_total} messages sent, {st.received_total} received, {st.logins_total} logins, "
        f"{st.errors_total} errors"
    )
    return 1 if st.errors_total else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--interval", type=float, default=30, help="seconds between samples (default 30)")
    p.add_argument("--residents", type=int, default=20, help="clients online throughout, in pairs (default 20)")
    p.add_argument("--msg-rate", type=float, default=5, help="messages/s each resident sends its partner (default 5)")
    p.add_argument(
        "--offline-rate", type=float, default=1, help="messages/s each resident sends to churn accounts (default 1)"
    )
    p.add_argument("--churn-accounts", type=int, default=10, help="accounts that log in and out (default 10)")
    p.add_argument("--churn-loops", type=int, default=2, help="concurrent login/logout loops (default 2)")
    args = p.parse_args()
    if args.residents < 2 or args.residents % 2:
        p.error("--residents must be an even number >= 2")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
