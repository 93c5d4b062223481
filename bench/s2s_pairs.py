#!/usr/bin/env python3
"""Federation benchmark: pairs of servers (Rookery, ejabberd, Prosody) federating on loopback,
with `rookery-load s2s` sending one-to-one messages from accounts on one to accounts on the
other. Called by bench/run.sh (`--pairs`); it can also be run by hand:

    s2s_pairs.py run --pairs "rookery-rookery rookery-ejabberd" --out DIR --work TMPDIR \\
        --rookery-bin target/release/rookery --loadgen target/release/rookery-load
    s2s_pairs.py report DIR        # the Markdown table from DIR/raw-s2s.jsonl

A pair "X-Y" is server X serving `X-a.test` and server Y serving `Y-b.test` (two processes of
the same server for X = Y), each from a private configuration and data directory under the
work directory, on free loopback ports. Name resolution and certificates are those of the
federation interop tests (tests/interop/federation.py): a DNS server of this process's own
(dnslib) that ejabberd (an Erlang inetrc file) and Prosody (lua-unbound forwarding to it)
ask, and a test CA that issues every server's certificate and that every server trusts.
Rookery finds its peer through `[s2s.hosts]`. Every link is STARTTLS authenticated by SASL
EXTERNAL (XEP-0178): dialback is off everywhere (Prosody `s2s_secure_auth`, ejabberd without
mod_s2s_dialback, Rookery `authentication = "certificate"`), so a link that cannot
authenticate with its certificate fails instead of falling back.

Each measured run is one `rookery-load s2s` invocation, JSON wrapped with the pair and the
load average appended to DIR/raw-s2s.jsonl; the servers' logs go to DIR/logs/s2s-PAIR/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

KINDS = ("rookery", "ejabberd", "prosody")
NAMES = {"rookery": "Rookery", "ejabberd": "ejabberd", "prosody": "Prosody"}
LOOPBACK = "127.0.0.1"
# --info-logs: the servers log at info level (how each link authenticated), not warning.
INFO_LOGS = False


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def group_pid(leader: int, names: tuple[str, ...]) -> int:
    """The process of `leader`'s process group whose command is one of `names` (the server's
    VM or interpreter), else the leader itself."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == leader and comm in names:  # fields[2]: pgrp
            return int(entry.name)
    return leader


def set_autogroup_nice(pid: int, nice: str | None) -> None:
    if nice:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(nice)
        except OSError:
            pass


def pinned(cpus: set[int] | None):
    """Context: the calling thread (so the servers it starts) on `cpus`."""

    class _Pin:
        def __enter__(self):
            self.before = os.sched_getaffinity(0)
            if cpus:
                os.sched_setaffinity(0, cpus)

        def __exit__(self, *exc):
            os.sched_setaffinity(0, self.before)

    return _Pin()


# --------------------------------------------------------------------------
# Servers


def make_peer_classes(fed):
    """ejabberd and Prosody as federation.py runs them, with what the benchmark changes: logs
    at warning level (federation.py logs everything for the tests), in-band registration from
    loopback (accounts are made with `rookery-load register`, like bench/run.sh does), and
    the same SCRAM iteration count as the c2s benchmark's Prosody."""

    def patch(path: Path, changes: list[tuple[str, str]]) -> None:
        text = path.read_text()
        for old, new in changes:
            if old not in text:
                raise fed.PeerStartError(f"{path}: '{old}' not found (federation.py changed?)")
            text = text.replace(old, new, 1)
        path.write_text(text)

    class BenchProsody(fed.ProsodyPeer):
        def write_config(self) -> None:
            super().write_config()
            patch(
                self.config_path,
                [
                    ('levels = { min = "debug" }', 'levels = { min = "%s" }' % ("info" if INFO_LOGS else "warn")),
                    ('"harness_s2s_log";', '"harness_s2s_log"; "register";'),
                    ("allow_registration = false", "allow_registration = true\ndefault_iteration_count = 4096"),
                ],
            )

    class BenchEjabberd(fed.EjabberdPeer):
        def write_config(self) -> None:
            super().write_config()
            patch(
                self.config_path,
                [
                    ("loglevel: debug", f"loglevel: {'info' if INFO_LOGS else 'warning'}\nregistration_timeout: infinity"),
                    ("acl:\n", "acl:\n  loopback:\n    ip:\n      - 127.0.0.0/8\n"),
                    (
                        "access_rules:\n",
                        "access_rules:\n  register:\n    allow: all\n  trusted_network:\n    allow: loopback\n",
                    ),
                ],
            )
            with self.config_path.open("a") as f:
                f.write("  mod_register:\n    ip_access: trusted_network\n    access: register\n")

    return BenchProsody, BenchEjabberd


class RookeryPeer:
    """`rookery serve` from bench/templates/rookery.toml (the c2s benchmark's settings) with an
    s2s listener, the test CA's certificate, only that CA trusted, certificates required of
    peers, and `[s2s.hosts]` for its peer."""

    kind = "rookery"

    def __init__(self, fed, workdir: Path, domain: str, pki, binary: Path, log_dir: Path):
        self.fed = fed
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.pki = pki
        self.binary = binary
        self.c2s_port, self.tls_port, self.s2s_port = fed.pick_ports(3)
        self.config_path = self.workdir / "rookery.toml"
        self.log_path = log_dir / f"{domain}.log"
        self.hosts: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        cert = self.pki.cert(self.domain)
        text = (ROOT / "bench" / "templates" / "rookery.toml").read_text()
        for key, value in {
            "@DIR@": str(self.workdir),
            "@DOMAIN@": self.domain,
            "@CERT@": str(cert.cert_path),
            "@KEY@": str(cert.key_path),
            "@PORT_C2S@": str(self.c2s_port),
            "@PORT_C2S_TLS@": str(self.tls_port),
        }.items():
            text = text.replace(key, value)
        if INFO_LOGS:
            text = text.replace('log_level = "warn"', 'log_level = "info"', 1)
        text += f"""
# Federation benchmark (bench/s2s_pairs.py).
[[listener]]
kind = "s2s"
address = "{LOOPBACK}:{self.s2s_port}"

[s2s]
authentication = "certificate"
system_roots = false
ca_files = ["{self.pki.ca_path}"]
# Room for the first burst (every sender's window) while the link is set up.
queue_stanzas = 10000
queue_bytes = 16777216

[s2s.hosts]
"""
        text += "".join(f'"{d}" = "{a}"\n' for d, a in sorted(self.hosts.items()))
        self.config_path.write_text(text)

    def add_accounts(self, count: int) -> None:
        def add(n: int) -> None:
            res = subprocess.run(
                [str(self.binary), "user", "add", f"user{n}@{self.domain}", "--password", f"password{n}",
                 "--config", str(self.config_path)],
                capture_output=True, text=True, timeout=120,
            )
            if res.returncode != 0:
                raise RuntimeError(f"rookery user add user{n}@{self.domain}: {res.stderr}")

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(add, range(count)))

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                preexec_fn=self.fed._die_with_parent,
            )
        deadline = time.monotonic() + 30
        for port in (self.c2s_port, self.s2s_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rookery exited ({self.proc.returncode}), see {self.log_path}")
                try:
                    socket.create_connection((LOOPBACK, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"rookery not listening on {port}, see {self.log_path}")
                    time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


# --------------------------------------------------------------------------
# One pair


def run_pair(args, fed, dns, pki, peer_classes, pair: str, raw) -> None:
    kind_a, kind_b = pair.split("-")
    dom_a, dom_b = f"{kind_a}-a.test", f"{kind_b}-b.test"
    work = Path(args.work) / pair
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log_dir = Path(args.out) / "logs" / f"s2s-{pair}"
    log_dir.mkdir(parents=True, exist_ok=True)
    prosody_cls, ejabberd_cls = peer_classes

    def make(kind: str, domain: str, side: str):
        if kind == "rookery":
            return RookeryPeer(fed, work / side, domain, pki, Path(args.rookery_bin), log_dir)
        cls = prosody_cls if kind == "prosody" else ejabberd_cls
        settings = dict(secure_auth=True, trusted_cert=True, direct_tls=False)
        if kind == "prosody":
            settings["bidi"] = False  # as Debian's default configuration (and Rookery): no XEP-0288
        return cls(work / side, dns, pki, domain=domain, **settings)

    a, b = make(kind_a, dom_a, "a"), make(kind_b, dom_b, "b")
    # Where each finds the other: Rookery through [s2s.hosts], the others through the DNS
    # server (a Rookery's SRV record is published here; a peer publishes its own on start).
    for me, other in ((a, b), (b, a)):
        if isinstance(me, RookeryPeer):
            me.hosts[other.domain] = f"{LOOPBACK}:{other.s2s_port}"
        if isinstance(other, RookeryPeer):
            dns.set_service(other.domain, fed.XmppService(s2s_port=other.s2s_port, c2s_port=other.c2s_port))

    cpus_a, cpus_b, cpus_gen = args.cpus_a, args.cpus_b, args.cpus_gen
    started = []
    try:
        for server, cpus in ((a, cpus_a), (b, cpus_b)):
            if isinstance(server, RookeryPeer):
                server.write_config()
                server.add_accounts(args.accounts)
            with pinned(cpus):
                server.start()
            started.append(server)
        pids = []
        for server in (a, b):
            if isinstance(server, RookeryPeer):
                pid = server.pid
            else:
                pid = group_pid(server.proc.pid, ("beam.smp", "lua5.4", "lua"))
            set_autogroup_nice(pid, args.priority)
            pids.append(pid)
        for server in (a, b):
            if not isinstance(server, RookeryPeer):
                res = subprocess.run(
                    [args.loadgen, "--port", str(server.c2s_port), "--domain", server.domain, "register",
                     "--first", "0", "--count", str(args.accounts), "--concurrency", "16"],
                    capture_output=True, text=True, timeout=600,
                )
                (log_dir / f"accounts-{server.domain}.log").write_text(res.stdout + res.stderr)
        log(f"{pair}: {kind_a} ({dom_a}, pid {pids[0]}, CPUs {sorted(cpus_a or [])}) and "
            f"{kind_b} ({dom_b}, pid {pids[1]}, CPUs {sorted(cpus_b or [])}) up, {args.accounts} accounts each")

        def gen(scenario: str, rep: int, extra: list[str]) -> dict | None:
            cmd = [
                args.loadgen, "--port", str(a.c2s_port), "--domain", a.domain, "--server-pid", str(pids[0]),
                "--label", pair, "s2s", "--peer-port", str(b.c2s_port), "--peer-domain", b.domain,
                "--peer-server-pid", str(pids[1]), "--pairs", str(args.msg_pairs), "--concurrency", "50",
                *(["--both-ways"] if args.both_ways else []), *extra,
            ]
            if cpus_gen:
                cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus_gen))), *cmd]
            la0 = loadavg()
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 300)
            (log_dir / f"gen-{scenario}-{rep}.log").write_text(res.stderr)
            try:
                run = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                run = None
            rec = {"pair": pair, "a": kind_a, "b": kind_b, "scenario": scenario, "rep": rep,
                   "loadavg_before": la0, "loadavg_after": loadavg(),
                   "cpus": {"a": sorted(cpus_a or []), "b": sorted(cpus_b or []), "generator": sorted(cpus_gen or [])},
                   "run": run}
            if raw is not None:
                raw.write(json.dumps(rec) + "\n")
                raw.flush()
            last = res.stderr.strip().splitlines()[-1:] or ["(no output)"]
            log(f"{pair} {scenario} #{rep}: {last[0][:220]}")
            return run

        # Untimed: opens the links both ways and warms both servers up.
        gen("s2s-warmup", 0, ["--duration", "2", "--warmup", "1", "--drain", "20"])
        for rep in range(1, args.reps + 1):
            gen("s2s", rep, ["--duration", str(args.duration), "--window", str(args.window),
                             "--warmup", "2", "--drain", "20"])
            if args.rate:
                gen("s2s-rate", rep, ["--duration", str(args.duration), "--rate", str(args.rate),
                                      "--warmup", "2", "--drain", "20"])
    finally:
        for server in reversed(started):
            try:
                server.stop()
            except Exception as e:  # keep stopping the other one
                log(f"{pair}: stopping {server.kind}: {e}")
        for server in (a, b):
            if not isinstance(server, RookeryPeer):
                for name in ("stderr.log", "stdout.log"):
                    p = server.workdir / name
                    if p.exists():
                        shutil.copyfile(p, log_dir / f"{server.domain}-{name}")
                if server.log_path.exists():
                    shutil.copyfile(server.log_path, log_dir / f"{server.domain}-{server.log_path.name}")


def cmd_run(args) -> int:
    import federation as fed

    pairs = args.pairs.split()
    for p in pairs:
        kinds = p.split("-")
        if len(kinds) != 2 or any(k not in KINDS for k in kinds):
            raise SystemExit(f"unknown pair {p!r}: X-Y with X, Y among {', '.join(KINDS)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    domains = sorted({f"{p.split('-')[0]}-a.test" for p in pairs} | {f"{p.split('-')[1]}-b.test" for p in pairs})
    pki = fed.TestPKI(Path(args.work) / "pki", domains=domains)
    dns = fed.DnsServer().start()
    peer_classes = make_peer_classes(fed)
    failed = []
    try:
        with open(Path(args.out) / "raw-s2s.jsonl", "a") as raw:
            for pair in pairs:
                try:
                    run_pair(args, fed, dns, pki, peer_classes, pair, raw)
                except Exception as e:
                    log(f"{pair}: failed: {e}")
                    failed.append(pair)
    finally:
        dns.stop()
    if failed:
        log(f"pairs that failed: {' '.join(failed)}")
    return 1 if failed and len(failed) == len(pairs) else 0


# --------------------------------------------------------------------------
# Report


def get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def median_cell(vals, f):
    nums = [v for v in vals if isinstance(v, (int, float))]
    if not nums:
        return "—", None
    med = statistics.median(nums)
    cell = f.format(med)
    if len(nums) > 1:
        cell += f" ({f.format(min(nums))}–{f.format(max(nums))})"
    return cell, med


ROWS = [
    # (label, scenario, extractor, format)
    ("delivered msg/s", "s2s", lambda r: get(r, "run", "results", "msgs_per_s"), "{:.0f}"),
    ("latency p50, ms (flat out, 1 in 16 sampled)", "s2s", lambda r: get(r, "run", "results", "latency_ms", "p50"), "{:.1f}"),
    ("latency p99, ms (flat out)", "s2s", lambda r: get(r, "run", "results", "latency_ms", "p99"), "{:.1f}"),
    ("both servers' CPU s per 100k msgs", "s2s", lambda r: get(r, "run", "results", "both_servers_cpu_s_per_100k"), "{:.2f}"),
    ("server A CPU s per 100k msgs", "s2s", lambda r: get(r, "run", "results", "server_cpu_s_per_100k"), "{:.2f}"),
    ("server B CPU s per 100k msgs", "s2s", lambda r: get(r, "run", "results", "peer_server_cpu_s_per_100k"), "{:.2f}"),
    ("server A CPU use (cores)", "s2s", lambda r: get(r, "run", "server", "cpu_util"), "{:.2f}"),
    ("server B CPU use (cores)", "s2s", lambda r: get(r, "run", "results", "peer_server", "cpu_util"), "{:.2f}"),
    ("generator CPU use (cores)", "s2s", lambda r: get(r, "run", "generator", "measured_phase", "cpu_util"), "{:.2f}"),
    ("lost + out of order", "s2s",
     lambda r: (get(r, "run", "results", "lost") or 0) + (get(r, "run", "results", "out_of_order") or 0)
     if get(r, "run", "results") else None, "{:.0f}"),
    ("fixed rate: achieved msg/s", "s2s-rate", lambda r: get(r, "run", "results", "msgs_per_s"), "{:.0f}"),
    ("fixed rate: latency p50, ms", "s2s-rate", lambda r: get(r, "run", "results", "latency_ms", "p50"), "{:.2f}"),
    ("fixed rate: latency p99, ms", "s2s-rate", lambda r: get(r, "run", "results", "latency_ms", "p99"), "{:.2f}"),
    ("fixed rate: lost + out of order", "s2s-rate",
     lambda r: (get(r, "run", "results", "lost") or 0) + (get(r, "run", "results", "out_of_order") or 0)
     if get(r, "run", "results") else None, "{:.0f}"),
]

PAIR_ORDER = ["rookery-rookery", "ejabberd-ejabberd", "prosody-prosody", "rookery-ejabberd",
              "ejabberd-rookery", "rookery-prosody", "prosody-rookery"]
# (numerator, denominator) of the ratio rows, for throughput (higher is better).
RATIOS = [("rookery-rookery", "ejabberd-ejabberd"), ("rookery-rookery", "prosody-prosody"),
          ("rookery-ejabberd", "ejabberd-ejabberd"), ("rookery-prosody", "prosody-prosody"),
          ("ejabberd-rookery", "ejabberd-ejabberd"), ("prosody-rookery", "prosody-prosody")]


def pair_name(p: str) -> str:
    a, b = p.split("-")
    return f"{NAMES[a]}↔{NAMES[b]}"


def cmd_report(args) -> int:
    out = Path(args.dir)
    recs = []
    for line in (out / "raw-s2s.jsonl").read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    present = {r["pair"] for r in recs}
    pairs = [p for p in PAIR_ORDER if p in present] + sorted(present - set(PAIR_ORDER))
    reps = max([r["rep"] for r in recs if r["scenario"] == "s2s"] or [0])
    first = next((r for r in recs if r["scenario"] == "s2s" and r.get("run")), None)
    params = get(first, "run", "params") or {}
    cpus = (first or {}).get("cpus", {})
    print()
    print("### Federation: messages between two servers")
    print()
    print(f"{params.get('pairs')} account pairs, {'both ways' if params.get('both_ways') else 'one way'} "
          f"({params.get('directions')} directions), window {params.get('window')} per direction flat out, "
          f"{params.get('duration_s')} s measured after {params.get('warmup_s')} s; fixed rate "
          f"{get(next((r for r in recs if r['scenario'] == 's2s-rate' and r.get('run')), None), 'run', 'params', 'rate')}"
          f" msg/s. Server A on CPUs {cpus.get('a')}, server B on CPUs {cpus.get('b')}, generator on CPUs "
          f"{cpus.get('generator') or 'any'}. STARTTLS links authenticated by SASL EXTERNAL (test CA). "
          f"Median (min–max) of {reps} repetition(s).")
    print()
    print("| figure | " + " | ".join(pair_name(p) for p in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    medians: dict[tuple[str, str], float | None] = {}
    for label, scen, fn, f in ROWS:
        if not any(r["scenario"] == scen for r in recs):
            continue
        row = [label]
        for p in pairs:
            vals = []
            for r in recs:
                if r["pair"] == p and r["scenario"] == scen:
                    try:
                        vals.append(fn(r))
                    except (TypeError, ZeroDivisionError):
                        vals.append(None)
            cell, med = median_cell(vals, f)
            medians[(label, p)] = med
            row.append(cell)
        print("| " + " | ".join(row) + " |")
    print()
    lines = []
    for num, den in RATIOS:
        x, y = medians.get(("delivered msg/s", num)), medians.get(("delivered msg/s", den))
        if x and y:
            lines.append(f"- {pair_name(num)} / {pair_name(den)}: {x / y:.2f}× the delivered msg/s")
    if lines:
        print("Throughput ratios (medians):")
        print()
        print("\n".join(lines))
        print()
    for r in recs:
        run = r.get("run")
        if r["scenario"] == "s2s-warmup":
            continue
        if run is None:
            print(f"- {r['pair']} {r['scenario']} #{r['rep']}: no output from the generator")
        elif not run.get("ok"):
            print(f"- {r['pair']} {r['scenario']} #{r['rep']}: errors {get(run, 'errors', 'by_kind')} "
                  f"{(get(run, 'errors', 'samples') or [''])[0]}")
    return 0


def cpu_set(text: str) -> set[int] | None:
    text = text.strip()
    if not text or text == "any":
        return None
    return {int(c) for c in text.split(",")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pairs", required=True, help='e.g. "rookery-rookery rookery-ejabberd"')
    r.add_argument("--out", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--rookery-bin", default=str(ROOT / "target" / "release" / "rookery"))
    r.add_argument("--loadgen", default=str(ROOT / "target" / "release" / "rookery-load"))
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--msg-pairs", type=int, default=100)
    r.add_argument("--duration", type=int, default=10)
    r.add_argument("--window", type=int, default=16)
    r.add_argument("--rate", type=int, default=1000, help="fixed-rate run's msg/s (0: none)")
    r.add_argument("--one-way", dest="both_ways", action="store_false",
                   help="only A's accounts send (default: both ways)")
    r.add_argument("--cpus-a", type=cpu_set, default={0}, help='server A\'s CPUs ("0", "0,1", "any")')
    r.add_argument("--cpus-b", type=cpu_set, default={0})
    r.add_argument("--cpus-gen", type=cpu_set, default={1})
    r.add_argument("--priority", default=None, help="autogroup nice for the servers")
    r.add_argument("--info-logs", action="store_true",
                   help="servers log at info level (how each link authenticated; slower)")
    rp = sub.add_parser("report")
    rp.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "run":
        global INFO_LOGS
        INFO_LOGS = args.info_logs
        args.accounts = args.msg_pairs
        return cmd_run(args)
    return cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
