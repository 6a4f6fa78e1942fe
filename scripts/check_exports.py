#!/usr/bin/env python3
"""Load `softprompt export` folders in transformers and compare log-probs: the live check of the
export writer (config.json as transformers 5.24 declares it, f32 weights).

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    cargo build -p softprompt-cli
    .venv-fixtures/bin/python scripts/check_exports.py [--real gemma3-270m smollm2-135m]

1. Every tiny model in crates/softprompt-core/tests/fixtures/arch (scripts/make_arch_fixtures.py)
   is exported with `softprompt export`, loaded with AutoModelForCausalLM (float32, eager
   attention) and scored on the fixture's ids; the log-probs are compared with the ones
   transformers computed on the original folder (expected.json).
2. Each `--real` model (an alias or path softprompt loads, e.g. a GGUF) is exported the same way
   and transformers' log-probs on the export are compared with `softprompt score --json` on the
   original, for TEXT.
Exits 1 when any max |Δ log-prob| exceeds --bound (default 1e-4).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parent.parent
ARCH = ROOT / "crates/softprompt-core/tests/fixtures/arch"
TEXT = "The capital of France is Paris, and the capital of Italy is Rome. The river Seine runs through"


def logprobs(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]


def export(binary, model, out):
    subprocess.run([binary, "export", "--model", str(model), "--out", str(out)], check=True,
                   capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--softprompt", default=str(ROOT / "target/debug/softprompt"))
    ap.add_argument("--real", nargs="*", default=[], help="models to export and check (aliases, paths)")
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--bound", type=float, default=1e-4)
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for d in sorted(p for p in ARCH.iterdir() if (p / "model.safetensors").exists()):
            out = Path(tmp) / d.name
            export(args.softprompt, d, out)
            exp = json.loads((d / "expected.json").read_text())
            got = logprobs(out, exp["ids"])
            diff = max(abs(a - b) for a, b in zip(got, exp["logprobs"]))
            worst = max(worst, diff)
            print(f"{d.name:12s} export in transformers vs transformers on the original: "
                  f"max |Δ log-prob| {diff:.2e} over {len(got)} tokens")
        for m in args.real:
            out = Path(tmp) / "real"
            export(args.softprompt, m, out)
            cfg = json.loads((out / "config.json").read_text())
            sp = json.loads(subprocess.run(
                [args.softprompt, "score", "--model", m, "--text", args.text, "--json"],
                check=True, capture_output=True, text=True).stdout)
            got = logprobs(out, sp["ids"])
            want = sp["logprobs"][-len(got):]
            diff = max(abs(a - b) for a, b in zip(got, want))
            worst = max(worst, diff)
            print(f"{m}: export ({cfg['model_type']}, query_pre_attn_scalar "
                  f"{cfg.get('query_pre_attn_scalar', '-')!r}) in transformers vs softprompt score: "
                  f"max |Δ log-prob| {diff:.2e} over {len(got)} tokens; first log-probs "
                  f"{[round(x, 4) for x in got[:4]]} vs {[round(x, 4) for x in want[:4]]}")
            subprocess.run(["rm", "-rf", str(out)], check=True)
    if worst > args.bound:
        sys.exit(f"max |Δ log-prob| {worst:.2e} > {args.bound:g}")
    print(f"all exports load in transformers; worst max |Δ log-prob| {worst:.2e}")


if __name__ == "__main__":
    main()
