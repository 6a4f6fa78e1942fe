#!/usr/bin/env python3
"""A softprompt-written adapter in live PEFT: log-probs against `softprompt score`.

    cargo build -p softprompt-cli
    .venv-fixtures/bin/python bench/peft_roundtrip.py --model smollm2-135m \
        --expect-base HuggingFaceTB/SmolLM2-135M-Instruct
    .venv-fixtures/bin/python bench/peft_roundtrip.py --model gemma3-270m --expect-base google/gemma-3-270m

(the venv of scripts/requirements-fixtures.txt). Steps:
1. `softprompt train` a few steps on the built-in demo task (or take `--prompt DIR`): a PEFT
   adapter folder written by softprompt; its `base_model_name_or_path` must be the model's hub id.
2. `softprompt export` the model as an f32 Hugging Face folder, loaded by transformers as the base
   (the hub itself may be unreachable; with it, `AutoPeftModelForCausalLM.from_pretrained(DIR)`
   would fetch that same base by the recorded id).
3. `PeftModel.from_pretrained(base, DIR)`, and per-token log-probs of a few texts given the prompt,
   on the ids `softprompt score --prompt DIR --json` reports (they must equal the exported
   tokenizer's); max |delta| against softprompt's log-probs, exit 1 above `--bound` (1e-4).
"""
import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Review: a gorgeous, witty, seductive movie\nSentiment: positive",
    "def add(a, b):\n    return a + b\n",
    "Prompt tuning learns a few vectors and keeps the model frozen.",
]


def run(cmd):
    print("$", shlex.join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--softprompt", type=Path, default=root / "target/debug/softprompt")
    ap.add_argument("--prompt", type=Path, help="an adapter folder (default: train one)")
    ap.add_argument("--expect-base", help="the base_model_name_or_path the adapter must record")
    ap.add_argument("--bound", type=float, default=1e-4)
    args = ap.parse_args()
    sp = str(args.softprompt)
    if not args.softprompt.is_file():
        sys.exit(f"{sp}: not found (cargo build -p softprompt-cli, or pass --softprompt)")
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = args.prompt
        if adapter is None:
            adapter = tmp / "run"
            run([sp, "train", "--model", args.model, "--task", "demo", "--steps", "3",
                 "--virtual-tokens", "20", "--batch-size", "4", "--eval-every", "0",
                 "--checkpoint-every", "0", "--quiet", "--out", adapter])
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        base_name = cfg["base_model_name_or_path"]
        print(f"adapter {adapter}: base_model_name_or_path = {base_name!r}")
        ok = True
        if args.expect_base is not None and base_name != args.expect_base:
            print(f"FAIL: expected base_model_name_or_path {args.expect_base!r}")
            ok = False

        hf = tmp / "hf"
        run([sp, "export", "--model", args.model, "--out", hf])
        base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(hf)
        model = PeftModel.from_pretrained(base, adapter).eval()
        p = model.peft_config["default"].num_virtual_tokens

        worst = 0.0
        for text in TEXTS:
            got = json.loads(run([sp, "score", "--model", args.model, "--prompt", adapter,
                                  "--text", text, "--json"]))
            ids = got["ids"]
            if tok(text).input_ids != ids:
                print(f"FAIL: ids differ for {text!r}: transformers {tok(text).input_ids}, softprompt {ids}")
                ok = False
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # [P + n, vocab]
            lp = torch.log_softmax(logits.double(), dim=-1)
            want = [lp[p - 1 + t, i].item() for t, i in enumerate(ids)]  # token t given prompt, ids[<t]
            if len(want) != len(got["logprobs"]):
                sys.exit(f"softprompt gave {len(got['logprobs'])} log-probs for {len(ids)} ids")
            d = max(abs(a - b) for a, b in zip(want, got["logprobs"]))
            worst = max(worst, d)
            print(f"  {len(ids):3} tokens  max |delta log-prob| {d:.2e}  {text[:40]!r}")

    print(f"{args.model}: max |delta log-prob| {worst:.2e} over {len(TEXTS)} texts (bound {args.bound:g})")
    if worst > args.bound or not ok:
        print("FAIL")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
