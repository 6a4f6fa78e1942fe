#!/usr/bin/env python3
"""Tiny random models of every supported architecture, saved by transformers, with the log-probs
transformers computes for them: the fixtures of crates/softprompt-core/tests/transformers_parity.rs.

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_arch_fixtures.py

writes crates/softprompt-core/tests/fixtures/arch/NAME/ for each NAME below:
- config.json, model.safetensors: `save_pretrained` of a 2-layer model with random weights (seed 0,
  float32; std 0.2 so the layers matter), exactly as transformers 5.24 writes them
  (RoPE settings in `rope_parameters`);
- tokenizer.json: a byte-level BPE with the 256 byte tokens and no merges (softprompt's HF loader
  needs one; the test feeds ids);
- expected.json: `ids` (a fixed pseudo-random sequence of SEQ ids) and `logprobs`, the
  transformers float32 log p(ids[t] | ids[<t]) for t = 1..SEQ-1 (eager attention).
The `dynamic` folder holds only config.json: a rope_type softprompt refuses.

Sizes: vocab 256, hidden 32, head_dim 16 (4 query heads, 2 kv heads), MLP 64: about 130 KB per
model. SEQ = 600 positions with RoPE base 10000 and original_max_position_embeddings 64, so the
llama3 / linear / yarn scalings change every long-wavelength frequency and matter; the windows
(Mistral, Qwen2 with use_sliding_window, Gemma 3 local layers) are 16.
`--check` recomputes everything in memory and compares with the files instead of writing.
"""
import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig,
                          Qwen2Config, Qwen3Config)

PINNED = {"torch": "2.15.0", "transformers": "5.24.0"}
OUT = Path(__file__).resolve().parent.parent / "crates/softprompt-core/tests/fixtures/arch"
SEQ = 600
SEED = 0
COMMON = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)
ORIG = 64  # original_max_position_embeddings of the scaled variants


def rope(rope_type="default", **kw):
    return {"rope_type": rope_type, "rope_theta": 10000.0, **kw}


MODELS = {
    "llama": lambda: LlamaConfig(**COMMON, rope_parameters=rope()),
    "llama3": lambda: LlamaConfig(**COMMON, rope_parameters=rope(
        "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=ORIG)),
    "linear": lambda: LlamaConfig(**COMMON, rope_parameters=rope("linear", factor=4.0)),
    # yarn: max_position_embeddings = factor x original, as the paper and transformers expect.
    "yarn": lambda: LlamaConfig(**{**COMMON, "max_position_embeddings": 16 * ORIG},
                                rope_parameters=rope("yarn", factor=16.0,
                                                     original_max_position_embeddings=ORIG)),
    # yarn with the optional parameters set: mscale ratio, betas, no truncation.
    "yarn_mscale": lambda: LlamaConfig(**{**COMMON, "max_position_embeddings": 16 * ORIG},
                                       rope_parameters=rope(
                                           "yarn", factor=16.0, original_max_position_embeddings=ORIG,
                                           beta_fast=16.0, beta_slow=2.0, mscale=1.0,
                                           mscale_all_dim=0.5, truncate=False)),
    "qwen2": lambda: Qwen2Config(**{k: v for k, v in COMMON.items() if k != "head_dim"},
                                 rope_parameters=rope()),
    # Qwen2 with its sliding window switched on for the layers from max_window_layers (1) on.
    "qwen2_swa": lambda: Qwen2Config(**{k: v for k, v in COMMON.items() if k != "head_dim"},
                                     use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                     rope_parameters=rope()),
    "qwen3": lambda: Qwen3Config(**COMMON, rope_parameters=rope()),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=16, rope_parameters=rope()),
    # Local/global layers, window 16, Gemma 3 4B-style linear scaling on the global layers only.
    "gemma3": lambda: Gemma3TextConfig(
        **{**COMMON, "tie_word_embeddings": True}, sliding_window=16, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
}
REFUSED = {"dynamic": lambda: LlamaConfig(**COMMON, rope_parameters=rope("dynamic", factor=2.0))}


def ids():
    """A fixed pseudo-random id sequence (a 32-bit LCG), the same on every machine."""
    x, out = 12345, []
    for _ in range(SEQ):
        x = (1103515245 * x + 12345) % (1 << 31)
        out.append((x >> 8) % 256)
    return out


def byte_tokenizer():
    """tokenizer.json of a byte-level BPE with the 256 byte symbols and no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {c: i for i, c in enumerate(bytes_to_unicode()[b] for b in range(256))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def logprobs(model, seq):
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[t - 1, seq[t]].item() for t in range(1, len(seq))]


def build(name, make):
    torch.manual_seed(SEED)
    cfg = make()
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                # Gemma stores w and multiplies by 1 + w; the others multiply by w.
                p.copy_(0.3 * torch.randn_like(p) + (0.0 if cfg.model_type == "gemma3_text" else 1.0))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    args = ap.parse_args()
    for pkg, want in PINNED.items():
        got = version(pkg).split("+")[0]
        if got != want:
            sys.exit(f"{pkg} {got} is installed; these fixtures are made with {pkg}=={want}")
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    seq = ids()
    worst = 0.0
    for name, make in MODELS.items():
        model = build(name, make)
        lp = logprobs(model, seq)
        d = OUT / name
        if args.check:
            old = json.loads((d / "expected.json").read_text())
            # Reload the stored folder: what the Rust test reads.
            stored = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                          attn_implementation="eager").eval()
            diff = max(abs(a - b) for a, b in zip(logprobs(stored, seq), old["logprobs"]))
            fresh = max(abs(a - b) for a, b in zip(lp, old["logprobs"]))
            worst = max(worst, diff, fresh)
            print(f"{name}: max |diff| vs expected.json: stored folder {diff:.2e}, "
                  f"model rebuilt here {fresh:.2e}")
            continue
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        (d / "tokenizer.json").write_text(byte_tokenizer())
        (d / "expected.json").write_text(json.dumps({
            "transformers": transformers.__version__, "torch": torch.__version__,
            "ids": seq, "logprobs": lp}) + "\n")
        # The folder as saved must give the same numbers (what the Rust test loads).
        stored = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
        diff = max(abs(a - b) for a, b in zip(logprobs(stored, seq), lp))
        assert diff < 1e-6, f"{name}: reloaded folder differs by {diff}"
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {size / 1024:.0f} KB, {len(lp)} log-probs, reload max |diff| {diff:.1e}")
    for name, make in REFUSED.items():
        if not args.check:
            make().save_pretrained(OUT / name)
            print(f"{name}: config.json only")
    if args.check and worst > 1e-6:
        sys.exit(f"stored folders differ from expected.json by {worst}")


if __name__ == "__main__":
    main()
