"""The model a notebook runs on, chosen by one parameters cell (papermill's convention).

Every notebook starts with a cell tagged `parameters`:

    model = None      # a checkpoint folder; None: the shipped model (assets/model)
    device = "auto"   # "auto": CUDA when present, else the CPU
    dtype = "auto"    # "auto": bf16 on a GPU, fp32 on the CPU

and the next cell opens it:

    lab = open_model(model, device, dtype)
    lab.model, lab.tok, lab.args, lab.window, lab.layers   # what the rest of the notebook uses
    lab.shipped                                            # True: facts about these weights may be checked
    lab.say(f"W = {lab.window} ...")                       # prose built from the run (Markdown)

Precedence: a value papermill injects (`papermill nb.ipynb out.ipynb -p model DIR`) wins;
a parameter left at its default takes MISTRAL_LAB_MODEL / MISTRAL_LAB_DEVICE /
MISTRAL_LAB_DTYPE from the environment (a user who opens JupyterLab directly points
every notebook at a checkpoint that way); else the default. A bad value fails in this
cell, in the one line of `ml.load`'s error, not as a traceback deep in a later cell.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from IPython.display import Markdown, display

from ..checkpoints import CheckpointError, load, load_tokenizer
from ..checkpoints.layouts import previous
from ..checkpoints.loading import locate
from ..checkpoints.tokenizers import tokenizer_file
from ..config import ModelArgs, available_memory
from ..data.assets import default_model_path
from ..files import shown_path
from ..masks import receptive_field
from ..tokenizer import Tokenizer

ENV = {"model": "MISTRAL_LAB_MODEL", "device": "MISTRAL_LAB_DEVICE", "dtype": "MISTRAL_LAB_DTYPE"}
DTYPES = {"auto": None, "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class NotebookError(ValueError):
    """A bad parameter: shown in a notebook as its one line (IPython's _render_traceback_)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m{type(self).__name__}: {self}\x1b[0m"]


@dataclass(frozen=True)
class Lab:
    model: torch.nn.Module
    tok: Tokenizer
    path: Path
    device: torch.device
    dtype: torch.dtype
    shipped: bool  # the shipped weights, byte for byte: facts about them may be checked

    @property
    def args(self) -> ModelArgs:
        return self.model.args

    @property
    def window(self) -> int | None:
        return self.args.sliding_window

    @property
    def layers(self) -> int:
        return self.args.n_layers

    @property
    def reach(self) -> int | None:
        """k(W - 1): how far back the last layer can depend (None: full attention)."""
        return None if self.window is None else receptive_field(self.layers, self.window)

    @property
    def name(self) -> str:
        return "the shipped model" if self.shipped else shown_path(self.path)

    def free_bytes(self) -> int | None:
        """Memory free on the model's device now (None where it cannot be told)."""
        return available_memory(self.device)

    def say(self, markdown: str) -> None:
        """Prose whose numbers come from this run, displayed as Markdown (the cell's output)."""
        display(Markdown(markdown))

    def __repr__(self) -> str:
        a = self.args
        window = "no window (full attention)" if a.sliding_window is None else f"W = {a.sliding_window}"
        return (f"{self.name}: {a.n_layers} layers, dim {a.dim}, {a.n_heads} query / {a.n_kv_heads} K/V heads, "
                f"{window}, vocabulary {a.vocab_size}; {self.device.type}, {str(self.dtype).removeprefix('torch.')}")


def _param(name: str, value, default):
    if value == default or value is None and default is None:
        return os.environ.get(ENV[name], "").strip() or default
    return value


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise NotebookError(f"device = {name!r} is not a device: use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NotebookError(f"device = {name!r}: no CUDA GPU is visible here: use device = 'auto' or 'cpu'")
    return device


def _dtype(name, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        chosen = name
    elif name not in DTYPES:
        raise NotebookError(f"dtype = {name!r} is not one of {', '.join(DTYPES)}")
    else:
        chosen = DTYPES[name] or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cpu" and chosen != torch.float32:
        raise NotebookError(f"dtype = {name!r} on the CPU: half-precision matrix products are slow or missing "
                            f"there, and the lean decode step needs fp32: use dtype = 'auto' or 'fp32'")
    return chosen


def open_model(model=None, device: str = "auto", dtype="auto") -> Lab:
    """The model, its tokenizer, device and dtype a notebook runs on (module docstring)."""
    model, device, dtype = _param("model", model, None), _param("device", device, "auto"), _param("dtype", dtype, "auto")
    dev = _device(device)
    dt = _dtype(dtype, dev)
    path = Path(model).expanduser() if model else default_model_path()
    try:
        folder, _ = locate(path)  # a checkpoint at all, before its tokenizer and its weights are read
        if tokenizer_file(previous(folder)) is None:  # a notebook has no tokenizer parameter: say what to do
            raise NotebookError(f"{shown_path(folder)} has no tokenizer.model: copy the tokenizer the model was trained "
                                f"with into that folder (Mistral 7B v0.1 and its fine-tunes: "
                                f"{Tokenizer.mistral_v1().model_file})")
        net = load(path, dtype=dt, device=dev)
        tok = load_tokenizer(path)
    except NotebookError:
        raise
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        raise NotebookError(str(e).splitlines()[0]) from None
    shipped = path.resolve() == default_model_path().resolve()
    return Lab(net, tok, path, dev, dt, shipped)


__all__ = ["ENV", "Lab", "NotebookError", "open_model"]
