#!/usr/bin/env bash
# Runs the same load scenarios against Rookery, ejabberd and Prosody on this machine and
# prints a side-by-side Markdown table (medians, min–max spreads, ratio to Rookery).
#
#   bench/run.sh                   full run (about 25 minutes on 2 cores)
#   bench/run.sh --quick           small counts, one repetition (a few minutes)
#   bench/run.sh --reps 5 --servers "rookery ejabberd" --scenarios "messages rate"
#   bench/run.sh --baseline main~3 --servers "rookery"   this build beside an older commit
#   bench/run.sh --servers "rookery-mam ejabberd-mam prosody-mam"   archive on: Rookery as
#                                  shipped (its default modules) beside ejabberd with mod_mam
#                                  and Prosody with mam, each on its default archive store
#   bench/run.sh --servers "rookery-mam rookery-pg" --scenarios "messages"   the message path
#                                  with the archive on SQLite and on PostgreSQL (a private
#                                  PostgreSQL server the script starts, fsync on)
#   bench/run.sh --scenarios "ws-login ws-idle bosh-rtt"   the web transports (WebSocket, BOSH)
#
# The web-transport scenarios (ws-login, ws-idle, bosh-rtt) use each server's plain HTTP
# listener (ws://, http://), set up as behind a reverse proxy that terminated TLS (see the
# templates); they are not in the default list.
#   bench/run.sh --servers "" --pairs "rookery-rookery rookery-ejabberd ejabberd-ejabberd"
#                                  federation: pairs of servers messaging each other (s2s)
#   bench/run.sh --servers "" --turn   the built-in TURN server beside coturn (relay throughput)
#   bench/run.sh --servers "" --storage   archive appends and MAM pages over 100k messages,
#                                  SQLite beside PostgreSQL (a private PostgreSQL server, fsync on)
#
# Each server runs as its own process from a private configuration and data directory under
# a temporary directory, on its own loopback ports, pinned to CPU 0; the load generator
# (crates/loadgen, `rookery-load`) is pinned to CPU 1. The system ejabberd and Prosody
# services are never used: if installing the packages started them, they are stopped.
# Needs root (apt-get, running ejabberd and Prosody as their own users), Rust, Python 3.
#
# Output: the table on stdout and in OUT/table.md, raw JSON lines (one per generator run,
# wrapped with the server's /proc figures) in OUT/raw.jsonl, logs in OUT/logs/; federation
# pairs: their table appended to OUT/table.md, raw runs in OUT/raw-s2s.jsonl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
TEMPLATES="$BENCH/templates"

# ---- Parameters (environment variables override the defaults; --quick lowers them) -------
REPS="${REPS:-3}"
SERVERS="${SERVERS:-rookery ejabberd prosody}"
SCENARIOS="${SCENARIOS:-login login-plain idle messages rate fanout muc pep}"
DOMAIN="${DOMAIN:-localhost}"
# The one certificate all servers are given (self-signed, for DOMAIN): ecdsa (P-256, what
# current deployments and ACME clients issue by default) or rsa (RSA-2048). The signature
# in each full TLS handshake is a large part of a login's cost with RSA, a small one with
# ECDSA, so login figures name the kind (BENCHMARKS.md, "Logins by certificate kind").
CERT_KIND="${CERT_KIND:-ecdsa}"
LOGIN_COUNT="${LOGIN_COUNT:-2000}"       # logins per login run
LOGIN_USERS="${LOGIN_USERS:-1000}"       # accounts the logins cycle through
LOGIN_CONC="${LOGIN_CONC:-50}"
IDLE_COUNT="${IDLE_COUNT:-19000}"        # sessions held (the server may hold 20,000 files)
IDLE_PROCS="${IDLE_PROCS:-2}"            # generator processes sharing them (own file limits)
IDLE_REPS="${IDLE_REPS:-1}"
MSG_PAIRS="${MSG_PAIRS:-500}"
MSG_DURATION="${MSG_DURATION:-10}"
MSG_WINDOW="${MSG_WINDOW:-16}"
RATE="${RATE:-2000}"
RATE_PAIRS="${RATE_PAIRS:-100}"
RATE_DURATION="${RATE_DURATION:-10}"
FANOUT_CONTACTS="${FANOUT_CONTACTS:-1000}"
FANOUT_REPEATS="${FANOUT_REPEATS:-50}"
FANOUT_BASE="${FANOUT_BASE:-100000}"     # fan-out accounts are numbered from here
MUC_BIG="${MUC_BIG:-1000}"               # occupants of the one big room (muc-big)
MUC_ROOMS="${MUC_ROOMS:-20}"             # rooms of MUC_OCCUPANTS occupants (muc-rooms)
MUC_OCCUPANTS="${MUC_OCCUPANTS:-50}"
MUC_REPEATS="${MUC_REPEATS:-50}"
PEP_CONTACTS="${PEP_CONTACTS:-500}"      # contacts of the PEP publisher
PEP_REPEATS="${PEP_REPEATS:-50}"         # publishes measured
PEP_BASE="${PEP_BASE:-200000}"           # PEP accounts (publisher, contacts) are numbered from here
WS_LOGIN_COUNT="${WS_LOGIN_COUNT:-$LOGIN_COUNT}"  # WebSocket logins per ws-login run
WS_IDLE_COUNT="${WS_IDLE_COUNT:-10000}"  # WebSocket sessions held (ws-idle)
BOSH_SESSIONS="${BOSH_SESSIONS:-100}"    # BOSH sessions (bosh-rtt)
BOSH_RATE="${BOSH_RATE:-200}"            # pings per second over all of them
BOSH_DURATION="${BOSH_DURATION:-10}"
# Federation pairs (--pairs; none by default): "A-B" with A, B among rookery ejabberd prosody.
PAIRS="${PAIRS:-}"
TURN=0                                   # --turn: bench/turn_relay.py, Rookery's TURN and coturn
TURN_SESSIONS="${TURN_SESSIONS:-50}"     # allocation pairs (turnutils_uclient -m)
TURN_MESSAGES="${TURN_MESSAGES:-4000}"   # datagrams each client sends
TURN_LENGTH="${TURN_LENGTH:-1200}"       # bytes per datagram
STORAGE=0                                # --storage: the storage backends' archive benchmark
BENCH_MESSAGES="${BENCH_MESSAGES:-100000}"  # messages archived (twice each) by --storage
BENCH_WRITERS="${BENCH_WRITERS:-64}"     # concurrent writers (sessions) of --storage
BENCH_QUERIES="${BENCH_QUERIES:-200}"    # queries of each page kind of --storage
S2S_MSG_PAIRS="${S2S_MSG_PAIRS:-100}"   # account pairs (on server A and on server B) per run
S2S_DURATION="${S2S_DURATION:-10}"
S2S_WINDOW="${S2S_WINDOW:-16}"         # messages in flight per direction, flat out
S2S_RATE="${S2S_RATE:-1000}"           # the fixed-rate run's msg/s (0: no fixed-rate run)
S2S_CPUS="${S2S_CPUS:-shared}"         # shared: both servers CPU 0, generator CPU 1;
                                       # split: server A CPU 0, server B CPU 1, generator unpinned
PRIORITY="${PRIORITY:--10}"              # autogroup nice of the benchmark processes
REALTIME="${REALTIME:-1}"                # rate scenario under SCHED_FIFO (see below)
INSTALL=1
KEEP=0
OUT=""
QUICK=0
BASELINE=

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --quick               small counts, 1 repetition
  --reps N              repetitions per scenario and server (default $REPS)
  --servers "LIST"      among: rookery ejabberd prosody (the benchmark module sets: no
                        archive), rookery-mam ejabberd-mam prosody-mam (archive on: Rookery
                        as shipped, ejabberd with mod_mam, Prosody with mam), rookery-pg
                        (Rookery as shipped on a private PostgreSQL server: needs Debian's
                        postgresql package)
  --scenarios "LIST"    among: login login-plain login-tcp idle messages rate fanout muc pep
                        ws-login ws-idle bosh-rtt
  --pairs "LIST"        federation pairs A-B (A, B among rookery ejabberd prosody), run after
                        the single servers by bench/s2s_pairs.py (see BENCHMARKS.md, Federation)
  --turn                the TURN relay: Rookery's built-in server beside coturn, both driven by
                        turnutils_uclient (bench/turn_relay.py; see BENCHMARKS.md, TURN relay)
  --storage             the archive at the storage level: appends of the message path and MAM
                        pages over BENCH_MESSAGES messages, SQLite beside PostgreSQL (with and
                        without group commit), one run (crates/storage-postgres/tests/bench.rs;
                        needs Debian's postgresql package; see BENCHMARKS.md, Storage backends)
  --out DIR             results directory (default bench/results/DATE)
  --no-install          do not apt-get install missing servers (skip them instead)
  --no-priority         do not raise the benchmark's CPU priority (autogroup nice)
  --no-realtime         run the latency (rate) scenario without SCHED_FIFO
  --keep                keep the temporary server directories
  --baseline REV        also build the commit REV (in a temporary git worktree) and run it as
                        the server "rookery-base", right after "rookery", for before/after
                        figures from one run
Counts come from environment variables: LOGIN_COUNT LOGIN_USERS LOGIN_CONC IDLE_COUNT
IDLE_PROCS IDLE_REPS CERT_KIND MSG_PAIRS MSG_DURATION MSG_WINDOW RATE RATE_PAIRS RATE_DURATION
FANOUT_CONTACTS FANOUT_REPEATS MUC_BIG MUC_ROOMS MUC_OCCUPANTS MUC_REPEATS PEP_CONTACTS
PEP_REPEATS WS_LOGIN_COUNT WS_IDLE_COUNT BOSH_SESSIONS BOSH_RATE BOSH_DURATION S2S_MSG_PAIRS
S2S_DURATION S2S_WINDOW S2S_RATE S2S_CPUS TURN_SESSIONS TURN_MESSAGES TURN_LENGTH (see the
top of this script for defaults).
EOF
}

ARGS_GIVEN="$*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --reps) REPS="$2"; IDLE_REPS="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --scenarios) SCENARIOS="$2"; shift 2 ;;
        --pairs) PAIRS="$2"; shift 2 ;;
        --turn) TURN=1; shift ;;
        --storage) STORAGE=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --no-priority) PRIORITY=""; shift ;;
        --no-realtime) REALTIME=0; shift ;;
        --keep) KEEP=1; shift ;;
        --baseline) BASELINE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    REPS=1; IDLE_REPS=1
    LOGIN_COUNT=1000; LOGIN_USERS=300
    IDLE_COUNT=2000; IDLE_PROCS=1
    MSG_PAIRS=100; MSG_DURATION=5
    RATE_PAIRS=50; RATE_DURATION=5
    FANOUT_CONTACTS=200; FANOUT_REPEATS=20
    MUC_BIG=200; MUC_ROOMS=10; MUC_OCCUPANTS=20; MUC_REPEATS=20
    PEP_CONTACTS=200; PEP_REPEATS=20
    WS_LOGIN_COUNT=1000; WS_IDLE_COUNT=2000
    BOSH_SESSIONS=50; BOSH_DURATION=5
    S2S_MSG_PAIRS=20; S2S_DURATION=5
fi

[[ $(id -u) == 0 ]] || { echo "run.sh needs root (apt-get, private ejabberd/Prosody instances)" >&2; exit 2; }
for tool in taskset openssl python3 cargo getconf; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$BENCH/results/$STAMP}"
mkdir -p "$OUT/logs"
RAW="$OUT/raw.jsonl"
: >"$RAW"
WORK="$(mktemp -d /tmp/rookery-bench.XXXXXX)"
chmod 755 "$WORK"
CLK_TCK="$(getconf CLK_TCK)"
SERVER_PID=""
SERVER_NAME=""
GEN_PIDS=()
GEN_PREFIX=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- Priority: the machine may be shared; give the benchmark's session more CPU weight -----
OLD_AUTOGROUP_NICE=""
if [[ -n "$PRIORITY" && -w /proc/$$/autogroup ]]; then
    OLD_AUTOGROUP_NICE="$(awk '{print $3}' /proc/$$/autogroup)"
    echo "$PRIORITY" >/proc/$$/autogroup 2>/dev/null || OLD_AUTOGROUP_NICE=""
fi

cleanup() {
    local rc=$?
    for p in "${GEN_PIDS[@]:-}"; do
        [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
    done
    stop_server || true
    declare -F stop_postgres >/dev/null && stop_postgres
    # Prosody writes its own log file (warnings and errors) in its private directory.
    local p
    for p in prosody prosody-mam; do
        if [[ -f "$WORK/$p/prosody.log" ]]; then
            cp "$WORK/$p/prosody.log" "$OUT/logs/$p-own.log" 2>/dev/null || true
        fi
    done
    if [[ -n "$OLD_AUTOGROUP_NICE" ]]; then
        echo "$OLD_AUTOGROUP_NICE" >/proc/$$/autogroup 2>/dev/null || true
    fi
    if [[ $KEEP == 0 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'echo "run.sh: command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM

# ---- Installation --------------------------------------------------------------------------
service_running() { # name
    case "$1" in
        ejabberd) ejabberdctl status >/dev/null 2>&1 ;;
        prosody) [[ -f /run/prosody/prosody.pid ]] && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null ;;
    esac
}

install_servers() {
    local missing=()
    [[ " $SERVERS $PAIRS " == *ejabberd* ]] && ! command -v ejabberdctl >/dev/null && missing+=(ejabberd)
    [[ " $SERVERS $PAIRS " == *prosody* ]] && ! command -v prosody >/dev/null && missing+=(prosody)
    # Federation pairs with Prosody: it resolves the test domains through lua-unbound.
    [[ " $PAIRS " == *prosody* ]] && ! lua5.4 -e 'require "lunbound"' >/dev/null 2>&1 && missing+=(lua-unbound)
    [[ $TURN == 1 ]] && ! command -v turnserver >/dev/null && missing+=(coturn)
    [[ $STORAGE == 1 || " $SERVERS " == *" rookery-pg "* ]] \
        && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && missing+=(postgresql)
    [[ ${#missing[@]} == 0 ]] && return 0
    if [[ $INSTALL == 0 ]]; then
        log "not installed: ${missing[*]} (skipped, --no-install)"
        for m in "${missing[@]}"; do SERVERS="${SERVERS//$m/}"; done
        [[ " ${missing[*]} " == *" coturn "* ]] && TURN=0
        if [[ " ${missing[*]} " == *" postgresql "* ]]; then STORAGE=0; SERVERS="${SERVERS//rookery-pg/}"; fi
        return 0
    fi
    log "installing ${missing[*]} from Debian"
    # Keep the packages from starting their system services (Debian's policy-rc.d protocol).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made_policy=1
    fi
    apt-get update >"$OUT/logs/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$OUT/logs/apt.log" 2>&1
    [[ $made_policy == 1 ]] && rm -f "$policy"
    for m in "${missing[@]}"; do
        if service_running "$m"; then
            log "the $m package started its system service: stopping it"
            service "$m" stop >>"$OUT/logs/apt.log" 2>&1 || true
        fi
    done
}

# ---- Build -----------------------------------------------------------------------------------
build() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    # The server only when it is measured: a run against the others needs just the generator.
    local pkgs=(-p rookery-loadgen)
    [[ " $SERVERS " == *" rookery"* || " $PAIRS " == *rookery* || $TURN == 1 ]] && pkgs=(-p rookery "${pkgs[@]}")
    log "building ${pkgs[*]//-p /} (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release "${pkgs[@]}") >"$OUT/logs/build.log" 2>&1 \
        || { tail -30 "$OUT/logs/build.log" >&2; exit 1; }
    ROOKERY_BIN="$CARGO_TARGET_DIR/release/rookery"
    LOADGEN="$CARGO_TARGET_DIR/release/rookery-load"
    if [[ -n "$BASELINE" ]]; then
        # The older commit is built from its own worktree into its own target directory, so
        # both builds stay cached between runs; the load generator is always this one's.
        local src="$WORK/baseline-src" base_target="$ROOT/target/bench-baseline"
        BASELINE_REV="$(cd "$ROOT" && git rev-parse --short "$BASELINE")"
        log "building the baseline $BASELINE ($BASELINE_REV) into $base_target"
        (cd "$ROOT" && git worktree add --detach "$src" "$BASELINE_REV") >>"$OUT/logs/build.log" 2>&1
        (cd "$src" && CARGO_TARGET_DIR="$base_target" cargo build --release -p rookery) \
            >>"$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log" >&2; exit 1; }
        # The older commit runs with its own configuration template: a newer one may set
        # keys (a module's section) that it does not know and would refuse.
        mkdir -p "$WORK/baseline-templates"
        cp "$src/bench/templates/rookery.toml" "$WORK/baseline-templates/" 2>/dev/null \
            || cp "$TEMPLATES/rookery.toml" "$WORK/baseline-templates/"
        (cd "$ROOT" && git worktree remove --force "$src") >>"$OUT/logs/build.log" 2>&1 || true
        ROOKERY_BASE_BIN="$base_target/release/rookery"
        if [[ " $SERVERS " == *" rookery "* ]]; then
            SERVERS="${SERVERS/rookery/rookery rookery-base}"
        else
            SERVERS="rookery-base $SERVERS"
        fi
    fi
}

# ---- Servers ---------------------------------------------------------------------------------
# Ports: Rookery 15222/15223, ejabberd 25222/25223 (+25299 Erlang distribution),
# Prosody 31222/31223; each one's plain HTTP (WebSocket, BOSH) on the c2s port + 2 (15224...).
# Port numbers are checked free before each start.
# The archive-on variants (rookery-mam, ejabberd-mam, prosody-mam) use the c2s port + 1000;
# rookery-pg 17222, and its PostgreSQL server 17299; rookery-base 18222.
port_of() {
    case "$1" in
        # All below Linux's ephemeral range (32768 and up by default): after an idle run's
        # 19,000 connections, a port in that range may be held by one of the generator's
        # closed connections in TIME_WAIT, and the next server could not listen on it.
        rookery) echo 15222 ;; ejabberd) echo 25222 ;; prosody) echo 31222 ;; rookery-base) echo 18222 ;;
        rookery-mam) echo 16222 ;; ejabberd-mam) echo 26222 ;; prosody-mam) echo 32222 ;;
        rookery-pg) echo 17222 ;;
    esac
}
# The server software a name runs (rookery-base and rookery-mam are Rookery).
kind_of() { case "$1" in rookery*) echo rookery ;; ejabberd*) echo ejabberd ;; prosody*) echo prosody ;; esac; }
rookery_bin_of() { if [[ "$1" == rookery-base ]]; then echo "$ROOKERY_BASE_BIN"; else echo "$ROOKERY_BIN"; fi; }
EJ_NODE="rkbench$$@localhost"
EJ_DIST_PORT=25299

render() { # template output DIR
    sed -e "s|@DIR@|$3|g; s|@DOMAIN@|$DOMAIN|g; s|@CERT@|$WORK/cert.pem|g; s|@KEY@|$WORK/key.pem|g" \
        -e "s|@CERTFILE@|$WORK/server.pem|g; s|@NODE@|$EJ_NODE|g; s|@DIST_PORT@|$EJ_DIST_PORT|g" \
        -e "s|@ERL_WRAPPER@|$3/erl-wrapper|g; s|@PORT_C2S@|$PORT|g; s|@PORT_C2S_TLS@|$((PORT + 1))|g" \
        -e "s|@PORT_HTTP@|$((PORT + 2))|g" \
        "$TEMPLATES/$1" >"$2"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Modules the Rookery template lists that a build may not have yet (they land on other
# branches): left out of that build's configuration, with a note in the log, instead of the
# server refusing to start and every scenario failing. Any other unknown module still
# stops the run (the server's start fails with its message).
ROOKERY_OPTIONAL_MODULES="caps pep"
drop_missing_modules() { # binary config
    local bin="$1" conf="$2" out m _
    for _ in $ROOKERY_OPTIONAL_MODULES; do
        out="$("$bin" check --config "$conf" 2>&1)" && return 0
        m="$(sed -n "s/.*unknown module '\([^']*\)'.*/\1/p" <<<"$out" | head -1)"
        [[ -n "$m" && " $ROOKERY_OPTIONAL_MODULES " == *" $m "* ]] || return 0
        sed -i -E "/^modules = /s/(, *\"$m\"|\"$m\", *)//" "$conf"
        log "$bin has no module '$m': left out of its configuration"
    done
}

prepare_servers() {
    local newkey
    case "$CERT_KIND" in
        ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
        rsa) newkey=(-newkey rsa:2048) ;;
        *) echo "CERT_KIND must be ecdsa or rsa, not '$CERT_KIND'" >&2; exit 2 ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -days 30 \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj "/CN=$DOMAIN" \
        -addext "subjectAltName=DNS:$DOMAIN" >/dev/null 2>&1
    cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/server.pem"
    chmod 644 "$WORK"/*.pem
    local s PORT
    for s in $SERVERS; do
        PORT="$(port_of "$s")"
        local d="$WORK/$s"
        mkdir -p "$d"
        case "$s" in
            rookery)
                render rookery.toml "$d/rookery.toml" "$d"
                drop_missing_modules "$ROOKERY_BIN" "$d/rookery.toml"
                ;;
            rookery-base)
                TEMPLATES="$WORK/baseline-templates" render rookery.toml "$d/rookery.toml" "$d"
                drop_missing_modules "$ROOKERY_BASE_BIN" "$d/rookery.toml"
                ;;
            rookery-mam)
                # As shipped: no `modules` list, so the host runs every module with its
                # defaults (the archive on for every message, carbons, push, stream
                # management...). Room archives stay off, as in ejabberd (a room's `mam`
                # option defaults to false) and Prosody without muc_mam.
                render rookery.toml "$d/rookery.toml" "$d"
                sed -i '/^modules = \[/d' "$d/rookery.toml"
                ;;
            rookery-pg)
                # Rookery as shipped (as rookery-mam) with every store on PostgreSQL: the
                # message path with the archive on PostgreSQL beside rookery-mam's SQLite.
                render rookery.toml "$d/rookery.toml" "$d"
                sed -i '/^modules = \[/d' "$d/rookery.toml"
                start_postgres
                sed -i "s|^backend = \"sqlite\"\$|backend = \"postgresql\"\nurl = \"postgresql://postgres@127.0.0.1:$PG_PORT/rookery?sslmode=disable\"|" \
                    "$d/rookery.toml"
                grep -q '^backend = "postgresql"' "$d/rookery.toml" \
                    || { echo "rookery-pg: [storage] not set" >&2; exit 1; }
                ;;
            ejabberd|ejabberd-mam)
                mkdir -p "$d/conf" "$d/spool" "$d/logs"
                render ejabberd.yml "$d/conf/ejabberd.yml" "$d"
                if [[ $s == ejabberd-mam ]]; then
                    # mod_mam on its default store (Mnesia), archiving every message like
                    # Rookery's default preference (ejabberd's own default is `never`: an
                    # archive nobody writes to).
                    printf '  mod_mam:\n    default: always\n' >>"$d/conf/ejabberd.yml"
                fi
                render ejabberdctl.cfg "$d/conf/ejabberdctl.cfg" "$d"
                : >"$d/conf/inetrc"
                printf '#!/bin/sh\nulimit -n "$(ulimit -Hn)"\nexec /usr/bin/erl "$@"\n' >"$d/erl-wrapper"
                printf '#!/bin/sh\nexec ejabberdctl --config-dir %s/conf --config %s/conf/ejabberd.yml --ctl-config %s/conf/ejabberdctl.cfg --logs %s/logs --spool %s/spool foreground\n' \
                    "$d" "$d" "$d" "$d" "$d" >"$d/start.sh"
                chmod 755 "$d/erl-wrapper" "$d/start.sh"
                chown -R ejabberd: "$d"
                ;;
            prosody|prosody-mam)
                mkdir -p "$d/data" "$d/certs"
                render prosody.cfg.lua "$d/prosody.cfg.lua" "$d"
                if [[ $s == prosody-mam ]]; then
                    # mam on its default store (internal, files), archiving every message
                    # (default_archive_policy = true, the module's default).
                    sed -i 's/^\t"register";$/\t"register";\n\t"mam";/' "$d/prosody.cfg.lua"
                    grep -q '"mam";' "$d/prosody.cfg.lua" || { echo "prosody-mam: mam not added" >&2; exit 1; }
                fi
                chown -R prosody: "$d"
                ;;
        esac
    done
}

# PostgreSQL for rookery-pg: Debian's server binaries run as the `postgres` user from a
# private directory (initdb + pg_ctl, as the storage benchmark does), on loopback port
# PG_PORT, with fsync on (commits cost what they cost in production), for the whole run;
# stopped by cleanup. Rookery reaches it over TCP, as a database on another machine.
PG_PORT=17299
PG_BIN=""
PG_DIR=""
pg_() { local tool="$1"; shift; runuser -u postgres -- "$PG_BIN/$tool" "$@"; }
start_postgres() {
    PG_BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    PG_DIR="$WORK/postgresql"
    mkdir -p "$PG_DIR"
    chown postgres: "$PG_DIR"
    if port_open "$PG_PORT"; then echo "port $PG_PORT is in use: cannot start PostgreSQL" >&2; exit 1; fi
    pg_ initdb -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --locale=C >"$OUT/logs/postgresql-initdb.log" 2>&1
    # max_connections: the pool (16) of the server plus the `user add` processes (4 at once).
    # Pinned to CPU 0 with the server (taskset, inherited by every backend process): the
    # database is part of the server measured, as SQLite is inside rookery-mam's process,
    # and stays off the generator's CPU.
    taskset -c 0 runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=100" start >/dev/null
    pg_ createdb -h 127.0.0.1 -p "$PG_PORT" -U postgres -T template0 rookery
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') started for rookery-pg (port $PG_PORT)"
}
stop_postgres() {
    [[ -z "$PG_DIR" ]] && return 0
    pg_ pg_ctl -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    cp "$PG_DIR/server.log" "$OUT/logs/postgresql.log" 2>/dev/null || true
    PG_DIR=""
}

ejabberdctl_() { # runs ejabberdctl for the ejabberd instance SERVER_NAME (ejabberd, ejabberd-mam)
    local d="$WORK/${SERVER_NAME:-ejabberd}"
    ejabberdctl --config-dir "$d/conf" --config "$d/conf/ejabberd.yml" \
        --ctl-config "$d/conf/ejabberdctl.cfg" --logs "$d/logs" --spool "$d/spool" "$@"
}

start_server() { # name
    local s="$1" d="$WORK/$1" PORT
    PORT="$(port_of "$s")"
    for p in "$PORT" $((PORT + 1)) $((PORT + 2)); do
        if port_open "$p"; then echo "port $p is in use: cannot start $s" >&2; return 1; fi
    done
    local logf="$OUT/logs/$s.log"
    case "$(kind_of "$s")" in
        rookery)
            taskset -c 0 "$(rookery_bin_of "$s")" serve --config "$d/rookery.toml" >>"$logf" 2>&1 &
            SERVER_PID=$!
            ;;
        ejabberd)
            taskset -c 0 "$d/start.sh" >>"$logf" 2>&1 &
            ;;
        prosody)
            taskset -c 0 runuser -u prosody -- sh -c \
                "ulimit -n \"\$(ulimit -Hn)\"; exec prosody --config '$d/prosody.cfg.lua'" >>"$logf" 2>&1 &
            ;;
    esac
    SERVER_NAME="$s"
    local i
    for i in $(seq 1 120); do
        case "$(kind_of "$s")" in
            ejabberd) SERVER_PID="$(pgrep -f "beam.smp.*-sname $EJ_NODE" | head -1 || true)" ;;
            prosody) SERVER_PID="$(pgrep -f "^lua[0-9.]* /usr/bin/prosody --config $d/prosody.cfg.lua" | head -1 || true)" ;;
        esac
        if [[ -n "$SERVER_PID" ]] && port_open "$PORT" && port_open $((PORT + 1)) \
            && { [[ $WEB == 0 ]] || port_open $((PORT + 2)); }; then
            break
        fi
        sleep 0.5
    done
    if [[ -z "$SERVER_PID" ]] || ! port_open "$PORT"; then
        echo "$s did not start (see $logf)" >&2
        return 1
    fi
    if [[ $WEB == 1 ]] && ! port_open $((PORT + 2)); then
        echo "$s does not listen on its HTTP port $((PORT + 2)) (see $logf)" >&2
        return 1
    fi
    if [[ -n "$PRIORITY" ]]; then echo "$PRIORITY" >"/proc/$SERVER_PID/autogroup" 2>/dev/null || true; fi
    log "$s started (pid $SERVER_PID, ports $PORT/$((PORT + 1))/$((PORT + 2)))"
}

stop_server() {
    [[ -z "$SERVER_PID" ]] && return 0
    local pid="$SERVER_PID" s="$SERVER_NAME"
    SERVER_PID=""
    if [[ "$(kind_of "$s")" == ejabberd ]]; then
        SERVER_NAME="$s" ejabberdctl_ stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    else
        kill "$pid" 2>/dev/null || true
    fi
    local i
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

proc_cpu() { # pid -> CPU seconds (utime + stime)
    awk -v tck="$CLK_TCK" '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / tck }' \
        "/proc/$1/stat" 2>/dev/null || echo null
}
proc_rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo null; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- Accounts --------------------------------------------------------------------------------
# Accounts user0..: the login, idle, messages and rate scenarios; userFANOUT_BASE..: the
# fan-out owner and contacts, userPEP_BASE..: the PEP publisher and contacts (their rosters
# stay out of the other scenarios, and out of each other's).
ACCOUNTS_MAIN=$LOGIN_USERS
for n in $((2 * MSG_PAIRS)) $((2 * RATE_PAIRS)) $([[ " $SCENARIOS " == *" idle "* ]] && echo "$IDLE_COUNT") \
    $([[ " $SCENARIOS " == *" ws-idle "* ]] && echo "$WS_IDLE_COUNT") \
    $([[ " $SCENARIOS " == *" bosh-rtt "* ]] && echo "$BOSH_SESSIONS") \
    $([[ " $SCENARIOS " == *" muc "* ]] && echo "$MUC_BIG" "$((MUC_ROOMS * MUC_OCCUPANTS))"); do
    if (( n > ACCOUNTS_MAIN )); then ACCOUNTS_MAIN=$n; fi
done
# Whether a web-transport scenario runs: the servers' HTTP listeners are then checked.
WEB=0
for scen in $SCENARIOS; do
    case "$scen" in ws-*|bosh-*) WEB=1 ;; esac
done
ACCOUNTS_FANOUT=0
[[ " $SCENARIOS " == *" fanout "* ]] && ACCOUNTS_FANOUT=$((FANOUT_CONTACTS + 1))
ACCOUNTS_PEP=0
[[ " $SCENARIOS " == *" pep "* ]] && ACCOUNTS_PEP=$((PEP_CONTACTS + 1))

create_accounts() { # server (running)
    local s="$1" PORT
    PORT="$(port_of "$s")"
    local t0=$SECONDS
    case "$(kind_of "$s")" in
        rookery)
            # One `rookery user add` per account (each derives SCRAM-SHA-1/256/512 records),
            # four at a time.
            {
                seq 0 $((ACCOUNTS_MAIN - 1))
                if [[ $ACCOUNTS_FANOUT -gt 0 ]]; then
                    seq "$FANOUT_BASE" $((FANOUT_BASE + ACCOUNTS_FANOUT - 1))
                fi
                if [[ $ACCOUNTS_PEP -gt 0 ]]; then
                    seq "$PEP_BASE" $((PEP_BASE + ACCOUNTS_PEP - 1))
                fi
            } |
                xargs -P 4 -I{} "$(rookery_bin_of "$s")" user add "user{}@$DOMAIN" --password "password{}" \
                    --config "$WORK/$s/rookery.toml" >/dev/null 2>>"$OUT/logs/accounts-$s.log"
            ;;
        ejabberd|prosody)
            # In-band registration from loopback (allowed by the bench configurations).
            "$LOADGEN" --port "$PORT" --domain "$DOMAIN" --label "$s" register \
                --first 0 --count "$ACCOUNTS_MAIN" --concurrency 16 >>"$OUT/logs/accounts-$s.json" \
                2>>"$OUT/logs/accounts-$s.log"
            if [[ $ACCOUNTS_FANOUT -gt 0 ]]; then
                "$LOADGEN" --port "$PORT" --domain "$DOMAIN" --label "$s" register \
                    --first "$FANOUT_BASE" --count "$ACCOUNTS_FANOUT" --concurrency 16 \
                    >>"$OUT/logs/accounts-$s.json" 2>>"$OUT/logs/accounts-$s.log"
            fi
            if [[ $ACCOUNTS_PEP -gt 0 ]]; then
                "$LOADGEN" --port "$PORT" --domain "$DOMAIN" --label "$s" register \
                    --first "$PEP_BASE" --count "$ACCOUNTS_PEP" --concurrency 16 \
                    >>"$OUT/logs/accounts-$s.json" 2>>"$OUT/logs/accounts-$s.log"
            fi
            ;;
    esac
    log "$s: $ACCOUNTS_MAIN + $ACCOUNTS_FANOUT + $ACCOUNTS_PEP accounts ready in $((SECONDS - t0)) s"
}

# The web endpoints answer: a BOSH session is created with curl (the body must carry a sid)
# and a WebSocket upgrade with the xmpp subprotocol is accepted (101). Run once per server,
# before the scenarios (each of which starts the server afresh).
check_web() { # server (running)
    local s="$1" HPORT out code
    HPORT=$(( $(port_of "$s") + 2 ))
    out="$(curl -sS -m 10 -H 'Content-Type: text/xml; charset=utf-8' -H 'X-Forwarded-Proto: https' \
        -H "Host: $DOMAIN:$HPORT" --data-binary \
        "<body content='text/xml; charset=utf-8' hold='1' rid='1000' to='$DOMAIN' ver='1.6' wait='1' xml:lang='en' xmpp:version='1.0' xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'/>" \
        "http://127.0.0.1:$HPORT/http-bind" 2>&1 || true)"
    echo "$s BOSH check: $out" >>"$OUT/logs/web-check.log"
    if ! grep -q "sid=" <<<"$out"; then
        echo "$s: no BOSH session at http://127.0.0.1:$HPORT/http-bind: $out" >&2
        return 1
    fi
    code="$(curl -sS -m 3 -o /dev/null -w '%{http_code}' --http1.1 -H 'Connection: Upgrade' \
        -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
        -H 'Sec-WebSocket-Protocol: xmpp' -H 'X-Forwarded-Proto: https' -H "Host: $DOMAIN:$HPORT" \
        "http://127.0.0.1:$HPORT/xmpp-websocket" 2>>"$OUT/logs/web-check.log" || true)"
    # (curl then waits on the upgraded connection until -m: its timeout message is expected.)
    echo "$s WebSocket check: HTTP $code" >>"$OUT/logs/web-check.log"
    if [[ "$code" != 101 ]]; then
        echo "$s: no WebSocket upgrade at ws://127.0.0.1:$HPORT/xmpp-websocket (HTTP $code)" >&2
        return 1
    fi
    log "$s: BOSH and WebSocket endpoints answer on port $HPORT"
}

# ---- Running the generator -------------------------------------------------------------------
# gen SERVER SCENARIO REP -- generator arguments: runs one pinned generator and appends its
# JSON, wrapped with the server's /proc figures and the load average, to raw.jsonl.
gen() {
    local s="$1" scen="$2" rep="$3"; shift 4
    local PORT out err cpu0 rss0 cpu1 rss1 la0 la1
    PORT="$(port_of "$s")"
    out="$WORK/gen.json"; err="$OUT/logs/gen-$s-$scen-$rep.log"
    la0="$(loadavg)"; cpu0="$(proc_cpu "$SERVER_PID")"; rss0="$(proc_rss "$SERVER_PID")"
    taskset -c 1 "${GEN_PREFIX[@]}" "$LOADGEN" --port "$PORT" --http-port $((PORT + 2)) --domain "$DOMAIN" \
        --server-pid "$SERVER_PID" --label "$s" "$@" >"$out" 2>"$err" || true
    cpu1="$(proc_cpu "$SERVER_PID")"; rss1="$(proc_rss "$SERVER_PID")"; la1="$(loadavg)"
    [[ -s "$out" ]] || echo 'null' >"$out"
    printf '{"server":"%s","scenario":"%s","rep":%s,"loadavg_before":"%s","loadavg_after":"%s","proc":{"cpu_s_before":%s,"cpu_s_after":%s,"rss_kib_before":%s,"rss_kib_after":%s},"run":%s}\n' \
        "$s" "$scen" "$rep" "$la0" "$la1" "$cpu0" "$cpu1" "$rss0" "$rss1" "$(cat "$out")" >>"$RAW"
    log "$s $scen #$rep: $(tail -1 "$err" | cut -c1-200)"
}

# idle, ws-idle: sessions split over IDLE_PROCS generator processes; the server's RSS is read
# here once all of them report their sessions open.
run_idle() { # server rep scenario (idle, ws-idle) sessions
    local s="$1" rep="$2" scen="$3" IDLE_COUNT="$4" PORT per i rss_base rss_held cpu0 la0
    PORT="$(port_of "$s")"
    per=$(( (IDLE_COUNT + IDLE_PROCS - 1) / IDLE_PROCS ))
    rss_base="$(proc_rss "$SERVER_PID")"; cpu0="$(proc_cpu "$SERVER_PID")"; la0="$(loadavg)"
    rm -f "$WORK"/idle-ready-* "$WORK/idle-release"
    GEN_PIDS=()
    for ((i = 0; i < IDLE_PROCS; i++)); do
        local first=$((i * per)) count=$per
        (( first + count > IDLE_COUNT )) && count=$((IDLE_COUNT - first))
        taskset -c 1 "$LOADGEN" --port "$PORT" --http-port $((PORT + 2)) --domain "$DOMAIN" \
            --server-pid "$SERVER_PID" --label "$s" "$scen" --first "$first" --count "$count" \
            --concurrency 100 --hold 900 \
            --ready-file "$WORK/idle-ready-$i" --release-file "$WORK/idle-release" \
            >"$WORK/idle-$i.json" 2>"$OUT/logs/gen-$s-$scen-$rep-$i.log" &
        GEN_PIDS+=($!)
    done
    local waited=0
    while (( $(ls "$WORK"/idle-ready-* 2>/dev/null | wc -l) < IDLE_PROCS )) && (( waited < 1200 )); do
        sleep 1; waited=$((waited + 1))
    done
    sleep 3 # let the last sessions' presence and pings settle
    rss_held="$(proc_rss "$SERVER_PID")"
    local gen_rss=0
    for p in "${GEN_PIDS[@]}"; do gen_rss=$((gen_rss + $(proc_rss "$p" 2>/dev/null || echo 0))); done
    touch "$WORK/idle-release"
    for p in "${GEN_PIDS[@]}"; do wait "$p" || true; done
    GEN_PIDS=()
    local runs="[" sep=""
    for ((i = 0; i < IDLE_PROCS; i++)); do
        runs+="$sep$(cat "$WORK/idle-$i.json" 2>/dev/null || echo null)"; sep=","
    done
    runs+="]"
    printf '{"server":"%s","scenario":"%s","rep":%s,"loadavg_before":"%s","loadavg_after":"%s","proc":{"cpu_s_before":%s,"cpu_s_after":%s,"rss_kib_before":%s,"rss_kib_held":%s},"generator_rss_kib_held":%s,"runs":%s}\n' \
        "$s" "$scen" "$rep" "$la0" "$(loadavg)" "$cpu0" "$(proc_cpu "$SERVER_PID")" "$rss_base" "$rss_held" "$gen_rss" "$runs" >>"$RAW"
    log "$s $scen #$rep: server RSS $rss_base -> $rss_held KiB with up to $IDLE_COUNT sessions"
}

run_scenario() { # server scenario
    local s="$1" scen="$2" r
    case "$scen" in
        login|login-plain|login-tcp)
            # login-tcp: SCRAM-SHA-1 on the STARTTLS port without STARTTLS (every server's
            # configuration here accepts authentication in the clear; the other scenarios
            # still negotiate TLS): a login's cost apart from the TLS handshake.
            local mech=SCRAM-SHA-1 tls=starttls
            [[ $scen == login-plain ]] && mech=PLAIN
            [[ $scen == login-tcp ]] && tls=none
            for ((r = 1; r <= REPS; r++)); do
                # Each run starts with an untimed warm-up login per account (it also fills
                # the generator's SCRAM key cache, which lives as long as the process).
                gen "$s" "$scen" "$r" -- --tls "$tls" --mechanism "$mech" login --count "$LOGIN_COUNT" \
                    --users "$LOGIN_USERS" --concurrency "$LOGIN_CONC"
            done
            ;;
        idle|ws-idle)
            # Each repetition on a freshly started server: a server keeps the memory of the
            # previous repetition's sessions for reuse (the allocator's, the VM's), which
            # would hide the next one's growth. Warm the server (code loading, caches) so the
            # baseline RSS is not a cold start.
            local count="$IDLE_COUNT" login=login
            [[ $scen == ws-idle ]] && count="$WS_IDLE_COUNT" login=ws-login
            for ((r = 1; r <= IDLE_REPS; r++)); do
                if ((r > 1)); then stop_server; start_server "$s"; fi
                gen "$s" "$scen-warmup" "$r" -- "$login" --count 50 --users 50 --concurrency 10 --no-warmup
                run_idle "$s" "$r" "$scen" "$count"
            done
            ;;
        messages)
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" messages "$r" -- messages --pairs "$MSG_PAIRS" --duration "$MSG_DURATION" \
                    --window "$MSG_WINDOW" --warmup 2 --drain 20 --concurrency 50
            done
            ;;
        rate)
            # Latency at a low, fixed rate is dominated by scheduling delays when other work
            # shares the machine. With REALTIME=1 the server (all its threads) and the
            # generator run under SCHED_FIFO for this scenario only: they use a small
            # fraction of a core here, and the kernel's RT throttling bounds them anyway.
            if [[ $REALTIME == 1 ]] && chrt -a -f -p 10 "$SERVER_PID" >/dev/null 2>&1; then
                GEN_PREFIX=(chrt -f 10)
            fi
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" rate "$r" -- rate --rate "$RATE" --pairs "$RATE_PAIRS" \
                    --duration "$RATE_DURATION" --warmup 2 --drain 20 --concurrency 50
            done
            GEN_PREFIX=()
            ;;
        fanout)
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" fanout "$r" -- fanout --first "$FANOUT_BASE" --contacts "$FANOUT_CONTACTS" \
                    --repeats "$FANOUT_REPEATS" --interval-ms 100 --concurrency 50
            done
            ;;
        muc)
            # One big room, then many small ones; every server with its MUC module (the
            # templates), history and room limits set alike.
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" muc-big "$r" -- muc --rooms 1 --occupants "$MUC_BIG" \
                    --repeats "$MUC_REPEATS" --interval-ms 100 --concurrency 50
                gen "$s" muc-rooms "$r" -- muc --rooms "$MUC_ROOMS" --occupants "$MUC_OCCUPANTS" \
                    --repeats "$MUC_REPEATS" --interval-ms 100 --concurrency 50
            done
            ;;
        pep)
            # Publishes one after the other, each awaited at every contact; the mutual
            # subscriptions are set up by the first run on a server (as for fanout).
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" pep "$r" -- pep --first "$PEP_BASE" --contacts "$PEP_CONTACTS" \
                    --repeats "$PEP_REPEATS" --interval-ms 100 --concurrency 50
            done
            ;;
        ws-login)
            # As login (SCRAM-SHA-1, the same counts), over WebSocket in the clear.
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" ws-login "$r" -- ws-login --count "$WS_LOGIN_COUNT" \
                    --users "$LOGIN_USERS" --concurrency "$LOGIN_CONC"
            done
            ;;
        bosh-rtt)
            # Latency at a fixed rate, so under SCHED_FIFO like the rate scenario.
            if [[ $REALTIME == 1 ]] && chrt -a -f -p 10 "$SERVER_PID" >/dev/null 2>&1; then
                GEN_PREFIX=(chrt -f 10)
            fi
            for ((r = 1; r <= REPS; r++)); do
                gen "$s" bosh-rtt "$r" -- bosh-rtt --sessions "$BOSH_SESSIONS" --rate "$BOSH_RATE" \
                    --duration "$BOSH_DURATION" --warmup 2 --drain 5 --concurrency 20
            done
            GEN_PREFIX=()
            ;;
        *) echo "unknown scenario $scen" >&2; return 1 ;;
    esac
}

# ---- Federation pairs ------------------------------------------------------------------------
# bench/s2s_pairs.py runs each pair (both servers, their DNS server and test CA, accounts, the
# generator's `s2s` scenario) with the federation interop tests' peers (tests/interop/
# federation.py), which need the interop tests' Python packages: a virtual environment is
# made for them (BENCH_VENV, default ROOT/.venv) if python3 lacks them.
run_pairs() {
    local py=python3 check='import sys; sys.path.insert(0, sys.argv[1]); import federation'
    if ! python3 -c "$check" "$ROOT/tests/interop" 2>/dev/null; then
        local venv="${BENCH_VENV:-$ROOT/.venv}"
        if ! "$venv/bin/python" -c "$check" "$ROOT/tests/interop" 2>/dev/null; then
            log "making $venv for bench/s2s_pairs.py (tests/interop/requirements.txt)"
            { python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q \
                -r "$ROOT/tests/interop/requirements.txt"; } >>"$OUT/logs/venv.log" 2>&1
        fi
        py="$venv/bin/python"
    fi
    local cpus=(--cpus-a 0 --cpus-b 0 --cpus-gen 1)
    [[ $S2S_CPUS == split ]] && cpus=(--cpus-a 0 --cpus-b 1 --cpus-gen any)
    log "federation pairs: $PAIRS (CPUs: $S2S_CPUS)"
    "$py" "$BENCH/s2s_pairs.py" run --pairs "$PAIRS" --out "$OUT" --work "$WORK/s2s" \
        --rookery-bin "$ROOKERY_BIN" --loadgen "$LOADGEN" --reps "$REPS" \
        --msg-pairs "$S2S_MSG_PAIRS" --duration "$S2S_DURATION" --window "$S2S_WINDOW" \
        --rate "$S2S_RATE" "${cpus[@]}" ${PRIORITY:+--priority "$PRIORITY"} || true
    "$py" "$BENCH/s2s_pairs.py" report "$OUT" | tee -a "$OUT/table.md"
}

# The TURN relay (--turn): bench/turn_relay.py runs Rookery's built-in server and coturn in
# turn, server on CPU 0 and turnutils_uclient on CPU 1; standard library only.
run_turn() {
    log "TURN relay: Rookery's built-in server and coturn"
    python3 "$BENCH/turn_relay.py" run --rookery-bin "$ROOKERY_BIN" --out "$OUT" --work "$WORK/turn" \
        --reps "$REPS" --sessions "$TURN_SESSIONS" --messages "$TURN_MESSAGES" \
        --length "$TURN_LENGTH" || true
    { echo; echo "TURN relay (bench/turn_relay.py)"; echo; python3 "$BENCH/turn_relay.py" report "$OUT"; } \
        | tee -a "$OUT/table.md"
}

# The storage backends (--storage): the archive benchmark of crates/storage-postgres, which
# starts its own PostgreSQL (initdb + pg_ctl in a temporary directory, fsync on) beside an
# SQLite file, in a release build; its table is appended to table.md.
run_storage() {
    log "storage: SQLite and PostgreSQL archives ($BENCH_MESSAGES messages)"
    (cd "$ROOT" && ROOKERY_PG_FSYNC=1 BENCH_MESSAGES="$BENCH_MESSAGES" BENCH_WRITERS="$BENCH_WRITERS" \
        BENCH_QUERIES="$BENCH_QUERIES" cargo test --release -p rookery-storage-postgres --test bench \
        -- --ignored --nocapture --test-threads 1) 2>"$OUT/logs/storage.err" \
        | grep -E '^(\||[0-9]+ messages|group commit)' | tee "$OUT/storage.md" || true
    { echo; echo "Storage backends (crates/storage-postgres/tests/bench.rs)"; echo; cat "$OUT/storage.md"; } \
        >>"$OUT/table.md"
}

# ---- Main ------------------------------------------------------------------------------------
install_servers
build
prepare_servers

versions() {
    local v
    printf '{"rookery":"%s",' "$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
    printf '"rookery_base":"%s",' "${BASELINE_REV:-none}"
    v="$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo none)"; printf '"ejabberd":"%s",' "$v"
    v="$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo none)"; printf '"prosody":"%s",' "$v"
    v="$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo none)"; printf '"erlang":"%s",' "$v"
    v="$(dpkg-query -W -f='${Version}' lua5.4 2>/dev/null || echo none)"; printf '"lua":"%s"}' "$v"
}
cat >"$OUT/meta.json" <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","nproc":$(nproc),"cpu_model":"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')","kernel":"$(uname -r)","versions":$(versions),"command":"bench/run.sh $ARGS_GIVEN","quick":$QUICK,"reps":$REPS,"priority":"${PRIORITY:-none}","realtime_rate":$REALTIME,"cert_kind":"$CERT_KIND","params":{"login_count":$LOGIN_COUNT,"login_users":$LOGIN_USERS,"login_concurrency":$LOGIN_CONC,"idle_count":$IDLE_COUNT,"idle_procs":$IDLE_PROCS,"msg_pairs":$MSG_PAIRS,"msg_duration":$MSG_DURATION,"msg_window":$MSG_WINDOW,"rate":$RATE,"rate_pairs":$RATE_PAIRS,"rate_duration":$RATE_DURATION,"fanout_contacts":$FANOUT_CONTACTS,"fanout_repeats":$FANOUT_REPEATS,"pep_contacts":$PEP_CONTACTS,"pep_repeats":$PEP_REPEATS,"ws_login_count":$WS_LOGIN_COUNT,"ws_idle_count":$WS_IDLE_COUNT,"bosh_sessions":$BOSH_SESSIONS,"bosh_rate":$BOSH_RATE,"bosh_duration":$BOSH_DURATION}}
EOF
log "results in $OUT (servers: $SERVERS; scenarios: $SCENARIOS; reps: $REPS)"

for s in $SERVERS; do
    # Accounts are created once per server, then every scenario runs on a fresh start.
    start_server "$s"
    [[ $WEB == 1 ]] && check_web "$s"
    create_accounts "$s"
    stop_server
    for scen in $SCENARIOS; do
        start_server "$s"
        run_scenario "$s" "$scen"
        stop_server
    done
done

if [[ -n "${SERVERS// /}" ]]; then
    python3 "$BENCH/report.py" "$OUT" | tee "$OUT/table.md"
fi
if [[ -n "${PAIRS// /}" ]]; then run_pairs; fi
if [[ $TURN == 1 ]]; then run_turn; fi
if [[ $STORAGE == 1 ]]; then run_storage; fi
log "table: $OUT/table.md; raw results: $RAW"
