#!/usr/bin/env bash
# Serving cost of a distilled prompt (issue #19): one `softprompt serve` on 127.0.0.1 with
# two prompt folders from a `softprompt distill` output, and three ways to send the same inputs:
#   (a) text:   the hard prompt as request text before each input (model "base");
#   (b) prefix: the hard prompt as a cached prefix (DIR/hard_prompt: its token embeddings,
#               whose keys/values the server computes once, like a soft prompt's);
#   (c) soft:   the distilled soft prompt (DIR).
# Requests go one at a time, the three ways interleaved per input (whatever else the machine
# does falls on all three alike). Time to first token = a max_tokens=1 request; decode
# tokens/s = (TOKENS - 1) / (time of a TOKENS-token request - time of the 1-token request),
# both greedy with ignore_eos. Prints a table and writes $OUT_JSON.
#
#   bench/distill_serve.sh DIR HARD_PROMPT.txt INPUTS.txt     # N=20 inputs, TOKENS=32
#   N=10 MODEL=gemma3-270m TEMPLATE='Q: {text}\n' bench/distill_serve.sh runs/distill hard.txt inputs.txt
#
# Gemma: the server puts <bos> before every request text, so (b) reads <bos> hard <bos> input
# where (a) reads <bos> hard input; SmolLM2 has no <bos> and (a) = (b) token for token.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
USAGE="usage: bench/distill_serve.sh DISTILL_OUT_DIR HARD_PROMPT_FILE INPUTS.txt"
DIR=${1:?$USAGE}
HARD=${2:?$USAGE}
INPUTS=${3:?$USAGE}
N=${N:-20}
TOKENS=${TOKENS:-32}
MODEL=${MODEL:-smollm2-135m}
WEIGHTS=${WEIGHTS:-f32}
TEMPLATE=${TEMPLATE:-"{text}"} # how an input line becomes the request text (as in distill)
OUT_JSON=${OUT_JSON:-$DIR/serve_bench.json}
BIN=${BIN:-target/debug/softprompt} # the dev profile is optimized (opt-level 3)
[ -x "$BIN" ] || cargo build -q -p softprompt-cli

WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/prompts/soft" "$WORK/prompts/prefix"
cp "$DIR"/adapter_config.json "$DIR"/adapter_model.safetensors "$DIR"/softprompt.json "$WORK/prompts/soft/"
cp "$DIR"/hard_prompt/adapter_config.json "$DIR"/hard_prompt/adapter_model.safetensors \
  "$DIR"/hard_prompt/softprompt.json "$WORK/prompts/prefix/"
HARD_SHA=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hard_prompt_sha256"])' "$DIR/distill.json")

$BIN serve --model "$MODEL" --weights "$WEIGHTS" --prompts "$WORK/prompts" --bind 127.0.0.1:0 \
  --max-concurrent 4 --max-batch 4 2> "$WORK/serve.log" &
SERVER=$!
URL=$(server_url "$WORK/serve.log" $SERVER 900)

python3 - "$URL" "$DIR" "$HARD" "$INPUTS" "$N" "$TOKENS" "$TEMPLATE" "$OUT_JSON" "$HARD_SHA" <<'PY'
import hashlib, json, sys, time, urllib.request
url, d, hard_file, inputs, n, tokens, template, out_json, hard_sha = sys.argv[1:]
n, tokens = int(n), int(tokens)
meta = json.load(open(f"{d}/distill.json"))
hard = open(hard_file, encoding="utf-8").read()
if hashlib.sha256(hard.encode()).hexdigest() != hard_sha:
    sys.exit(f"{hard_file} is not the hard prompt {d} was distilled from (sha256 differs)")
lines = [l.strip() for l in open(inputs) if l.strip()][-n:]
texts = [template.replace("\\n", "\n").replace("{text}", l) for l in lines]

def post(model, prompt, max_tokens):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.perf_counter() - t, out["usage"]["prompt_tokens"]

ways = {"text": lambda x: ("base", hard + x), "prefix": lambda x: ("prefix", x), "soft": lambda x: ("soft", x)}
for w, f in ways.items():  # warm-up: the prefixes enter the server's cache
    post(*f(texts[0]), 1)
res = {w: {"ttft": [], "tps": [], "tokens": []} for w in ways}
for x in texts:
    for w, f in ways.items():
        t1, pt = post(*f(x), 1)
        tn, _ = post(*f(x), tokens)
        res[w]["ttft"].append(t1)
        res[w]["tps"].append((tokens - 1) / max(tn - t1, 1e-9))
        res[w]["tokens"].append(pt)
med = lambda v: sorted(v)[len(v) // 2]
summary = {w: {"requests": len(r["ttft"]), "tokens_per_request": sum(r["tokens"]) / len(r["tokens"]),
               "ttft_ms_median": 1000 * med(r["ttft"]), "decode_tokens_per_s_median": med(r["tps"])}
           for w, r in res.items()}
summary["virtual_tokens_soft"] = meta["virtual_tokens"]
summary["hard_prompt_tokens"] = meta["hard_prompt_tokens"]
json.dump(summary, open(out_json, "w"), indent=1)
print(f"\n{len(texts)} inputs, one request at a time, {tokens} decoded tokens (greedy)\n")
print("| request | input tokens per request (server's count; + virtual tokens for (b), (c)) | time to first token, median | decode tokens/s, median |")
print("|---|---|---|---|")
names = {"text": "(a) hard prompt as text", "prefix": "(b) hard prompt as cached prefix", "soft": "(c) distilled soft prompt"}
for w in ways:
    s = summary[w]
    print(f"| {names[w]} | {s['tokens_per_request']:.1f} | {s['ttft_ms_median']:.0f} ms | {s['decode_tokens_per_s_median']:.1f} |")
PY
