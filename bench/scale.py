#!/usr/bin/env python3
"""softprompt vs PyTorch + PEFT on 0.5B-3B model shapes, with random weights.

No real weights are needed: `make` writes a model with the exact config of a real checkpoint
and random bf16 weights, as an HF folder and as two GGUFs (Q8_0, Q4_K) holding the same model.
Needs torch, transformers, peft, gguf, numpy (e.g. /work/venv-ref/bin/python).

    PY=/work/venv-ref/bin/python; SP=target/debug/softprompt  # the dev profile is optimized
    $PY bench/scale.py make --shape qwen2.5-0.5b --out /data/scale/qwen2.5-0.5b [--seed 0]
    $PY bench/scale.py run --softprompt $SP --shapes qwen2.5-0.5b,llama-3.2-1b \\
        --formats f32,bf16,q8_0,q4_k,bf16-rc --root /data/scale --runs 3 [--threads T] \\
        [--json-out scale.json] [--workloads train,decode,decode8,classify] [--no-torch]
    $PY bench/scale.py threads --softprompt $SP --model DIR/q8_0.gguf --weights quantized --max 16
    $PY bench/scale.py long --softprompt $SP --model DIR/hf --weights bf16
    $PY bench/scale.py check --softprompt $SP --dir DIR    # HF vs GGUF vs transformers logprobs
    $PY bench/scale.py selftest                            # Q4_K round trip, Q/K permutation

Shapes: qwen2.5-0.5b, llama-3.2-1b, smollm2-1.7b, qwen2.5-3b (the real configs), and for
self-tests tiny (llama, hidden 64), tiny-qwen2 (qkv biases, Qwen vocab) and tiny-llama3
(llama3 RoPE scaling, Llama 3 vocab); the last two have dims that are multiples of 256, so
their q4_k file really is Q4_K (tiny's rows of 64/128 fall back to Q5_0, as llama.cpp does).

Workloads (ids, shapes and steps as bench/pytorch_peft.py and `softprompt bench`): W1 train
step (8 x 128 real tokens + 20 virtual, AdamW), decode batch 1 and batch 8 (64 greedy tokens
after 16; tokens after the first per second, batch 8 aggregate), classify (64 x 64 in batches
of 16), model load time. A format FMT-rc (e.g. bf16-rc) is W1 only, trained with
`--recompute` (activation checkpointing). Every softprompt workload and every PyTorch (dtype, workload) runs
in its own process, so each peak RSS is that workload's own.
"""
import argparse
import glob
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

# Configs as in each checkpoint's config.json (the source is named per shape).
SHAPES = {
    # Qwen/Qwen2.5-0.5B config.json
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, max_position_embeddings=32768, sliding_window=32768,
                         max_window_layers=24, use_sliding_window=False,
                         bos_token_id=151643, eos_token_id=151643),
    # meta-llama/Llama-3.2-1B config.json
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=8192),
                         bos_token_id=128000, eos_token_id=128001),
    # HuggingFaceTB/SmolLM2-1.7B config.json
    "smollm2-1.7b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192,
                         vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=8192,
                         bos_token_id=1, eos_token_id=2),
    # Qwen/Qwen2.5-3B config.json
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, intermediate_size=11008,
                       vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=32768, sliding_window=32768,
                       max_window_layers=36, use_sliding_window=False,
                       bos_token_id=151643, eos_token_id=151643),
    # Self-test shapes (not real models).
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=49152,
                 tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
                 max_position_embeddings=8192, bos_token_id=1, eos_token_id=2),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                       vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=32768,
                       bos_token_id=151643, eos_token_id=151643),
    "tiny-llama3": dict(model_type="llama", hidden_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                        intermediate_size=512, vocab_size=128256, tie_word_embeddings=True,
                        rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0,
                                          original_max_position_embeddings=8192),
                        bos_token_id=128000, eos_token_id=128001),
}
ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
WORKLOADS = ["train", "decode", "decode8", "classify"]


def ids(n, salt):
    """bench.rs `ids`: deterministic pseudo-text ids in the ordinary vocabulary range."""
    return [300 + ((t * 2654435761 + salt * 977) & 0xFFFFFFFF) % 20000 for t in range(n)]


def default_bin():
    rel = "target/release/softprompt"
    return rel if os.path.exists(rel) else "target/debug/softprompt"


# ----------------------------------------------------------------------------- make

def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def tensor_specs(c):
    """(HF name, shape, kind) of every stored tensor; kind: embed, mat, norm, bias."""
    h, ffn, hd = c["hidden_size"], c["intermediate_size"], head_dim(c)
    nq, nkv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    specs = [("model.embed_tokens.weight", (c["vocab_size"], h), "embed")]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        specs += [(p + "input_layernorm.weight", (h,), "norm"),
                  (p + "self_attn.q_proj.weight", (nq, h), "mat"),
                  (p + "self_attn.k_proj.weight", (nkv, h), "mat"),
                  (p + "self_attn.v_proj.weight", (nkv, h), "mat"),
                  (p + "self_attn.o_proj.weight", (h, nq), "mat"),
                  (p + "post_attention_layernorm.weight", (h,), "norm"),
                  (p + "mlp.gate_proj.weight", (ffn, h), "mat"),
                  (p + "mlp.up_proj.weight", (ffn, h), "mat"),
                  (p + "mlp.down_proj.weight", (h, ffn), "mat")]
        if c["model_type"] == "qwen2":
            specs += [(p + f"self_attn.{x}_proj.bias", (n,), "bias")
                      for x, n in [("q", nq), ("k", nkv), ("v", nkv)]]
    specs.append(("model.norm.weight", (h,), "norm"))
    if not c["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (c["vocab_size"], h), "mat"))
    return specs


def bf16_round(x):
    """Round f32 to the nearest bf16 (ties to even); returns f32 values that are exact bf16."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def blocks(name, shape, kind, seed, std):
    """The tensor's values (bf16-exact f32) in row blocks of <= 16M values, deterministic per
    (seed, name, block), so the HF folder and both GGUFs hold the same numbers."""
    if kind == "norm":
        yield np.ones(shape, np.float32)
        return
    cols = shape[1] if len(shape) == 2 else 1
    step = max(1, (1 << 24) // cols)
    for i, r0 in enumerate(range(0, shape[0], step)):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i])
        n = min(step, shape[0] - r0)
        yield bf16_round(rng.standard_normal((n,) + tuple(shape[1:]), np.float32) * std)


def write_hf(out, c, seed, std, shard_mb):
    """config.json (built by transformers), bf16 safetensors streamed tensor by tensor (sharded
    with an index like transformers when over shard_mb), tokenizer files copied."""
    from transformers import AutoConfig
    os.makedirs(out, exist_ok=True)
    kw = {k: v for k, v in c.items() if k != "model_type"}
    cfg = AutoConfig.for_model(c["model_type"], architectures=[ARCH_CLASS[c["model_type"]]],
                               dtype="bfloat16", **kw)
    cfg.save_pretrained(out)
    specs = tensor_specs(c)
    shards, size = [[]], 0
    for s in specs:
        n = math.prod(s[1]) * 2
        if shards[-1] and size + n > shard_mb * 1e6:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += n
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for fname, shard in zip(names, shards):
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, _ in shard:
            n = math.prod(shape) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(os.path.join(out, fname), "wb") as fo:
            fo.write(struct.pack("<Q", len(hb)) + hb)
            for name, shape, kind in shard:
                for b in blocks(name, shape, kind, seed, std):
                    fo.write((b.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    if len(shards) > 1:
        total = sum(math.prod(s[1]) * 2 for s in specs)
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as fo:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fo, indent=2)
    return names


def smollm2_tokenizer(binary):
    """The SmolLM2 HF tokenizer files (exported once) and the path of its GGUF."""
    tok = "/tmp/sp-smollm2-tok"
    if not os.path.exists(os.path.join(tok, "tokenizer.json")):
        subprocess.run([binary, "export", "--model", "smollm2-135m", "--out", tok,
                        "--tokenizer-only"], check=True)
    cache = os.environ.get("SOFTPROMPT_CACHE") or os.path.expanduser("~/.cache/softprompt")
    ggufs = sorted(glob.glob(os.path.join(cache, "models", "SmolLM2*.gguf")))
    if not ggufs:
        sys.exit(f"no SmolLM2 GGUF under {cache}/models (run `{binary} info` once)")
    return tok, ggufs[0]


def quantize_q4_k(x):
    """Q4_K blocks of x [rows, cols] (cols % 256 == 0): per 256 values, 8 sub-blocks of 32 with
    6-bit scale and min (relative to f16 d, dmin), 4-bit values; min/max per sub-block."""
    import gguf
    b = x.reshape(-1, 8, 32).astype(np.float32)
    n = b.shape[0]
    mn = np.minimum(b.min(-1), 0.0)
    scale = (b.max(-1) - mn) / 15.0
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = ((-mn).max(-1) / 63.0).astype(np.float16)
    df, dmf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df > 0, np.round(scale / df), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmf > 0, np.round(-mn / dmf), 0).clip(0, 63).astype(np.uint8)
        es, em = (df * sc)[..., None], (dmf * m)[..., None]
        q = np.where(es > 0, np.round((b + em) / es), 0).clip(0, 15).astype(np.uint8)
    scales = np.empty((n, 12), np.uint8)
    scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    q = q.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    out = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2),
                          scales, qs], axis=1)
    assert out.shape[1] == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K][1]
    return out.reshape(x.shape[0], -1)


def quantize(x, qt):
    import gguf
    if qt == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(x)
    return gguf.quants.quantize(x, qt)


def llamacpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf `permute` of Q/K rows (llama arch): HF row h*hd + j*hd/2 + i
    goes to GGUF row h*hd + 2i + j."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_rope_factors(c):
    """llama.cpp's rope_freqs.weight for rope_type llama3 (LlamaModel.generate_extra_tensors)."""
    r, hd = c["rope_scaling"], head_dim(c)
    lo, hi, old = r["low_freq_factor"], r["high_freq_factor"], r["original_max_position_embeddings"]
    out = []
    for i in range(0, hd, 2):
        wavelen = 2 * math.pi * c["rope_theta"] ** (i / hd)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(r["factor"])
        else:
            s = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - s) / r["factor"] + s))
    return np.array(out, np.float32)


GGUF_PARTS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_PARTS[module]}.{kind}"


def write_gguf(path, c, seed, std, fmt, tok_gguf, name):
    """The same weights as the HF folder as a GGUF: matrices in `fmt` (Q4_K rows that are not
    whole 256-blocks fall back to Q5_0 as in llama.cpp), token_embd Q8_0, norms and biases F32,
    llama Q/K rows permuted as llama.cpp's converter does, tokenizer.* copied from SmolLM2."""
    import gguf
    Q = gguf.GGMLQuantizationType
    arch, hd = c["model_type"], head_dim(c)
    mat_q = {"q8_0": Q.Q8_0, "q4_k": Q.Q4_K}[fmt]
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S}[fmt])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(c["vocab_size"])
    for fld in gguf.GGUFReader(tok_gguf).fields.values():
        if fld.name.startswith("tokenizer."):
            sub = fld.types[-1] if fld.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(fld.name, fld.contents(), fld.types[0], sub_type=sub)

    plan = []  # (gguf name, hf spec, type)
    if c.get("rope_scaling", {}).get("rope_type") == "llama3":
        plan.append(("rope_freqs.weight", None, Q.F32))
    counts = {}
    for spec in tensor_specs(c):
        hf, shape, kind = spec
        if kind in ("norm", "bias"):
            qt = Q.F32
        elif kind == "embed":
            qt = Q.Q8_0
        elif mat_q == Q.Q4_K and shape[1] % 256:
            qt = Q.Q5_0
        else:
            qt = mat_q
        counts[qt.name] = counts.get(qt.name, 0) + 1
        plan.append((gguf_name(hf), spec, qt))
    for gname, spec, qt in plan:
        shape = spec[1] if spec else (hd // 2,)
        if qt == Q.F32:
            w.add_tensor_info(gname, shape, np.dtype(np.float32), math.prod(shape) * 4)
        else:
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            bshape = (shape[0], shape[1] // bs * ts)
            w.add_tensor_info(gname, bshape, np.dtype(np.uint8), math.prod(bshape), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for gname, spec, qt in plan:
        if spec is None:
            w.write_tensor_data(llama3_rope_factors(c))
            continue
        hf, shape, kind = spec
        parts = []
        for b in blocks(hf, shape, kind, seed, std):
            if arch == "llama" and gname.split(".")[-2] in ("attn_q", "attn_k"):
                assert b.shape[0] == shape[0], "Q/K matrix split into blocks"
                n_head = c["num_attention_heads" if "attn_q" in gname else "num_key_value_heads"]
                b = llamacpp_permute(b, n_head)
            parts.append(b if qt == Q.F32 else quantize(b, qt))
        w.write_tensor_data(np.ascontiguousarray(np.concatenate(parts)))
    w.close()
    return counts


def cmd_make(a):
    c = SHAPES[a.shape]
    specs = tensor_specs(c)
    total = sum(math.prod(s[1]) for s in specs)
    embed = math.prod(specs[0][1])
    print(f"{a.shape}: {total / 1e6:.1f}M parameters ({(total - embed) / 1e6:.1f}M without the "
          f"{embed / 1e6:.1f}M embedding), bf16 {total * 2 / 1e9:.2f} GB")
    tok_dir, tok_gguf = smollm2_tokenizer(a.softprompt)
    t = time.perf_counter()
    hf = os.path.join(a.out, "hf")
    files = write_hf(hf, c, a.seed, a.std, a.shard_mb)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"]:
        if os.path.exists(os.path.join(tok_dir, name)):
            shutil.copy(os.path.join(tok_dir, name), hf)
    print(f"  {hf}: {', '.join(files)} ({time.perf_counter() - t:.1f} s)")
    for fmt in ["q8_0", "q4_k"]:
        t = time.perf_counter()
        p = os.path.join(a.out, f"{fmt}.gguf")
        counts = write_gguf(p + ".tmp", c, a.seed, a.std, fmt, tok_gguf, f"random {a.shape}")
        os.replace(p + ".tmp", p)
        print(f"  {p}: {os.path.getsize(p) / 1e6:.0f} MB, tensor types {counts} "
              f"({time.perf_counter() - t:.1f} s)")
    with open(os.path.join(a.out, "made.json"), "w") as fo:
        json.dump({"shape": a.shape, "seed": a.seed, "std": a.std, "params": total}, fo)


def ensure_made(root, shape, binary):
    d = os.path.join(root, shape)
    if not os.path.exists(os.path.join(d, "made.json")):
        cmd_make(argparse.Namespace(shape=shape, out=d, seed=0, std=0.02, shard_mb=1000,
                                    softprompt=binary))
    return d


# ----------------------------------------------------------------------------- softprompt

def sp_bench(binary, model, weights, only, runs, threads=None, extra=()):
    """One `softprompt bench --json --only X` process: its JSON, or None (stderr printed)."""
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    cmd = [binary, "bench", "--model", model, "--weights", weights, "--runs", str(runs),
           "--json", "--only", only, *extra]
    o = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if o.returncode != 0:
        print(f"FAILED ({o.returncode}): {' '.join(cmd)}\n{o.stderr.strip()[-2000:]}",
              file=sys.stderr)
        return None
    try:
        v = json.loads(o.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"no JSON from {' '.join(cmd)}:\n{o.stdout[-1000:]}", file=sys.stderr)
        return None
    row = dict(v["rows"][0]) if v.get("rows") else {}  # `--only peak` has no rows
    for k, val in v.items():
        if k != "rows":
            row["_" + k] = val  # top level: peak_rss_mib, load_s, peak_gflops, weights, ...
    return row


def add_ceilings(row, work, peak):
    """Fill of_peak / of_bandwidth_bound from a separate `--only peak` run (the bench measures
    its ceilings only when it runs every workload or `peak`), as bench.rs computes them."""
    if row is None or not peak:
        return
    if row.get("of_peak") is None and row.get("gflops") and peak.get("_peak_gflops"):
        row["of_peak"] = row["gflops"] / peak["_peak_gflops"]
    bw, nbytes = peak.get("_bandwidth_gbs"), row.get("bytes_per_step")
    if row.get("of_bandwidth_bound") is None and bw and nbytes and row.get("throughput"):
        toks = 8 if work == "decode8" else 1
        row["of_bandwidth_bound"] = row["throughput"] / (toks * bw * 1e9 / nbytes)


def sp_value(row, work):
    """The cell's number: seconds per step for train, throughput otherwise."""
    if row is None:
        return None
    return row.get("median") if work == "train" else row.get("throughput")


# ----------------------------------------------------------------------------- PyTorch

def torch_worker(a):
    """One (dtype, workload) in this process; prints one JSON line."""
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    res = {"dtype": a.dtype, "work": a.work, "threads": a.threads}
    if a.work == "matmul":
        cfg = json.load(open(os.path.join(a.hf, "config.json")))
        h, ffn, m = cfg["hidden_size"], cfg["intermediate_size"], 1184  # m = 8 x 148 (W1)
        best = 0.0
        for k, n in [(h, ffn), (ffn, h)]:
            x, w = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
            torch.matmul(x, w)
            for _ in range(5):
                t = time.perf_counter()
                torch.matmul(x, w)
                best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
        res["gflops"] = best
    else:
        from peft import PromptTuningConfig, TaskType, get_peft_model
        from transformers import AutoModelForCausalLM
        t = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(a.hf, dtype=dt)
        res["load_s"] = time.perf_counter() - t
        model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                        num_virtual_tokens=20))
        trainable = [p for p in model.parameters() if p.requires_grad]
        res["prompt_dtype"] = str(trainable[0].dtype)
        res.update(torch_workload(model, a.work, a.runs, a.seq))
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def torch_workload(model, work, runs, seq):
    import torch
    if work == "train":
        x = torch.tensor([ids(1, i) + ids(seq - 1, i + 100) for i in range(8)])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        s = statistics.median(times[1:])
        return {"median": s, "throughput": 8 * (seq + 20) / s}
    model.eval()
    with torch.no_grad():
        if work in ("decode", "decode8"):
            b = 1 if work == "decode" else 8
            text = torch.tensor([ids(16, 7 + i) for i in range(b)])
            kw = dict(input_ids=text, attention_mask=torch.ones_like(text), do_sample=False,
                      pad_token_id=0)
            model.generate(max_new_tokens=4, **kw)  # warm-up (the first call is seconds slower)
            rates = []
            for _ in range(runs):
                stamps = []

                class Clock:
                    def put(self, _v):
                        stamps.append(time.perf_counter())

                    def end(self):
                        pass

                model.generate(max_new_tokens=64, min_new_tokens=64, streamer=Clock(), **kw)
                # stamps[0] is the prompt echo, stamps[1] the first new token.
                rates.append((len(stamps) - 2) * b / (stamps[-1] - stamps[1]))
            r = statistics.median(rates)
            return {"median": 1 / r, "throughput": r}
        if work == "classify":
            batch = [ids(64, i) for i in range(64)]
            model(input_ids=torch.tensor(batch[:16]))  # warm-up
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                for c in range(0, 64, 16):
                    logits = model(input_ids=torch.tensor(batch[c:c + 16])).logits
                    _ = logits[:, -1, [4917, 3904]].float().log_softmax(-1)
                times.append(time.perf_counter() - t)
            s = statistics.median(times)
            return {"median": s, "throughput": 64 / s}
    raise ValueError(work)


def torch_run(hf, dtype, work, runs, threads, seq=128):
    cmd = [sys.executable, os.path.abspath(__file__), "torch-worker", "--hf", hf, "--dtype",
           dtype, "--work", work, "--runs", str(runs), "--threads", str(threads), "--seq", str(seq)]
    o = subprocess.run(cmd, capture_output=True, text=True)
    if o.returncode != 0:
        print(f"FAILED ({o.returncode}): torch {dtype} {work}\n{o.stderr.strip()[-2000:]}",
              file=sys.stderr)
        return None
    return json.loads(o.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- reports

def f(v, spec=".2f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def machine_info(binary):
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    vers = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ["torch", "transformers", "peft", "gguf"]:
        try:
            vers[mod] = importlib.metadata.version(mod)
        except importlib.metadata.PackageNotFoundError:
            vers[mod] = "?"
    try:
        vers["softprompt"] = subprocess.run([binary, "--version"], capture_output=True,
                                            text=True).stdout.strip()
    except OSError:
        vers["softprompt"] = "?"
    info = {"cpu": model, "cores": os.cpu_count(), "loadavg": os.getloadavg(), "versions": vers}
    print(f"machine: {model}, {os.cpu_count()} cores; load average at start "
          f"{info['loadavg'][0]:.2f}; " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    return info


def extras(row):
    """softprompt's roofline keys, whichever the JSON has."""
    if row is None:
        return ""
    cells = []
    if row.get("gflops") is not None:
        cells.append(f"{row['gflops']:.0f} GFLOP/s")
    if row.get("of_peak") is not None:
        cells.append(f"{100 * row['of_peak']:.0f}% of GEMM peak")
    if row.get("bytes_per_step") is not None:
        cells.append(f"{row['bytes_per_step'] / 1e6:.0f} MB/step")
    if row.get("of_bandwidth_bound") is not None:
        cells.append(f"{100 * row['of_bandwidth_bound']:.0f}% of bandwidth bound")
    return ", ".join(cells)


def shape_report(shape, sp, th, mm, peaks):
    """One Markdown table (workload x format) and the goals table for a shape."""
    units = {"train": "s/step", "decode": "tok/s", "decode8": "tok/s", "classify": "inputs/s",
             "load": "s"}
    print(f"\n### {shape}\n")
    print("| workload | format | softprompt | peak RSS MiB | PyTorch fp32 | RSS | PyTorch bf16 "
          "| RSS | vs PyTorch bf16 | RSS vs bf16 | softprompt roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    works = [w for w in WORKLOADS if any(w in rows for rows in sp.values())]
    for work in works + ["load"]:
        for fmt, rows in sp.items():
            if fmt.endswith("-rc") and work != "train":
                continue  # the -rc formats differ from their base only in training
            if work == "load":
                loads = [r.get("_load_s") for r in rows.values() if r and r.get("_load_s")]
                row, val = None, min(loads) if loads else None
                tv = {d: min([r["load_s"] for r in th.get(d, {}).values() if r and "load_s" in r],
                             default=None) for d in ["fp32", "bf16"]}
                trss = {d: None for d in tv}
            else:
                row = rows.get(work)
                val = sp_value(row, work)
                tv = {d: sp_value(th.get(d, {}).get(work), work) for d in ["fp32", "bf16"]}
                trss = {d: (th.get(d, {}).get(work) or {}).get("peak_rss_mib") for d in tv}
            rss = row.get("_peak_rss_mib") if row else None
            r = ratio(val, tv["bf16"])
            rname = "x time" if work in ("train", "load") else "x speed"
            u = units[work]
            print(f"| {work} | {fmt} | {f(val, '.3g', ' ' + u)} | {f(rss, '.0f')} | "
                  f"{f(tv['fp32'], '.3g')} | {f(trss['fp32'], '.0f')} | {f(tv['bf16'], '.3g')} | "
                  f"{f(trss['bf16'], '.0f')} | {f(r, '.2f', ' ' + rname)} | "
                  f"{f(ratio(rss, trss['bf16']))} | {extras(row)} |")
    print(f"\nmatmul peak (m = 1184, best of 5): PyTorch fp32 {f(mm.get('fp32'), '.1f')} GFLOP/s, "
          f"bf16 {f(mm.get('bf16'), '.1f')} GFLOP/s; softprompt `bench --only peak`: " + "; ".join(
              f"{k} {f(p.get('_peak_gflops'), '.1f')} GFLOP/s ({p.get('_peak_kernel')}), "
              f"{f(p.get('_bandwidth_gbs'), '.1f')} GB/s" for k, p in peaks.items() if p))
    return goals_report(shape, sp, th)


def goals_report(shape, sp, th):
    tw1 = th.get("bf16", {}).get("train") or {}
    t_s, t_rss = tw1.get("median"), tw1.get("peak_rss_mib")
    w1 = {fmt: rows.get("train") for fmt, rows in sp.items() if rows.get("train")}
    gb = lambda mib: None if mib is None else mib * 1048576 / 1e9  # noqa: E731
    goals = []
    cand = [(r["median"], fmt) for fmt, r in w1.items() if fmt != "f32"]
    if cand:
        s, fmt = min(cand)
        goals.append((f"W1 time <= 0.5x PyTorch bf16 step ({fmt})", ratio(s, t_s), 0.5,
                      f"{s:.3g} s vs {f(t_s, '.3g')} s"))
    for fmt, r in w1.items():
        base = fmt.removesuffix("-rc")
        bound = {"bf16": 0.5, "q8_0": 0.25, "q4_k": 0.25}.get(base)
        if bound:
            goals.append((f"W1 peak RSS <= {bound}x PyTorch bf16 W1 peak ({fmt})",
                          ratio(r["_peak_rss_mib"], t_rss), bound,
                          f"{r['_peak_rss_mib']:.0f} MiB vs {f(t_rss, '.0f')} MiB"))
        gbound = {"bf16": 12.0, "q8_0": 4.0, "q4_k": 4.0}.get(base)
        if shape == "qwen2.5-3b" and gbound:
            g = gb(r["_peak_rss_mib"])
            goals.append((f"W1 peak RSS <= {gbound:.0f} GB ({fmt})", g, gbound, f"{g:.2f} GB"))
    print("\n| goal | measured | met |\n|---|---|---|")
    out = []
    for name, got, bound, detail in goals:
        ok = None if got is None else got <= bound
        met = "n/a" if ok is None else "yes" if ok else "no"
        print(f"| {name} | {f(got)} ({detail}) | {met} |")
        out.append({"goal": name, "value": got, "bound": bound, "met": ok, "detail": detail})
    return out


def cmd_run(a):
    info = machine_info(a.softprompt)
    works = a.workloads.split(",")
    result = {"machine": info, "runs": a.runs, "threads": a.threads, "shapes": {}}
    for shape in a.shapes.split(","):
        d = ensure_made(a.root, shape, a.softprompt)
        model = {"f32": (d + "/hf", "f32"), "bf16": (d + "/hf", "bf16"),
                 "q8_0": (d + "/q8_0.gguf", "quantized"), "q4_k": (d + "/q4_k.gguf", "quantized")}
        sp, peaks = {}, {}
        for fmt in a.formats.split(","):
            # FORMAT-rc: training with `--recompute` (activation checkpointing); W1 only.
            base, rc = fmt.removesuffix("-rc"), fmt.endswith("-rc")
            m, w = model[base]
            extra = ("--recompute",) if rc else ()
            sp[fmt] = {x: sp_bench(a.softprompt, m, w, x, a.runs, a.threads, extra)
                       for x in (["train"] if rc else works)}
            peaks[fmt] = sp_bench(a.softprompt, m, w, "peak", 1, a.threads)
            for x, r in sp[fmt].items():
                add_ceilings(r, x, peaks[fmt])
            print(f"[{shape} {fmt}] " + ", ".join(f"{x} {f(sp_value(r, x), '.3g')}"
                                                  for x, r in sp[fmt].items()), file=sys.stderr)
        th, mm = {}, {}
        if not a.no_torch:
            for dt in a.torch_dtypes.split(","):
                th[dt] = {x: torch_run(d + "/hf", dt, x, a.runs, a.threads) for x in works}
                r = torch_run(d + "/hf", dt, "matmul", a.runs, a.threads)
                mm[dt] = r and r["gflops"]
                print(f"[{shape} torch {dt}] " + ", ".join(
                    f"{x} {f(sp_value(r, x), '.3g')}" for x, r in th[dt].items()), file=sys.stderr)
        goals = shape_report(shape, sp, th, mm, peaks)
        result["shapes"][shape] = {"softprompt": sp, "softprompt_peak": peaks, "torch": th,
                                   "torch_matmul_gflops": mm, "goals": goals}
        if a.json_out:
            with open(a.json_out, "w") as fo:
                json.dump(result, fo, indent=1)
    if a.json_out:
        print(f"\nraw numbers: {a.json_out}")


def cmd_threads(a):
    machine_info(a.softprompt)
    ns = sorted({1 << i for i in range(a.max.bit_length()) if 1 << i <= a.max} | {a.max})
    works = ["train", "decode", "classify"]
    res = {n: {x: sp_bench(a.softprompt, a.model, a.weights, x, a.runs, n) for x in works}
           for n in ns}
    print(f"\n{a.model} --weights {a.weights}\n")
    print("| threads | W1 tokens/s | eff | decode tok/s | eff | classify inputs/s | eff |")
    print("|---|---|---|---|---|---|---|")
    for n in ns:
        cells = []
        for x in works:
            v = (res[n][x] or {}).get("throughput")
            v1 = (res[1][x] or {}).get("throughput")
            cells += [f(v, ".3g"), f(ratio(v, None if v1 is None else n * v1))]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if a.json_out:
        json.dump(res, open(a.json_out, "w"), indent=1)


def hf_dir_for(binary, model):
    """An HF folder of the model for PyTorch: itself, the sibling `hf` of a made GGUF, or an
    export into /tmp."""
    if os.path.isdir(model):
        return model
    sib = os.path.join(os.path.dirname(os.path.abspath(model)), "hf")
    if os.path.exists(os.path.join(sib, "config.json")):
        return sib
    out = f"/tmp/scale-hf-{os.path.basename(model)}"
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([binary, "export", "--model", model, "--out", out], check=True)
    return out


def cmd_long(a):
    machine_info(a.softprompt)
    seqs = [int(s) for s in a.seqs.split(",")]
    hf = a.hf_dir or hf_dir_for(a.softprompt, a.model)
    rows = {f"softprompt {a.weights}": {}, "PyTorch fp32": {}, "PyTorch bf16": {}}
    for n in seqs:
        r = sp_bench(a.softprompt, a.model, a.weights, "train", a.runs, a.threads,
                     () if n == 128 else ("--seq", str(n)))
        rows[f"softprompt {a.weights}"][n] = r and (r["_peak_rss_mib"], r["median"] / (8 * n))
        if not a.no_torch:
            for dt in a.torch_dtypes.split(","):
                t = torch_run(hf, dt, "train", a.runs, a.threads, n)
                rows[f"PyTorch {dt}"][n] = t and (t["peak_rss_mib"], t["median"] / (8 * n))
    lo, hi = seqs[0], seqs[-1]
    print(f"\nW1 at 8 x N real tokens + 20 virtual; {a.model}\n")
    print("| side | " + " | ".join(f"RSS MiB {n} | s/token {n}" for n in seqs)
          + f" | RSS {hi}/{lo} | s/token {hi}/{lo} |")
    print("|---|" + "---|---|" * len(seqs) + "---|---|")
    for side, by in rows.items():
        cells = []
        for n in seqs:
            v = by.get(n)
            cells += [f(v and v[0], ".0f"), f(v and v[1], ".3g")]
        a_, b_ = by.get(lo), by.get(hi)
        cells += [f(ratio(b_ and b_[0], a_ and a_[0])), f(ratio(b_ and b_[1], a_ and a_[1]))]
        print(f"| {side} | " + " | ".join(cells) + " |")
    if a.json_out:
        json.dump({k: {str(n): v for n, v in by.items()} for k, by in rows.items()},
                  open(a.json_out, "w"), indent=1)


# ----------------------------------------------------------------------------- checks

def gguf_state_dict(path, c):
    """HF state dict of a made GGUF, dequantized by gguf-py and Q/K rows un-permuted."""
    import gguf
    import torch
    back = {v: k for k, v in GGUF_PARTS.items()}
    sd = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name == "rope_freqs.weight":
            continue
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in t.shape[::-1]])
        parts = t.name.split(".")
        if parts[0] != "blk":
            name = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight",
                    "output": "lm_head.weight"}[parts[0]]
        else:
            name = f"model.layers.{parts[1]}.{back[parts[2]]}.{parts[3]}"
            if c["model_type"] == "llama" and parts[2] in ("attn_q", "attn_k"):
                n = c["num_attention_heads" if parts[2] == "attn_q" else "num_key_value_heads"]
                x = (x.reshape(n, x.shape[0] // n // 2, 2, *x.shape[1:]).swapaxes(1, 2)
                     .reshape(x.shape))
        sd[name] = torch.from_numpy(np.array(x, np.float32))
    sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])  # tied
    return sd


def cmd_check(a):
    """softprompt's logprobs of one text from the HF folder and both GGUFs against transformers
    fp32 on the HF folder and on each GGUF's weights as gguf-py dequantizes them: max |diff|
    and correlation of the centred logprobs."""
    import torch
    from transformers import AutoModelForCausalLM
    text = "The quick brown fox jumps over the lazy dog, and then it runs far away to the hills."
    runs = [("hf", "f32"), ("hf", "bf16"), ("q8_0.gguf", "f32"), ("q8_0.gguf", "quantized"),
            ("q4_k.gguf", "f32"), ("q4_k.gguf", "quantized")]
    got, ref_ids = {}, None
    for m, w in runs:
        o = subprocess.run([a.softprompt, "score", "--model", os.path.join(a.dir, m), "--weights",
                            w, "--json", "--text", text], capture_output=True, text=True)
        if o.returncode != 0:
            print(f"FAILED: score {m} --weights {w}\n{o.stderr.strip()}", file=sys.stderr)
            continue
        v = json.loads(o.stdout.strip().splitlines()[-1])
        ref_ids = ref_ids or v["ids"]
        assert v["ids"] == ref_ids, f"{m}: different token ids"
        got[(m, w)] = np.array(v["logprobs"], np.float64)
    if ref_ids is None:
        sys.exit("softprompt score failed on every model")
    c = SHAPES[json.load(open(os.path.join(a.dir, "made.json")))["shape"]]
    model = AutoModelForCausalLM.from_pretrained(os.path.join(a.dir, "hf"), dtype=torch.float32)
    hf_sd = {k: v.clone() for k, v in model.state_dict().items()}
    refs = {}
    for m in ["hf", "q8_0.gguf", "q4_k.gguf"]:
        if m != "hf":
            model.load_state_dict({**hf_sd, **gguf_state_dict(os.path.join(a.dir, m), c)})
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([ref_ids])).logits[0].log_softmax(-1)
        refs[m] = lp[:-1].gather(1, torch.tensor(ref_ids[1:])[:, None])[:, 0].double().numpy()
    ref = refs["hf"]
    print(f"\n{len(ref_ids)} tokens; transformers fp32 logprobs: mean {ref.mean():.3f}, "
          f"std {ref.std():.3f}\n")
    print("| softprompt model | weights | vs transformers (HF): max abs diff | corr (centred) "
          "| vs transformers (same file, gguf-py dequantized): max abs diff |")
    print("|---|---|---|---|---|")
    res = {}
    for (m, w), v in got.items():
        v = v[-len(ref):]
        diff = float(np.abs(v - ref).max())
        corr = float(np.corrcoef(v - v.mean(), ref - ref.mean())[0, 1])
        same = float(np.abs(v - refs[m]).max())
        res[f"{m} {w}"] = (diff, corr, same)
        print(f"| {m} | {w} | {diff:.2e} | {corr:.5f} | {same:.2e} |")
    return res


def cmd_selftest(_a):
    """Q4_K quantizer round trip through gguf-py's dequantizer; llama.cpp permute inverted by
    the loader's formula (gguf/mod.rs qk_gguf_row)."""
    import gguf
    rng = np.random.default_rng(0)
    for scale, shift in [(0.02, 0.0), (1.0, 0.5), (3.0, -2.0)]:
        x = (rng.standard_normal((64, 512)) * scale + shift).astype(np.float32)
        y = gguf.quants.dequantize(quantize_q4_k(x), gguf.GGMLQuantizationType.Q4_K)
        rel = float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))
        # max error: half a step of the sub-block's (max - min) / 15, with 6-bit scale slack
        bound = (x.reshape(-1, 32).max(1) - np.minimum(x.reshape(-1, 32).min(1), 0)) / 15 * 0.75
        worst = float((np.abs(y - x).reshape(-1, 32).max(1) / bound).max())
        print(f"Q4_K round trip (std {scale}, mean {shift}): rms rel error {rel:.4f}, "
              f"worst max error {worst:.2f} of bound")
        assert rel < 0.12 and worst <= 1.0, (rel, worst)
    z = gguf.quants.dequantize(quantize_q4_k(np.zeros((2, 256), np.float32)),
                               gguf.GGMLQuantizationType.Q4_K)
    assert not z.any()
    for n_head, hd, cols in [(4, 16, 8), (2, 64, 3)]:
        w = rng.standard_normal((n_head * hd, cols)).astype(np.float32)
        p = llamacpp_permute(w, n_head)
        for r in range(n_head * hd):  # HF row r is GGUF row h*hd + 2i + j
            h, x = divmod(r, hd)
            j, i = divmod(x, hd // 2)
            assert (p[h * hd + 2 * i + j] == w[r]).all()
    print("permute: llama.cpp's Q/K permutation is the inverse of the loader's: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    sub = ap.add_subparsers(dest="cmd", required=True)
    threads = os.cpu_count()

    p = sub.add_parser("make", help="write a random-weight model (HF bf16 folder + 2 GGUFs)")
    p.add_argument("--shape", required=True, choices=list(SHAPES))
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=0.02, help="std of matrices, embeddings, biases")
    p.add_argument("--shard-mb", type=float, default=1000, help="HF shard size limit")
    p.add_argument("--softprompt", default=default_bin(), help="for the tokenizer export")

    p = sub.add_parser("run", help="softprompt vs PyTorch+PEFT per shape and format")
    p.add_argument("--softprompt", default=default_bin())
    p.add_argument("--shapes", required=True)
    p.add_argument("--formats", default="f32,bf16,q8_0,q4_k")
    p.add_argument("--root", required=True, help="models are made under ROOT/SHAPE if missing")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--no-torch", action="store_true", help="softprompt only")
    p.add_argument("--torch-dtypes", default="fp32,bf16",
                   help="PyTorch model dtypes to run (fp32 of a 3B model needs ~20 GB)")
    p.add_argument("--json-out")

    p = sub.add_parser("threads", help="thread scaling of W1, decode, classify")
    p.add_argument("--softprompt", default=default_bin())
    p.add_argument("--model", required=True)
    p.add_argument("--weights", default="f32")
    p.add_argument("--max", type=int, default=threads)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json-out")

    p = sub.add_parser("long", help="W1 at 8 x 128 and 8 x 1024 tokens")
    p.add_argument("--softprompt", default=default_bin())
    p.add_argument("--model", required=True)
    p.add_argument("--weights", default="f32")
    p.add_argument("--hf-dir", help="HF folder for PyTorch (default: found or exported)")
    p.add_argument("--seqs", default="128,1024")
    p.add_argument("--torch-dtypes", default="fp32,bf16")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json-out")

    p = sub.add_parser("check", help="HF vs GGUF vs transformers logprobs of a made model")
    p.add_argument("--softprompt", default=default_bin())
    p.add_argument("--dir", required=True)

    sub.add_parser("selftest", help="Q4_K round trip and Q/K permutation")

    p = sub.add_parser("torch-worker", help="(internal) one PyTorch workload")
    p.add_argument("--hf", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], required=True)
    p.add_argument("--work", choices=WORKLOADS + ["matmul"], required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--seq", type=int, default=128)

    a = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    {"make": cmd_make, "run": cmd_run, "threads": cmd_threads, "long": cmd_long,
     "check": cmd_check, "selftest": cmd_selftest, "torch-worker": torch_worker}[a.cmd](a)


if __name__ == "__main__":
    main()
