#!/usr/bin/env bash
# Fuzz softprompt's file readers with cargo-fuzz (libFuzzer + AddressSanitizer), each for a
# bounded time, and print executions and crashes per target.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh -t 600          # 10 minutes each
#   scripts/fuzz.sh -t 30 gguf      # one target
#
# Targets (fuzz/fuzz_targets/): gguf, prompt_safetensors, adapter_config.
# Needs `cargo install cargo-fuzz`. On a stable toolchain RUSTC_BOOTSTRAP=1 is set so the
# sanitizer flags are accepted. The corpus grows in fuzz/corpus/TARGET (seeded from
# fuzz/seeds/TARGET); crashing inputs land in fuzz/artifacts/TARGET. Exit status 1 if any
# target crashed. Results are recorded in SECURITY.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=60
while getopts "t:h" opt; do
    case $opt in
        t) secs=$OPTARG ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf prompt_safetensors adapter_config)

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is required: cargo install cargo-fuzz"; exit 1; }
export RUSTC_BOOTSTRAP=1
# Fuzz the dependency versions the project builds with.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock
cargo fuzz build

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    before=$(ls "artifacts/$t" | wc -l)
    log="artifacts/$t.log"
    echo "== $t: ${secs}s"
    set +e
    cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corpus=$(ls "corpus/$t" | wc -l)
    crashes=$(( $(ls "artifacts/$t" | wc -l) - before ))
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        status=1
        echo "   CRASH (exit $rc): see fuzz/$log and fuzz/artifacts/$t/"
        grep -m5 -E 'panicked|ERROR: AddressSanitizer|SUMMARY|deadly signal|out-of-memory|timeout' "$log" || true
    fi
    line="$t: ${secs}s, ${execs:-?} execs (${rate:-?}/s), coverage ${cov:-?}, corpus $corpus, new crashes $crashes (exit $rc)"
    echo "   $line"
    summary+=("$line")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
