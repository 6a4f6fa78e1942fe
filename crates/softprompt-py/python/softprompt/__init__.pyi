"""Type stubs for softprompt (the Rust module softprompt._softprompt)."""

import os
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str
MAX_VIRTUAL_TOKENS: int

PathLike = Union[str, "os.PathLike[str]"]
PromptArg = Union["SoftPrompt", PathLike, None]
Labels = Union[str, Mapping[str, str]]

class SoftpromptError(Exception):
    """A malformed file, an unsupported model, a failed fetch, a tokenizer error."""

class Model:
    """A frozen base model with its tokenizer; computation releases the GIL."""

    @staticmethod
    def load(model: str = "smollm2-135m", weights: str = "f32", exact: bool = False,
             recompute: bool = False) -> "Model":
        """Load a model (alias, .gguf file, HF folder or hub id); weights f32, quantized or bf16.
        exact=True: rows in a fixed order, as `softprompt serve`/`score` (their bits exactly).
        recompute=True: training recomputes each block in the backward (less memory)."""
    @property
    def source(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    def tokenize(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of text (with the model's input prefix such as <bos> when add_special_tokens)."""
    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
    def score(
        self, texts: Union[str, Sequence[str]], prompt: PromptArg = None, force: bool = False
    ) -> List[npt.NDArray[np.float64]]:
        """Per-token log-probs of each text (the numbers of `softprompt score --json`)."""
    def generate(
        self,
        text: str,
        prompt: PromptArg = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        ignore_eos: bool = False,
        force: bool = False,
    ) -> str:
        """Continue text with the prompt prepended; returns the new text."""
    def classify(
        self,
        text: Union[str, Mapping[str, Any]],
        prompt: PromptArg = None,
        task: Optional[str] = None,
        template: Optional[str] = None,
        labels: Optional[Labels] = None,
        label_field: str = "label",
        length_norm: bool = False,
        force: bool = False,
    ) -> Dict[str, float]:
        """Class probabilities {label: p} with the prompt's task (or task= / template= + labels=)."""

class SoftPrompt:
    """A soft prompt [P, D] in a PEFT prompt-tuning folder."""

    @staticmethod
    def load(dir: PathLike) -> "SoftPrompt":
        """Read a PEFT prompt folder."""
    def save(self, dir: PathLike) -> None:
        """Write the prompt as a PEFT folder (atomic writes)."""
    @staticmethod
    def from_numpy(array: npt.ArrayLike, model: Model) -> "SoftPrompt":
        """A prompt for model from a [P, D] array (D = model.hidden_size)."""
    @property
    def embeddings(self) -> npt.NDArray[np.float32]:
        """A [P, D] float32 copy of the embeddings."""
    @property
    def num_virtual_tokens(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def base_model(self) -> Optional[str]: ...
    @property
    def path(self) -> Optional[pathlib.Path]: ...
    @property
    def task(self) -> Optional[Dict[str, Any]]: ...
    @property
    def metrics(self) -> Optional[Dict[str, Any]]: ...

def train(
    model: Model,
    *,
    train: Optional[str] = None,
    validation: Optional[str] = None,
    task: Optional[str] = None,
    template: Optional[str] = None,
    labels: Optional[Labels] = None,
    label_field: str = "label",
    data_root: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    virtual_tokens: int = 20,
    init: str = "vocab",
    optimizer: str = "adamw",
    lr: Optional[float] = None,
    weight_decay: float = 1e-5,
    schedule: str = "linear",
    warmup: int = 10,
    steps: int = 150,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    eval_every: int = 50,
    eval_limit: Optional[int] = None,
    patience: Optional[int] = None,
    checkpoint_every: int = 50,
    keep_checkpoints: int = 2,
    max_len: int = 256,
    length_norm: bool = False,
    train_limit: Optional[int] = None,
    skip_bad_rows: bool = False,
    eval_batch_size: int = 32,
    reparam: str = "none",
    deep: bool = False,
    resume: bool = False,
    callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
) -> Dict[str, Any]:
    """Train a soft prompt like `softprompt train`; returns the run summary with its 'prompt'."""
