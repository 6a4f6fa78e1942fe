#!/usr/bin/env bash
# The serve acceptance load (issue: serve many prompts): PROMPTS soft prompts loaded in one
# server, CLIENTS concurrent clients for DURATION seconds, first spread over every prompt
# (mixed batches), then all on one prompt; every answer is checked against the same request
# sent alone. Then an overload run with more clients than --max-concurrent (429s expected,
# no failures of admitted requests). Prints both tables and the mixed/single throughput ratio.
#
#   bench/serve_load.sh                 # 100 prompts, 32 clients, 120 s each
#   PROMPTS=10 CLIENTS=8 DURATION=20 bench/serve_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPTS=${PROMPTS:-100}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-120}
MAX_TOKENS=${MAX_TOKENS:-16}
MODEL=${MODEL:-smollm2-135m}
OUT=${OUT:-bench/results}

cargo build -q -p softprompt-cli
BIN=target/debug/softprompt # the dev profile is optimized (opt-level 3)
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

$BIN init --model "$MODEL" --count "$PROMPTS" --out "$WORK/prompts" 2>/dev/null
printf 'The movie was a delight from start to finish\nThe capital of France is\n' > "$WORK/inputs.txt"

$BIN serve --model "$MODEL" --prompts "$WORK/prompts" --bind 127.0.0.1:0 \
  --max-concurrent "$CLIENTS" --max-batch "$CLIENTS" 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 600); do
  grep -q "listening on" "$WORK/serve.log" && break
  sleep 0.2
done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/serve.log" | head -1)
echo "server: $URL, $(grep -o '[0-9]* prompts loaded' "$WORK/serve.log"), peak RSS before load: $(grep VmHWM /proc/$SERVER/status | awk '{print $2/1024 " MiB"}')"

run() { # name, extra args...
  local name=$1; shift
  $BIN loadtest --url "$URL" --clients "$CLIENTS" --duration-s "$DURATION" \
    --max-tokens "$MAX_TOKENS" --inputs "$WORK/inputs.txt" --json "$@" > "$OUT/serve_$name.json"
  echo "$name: $(cat "$OUT/serve_$name.json")"
}
run mixed --prompts all
run single --prompts p000
# Overload: 1.5x the clients the server admits; 429s are expected, errors are not.
OVER=$((CLIENTS * 3 / 2))
$BIN loadtest --url "$URL" --clients "$OVER" --duration-s 30 --max-tokens "$MAX_TOKENS" \
  --inputs "$WORK/inputs.txt" --prompts all --no-check --json > "$OUT/serve_overload.json"
echo "overload ($OVER clients): $(cat "$OUT/serve_overload.json")"
echo "server peak RSS: $(grep VmHWM /proc/$SERVER/status | awk '{print $2/1024 " MiB"}')"

python3 - "$OUT" "$PROMPTS" "$CLIENTS" "$DURATION" <<'PY'
import json, sys
out, prompts, clients, duration = sys.argv[1:]
m = json.load(open(f"{out}/serve_mixed.json")); s = json.load(open(f"{out}/serve_single.json"))
o = json.load(open(f"{out}/serve_overload.json"))
print(f"\n{prompts} prompts loaded, {clients} clients, {duration} s per run\n")
print("| run | requests ok | 429 | errors | mismatches (checked) | tokens/s | p50 ms | p90 ms | p99 ms | mean batch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, r in [("mixed prompts", m), ("single prompt", s), (f"overload", o)]:
    l = r["latency_ms"]
    mb = r["mean_batch"]
    print(f"| {name} | {r['ok']} | {r['rejected_429']} | {r['errors']} | {r['mismatches']} ({r['checked']}) | "
          f"{r['tokens_per_s']:.1f} | {l['p50']:.0f} | {l['p90']:.0f} | {l['p99']:.0f} | {mb if mb is None else round(mb, 1)} |")
print(f"\nmixed / single throughput: {m['tokens_per_s'] / s['tokens_per_s']:.3f}")
PY
kill -TERM $SERVER
wait $SERVER && echo "server drained and exited 0"
