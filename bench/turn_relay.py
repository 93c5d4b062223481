#!/usr/bin/env python3
"""TURN relay benchmark: Rookery's built-in STUN/TURN server beside coturn on this machine,
both driven by coturn's own load client, `turnutils_uclient`, in the same run. Called by
bench/run.sh (`--turn`); it can also be run by hand:

    turn_relay.py run --rookery-bin target/release/rookery --out DIR --work TMPDIR
    turn_relay.py report DIR       # the Markdown table from DIR/raw-turn.jsonl

Each server runs from a private configuration under the work directory on free loopback
ports with the same TURN REST API secret, pinned to CPU 0; the client is pinned to CPU 1.
One run is `turnutils_uclient -y -c -m SESSIONS -n MESSAGES -l LENGTH -z 0`: SESSIONS pairs
of allocations, each client sending MESSAGES datagrams of LENGTH bytes as fast as the client
goes to its partner's relayed address, so every datagram crosses the server twice (into one
allocation, out of the other). Figures per run: bytes delivered per second of the client's
transmit time, the server's CPU time (utime + stime from /proc) per megabyte delivered, and
the datagrams lost. Rookery's per-allocation bandwidth and byte limits are raised for the
run (coturn has none by default); everything else is the default configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SECRET = "benchmark secret"
TICK = os.sysconf("SC_CLK_TCK")
SERVERS = ("rookery", "coturn")
NAMES = {"rookery": "Rookery (built-in)", "coturn": "coturn"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    """`argv` under `taskset -c cpu`; an empty `cpu` (or no taskset) leaves it unpinned."""
    return (["taskset", "-c", cpu] if cpu and shutil.which("taskset") else []) + argv


def start_rookery(binary: str, work: Path, port: int, cpu: str | None) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "rookery.toml"
    config.write_text(
        f"""data_dir = "{work / 'data'}"
log_level = "warn"

[turn]
enabled = true
address = "127.0.0.1:{port}"
secret = "{SECRET}"
allow_loopback_peers = true
relay_min_port = 20000
relay_max_port = 29999
max_allocations_per_user = 100000
max_allocations = 100000
max_bytes_per_second = 1099511627776
max_bytes_per_allocation = 1099511627776

# The benchmark speaks only TURN; the client listener takes whatever port the kernel gives
# (port 0), so it can never collide with another process's TCP port.
[[listener]]
kind = "c2s"
address = "127.0.0.1:0"

[[host]]
domain = "localhost"
"""
    )
    log_file = open(work / "rookery.log", "w")
    return subprocess.Popen(
        pinned(cpu, [binary, "serve", "--config", str(config)]), stdout=log_file, stderr=subprocess.STDOUT
    )


def start_coturn(work: Path, port: int, cpu: str | None) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("turnserver")
    if binary is None:
        raise SystemExit("coturn is not installed (apt-get install coturn)")
    return subprocess.Popen(
        pinned(cpu, [
            binary, "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
            "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=localhost",
            "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
            "--min-port=30000", "--max-port=39999", "--no-stdout-log",
            f"--log-file={work / 'turn.log'}", f"--pidfile={work / 'turn.pid'}", f"--userdb={work / 'turn.db'}",
        ]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_ready(port: int, proc: subprocess.Popen) -> bool:
    """A STUN binding request answered: the server is up. False if it exited first (its
    port was taken between `free_udp_port` and its bind, say)."""
    request = bytes.fromhex("000100002112a442") + os.urandom(12)
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            s.sendto(request, ("127.0.0.1", port))
            try:
                data, _ = s.recvfrom(2048)
                if data[:2] == b"\x01\x01":
                    return True
            except OSError:
                pass
    raise SystemExit("the server did not answer a STUN binding request")


def start(name: str, args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen, int]:
    """The server up on a free UDP port. The port is only known free when it is picked, so
    a server that exits at start is started again on a new one, three tries in all."""
    for attempt in range(3):
        port = free_udp_port()
        where = work / f"{name}-{attempt}"
        if name == "rookery":
            proc = start_rookery(args.rookery_bin, where, port, args.cpu_server)
            log_path = where / "rookery.log"
        else:
            proc = start_coturn(where, port, args.cpu_server)
            log_path = where / "turn.log"
        if wait_ready(port, proc):
            return proc, port
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        log(f"{name} exited at start (status {proc.returncode}) on port {port}: {tail}")
    raise SystemExit(f"the server exited at start (status {proc.returncode}): {tail}")


def uclient(port: int, sessions: int, messages: int, length: int, cpu: str | None) -> dict:
    argv = pinned(cpu, [
        "turnutils_uclient", "-u", "bench", "-W", SECRET, "-p", str(port), "-y", "-c",
        "-m", str(sessions), "-n", str(messages), "-l", str(length), "-z", "0", "127.0.0.1",
    ])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    figures = {"exit": done.returncode}
    for key, pattern in (
        ("sent_bytes", r"tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)\s*$"),
        ("transmit_secs", r"Total transmit time is (\d+)"),
        ("lost", r"Total lost packets (\d+) \(([\d.]+)%\)"),
    ):
        found = re.findall(pattern, out, re.M)
        if found:
            figures[key] = found[-1]
    if "sent_bytes" not in figures:
        figures["tail"] = out[-1500:]
    return figures


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw-turn.jsonl"
    work = Path(args.work)
    for name in args.servers.split():
        for rep in range(args.reps):
            proc, port = start(name, args, work / f"{name}-{rep}")
            try:
                pid = proc.pid  # taskset execs the server: the same process
                before = cpu_seconds(pid)
                started = time.monotonic()
                result = uclient(port, args.sessions, args.messages, args.length, args.cpu_client)
                wall = time.monotonic() - started
                cpu = cpu_seconds(pid) - before
                record = {
                    "server": name, "rep": rep, "sessions": args.sessions, "messages": args.messages,
                    "length": args.length, "wall_secs": round(wall, 2), "server_cpu_secs": round(cpu, 3),
                    "rss_kib": rss_kib(pid), "loadavg": Path("/proc/loadavg").read_text().split()[:3], **result,
                }
                log(f"{name} #{rep}: {json.dumps(record)}")
                with raw.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def report(args: argparse.Namespace) -> None:
    rows: dict[str, list[dict]] = {}
    for line in (Path(args.out) / "raw-turn.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "sent_bytes" in r and "transmit_secs" in r:
            rows.setdefault(r["server"], []).append(r)
    figures: dict[str, dict[str, float]] = {}
    for name, runs in rows.items():
        mbps, cpu_per_mb, lost = [], [], []
        for r in runs:
            received = int(r["sent_bytes"][1])
            mb = received / 1e6
            mbps.append(mb / max(int(r["transmit_secs"]), 1))
            # Each delivered byte crossed the server twice; per delivered megabyte.
            cpu_per_mb.append(1000 * r["server_cpu_secs"] / mb if mb else float("nan"))
            lost.append(float(r["lost"][1]) if "lost" in r else float("nan"))
        figures[name] = {
            "mbps": statistics.median(mbps),
            "cpu": statistics.median(cpu_per_mb),
            "lost": statistics.median(lost),
            "n": len(runs),
        }
    base = figures.get("rookery")
    print("| server | MB/s delivered | server CPU ms per MB delivered | datagrams lost | ratio to Rookery (MB/s, CPU/MB) | runs |")
    print("|---|---|---|---|---|---|")
    for name in SERVERS:
        f = figures.get(name)
        if not f:
            continue
        def ratio_of(key: str) -> str:
            # A tiny run can take less CPU than the clock tick counts: no ratio then.
            if not base or not base[key]:
                return "—"
            return f"{f[key] / base[key]:.2f}"

        ratio = "1.00, 1.00" if name == "rookery" else f"{ratio_of('mbps')}, {ratio_of('cpu')}"
        print(f"| {NAMES[name]} | {f['mbps']:.1f} | {f['cpu']:.2f} | {f['lost']:.2f}% | {ratio} | {f['n']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rookery-bin", default="target/release/rookery")
    r.add_argument("--servers", default="rookery coturn")
    r.add_argument("--out", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--sessions", type=int, default=50)
    r.add_argument("--messages", type=int, default=4000)
    r.add_argument("--length", type=int, default=1200)
    r.add_argument("--cpu-server", default="0")
    r.add_argument("--cpu-client", default="1")
    rep = sub.add_parser("report")
    rep.add_argument("out")
    args = p.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
