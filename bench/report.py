#!/usr/bin/env python3
"""Turns a bench/run.sh results directory (meta.json, raw.jsonl) into a Markdown table:
one row per figure, per server the median over repetitions with the min-max spread, and
each other server's median divided by Rookery's.

    python3 bench/report.py bench/results/DATE
"""

import json
import statistics
import sys
from pathlib import Path

SERVERS = ["rookery", "rookery-base", "ejabberd", "prosody", "rookery-mam", "ejabberd-mam", "prosody-mam",
           "rookery-pg"]
NAMES = {"rookery": "Rookery", "rookery-base": "Rookery (baseline)", "ejabberd": "ejabberd", "prosody": "Prosody",
         "rookery-mam": "Rookery as shipped", "ejabberd-mam": "ejabberd + mod_mam",
         "prosody-mam": "Prosody + mam", "rookery-pg": "Rookery on PostgreSQL"}


# The certificate kind every server was given (bench/run.sh CERT_KIND); runs before the
# setting existed used ECDSA P-256.
CERT_NAMES = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}


def reference(server):
    """The Rookery column a server's ratio is taken against: archive-on servers (and Rookery
    as shipped on PostgreSQL) are compared with Rookery as shipped (archive on, SQLite), the
    others with Rookery's benchmark module set."""
    return "rookery-mam" if server.endswith("-mam") or server == "rookery-pg" else "rookery"


def get(d, *path):
    for p in path:
        if d is None:
            return None
        if isinstance(p, int):
            d = d[p] if isinstance(d, list) and len(d) > p else None
        else:
            d = d.get(p) if isinstance(d, dict) else None
    return d


def idle_kib(rec):
    runs = [r for r in rec.get("runs") or [] if r]
    est = sum(get(r, "results", "established") or 0 for r in runs)
    before = get(rec, "proc", "rss_kib_before")
    held = get(rec, "proc", "rss_kib_held")
    if not est or before is None or held is None:
        return None
    return (held - before) / est


def idle_sessions(rec):
    runs = [r for r in rec.get("runs") or [] if r]
    return sum(get(r, "results", "established") or 0 for r in runs) or None


def per_core(rec):
    cpu = get(rec, "run", "results", "server_cpu_s_per_100k")
    return 100000 / cpu if cpu else None


def rate_latency(q):
    return lambda rec: get(rec, "run", "results", "latency_ms", q)


def if_supported(field):
    """The figure, or "unsupported" where the generator found the server lacks the feature."""

    def f(rec):
        if get(rec, "run", "results", "supported") is False:
            return "unsupported"
        return field(rec)

    return f


# (section, label, scenario, extractor, format, better)
ROWS = [
    ("Login storm, SCRAM-SHA-1 over STARTTLS", "logins/s", "login",
     lambda r: get(r, "run", "results", "logins_per_s"), "{:.0f}", "higher"),
    ("", "server CPU ms per login (incl. logout)", "login",
     lambda r: get(r, "run", "results", "server_cpu_ms_per_login"), "{:.2f}", "lower"),
    ("", "login latency p99, ms", "login",
     lambda r: get(r, "run", "results", "latency_ms", "p99"), "{:.1f}", "lower"),
    ("Login storm, PLAIN over STARTTLS", "logins/s", "login-plain",
     lambda r: get(r, "run", "results", "logins_per_s"), "{:.0f}", "higher"),
    ("", "server CPU ms per login (incl. logout)", "login-plain",
     lambda r: get(r, "run", "results", "server_cpu_ms_per_login"), "{:.2f}", "lower"),
    ("Login storm, SCRAM-SHA-1 over plain TCP", "logins/s", "login-tcp",
     lambda r: get(r, "run", "results", "logins_per_s"), "{:.0f}", "higher"),
    ("", "server CPU ms per login (incl. logout)", "login-tcp",
     lambda r: get(r, "run", "results", "server_cpu_ms_per_login"), "{:.2f}", "lower"),
    ("Idle authenticated sessions (TLS)", "sessions held", "idle", idle_sessions, "{:.0f}", "higher"),
    ("", "server KiB per session (RSS)", "idle", idle_kib, "{:.1f}", "lower"),
    ("One-to-one messages, flat out", "delivered msg/s", "messages",
     lambda r: get(r, "run", "results", "msgs_per_s"), "{:.0f}", "higher"),
    ("", "server CPU s per 100k msgs", "messages",
     lambda r: get(r, "run", "results", "server_cpu_s_per_100k"), "{:.2f}", "lower"),
    ("", "msgs per server CPU-second", "messages", per_core, "{:.0f}", "higher"),
    ("", "server CPU use (of its 1 core)", "messages",
     lambda r: get(r, "run", "server", "cpu_util"), "{:.2f}", ""),
    ("", "generator CPU use (of its 1 core)", "messages",
     lambda r: get(r, "run", "generator", "measured_phase", "cpu_util"), "{:.2f}", ""),
    ("", "lost + out of order", "messages",
     lambda r: (get(r, "run", "results", "lost") or 0) + (get(r, "run", "results", "out_of_order") or 0)
     if get(r, "run", "results") else None, "{:.0f}", "lower"),
    ("Fixed rate (latency)", "achieved msg/s", "rate",
     lambda r: get(r, "run", "results", "achieved_msgs_per_s"), "{:.0f}", ""),
    ("", "latency p50, ms", "rate", rate_latency("p50"), "{:.3f}", "lower"),
    ("", "latency p90, ms", "rate", rate_latency("p90"), "{:.3f}", "lower"),
    ("", "latency p99, ms", "rate", rate_latency("p99"), "{:.3f}", "lower"),
    ("", "latency p99.9, ms", "rate", rate_latency("p999"), "{:.3f}", "lower"),
    ("", "latency max, ms", "rate", rate_latency("max"), "{:.2f}", "lower"),
    ("", "lost + out of order", "rate",
     lambda r: (get(r, "run", "results", "lost") or 0) + (get(r, "run", "results", "out_of_order") or 0)
     if get(r, "run", "results") else None, "{:.0f}", "lower"),
    ("Presence fan-out", "time until all contacts have it, p50 of changes, ms", "fanout",
     if_supported(lambda r: get(r, "run", "results", "completion_ms", "p50")), "{:.2f}", "lower"),
    ("", "same, slowest change, ms", "fanout",
     if_supported(lambda r: get(r, "run", "results", "completion_ms", "max")), "{:.2f}", "lower"),
    ("", "server CPU ms per change", "fanout",
     if_supported(lambda r: get(r, "run", "results", "server_cpu_ms_per_change")), "{:.2f}", "lower"),
]
for scen, title in (("muc-big", "Group chat, one room"), ("muc-rooms", "Group chat, many rooms")):
    ROWS += [
        (title, "delivered copies per server CPU-second", scen,
         lambda r: get(r, "run", "results", "copies_per_server_cpu_s"), "{:.0f}", "higher"),
        ("", "server CPU µs per delivered copy", scen,
         lambda r: get(r, "run", "results", "server_cpu_us_per_copy"), "{:.2f}", "lower"),
        ("", "time until every occupant has a round, p50, ms", scen,
         lambda r: get(r, "run", "results", "completion_ms", "p50"), "{:.2f}", "lower"),
        ("", "one copy's delivery, p99 (rounds 100 ms apart), ms", scen,
         lambda r: get(r, "run", "results", "delivery_ms", "p99"), "{:.2f}", "lower"),
        ("", "server KiB per occupant (RSS growth while joining)", scen,
         lambda r: get(r, "run", "results", "server_kib_per_occupant"), "{:.2f}", "lower"),
    ]
ROWS += [
    ("PEP (XEP-0163), one publisher", "time until the last contact has a publish, p50, ms", "pep",
     if_supported(lambda r: get(r, "run", "results", "completion_ms", "p50")), "{:.2f}", "lower"),
    ("", "same, p99, ms", "pep",
     if_supported(lambda r: get(r, "run", "results", "completion_ms", "p99")), "{:.2f}", "lower"),
    ("", "publisher's IQ result, p50, ms", "pep",
     if_supported(lambda r: get(r, "run", "results", "iq_result_ms", "p50")), "{:.2f}", "lower"),
    ("", "server CPU ms per publish", "pep",
     if_supported(lambda r: get(r, "run", "results", "server_cpu_ms_per_publish")), "{:.2f}", "lower"),
    ("", "notifications per server CPU-second", "pep",
     if_supported(lambda r: get(r, "run", "results", "notifications_per_server_cpu_s")), "{:.0f}", "higher"),
    ("", "contacts a publish reached (of all online)", "pep",
     if_supported(lambda r: get(r, "run", "results", "contacts_notified")), "{:.0f}", "higher"),
]

# The web transports, in the clear (ws://, http://).
ROWS += [
    ("Login storm, SCRAM-SHA-1 over WebSocket (ws://)", "logins/s", "ws-login",
     lambda r: get(r, "run", "results", "logins_per_s"), "{:.0f}", "higher"),
    ("", "server CPU ms per login (incl. logout)", "ws-login",
     lambda r: get(r, "run", "results", "server_cpu_ms_per_login"), "{:.2f}", "lower"),
    ("", "login latency p99, ms", "ws-login",
     lambda r: get(r, "run", "results", "latency_ms", "p99"), "{:.1f}", "lower"),
    ("Idle authenticated WebSocket sessions (ws://)", "sessions held", "ws-idle", idle_sessions,
     "{:.0f}", "higher"),
    ("", "server KiB per session (RSS)", "ws-idle", idle_kib, "{:.1f}", "lower"),
    ("BOSH round trip at a fixed rate (http://)", "pings answered per s", "bosh-rtt",
     lambda r: get(r, "run", "results", "achieved_pings_per_s"), "{:.0f}", ""),
    ("", "round trip p50, ms", "bosh-rtt",
     lambda r: get(r, "run", "results", "latency_ms", "p50"), "{:.3f}", "lower"),
    ("", "round trip p90, ms", "bosh-rtt",
     lambda r: get(r, "run", "results", "latency_ms", "p90"), "{:.3f}", "lower"),
    ("", "round trip p99, ms", "bosh-rtt",
     lambda r: get(r, "run", "results", "latency_ms", "p99"), "{:.3f}", "lower"),
    ("", "round trip max, ms", "bosh-rtt",
     lambda r: get(r, "run", "results", "latency_ms", "max"), "{:.2f}", "lower"),
    ("", "server CPU ms per ping", "bosh-rtt",
     lambda r: get(r, "run", "results", "server_cpu_ms_per_ping"), "{:.3f}", "lower"),
    ("", "unanswered pings", "bosh-rtt",
     lambda r: get(r, "run", "results", "lost"), "{:.0f}", "lower"),
]


def fmt_cell(vals, f):
    nums = [v for v in vals if isinstance(v, (int, float))]
    if not nums:
        if any(v == "unsupported" for v in vals):
            return "not yet supported", None
        return "—", None
    med = statistics.median(nums)
    cell = f.format(med)
    if len(nums) > 1:
        cell += f" ({f.format(min(nums))}–{f.format(max(nums))})"
    return cell, med


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    meta = json.loads((out / "meta.json").read_text())
    recs = []
    for line in (out / "raw.jsonl").read_text().splitlines():
        line = line.strip()
        if line:
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    servers = [s for s in SERVERS if any(r["server"] == s for r in recs)]
    v = meta.get("versions", {})
    print(f"Run {meta.get('date')} on {meta.get('nproc')} × {meta.get('cpu_model')} "
          f"(kernel {meta.get('kernel')}); `{meta.get('command')}`")
    if v.get("rookery_base") not in (None, "none"):
        print(f"Rookery (baseline) is commit {v.get('rookery_base')}, built beside this one in the same run.")
    print(f"Rookery {v.get('rookery')}, ejabberd {v.get('ejabberd')} (Erlang {v.get('erlang')}), "
          f"Prosody {v.get('prosody')} (Lua {v.get('lua')}). Servers pinned to CPU 0, generator "
          f"to CPU 1; autogroup nice {meta.get('priority')}; fixed-rate scenario under SCHED_FIFO: "
          f"{'yes' if meta.get('realtime_rate') == 1 else 'no'}; certificate "
          f"{CERT_NAMES.get(meta.get('cert_kind', 'ecdsa'), meta.get('cert_kind'))}. Median (min–max) of "
          f"{meta.get('reps')} repetition(s); ratio = server / Rookery (archive-on servers: "
          f"/ Rookery as shipped).")
    print()
    cols = ["scenario", "figure"]
    for s in servers:
        cols.append(NAMES[s])
        if s != reference(s) and reference(s) in servers:
            cols.append(f"{NAMES[s]} / {NAMES[reference(s)]}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    section_seen = set()
    for section, label, scen, fn, f, _better in ROWS:
        if not any(r["scenario"] == scen for r in recs):
            continue
        cells = {}
        for s in servers:
            vals = []
            for r in recs:
                if r["server"] == s and r["scenario"] == scen:
                    try:
                        vals.append(fn(r))
                    except (TypeError, ZeroDivisionError):
                        vals.append(None)
            cells[s] = fmt_cell(vals, f)
        title = section if section and section not in section_seen else ""
        if section:
            section_seen.add(section)
        row = [f"**{title}**" if title else "", label]
        for s in servers:
            row.append(cells[s][0])
            if s != reference(s) and reference(s) in servers:
                base = cells[reference(s)][1]
                m = cells[s][1]
                row.append(f"{m / base:.2f}" if m is not None and base else "—")
        print("| " + " | ".join(row) + " |")

    # Failures and conditions.
    print()
    loads = []
    notes = []
    for r in recs:
        for k in ("loadavg_before", "loadavg_after"):
            try:
                loads.append(float(str(r.get(k, "")).split()[0]))
            except (ValueError, IndexError):
                pass
        runs = r.get("runs") if "runs" in r else [r.get("run")]
        for run in runs or []:
            if run is None:
                notes.append(f"{r['server']} {r['scenario']} #{r.get('rep')}: no output from the generator")
                continue
            if not run.get("ok") and not r["scenario"].endswith("idle-warmup"):
                if get(run, "results", "supported") is False:
                    notes.append(f"{r['server']} {r['scenario']}: not supported "
                                 f"({get(run, 'results', 'reason')})")
                    continue
                errs = get(run, "errors", "by_kind") or {}
                first = (get(run, "errors", "samples") or [""])[0]
                notes.append(f"{r['server']} {r['scenario']} #{r.get('rep')}: errors {errs} {first}")
    if loads:
        print(f"Load average (1 min) seen during the runs: {min(loads):.2f}–{max(loads):.2f} "
              f"on {meta.get('nproc')} CPUs (the benchmark's own processes included).")
    seen = set()
    for n in notes:
        if n not in seen:
            seen.add(n)
            print(f"- {n}")


if __name__ == "__main__":
    main()
