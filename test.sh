#!/usr/bin/env bash
# Rookery's whole test suite: formatting, lints, unit tests, build, interop tests.
#
#   ./test.sh                 run everything
#   ./test.sh -k login -x     extra arguments go to pytest (interop phase)
#
# Needs Rust (cargo with rustfmt and clippy) and Python 3.10 or newer (python3 -m venv);
# the Python packages for the interop tests are installed into .venv, and with apt-get
# when they are missing, the Debian packages of the clients the README's recipes use
# (go-sendxmpp, profanity, tmux), of the browser tests (chromium) and of the federation
# peers (prosody, lua-unbound, ejabberd; run as private instances, never as services) and
# PostgreSQL (installed before cargo test: the PostgreSQL backend's tests start their own). The browser tests' Converse.js comes
# from the npm registry into tests/interop/browser/node_modules (browser/install.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/interop/requirements.txt"
STAMP="$VENV/.requirements.sha256"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export ROOKERY_BIN="${ROOKERY_BIN:-$TARGET_DIR/debug/rookery}"
export ROOKERY_LOAD_BIN="${ROOKERY_LOAD_BIN:-$TARGET_DIR/debug/rookery-load}"

CURRENT_PHASE=""
on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && -n "$CURRENT_PHASE" ]]; then
        echo >&2
        echo "test.sh: FAILED in phase: $CURRENT_PHASE (exit $rc)" >&2
    fi
}
trap on_exit EXIT

phase() {
    CURRENT_PHASE="$1"
    echo
    echo "==> $CURRENT_PHASE"
}

phase "cargo fmt"
cargo fmt --all -- --check

phase "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

phase "Debian packages"
# Debian packages, each named by the command it provides (openssl: s_client, a second TLS
# implementation against the server's record layer, test_tls_openssl.py).
CLIENT_PACKAGES=(go-sendxmpp profanity tmux chromium openssl)
# systemd-analyze (package systemd) checks contrib/systemd/rookery.service.
missing_tools=()
[[ -x /usr/bin/systemd-analyze ]] || missing_tools=(systemd)
# The federation peers (tests/interop/federation.py), checked by package name: Prosody with
# lua-unbound (its resolver, pointed at the tests' own DNS server) and ejabberd; coturn, the TURN
# server of the XEP-0215 tests.
PEER_PACKAGES=(prosody lua-unbound ejabberd coturn)
# PostgreSQL: the storage-postgres crate's tests and test_postgresql.py each run their own
# server from a temporary directory (initdb + pg_ctl), so it is installed before cargo test.
SERVER_PACKAGES=(postgresql)
missing=("${missing_tools[@]}")
for pkg in "${CLIENT_PACKAGES[@]}"; do
    command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
for pkg in "${PEER_PACKAGES[@]}" "${SERVER_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q ' installed$' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} (Debian packages)"
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    # No system service may start from these packages (one taking port 5222 would break
    # test_readme.py, a PostgreSQL cluster would hold port 5432): Debian's policy-rc.d protocol, for the install only.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    installed=0
    { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; } && installed=1
    ((made_policy)) && "${SUDO[@]}" rm -f "$policy"
    if ((!installed)); then
        echo "could not install ${missing[*]} with apt-get; install them and run again" >&2
        exit 1
    fi
else
    echo "${CLIENT_PACKAGES[*]} ${PEER_PACKAGES[*]} ${SERVER_PACKAGES[*]} present"
fi

phase "cargo test"
cargo test --workspace

phase "cargo build"
cargo build --workspace
if [[ ! -x "$ROOKERY_BIN" ]]; then
    echo "rookery binary not found at $ROOKERY_BIN after the build" >&2
    exit 1
fi

phase "browser client (Converse.js)"
"$ROOT/tests/interop/browser/install.sh"

phase "python venv"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "the interop tests need Python 3.10 or newer ('$PYTHON' is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "could not create a venv with '$PYTHON -m venv' (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    echo "installing interop test requirements"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want" >"$STAMP"
else
    echo "requirements unchanged"
fi

phase "interop tests (pytest)"
"$VENV/bin/python" -m pytest "$ROOT/tests/interop" "$@"

phase "fuzz smoke run (${FUZZ_SECONDS:-10}s per target)"
"$ROOT/fuzz/run.sh" "${FUZZ_SECONDS:-10}"

CURRENT_PHASE=""
echo
echo "test.sh: all phases passed"
