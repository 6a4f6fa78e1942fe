#!/usr/bin/env python3
"""The five-task table of RESULTS.md from `softprompt compare` folders.

    for t in copa cb sst2 wic boolq; do
      softprompt compare --task $t --data-root ../shared/data --out runs/table/$t --steps 100 \
        --batch-size 4 --shots 0 --second-task none \
        --methods hard,prompt,residual,deep,ensemble,lora,full [--eval-limit N] [--max-len N]
    done
    python3 scripts/five_task_table.py runs/table/{copa,cb,sst2,wic,boolq}

prints, per task, each method's validation accuracy, then the trainable parameters, artifact
bytes and training time of each method, and the gap closure: for the best prompt method
(residual, deep or ensemble) of each task, (best - plain) / (full - plain), and the same with
the gaps averaged over the tasks. Standard library only.
"""
import json
import sys
from pathlib import Path

ROWS = [
    ("zero-shot hard prompt", "hard"),
    ("plain prompt tuning", "prompt_tuning"),
    ("residual", "residual"),
    ("deep (prefix)", "deep"),
    ("ensemble of the 3", "ensemble"),
    ("LoRA r=8 q/v", "lora"),
    ("full fine-tuning", "full_finetuning"),
]
BEST_OF = ("residual", "deep", "ensemble")


def acc(c, key):
    if key == "hard":
        zs = (c.get("hard") or {}).get("zero_shot") or []
        return max((z["accuracy"] for z in zs), default=None)
    s = c.get(key)
    return s["accuracy"] if s else None


def human(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def main(dirs):
    runs = [(Path(d).name, json.loads((Path(d) / "compare.json").read_text())) for d in dirs]
    names = [n for n, _ in runs]
    print("| method | " + " | ".join(f"{n} ({c['prompt_tuning']['n']})" for n, c in runs) + " | mean |")
    print("|---|" + "---:|" * (len(runs) + 1))
    for label, key in ROWS:
        vals = [acc(c, key) for _, c in runs]
        cells = ["n/a" if v is None else f"{100 * v:.1f}" for v in vals]
        mean = sum(vals) / len(vals) if all(v is not None for v in vals) else None
        print(f"| {label} | " + " | ".join(cells) + f" | {'n/a' if mean is None else f'{100 * mean:.1f}'} |")
    print()
    print("| method | trainable parameters | artifact | training time per task (" + ", ".join(names) + ") |")
    print("|---|---:|---:|---|")
    c = runs[0][1]
    params = {key: c[key]["trainable_parameters"] for _, key in ROWS[1:]}
    if params["residual"] == params["prompt_tuning"]:
        # Older compare builds counted the saved prompt only: add the MLP trained beside it
        # (2 D M + M + 3 D), folded away on save; the ensemble's count is its members'.
        d = params["prompt_tuning"] // c["config"]["prompt"]["num_virtual_tokens"]
        m = c["config"]["residual"]["bottleneck"]
        params["residual"] += 2 * d * m + m + 3 * d
        params["ensemble"] = params["prompt_tuning"] + params["residual"] + params["deep"]
    for label, key in ROWS[1:]:
        c0 = c[key]
        times = ", ".join(f"{c[key]['train_seconds'] / 60:.1f}" for _, c in runs)
        print(f"| {label} | {params[key]:,} | {human(c0['artifact_bytes'])}B | {times} min |")
    print()
    ms = lambda x: "n/a" if x is None else f"{x:.0f}"
    print("| inference per example, ms (rank classification, 2 timed rounds, best) | "
          + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(runs))
    for label, key in (("zero-shot hard prompt", "zero_shot_ms"), ("input prompt (plain, residual)", "prompt_tuning_ms"),
                       ("deep prompt", "deep_ms"), ("no prompt (full fine-tuning, merged LoRA)", "full_finetuning_ms")):
        print(f"| {label} | " + " | ".join(ms(c["timing"].get(key)) for _, c in runs) + " |")
    print()
    gaps, closed = [], []
    for n, c in runs:
        plain, full = acc(c, "prompt_tuning"), acc(c, "full_finetuning")
        best_key = max(BEST_OF, key=lambda k: acc(c, k))
        best = acc(c, best_key)
        gap = full - plain
        frac = (best - plain) / gap if gap > 0 else float("nan")
        gaps.append(gap)
        closed.append(best - plain)
        print(f"- {n}: plain {100 * plain:.1f}, full {100 * full:.1f}, best prompt method {best_key} "
              f"{100 * best:.1f}: gap {100 * gap:+.1f} pt, closed {100 * (best - plain):+.1f} pt"
              + (f" ({100 * frac:.0f}%)" if gap > 0 else " (no gap: plain >= full)"))
    mg, mc = sum(gaps) / len(gaps), sum(closed) / len(closed)
    print(f"- averaged over the tasks: gap {100 * mg:+.1f} pt, closed {100 * mc:+.1f} pt"
          + (f" ({100 * mc / mg:.0f}% of the gap)" if mg > 0 else ""))
    for key in BEST_OF:
        m = sum(acc(c, key) - acc(c, "prompt_tuning") for _, c in runs) / len(runs)
        print(f"- {key} alone, averaged: {100 * m:+.1f} pt over plain"
              + (f" ({100 * m / mg:.0f}% of the gap)" if mg > 0 else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
