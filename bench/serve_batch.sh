#!/usr/bin/env bash
# Batched decoding in the server (issue: bigger models and CPUs, "serving throughput"): for
# each weights format, one server in its exact (batch-invariant) mode over PROMPTS prompts,
# then `loadtest` with 1 client (every step a batch of 1) and with CLIENTS clients (batches of
# up to CLIENTS), DURATION seconds each, MAX_TOKENS tokens per request; every distinct answer
# is checked against the same request sent alone (mismatches must be 0). Prints the
# aggregate tokens/s of both and their ratio.
#
#   bench/serve_batch.sh                         # f32, bf16, quantized; 32 clients, 60 s
#   FORMATS=bf16 CLIENTS=32 DURATION=30 bench/serve_batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PROMPTS=${PROMPTS:-20}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-60}
MAX_TOKENS=${MAX_TOKENS:-32}
MODEL=${MODEL:-smollm2-135m}
FORMATS=${FORMATS:-f32 bf16 quantized}

cargo build -q -p softprompt-cli
BIN=target/debug/softprompt # the dev profile is optimized (opt-level 3)
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
$BIN init --model "$MODEL" --count "$PROMPTS" --out "$WORK/prompts" 2>/dev/null
echo "| weights | clients | requests ok | mismatches (checked) | tokens/s | mean batch | p50 ms |"
echo "|---|---|---|---|---|---|---|"
for W in $FORMATS; do
  $BIN serve --model "$MODEL" --weights "$W" --prompts "$WORK/prompts" --bind 127.0.0.1:0 \
    --max-concurrent "$CLIENTS" --max-batch "$CLIENTS" 2> "$WORK/serve.log" &
  SERVER=$!
  URL=$(server_url "$WORK/serve.log" $SERVER)
  for C in 1 "$CLIENTS"; do
    $BIN loadtest --url "$URL" --clients "$C" --duration-s "$DURATION" --max-tokens "$MAX_TOKENS" \
      --greedy-only --json > "$WORK/$W-$C.json" 2>/dev/null
    python3 - "$W" "$C" "$WORK/$W-$C.json" <<'PY'
import json, sys
w, c, path = sys.argv[1:]
r = json.load(open(path))
mb = r["mean_batch"]
print(f"| {w} | {c} | {r['ok']} | {r['mismatches']} ({r['checked']}) | {r['tokens_per_s']:.1f} | "
      f"{mb if mb is None else round(mb, 1)} | {r['latency_ms']['p50']:.0f} |")
PY
  done
  python3 - "$W" "$WORK/$W-1.json" "$WORK/$W-$CLIENTS.json" <<'PY'
import json, sys
w, one, many = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print(f"| {w} | ratio | | | {many['tokens_per_s'] / one['tokens_per_s']:.2f}x | | |")
PY
  kill -TERM $SERVER
  wait $SERVER || true
  SERVER=
done
