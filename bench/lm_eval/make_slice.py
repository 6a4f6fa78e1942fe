#!/usr/bin/env python3
"""Write an SST-2 slice as JSON Lines for lm-evaluation-harness and `softprompt eval`.

Reads a GLUE SST-2 TSV (header `sentence<TAB>label`, no quoting; the default is
sst2/validation.tsv under $SOFTPROMPT_DATA, else ../shared/data, as softprompt resolves it) the way softprompt reads it (fields split on tabs, kept
as they are, trailing spaces included) and writes {"sentence": ..., "label": 0|1} per line,
the first --limit rows, to runs/lm_eval/sst2_validation.jsonl (the path the task YAML names).
"""
import argparse
import json
import os
import sys

data_root = os.environ.get("SOFTPROMPT_DATA") or os.path.join("..", "shared", "data")
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--input", default=os.path.join(data_root, "sst2", "validation.tsv"))
ap.add_argument("--out", default=os.path.join("runs", "lm_eval", "sst2_validation.jsonl"))
ap.add_argument("--limit", type=int, default=None, help="first N rows (default: all)")
a = ap.parse_args()

try:
    with open(a.input, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
except OSError as e:
    sys.exit(f"make_slice: {a.input}: {e.strerror}")
header = lines[0].rstrip("\r").split("\t")
if header != ["sentence", "label"]:
    sys.exit(f"make_slice: {a.input}: expected the header sentence<TAB>label, got {header}")
rows = []
for n, line in enumerate(lines[1:], start=2):
    line = line.rstrip("\r")
    if not line:
        continue
    fields = line.split("\t")
    if len(fields) != 2 or fields[1] not in ("0", "1"):
        sys.exit(f"make_slice: {a.input}: line {n}: expected sentence<TAB>0|1")
    rows.append({"sentence": fields[0], "label": int(fields[1])})
rows = rows[: a.limit]
os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
tmp = a.out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
os.replace(tmp, a.out)
print(f"make_slice: wrote {len(rows)} rows to {a.out}", file=sys.stderr)
