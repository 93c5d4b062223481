#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, starting from the seeds in fuzz/seeds.
#
#   fuzz/run.sh            each target for 10 seconds (the test suite's smoke run)
#   fuzz/run.sh 600        each target for 10 minutes
#   fuzz/run.sh 60 sasl    one target
#
# A crash leaves its input in fuzz/artifacts/<target>/; turn it into a regression test named
# after what it found, next to the code it broke.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-10}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(xml_stream stanza jid sasl config)
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
# cargo-fuzz passes nightly-only sanitizer flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "fuzzing $t for ${seconds}s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "^(Done|stat::number_of_executed_units)|ERROR|panicked|SUMMARY" || true
    if [[ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]]; then
        echo "fuzz/run.sh: $t found a crash: $(ls "artifacts/$t")" >&2
        exit 1
    fi
done
echo "fuzz/run.sh: all targets ran clean"
