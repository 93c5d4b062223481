#!/usr/bin/env bash
# Installs what the browser interop tests (test_browser.py) load into Chromium: the
# converse.js package from the npm registry, at the version pinned below, unpacked into
# tests/interop/browser/node_modules/converse.js (git-ignored). Installs npm with apt-get
# when it is missing. Does nothing when that version is already there.
#
#   tests/interop/browser/install.sh
set -euo pipefail

CONVERSE_VERSION="14.0.0"
# The tarball's integrity as the registry lists it (`npm view converse.js@VERSION dist.integrity`).
CONVERSE_INTEGRITY="sha512-LFUg030jDalV47vI/vyVPqYPZfJYXFbubq8v0cFDe2zXNeeGEk3Up0Fj/WTzT6t+6do+cAIToy73eAj7RNDj2Q=="

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="$HERE/node_modules/converse.js"
STAMP="$DEST/.installed-integrity"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$CONVERSE_INTEGRITY" && -f "$DEST/dist/converse.min.js" ]]; then
    echo "converse.js $CONVERSE_VERSION present"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "installing npm (Debian packages npm, nodejs)"
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    if ! { "${SUDO[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq npm nodejs >/dev/null; }; then
        echo "could not install npm with apt-get; install it and run again" >&2
        exit 1
    fi
fi

echo "fetching converse.js $CONVERSE_VERSION with npm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `npm pack` fetches the package's own tarball (checked against the registry's integrity)
# and none of its dependencies: the files under dist/ are self-contained.
(cd "$work" && npm pack --silent --json "converse.js@$CONVERSE_VERSION" >pack.json)
tarball="$(cd "$work" && ls converse.js-*.tgz)"
got="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0].integrity)' "$work/pack.json")"
if [[ "$got" != "$CONVERSE_INTEGRITY" ]]; then
    echo "converse.js $CONVERSE_VERSION: integrity $got, expected $CONVERSE_INTEGRITY" >&2
    exit 1
fi
mkdir -p "$work/unpacked"
tar -xzf "$work/$tarball" -C "$work/unpacked" --strip-components=1 --no-same-owner
echo "$CONVERSE_INTEGRITY" >"$work/unpacked/.installed-integrity"

mkdir -p "$HERE/node_modules"
rm -rf "$DEST.old"
[[ -e "$DEST" ]] && mv "$DEST" "$DEST.old"
mv "$work/unpacked" "$DEST"
rm -rf "$DEST.old"
echo "converse.js $CONVERSE_VERSION installed in $DEST"
