#!/usr/bin/env bash
# Soak: a server under steady load (plus overload) for DURATION seconds; samples its resident
# memory and open file descriptors every INTERVAL seconds. Memory and descriptors must level
# off: the script fails if RSS grows more than 10% over the second half of the run, or the
# descriptor count at the end exceeds the start by more than the client count.
#
#   bench/serve_soak.sh                 # 600 s, 24 clients over 20 prompts (max-concurrent 16)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-600}
INTERVAL=${INTERVAL:-30}
CLIENTS=${CLIENTS:-24}
MODEL=${MODEL:-smollm2-135m}
OUT=${OUT:-bench/results}

cargo build -q -p softprompt-cli
BIN=target/debug/softprompt
WORK=$(mktemp -d)
trap 'kill $SERVER $LOAD 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
$BIN init --model "$MODEL" --count 20 --out "$WORK/prompts" 2>/dev/null
$BIN serve --model "$MODEL" --prompts "$WORK/prompts" --bind 127.0.0.1:0 --max-concurrent 16 2> "$WORK/serve.log" &
SERVER=$!
URL=$(server_url "$WORK/serve.log" $SERVER)
# More clients than admitted: a steady stream of 429s alongside the real work.
$BIN loadtest --url "$URL" --clients "$CLIENTS" --duration-s "$DURATION" --max-tokens 24 \
  --no-check --json > "$OUT/serve_soak_load.json" 2>/dev/null &
LOAD=$!
echo "t_s rss_mib fds" | tee "$OUT/serve_soak.tsv"
T0=$(date +%s)
while kill -0 $LOAD 2>/dev/null; do
  RSS=$(awk '/VmRSS/ {print $2/1024}' /proc/$SERVER/status)
  FDS=$(ls /proc/$SERVER/fd | wc -l)
  echo "$(( $(date +%s) - T0 )) $RSS $FDS" | tee -a "$OUT/serve_soak.tsv"
  sleep "$INTERVAL"
done
wait $LOAD || true
echo "load: $(cat "$OUT/serve_soak_load.json")"
sleep 2
RSS=$(awk '/VmRSS/ {print $2/1024}' /proc/$SERVER/status); FDS=$(ls /proc/$SERVER/fd | wc -l)
echo "$(( $(date +%s) - T0 )) $RSS $FDS" | tee -a "$OUT/serve_soak.tsv"
python3 - "$OUT/serve_soak.tsv" "$CLIENTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
t = [float(r[0]) for r in rows]; rss = [float(r[1]) for r in rows]; fds = [int(r[2]) for r in rows]
half = len(rows) // 2
growth = (max(rss[half:]) - rss[half]) / rss[half]
print(f"RSS: start {rss[0]:.0f} MiB, mid {rss[half]:.0f}, max second half {max(rss[half:]):.0f}, end {rss[-1]:.0f} (second-half growth {growth*100:.1f}%)")
print(f"fds: start {fds[0]}, max {max(fds)}, end {fds[-1]}")
ok = growth < 0.10 and fds[-1] <= fds[0] + int(sys.argv[2])
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
kill -TERM $SERVER; wait $SERVER && echo "server drained and exited 0"
