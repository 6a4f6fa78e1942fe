#!/usr/bin/env bash
# Latency of /v1/completions while a playground training job runs beside it (issue #20):
# N sequential short requests (greedy, MAX_TOKENS tokens) with no training, then the same N
# while a job trains a prompt on the built-in demo task (started through the playground API,
# cancelled afterwards), then N more after it (a drift check). Prints p50/p95/max per phase.
#
#   bench/playground_latency.sh            # N=20 MAX_TOKENS=16
#   N=40 bench/playground_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-20}
MAX_TOKENS=${MAX_TOKENS:-16}
MODEL=${MODEL:-smollm2-135m}
KEY=bench-playground-key-0123456789

cargo build -q -p softprompt-cli
BIN=target/debug/softprompt # the dev profile is optimized (opt-level 3)
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/prompts"
SOFTPROMPT_ADMIN_KEY=$KEY $BIN serve --model "$MODEL" --prompts "$WORK/prompts" --bind 127.0.0.1:0 \
  2> "$WORK/serve.log" &
SERVER=$!
URL=$(server_url "$WORK/serve.log" $SERVER)
echo "server $URL; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"

# N requests, one after the other; their latencies (ms) into $1.
run() {
  : > "$1"
  for i in $(seq "$N"); do
    curl -sf -o /dev/null -w '%{time_total}\n' "$URL/v1/completions" -H 'content-type: application/json' \
      -d "{\"model\":\"base\",\"prompt\":\"Request $i: the capital of France is\",\"max_tokens\":$MAX_TOKENS,\"temperature\":0,\"ignore_eos\":true}" \
      | awk '{print $1 * 1000}' >> "$1"
  done
}

stats() {
  sort -n "$2" | awk -v name="$1" '{v[NR]=$1} END {
    p50 = v[int((NR + 1) * 0.50)]; p95 = v[int(NR * 0.95 + 0.999)]; if (!p95) p95 = v[NR];
    printf "%-16s n=%d  p50 %7.1f ms  p95 %7.1f ms  max %7.1f ms\n", name, NR, p50, p95, v[NR] }'
}

run "$WORK/warm.txt" # warm-up, not reported
run "$WORK/idle.txt"

# A job on the built-in demo split, long enough to outlast the requests; cancelled below.
JOB=$(curl -sf "$URL/playground/api/jobs" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d '{"name":"bench","task":"demo","steps":2000,"virtual_tokens":20,"batch_size":8}' | grep -o '"id":[0-9]*' | head -1 | cut -d: -f2)
for _ in $(seq 600); do
  curl -sf "$URL/playground/api/jobs/$JOB" | grep -q '"step":[1-9]' && break
  sleep 0.5
done
run "$WORK/train.txt"
PROGRESS=$(curl -sf "$URL/playground/api/jobs/$JOB" | grep -o '"step":[0-9]*,"tokens_per_s":[0-9.]*' | tail -1)
curl -sf -X POST "$URL/playground/api/jobs/$JOB/cancel" -H "Authorization: Bearer $KEY" > /dev/null
for _ in $(seq 600); do
  curl -sf "$URL/playground/api/jobs/$JOB" | grep -q '"status":"cancelled"' && break
  sleep 0.5
done
run "$WORK/after.txt"

echo "/v1/completions, $N sequential requests, $MAX_TOKENS tokens each (base model, greedy):"
stats "no training" "$WORK/idle.txt"
stats "while training" "$WORK/train.txt"
stats "after (cancelled)" "$WORK/after.txt"
echo "training job at the end of the training phase: $PROGRESS"
