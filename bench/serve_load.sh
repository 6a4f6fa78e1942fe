#!/usr/bin/env bash
# The serve acceptance load (issue: serve many prompts): PROMPTS soft prompts loaded in one
# server, CLIENTS concurrent clients for DURATION seconds, first spread over every prompt
# (mixed batches), then all on one prompt (alternating slices); every answer is checked against the same request
# sent alone. Then an overload run with more clients than --max-concurrent (429s expected,
# no failures of admitted requests). Prints both tables and the mixed/single throughput ratio.
#
#   bench/serve_load.sh                 # 100 prompts, 32 clients, 120 s each
#   PROMPTS=10 CLIENTS=8 DURATION=20 bench/serve_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
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
URL=$(server_url "$WORK/serve.log" $SERVER)
echo "server: $URL, $(grep -o '[0-9]* prompts loaded' "$WORK/serve.log"), peak RSS before load: $(grep VmHWM /proc/$SERVER/status | awk '{print $2/1024 " MiB"}')"

# Mixed and single runs alternate in ROUNDS slices, so that whatever else the machine does
# falls on both alike; their numbers are summed over the slices.
ROUNDS=${ROUNDS:-4}
SLICE=$(( DURATION / ROUNDS ))
for r in $(seq "$ROUNDS"); do
  for kind in mixed single; do
    if [ $kind = mixed ]; then P=all; else P=p000; fi
    $BIN loadtest --url "$URL" --clients "$CLIENTS" --duration-s "$SLICE" --max-tokens "$MAX_TOKENS" \
      --inputs "$WORK/inputs.txt" --prompts $P --json > "$OUT/serve_${kind}_$r.json" 2>/dev/null
    echo "round $r $kind: $(cat "$OUT/serve_${kind}_$r.json")"
  done
done
# Overload: 1.5x the clients the server admits; 429s are expected, errors are not.
OVER=$((CLIENTS * 3 / 2))
$BIN loadtest --url "$URL" --clients "$OVER" --duration-s 30 --max-tokens "$MAX_TOKENS" \
  --inputs "$WORK/inputs.txt" --prompts all --no-check --json > "$OUT/serve_overload.json"
echo "overload ($OVER clients): $(cat "$OUT/serve_overload.json")"
echo "server peak RSS: $(grep VmHWM /proc/$SERVER/status | awk '{print $2/1024 " MiB"}')"

python3 - "$OUT" "$PROMPTS" "$CLIENTS" "$DURATION" "$ROUNDS" <<'PY'
import json, sys
out, prompts, clients, duration, rounds = sys.argv[1:]
def agg(kind):
    rs = [json.load(open(f"{out}/serve_{kind}_{r}.json")) for r in range(1, int(rounds) + 1)]
    t = sum(r["elapsed_s"] for r in rs)
    mb = [r["mean_batch"] for r in rs if r["mean_batch"] is not None]
    return {
        "ok": sum(r["ok"] for r in rs), "rejected_429": sum(r["rejected_429"] for r in rs),
        "errors": sum(r["errors"] for r in rs), "mismatches": sum(r["mismatches"] for r in rs),
        "checked": sum(r["checked"] for r in rs),
        "tokens_per_s": sum(r["completion_tokens"] for r in rs) / t,
        "latency_ms": {q: sum(r["latency_ms"][q] for r in rs) / len(rs) for q in ("p50", "p90", "p99")},
        "mean_batch": sum(mb) / len(mb) if mb else None,
    }
m, s = agg("mixed"), agg("single")
o = json.load(open(f"{out}/serve_overload.json"))
json.dump({"mixed": m, "single": s, "overload": o}, open(f"{out}/serve_load.json", "w"), indent=1)
print(f"\n{prompts} prompts loaded, {clients} clients, {duration} s per kind in {rounds} alternating slices\n")
print("| run | requests ok | 429 | errors | mismatches (checked) | tokens/s | p50 ms | p90 ms | p99 ms | mean batch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, r in [("mixed prompts", m), ("single prompt", s), ("overload, 1.5x clients", o)]:
    l = r["latency_ms"]
    mb = r["mean_batch"]
    print(f"| {name} | {r['ok']} | {r['rejected_429']} | {r['errors']} | {r['mismatches']} ({r['checked']}) | "
          f"{r['tokens_per_s']:.1f} | {l['p50']:.0f} | {l['p90']:.0f} | {l['p99']:.0f} | {mb if mb is None else round(mb, 1)} |")
print(f"\nmixed / single throughput: {m['tokens_per_s'] / s['tokens_per_s']:.3f}")
print("(latency percentiles: mean over the slices)")
PY
kill -TERM $SERVER
wait $SERVER && echo "server drained and exited 0"
