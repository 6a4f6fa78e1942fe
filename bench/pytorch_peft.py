#!/usr/bin/env python3
"""The `softprompt bench` workloads with PyTorch + transformers + PEFT, side by side.

Runs `softprompt bench --json` and the same three workloads in PyTorch on the same model
(exported from the GGUF with `softprompt export`, so both read identical f32 weights), then
prints one table with both and the ratio. Needs `torch`, `transformers` and `peft`:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch transformers peft
    cargo build --release -p softprompt-cli
    .venv-torch/bin/python bench/pytorch_peft.py --softprompt target/release/softprompt

Workloads (the same ids, shapes and steps as crates/softprompt-cli/src/bench.rs):
- W1: batch 8 x 128 real tokens + 20 virtual tokens, next-token loss on every real token,
  backward to the prompt, one AdamW step (PyTorch fp32 and bf16 autocast).
- decode: greedy generation of 64 tokens after 16 text tokens and a 20-token prompt, batch 1;
  tokens after the first, per second.
- classify: 64 inputs x 64 tokens in batches of 16, logits of 2 one-token labels at the end.
Peak RSS is each process's whole-run peak (ru_maxrss).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def ids(n, salt):
    """bench.rs `ids`: deterministic pseudo-text ids in the ordinary vocabulary range."""
    return [300 + ((t * 2654435761 + salt * 977) & 0xFFFFFFFF) % 20000 for t in range(n)]


def run_softprompt(binary, model, runs, weights):
    """`softprompt bench` per workload (one process each, so each peak RSS is its own)."""
    rows = {}
    for only in ["train", "decode", "classify"]:
        o = subprocess.run([binary, "bench", "--model", model, "--weights", weights,
                            "--runs", str(runs), "--json", "--only", only],
                           capture_output=True, text=True, check=True)
        v = json.loads(o.stdout)
        for r in v["rows"]:
            r["peak_rss_mib"] = v["peak_rss_mib"]
            rows[r["workload"]] = r
    return rows


def torch_side(hf_dir, runs, threads):
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20)
    model = get_peft_model(base, cfg)
    res = {}

    # W1
    x = torch.tensor([ids(1, i) + ids(127, i + 100) for i in range(8)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for name, dtype in [("fp32", None), ("bf16", torch.bfloat16)]:
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        res[f"W1 {name}"] = statistics.median(times[1:])

    model.eval()
    with torch.no_grad():
        # decode: 64 greedy tokens; time from the first generated token on.
        text = torch.tensor([ids(16, 7)])
        rates = []
        for _ in range(runs):
            stamps = []

            class Clock:
                def put(self, _v):
                    stamps.append(time.perf_counter())

                def end(self):
                    pass

            model.generate(input_ids=text, max_new_tokens=64, min_new_tokens=64,
                           do_sample=False, streamer=Clock())
            # stamps[0] is the prompt echo, stamps[1] the first new token.
            rates.append((len(stamps) - 2) / (stamps[-1] - stamps[1]))
        res["decode"] = statistics.median(rates)

        # classify: 64 x 64 tokens, batches of 16, two label logits at the last position.
        batch = [ids(64, i) for i in range(64)]
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            for c in range(0, 64, 16):
                logits = model(input_ids=torch.tensor(batch[c:c + 16])).logits
                _ = logits[:, -1, [4917, 3904]].log_softmax(-1)
            times.append(time.perf_counter() - t)
        res["classify"] = 64 / statistics.median(times)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--softprompt", default="target/release/softprompt")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hf-dir", default=None,
                    help="HF folder of the same model (default: exported into /tmp)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--weights", default="f32,bf16,quantized",
                    help="softprompt --weights formats to run, comma-separated")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    hf = a.hf_dir or f"/tmp/softprompt-bench-hf-{os.getpid()}"
    if a.hf_dir is None:
        subprocess.run([a.softprompt, "export", "--model", a.model, "--out", hf], check=True)
    ours = {w: run_softprompt(a.softprompt, a.model, a.runs, w) for w in a.weights.split(",")}
    theirs = torch_side(hf, a.runs, a.threads)

    print("| workload | softprompt | PyTorch+PEFT | softprompt / PyTorch |")
    print("|---|---|---|---|")
    for w, rows in ours.items():
        r = rows["W1 train step (8 x 128 + 20 virtual)"]
        for name in ["fp32", "bf16"]:
            t = theirs[f"W1 {name}"]
            print(f"| W1 step, softprompt {w} (peak {r['peak_rss_mib']:.0f} MiB) vs torch "
                  f"{name} | {r['median']:.2f} s | {t:.2f} s | {r['median'] / t:.2f}x time |")
    for w, rows in ours.items():
        dec = rows["decode, batch 1, 20 virtual tokens"]["throughput"]
        print(f"| decode batch 1, softprompt {w} | {dec:.1f} tok/s | {theirs['decode']:.1f} "
              f"tok/s | {dec / theirs['decode']:.2f}x speed |")
    for w, rows in ours.items():
        cls = rows["classify 64 x 64 tokens, 2 labels"]["throughput"]
        print(f"| classify 64 x 64, softprompt {w} | {cls:.1f} inputs/s | "
              f"{theirs['classify']:.1f} inputs/s | {cls / theirs['classify']:.2f}x speed |")
    print(f"\nPyTorch peak RSS {theirs['peak_rss_mib']:.0f} MiB (whole run, fp32 and bf16 "
          f"steps); threads {a.threads}; load average at start: {load0:.2f}")

    # The speed issue's goals, each against the best softprompt format measured here.
    def best(workload, key, lower):
        vals = [(rows[workload][key], w, rows[workload]) for w, rows in ours.items()]
        return (min if lower else max)(vals, key=lambda v: v[0])
    w1, w1_fmt, w1_row = best("W1 train step (8 x 128 + 20 virtual)", "median", True)
    dec, dec_fmt, _ = best("decode, batch 1, 20 virtual tokens", "throughput", False)
    cls, cls_fmt, _ = best("classify 64 x 64 tokens, 2 labels", "throughput", False)
    goals = [
        (f"W1 <= 0.5x PyTorch fp32 ({w1_fmt})", w1 / theirs["W1 fp32"], 0.5, True, "x time"),
        (f"W1 <= 1.0x PyTorch bf16 ({w1_fmt})", w1 / theirs["W1 bf16"], 1.0, True, "x time"),
        (f"W1 peak RSS <= 1.5 GB ({w1_fmt})", w1_row["peak_rss_mib"] * 1048576 / 1e9, 1.5,
         True, "GB"),
        (f"decode >= 120 tok/s ({dec_fmt})", dec, 120.0, False, "tok/s"),
        (f"classify >= 10x PEFT ({cls_fmt})", cls / theirs["classify"], 10.0, False, "x speed"),
    ]
    print("\n| goal | measured | met |\n|---|---|---|")
    for name, got, bound, lower, unit in goals:
        ok = got <= bound if lower else got >= bound
        print(f"| {name} | {got:.2f} {unit} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    sys.exit(main())
