#!/usr/bin/env python3
"""Golden PyTorch + transformers + PEFT numbers for deep prompts (PEFT prefix tuning), and a live
PEFT load of a prefix adapter softprompt wrote.

    .venv-fixtures/bin/python scripts/make_prefix_fixtures.py            # write the fixtures
    .venv-fixtures/bin/python scripts/make_prefix_fixtures.py --check-ours runs/deep --model smollm2-135m

(the venv and the GGUFs as for scripts/make_fixtures.py). Writes, per model,
crates/softprompt-core/tests/fixtures/MODEL/prefix/ (the adapter PEFT saves: PREFIX_TUNING, 8
virtual tokens, no projection) and expected_prefix.safetensors:

- ids_I: the text's ids (with the tokenizer's special tokens), as in expected.safetensors;
- logprobs_prefix_I: log p(ids[t] | prefix, ids[<t]) for t = 1.. (the prefix adds no row, so
  the first token has no predictor);
- loss_prefix, grad_prefix: PEFT's batch loss over the three texts (right-padded, labels = ids)
  and its gradient w.r.t. the prefix [8, num_layers * 2 * Hkv*hd] (training mode).

The prefix is overwritten with `2 * (rand(8, width, seed 0) - 0.5)` before anything is computed.

--check-ours DIR loads DIR (a prefix adapter written by `softprompt train --deep`) with
`PeftModel.from_pretrained` on the same base and prints PEFT's log-probs of the texts as JSON, to
compare with `softprompt score --prompt DIR --json`.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import MODELS, SEED, TEXTS, logprobs_at, sha256  # noqa: E402

P = 8  # virtual tokens of the prefix


def load_base(spec, gguf_dir):
    gguf_path = gguf_dir / spec["gguf_file"]
    if sha256(gguf_path) != spec["gguf_sha256"]:
        sys.exit(f"{gguf_path}: wrong sha256")
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec["gguf_file"])
    m = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec["gguf_file"], dtype=torch.float32)
    m.hf_quantizer = None
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    with tempfile.TemporaryDirectory() as hf_dir:
        m.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)
        del m
        base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    base.eval()
    base.config.name_or_path = base.name_or_path = spec["base_name"]
    return tok, base


def make(name, spec, gguf_dir, out_dir):
    tok, base = load_base(spec, gguf_dir)
    ids = [tok(t).input_ids for t in TEXTS]
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P))
    w = model.prompt_encoder["default"].embedding.weight  # [P, L * 2 * Hkv*hd]
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED)
        w.copy_(2.0 * (torch.rand(w.shape, generator=gen, dtype=torch.float32) - 0.5))
    model.eval()
    expected = {}
    with torch.no_grad():
        for i, x in enumerate(ids):
            expected[f"ids_{i}"] = torch.tensor(x, dtype=torch.int64)
            logits = model(input_ids=torch.tensor([x])).logits[0]  # [n, vocab]: no prefix rows
            expected[f"logprobs_prefix_{i}"] = logprobs_at(logits, x[1:], 0).float()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    L = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [pad] * (L - len(x)) for x in ids], dtype=torch.int64)
    mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in ids], dtype=torch.int64)
    labels = torch.tensor([x + [-100] * (L - len(x)) for x in ids], dtype=torch.int64)
    model.train()
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    expected["loss_prefix"] = loss.detach().reshape(1).float()
    expected["grad_prefix"] = w.grad.detach().float().clone()
    model.eval()
    dst = out_dir / name
    save_file({k: v.contiguous() for k, v in expected.items()}, dst / "expected_prefix.safetensors")
    model.save_pretrained(dst / "prefix")
    print(f"{name}: wrote {dst}/prefix and expected_prefix.safetensors (loss {loss.item():.6f})", flush=True)


def check_ours(name, spec, gguf_dir, adapter):
    tok, base = load_base(spec, gguf_dir)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    out = []
    with torch.no_grad():
        for t in TEXTS:
            x = tok(t).input_ids
            logits = model(input_ids=torch.tensor([x])).logits[0]
            out.append({"text": t, "logprobs": logprobs_at(logits, x[1:], 0).tolist()})
    print(json.dumps({"peft_type": model.peft_config["default"].peft_type, "texts": out}))


def main():
    root = Path(__file__).resolve().parent.parent
    cache = Path.home() / ".cache" / "softprompt"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=root / "crates/softprompt-core/tests/fixtures")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--gguf-dir", type=Path, default=cache / "models")
    ap.add_argument("--check-ours", type=Path, metavar="DIR")
    a = ap.parse_args()
    torch.manual_seed(SEED)
    for name in a.models:
        if a.check_ours:
            check_ours(name, MODELS[name], a.gguf_dir, a.check_ours)
        else:
            make(name, MODELS[name], a.gguf_dir, a.out)


if __name__ == "__main__":
    main()
