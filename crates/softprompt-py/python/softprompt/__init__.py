"""softprompt: prompt tuning on a frozen language model, from Python.

Thin bindings over the Rust library softprompt-core (the same code as the ``softprompt``
command line):

- ``Model.load(model, weights)``: a frozen base model; ``score``, ``generate``, ``classify``,
  ``tokenize``, ``detokenize``.
- ``SoftPrompt``: a PEFT prompt-tuning folder; ``.embeddings`` is a ``[P, D]`` float32 array.
- ``train(model, ...)``: the CLI's ``softprompt train``, with a per-step callback.
- ``SoftpromptError``: errors other than bad values (``ValueError``) and missing files
  (``FileNotFoundError``).

Example::

    import softprompt as sp
    model = sp.Model.load("smollm2-135m")
    run = sp.train(model, task="sst2", steps=150, out="runs/sst2")
    model.classify("a gripping, funny film", run["prompt"])   # {'0': 0.03, '1': 0.97}
"""

from ._softprompt import MAX_VIRTUAL_TOKENS, Model, SoftPrompt, SoftpromptError, train

__all__ = ["MAX_VIRTUAL_TOKENS", "Model", "SoftPrompt", "SoftpromptError", "train"]
__version__ = "0.1.0"
