"""The Python package against the CLI, on the real SmolLM2-135M (model cache as for the Rust
tests). Run by scripts/python_tests.sh; SOFTPROMPT_BIN names the CLI binary (default: the
repository's target/debug/softprompt).

Training runs use the built-in `demo` task (no data download): 4 steps of batch 4 take a few
seconds.
"""

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import softprompt as sp

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("SOFTPROMPT_BIN", ROOT / "target" / "debug" / "softprompt"))

# A short run: every option the CLI and the package must agree on.
RUN = dict(
    task="demo",
    steps=4,
    batch_size=4,
    virtual_tokens=4,
    seed=3,
    lr=0.05,
    warmup=1,
    eval_every=2,
    eval_limit=8,
    checkpoint_every=2,
)
RUN_FLAGS = [
    "--task", "demo", "--steps", "4", "--batch-size", "4", "--virtual-tokens", "4",
    "--seed", "3", "--lr", "0.05", "--warmup", "1", "--eval-every", "2",
    "--eval-limit", "8", "--checkpoint-every", "2",
]

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Review: a gripping, funny and humane film\nSentiment: positive",
]


def cli(*args):
    """Run the CLI; its stdout, or a failure with its stderr."""
    if not BIN.exists():
        pytest.fail(f"{BIN} not found: build it with `cargo build -p softprompt-cli`")
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"softprompt {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


def log(out):
    """train_log.jsonl of a run: (step lines, eval lines)."""
    lines = [json.loads(l) for l in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return [l for l in lines if l["type"] == "step"], [l for l in lines if l["type"] == "eval"]


@pytest.fixture(scope="session")
def model():
    return sp.Model.load("smollm2-135m")


@pytest.fixture(scope="session")
def exact_model():
    """`softprompt score` runs in exact mode (the server's): its bits need exact=True here."""
    return sp.Model.load("smollm2-135m", exact=True)


@pytest.fixture(scope="session")
def runs(model, tmp_path_factory):
    """The same short run by the CLI and by the package: (cli_out, py_out, events, summary)."""
    base = tmp_path_factory.mktemp("runs")
    cli("train", *RUN_FLAGS, "--out", base / "cli", "--quiet")
    events = []
    summary = sp.train(model, out=base / "py", callback=events.append, **RUN)
    return base / "cli", base / "py", events, summary


def test_score_equals_cli(exact_model):
    model = exact_model
    got = model.score(TEXTS)
    assert len(got) == 2
    for text, lp in zip(TEXTS, got):
        want = json.loads(cli("score", "--json", "--text", text))
        assert lp.dtype == np.float64
        # SmolLM2 adds no <bos>: every token but the first has a predictor.
        assert len(want["logprobs"]) == len(want["ids"]) - 1 == len(lp)
        np.testing.assert_array_equal(lp, np.array(want["logprobs"]))
        assert model.tokenize(text) == want["ids"]
    # A single str is one text.
    np.testing.assert_array_equal(model.score(TEXTS[0])[0], got[0])


def test_score_with_prompt_equals_cli(exact_model, runs):
    model = exact_model
    _, py_out, _, _ = runs
    prompt = sp.SoftPrompt.load(py_out)
    want = json.loads(cli("score", "--json", "--text", TEXTS[1], "--prompt", py_out))
    # With a prompt the first token is predicted too.
    assert len(want["logprobs"]) == len(want["ids"])
    for p in (prompt, py_out, str(py_out)):
        (lp,) = model.score([TEXTS[1]], prompt=p)
        np.testing.assert_array_equal(lp, np.array(want["logprobs"]))
    assert not np.array_equal(model.score([TEXTS[1]])[0], lp[1:])


def test_train_losses_equal_cli(runs):
    cli_out, py_out, events, summary = runs
    cli_steps, cli_evals = log(cli_out)
    py_steps, py_evals = log(py_out)
    assert [s["step"] for s in py_steps] == [1, 2, 3, 4]
    assert [s["loss"] for s in py_steps] == [s["loss"] for s in cli_steps]
    assert [s["grad_norm"] for s in py_steps] == [s["grad_norm"] for s in cli_steps]
    assert [(e["step"], e["value"], e["loss"]) for e in py_evals] == [
        (e["step"], e["value"], e["loss"]) for e in cli_evals
    ]
    # Same saved prompt, bit for bit.
    np.testing.assert_array_equal(
        sp.SoftPrompt.load(py_out).embeddings, sp.SoftPrompt.load(cli_out).embeddings
    )
    for f in ("adapter_config.json", "adapter_model.safetensors", "softprompt.json", "curve.png",
              "last/adapter_model.safetensors"):
        assert (py_out / f).is_file(), f
    # The callback saw each step and evaluation, with the log's numbers.
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message" and "start" in kinds
    assert [e["loss"] for e in events if e["type"] == "step"] == [s["loss"] for s in py_steps]
    assert [e["value"] for e in events if e["type"] == "eval"] == [e["value"] for e in py_evals]
    assert summary["steps_done"] == 4 and not summary["interrupted"]
    assert summary["best"][1] == max(e["value"] for e in py_evals)
    assert isinstance(summary["prompt"], sp.SoftPrompt)
    assert summary["prompt"].num_virtual_tokens == 4


def test_classify_equals_cli(model, runs):
    _, py_out, _, _ = runs
    text = "a gripping , funny and humane film"
    want = json.loads(cli("classify", "--json", "--prompt", py_out, "--text", text))
    got = model.classify(text, sp.SoftPrompt.load(py_out))  # the prompt's own task (demo)
    assert list(got) == ["0", "1"]
    assert got == want["probabilities"]
    assert abs(sum(got.values()) - 1.0) < 1e-12
    # Ad-hoc template and labels, as the CLI's --template/--labels.
    adhoc = model.classify(text, py_out, template="Review: {sentence}\nSentiment:",
                           labels={"0": "negative", "1": "positive"})
    assert adhoc == got
    with pytest.raises(ValueError, match="no task"):
        model.classify(text)


def test_generate_equals_cli(model, runs):
    _, py_out, _, _ = runs
    want = json.loads(cli("generate", "--json", "--text", "The capital of France is",
                          "--max-new-tokens", "8", "--prompt", py_out))
    got = model.generate("The capital of France is", prompt=py_out, max_new_tokens=8)
    assert got == want["text"] and got


def test_tokenize_roundtrip(model):
    ids = model.tokenize("Hello, soft prompts!")
    assert model.detokenize(ids) == "Hello, soft prompts!"
    with pytest.raises(ValueError, match="out of the vocabulary"):
        model.detokenize([model.vocab_size])


def test_embeddings_roundtrip_numpy(exact_model, runs, tmp_path):
    model = exact_model
    _, py_out, _, _ = runs
    p = sp.SoftPrompt.load(py_out)
    e = p.embeddings
    assert e.dtype == np.float32 and e.shape == (4, model.hidden_size)
    e[0, 0] = 123.0  # a copy: the prompt is unchanged
    assert p.embeddings[0, 0] != 123.0
    q = sp.SoftPrompt.from_numpy(p.embeddings * 2, model)
    q.save(tmp_path / "q")
    r = sp.SoftPrompt.load(tmp_path / "q")
    np.testing.assert_array_equal(r.embeddings, p.embeddings * 2)
    assert r.path == tmp_path / "q"
    # A saved numpy prompt is a prompt for the CLI too.
    want = json.loads(cli("score", "--json", "--text", TEXTS[0], "--prompt", tmp_path / "q"))
    np.testing.assert_array_equal(model.score(TEXTS[0], r)[0], np.array(want["logprobs"]))


@pytest.mark.parametrize("shape", [(4, 10), (576,), (0, 576), (2, 3, 576)])
def test_from_numpy_wrong_shape(model, shape):
    with pytest.raises(ValueError, match=r"needs \[P, 576\]"):
        sp.SoftPrompt.from_numpy(np.zeros(shape, dtype=np.float32), model)


def test_from_numpy_non_finite(model):
    a = np.zeros((2, model.hidden_size))
    a[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.SoftPrompt.from_numpy(a, model)


def test_bad_paths_raise_with_the_path(model, tmp_path):
    missing = tmp_path / "no-such-prompt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sp.SoftPrompt.load(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        model.score(TEXTS[0], prompt=missing)
    with pytest.raises(FileNotFoundError, match="no-such-model.gguf"):
        sp.Model.load(str(tmp_path / "no-such-model.gguf"))
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "fine", "label": "0"}\n{"sentence": "oops"\n')
    with pytest.raises(sp.SoftpromptError, match=str(bad)):
        sp.train(model, train=str(bad), out=tmp_path / "run", **RUN)
    with pytest.raises(ValueError, match="weights"):
        sp.Model.load(weights="f16")
    with pytest.raises(ValueError, match="init nonsense"):
        sp.train(model, init="nonsense", out=tmp_path / "run2", **RUN)


def test_prompt_for_another_model_is_refused(model, tmp_path):
    p = sp.SoftPrompt.from_numpy(np.zeros((2, model.hidden_size)), model)
    p.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "softprompt.json").read_text())
    meta["model_fingerprint"] = "0" * len(meta["model_fingerprint"])
    (tmp_path / "p" / "softprompt.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        model.score(TEXTS[0], prompt=tmp_path / "p")
    assert len(model.score(TEXTS[0], prompt=tmp_path / "p", force=True)[0]) == 10


def stop_then_resume(model, runs, tmp_path, interrupt):
    """Interrupt a run with `interrupt(event)` (a callback), check it stopped after a
    checkpoint with KeyboardInterrupt, resume it, and compare with the uninterrupted run."""
    _, py_out, _, _ = runs
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sp.train(model, out=out, callback=interrupt, **RUN)
    steps, _ = log(out)
    stopped = steps[-1]["step"]
    assert 1 <= stopped < 4
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == f"ckpt-{stopped:08d}"
    res = sp.train(model, out=out, resume=True, **RUN)
    assert res["steps_done"] == 4
    want_steps, want_evals = log(py_out)
    got_steps, got_evals = log(out)
    assert [s["loss"] for s in got_steps] == [s["loss"] for s in want_steps]
    assert [e["value"] for e in got_evals] == [e["value"] for e in want_evals]
    np.testing.assert_array_equal(
        sp.SoftPrompt.load(out / "last").embeddings, sp.SoftPrompt.load(py_out / "last").embeddings
    )


def test_keyboard_interrupt_from_callback_then_resume(model, runs, tmp_path):
    def cb(e):
        if e["type"] == "step" and e["step"] == 2:
            raise KeyboardInterrupt

    stop_then_resume(model, runs, tmp_path, cb)


def test_sigint_while_computing_then_resume(model, runs, tmp_path):
    # A real Ctrl-C: SIGINT from another thread while the main thread is in Rust (GIL
    # released); the next step event's check_signals raises it.
    first_step = threading.Event()

    def cb(e):
        if e["type"] == "step":
            first_step.set()

    def kill():
        if first_step.wait(60):
            os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=kill)
    t.start()
    try:
        stop_then_resume(model, runs, tmp_path, cb)
    finally:
        t.join()


def test_callback_exception_propagates(model, tmp_path):
    def cb(e):
        if e["type"] == "step":
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        sp.train(model, out=tmp_path / "run", callback=cb, **RUN)
    assert (tmp_path / "run" / "checkpoints" / "ckpt-00000001").is_dir()


def test_gil_released_while_computing(model):
    # Another Python thread runs while the main thread scores: it could not with the GIL held.
    ticks, done = [0], threading.Event()

    def spin():
        while not done.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = ticks[0]
        model.score(TEXTS * 4)
        during = ticks[0] - before
    finally:
        done.set()
        t.join()
    assert during > 10000


def test_deep_prompt_trains_like_the_cli(model, exact_model, tmp_path):
    """train(deep=True) is `softprompt train --deep`: same losses, a PEFT PREFIX_TUNING folder,
    and scores equal to the CLI's with it."""
    flags = ["--task", "demo", "--steps", "3", "--batch-size", "4", "--virtual-tokens", "3",
             "--seed", "1", "--lr", "0.01", "--eval-every", "0", "--eval-limit", "8"]
    cli("train", *flags, "--deep", "--out", tmp_path / "cli", "--quiet")
    sp.train(model, task="demo", steps=3, batch_size=4, virtual_tokens=3, seed=1, lr=0.01,
             eval_every=0, eval_limit=8, deep=True, out=tmp_path / "py")
    assert [s["loss"] for s in log(tmp_path / "py")[0]] == [s["loss"] for s in log(tmp_path / "cli")[0]]
    cfg = json.loads((tmp_path / "py" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["num_layers"] == 30
    want = json.loads(cli("score", "--json", "--text", TEXTS[1], "--prompt", tmp_path / "py"))
    # A prefix adds no row: the first token has no predictor.
    assert len(want["logprobs"]) == len(want["ids"]) - 1
    (lp,) = exact_model.score([TEXTS[1]], prompt=tmp_path / "py")
    np.testing.assert_array_equal(lp, np.array(want["logprobs"]))
