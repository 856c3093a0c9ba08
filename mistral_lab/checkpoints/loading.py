"""Loading any of three checkpoint layouts into a Transformer.

The layout is detected from the files in the directory (a path may also name a file
inside it); layouts.py describes each one. This module only orchestrates:

    load(path)                 -> Transformer (eval mode, requires_grad off)

dtype: an explicit `dtype` wins. Otherwise the checkpoint's own dtype, except on a CPU,
where bf16/fp16 checkpoints load as float32 (half-precision matmuls on CPUs are slow).

Tensors are read straight into a model built on the "meta" device (no random
initialization, no second copy), so the 7B loads in bf16 on a GPU in ~14.5 GB.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch

from .. import files
from ..cache import cache_bytes
from ..config import ModelArgs, check_bytes, check_fits
from ..data.assets import default_model_path
from ..engines.fast import adopt
from ..model import Transformer
from . import shared as shared_weights
from .layouts import BY_NAME, OWN, Layout, detect, previous
from .tensorfiles import CheckpointError, index, safe_open


# load(untrained_window=...) leaves the window as the checkpoint says unless given this
TRAINED_WINDOW = object()


def load(path=None, *, dtype: torch.dtype | None = None, device="cpu", backend: str = "torch",
         untrained_window=TRAINED_WINDOW, shared=None) -> Transformer:
    """A Transformer with the weights of the checkpoint at `path` (default: the shipped
    model), in eval mode with requires_grad off. See layouts.py for the layouts.

    The window is the checkpoint's own: it is a property of the weights, which learned to
    work with exactly those keys. untrained_window=W (or None for full attention) runs them
    under another window anyway -- the experiment of notebook 09 (a full-attention model
    through a rolling buffer), and the mistake behind garbage past 4096 tokens when
    Mistral 7B v0.2 weights were served with v0.1's window. It warns, and model.args
    records the window it runs with.

    shared: a folder where the fp32 weights of a CPU load are kept in one file that every
    process maps (shared.py): the same numbers, one copy in memory for a whole class.
    None takes the folder from MISTRAL_LAB_SHARED_WEIGHTS (unset: a private copy, as
    always); False never shares."""
    if shared is True or not (shared is None or shared is False or isinstance(shared, (str, os.PathLike))):
        raise TypeError(f"shared must be a folder (str or Path), None (MISTRAL_LAB_SHARED_WEIGHTS) or False, "
                        f"got {shared!r}")
    folder, name = locate(path)
    layout = BY_NAME[name]
    sources = _sources(folder, layout)
    may_share = shared is not False and (shared is not None or shared_weights.folder_from_env() is not None)
    source = shared_weights.identity(folder, sources) if may_share else None  # before any file is read: shared.py
    config_file, args, tied, config = read_config(folder, name, with_dict=True)
    if untrained_window is not TRAINED_WINDOW and untrained_window != args.sliding_window:
        running_args = args.replace(sliding_window=untrained_window)  # validated before the warning
        trained = "full attention" if args.sliding_window is None else f"a window of {args.sliding_window}"
        running = "full attention" if untrained_window is None else f"a window of {untrained_window}"
        warnings.warn(f"{files.shown_path(folder)}: weights trained with {trained} run with {running} "
                      f"(untrained_window): expect worse predictions than the checkpoint's own window gives",
                      stacklevel=2)  # shown_path: a saved notebook never shows the machine's home folder
        args = running_args
    weight_files = layout.weight_files(folder)
    device = torch.device(device)
    expected = _expected(args)
    names = {k: layout.to_file(k) for k in expected if not (tied and k == "output.weight")}
    idx = index(weight_files)
    _check(idx, names, expected, layout, weight_files[0] if len(weight_files) == 1 else folder, config_file.name, tied)
    if layout.name == OWN:  # after the checks above, which name the problem more precisely
        _check_manifest(folder, config_file, config)
    dtype = dtype or default_dtype(idx[names["tok_embeddings.weight"]][1], device)
    try:
        check_fits(args, torch.tensor([], dtype=dtype).element_size(), device)
        if args.sliding_window is not None:  # every generation allocates a W-slot buffer: a huge W fails here
            check_bytes(cache_bytes(args, args.sliding_window, rolling=True, bytes_per_element=torch.tensor(
                [], dtype=dtype).element_size()), f"a rolling buffer of W = {args.sliding_window:,} slots",
                device, fix="use a smaller window (untrained_window=, or the config's sliding_window)")
    except (ValueError, MemoryError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    def read() -> dict[str, torch.Tensor]:
        state = {}
        for ours, raw in names.items():  # one tensor at a time: a cast never holds two copies of the model
            t = idx[raw][2]()
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{idx[raw][3]}: tensor {raw} holds NaN or infinite values: the checkpoint "
                                      f"is damaged (or was saved from a diverged run); re-download or re-train it")
            state[ours] = layout.load_tensor(ours, t.to(device=device, dtype=dtype), args)
        if tied:  # lm_head shares the embedding matrix
            state["output.weight"] = state["tok_embeddings.weight"].clone()
        return state

    where = None
    if device.type == "cpu" and dtype == torch.float32 and source is not None:
        where = Path(shared).expanduser() if shared is not None else shared_weights.folder_from_env(
            4 * sum(math.prod(shape) for shape in expected.values()))
    if where is None:
        state, packed, unchanged = read(), None, None
    else:  # one file every process maps (shared.py)
        state, packed, unchanged = shared_weights.load_state(where, folder, source, sources, expected, args.n_layers,
                                                             read, strict=shared is not None)
    with torch.device("meta"):  # shapes only: the real tensors are assigned below
        model = Transformer(args, backend=backend)
    model.load_state_dict(state, assign=True)
    model.requires_grad_(False)
    if packed is not None:
        adopt(model, packed, unchanged)
    return model.eval()


def share(path, where) -> Path:
    """Write the shared-weights file of the checkpoint at `path` into the folder `where`
    (or find it there, current); its path. `python -m mistral_lab share-weights` runs this."""
    folder, name = locate(path)
    load(path, shared=where)  # named folder: a problem is an error here, not a warning
    source = shared_weights.identity(folder, _sources(folder, BY_NAME[name]))
    return shared_weights.shared_file(Path(where).expanduser(), folder, source)


def _sources(folder: Path, layout: Layout) -> list[Path]:
    """The files that make the checkpoint: its config, then its weights."""
    return [folder / layout.config_file, *layout.weight_files(folder)]


def _expected(args: ModelArgs) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}


def locate(path) -> tuple[Path, str]:
    """(checkpoint directory, layout name) for a directory or a file inside one."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise FileNotFoundError(
                f"the shipped model is missing: {path} does not exist; build it with "
                f"`python -m mistral_lab train --out assets/model`, or pass the path of a checkpoint")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} does not exist (give a checkpoint directory)")
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and previous(folder) != folder:  # a save cut mid-switch: its old model
        folder = previous(folder)
    return folder, detect(folder, None if path.is_dir() else path).name


def read_config(folder: Path, layout: str, *, with_dict: bool = False):
    """(config file, ModelArgs, lm_head tied to the embeddings) [+ the raw config dict]."""
    file = folder / BY_NAME[layout].config_file
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}): re-download or re-save the checkpoint") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file} should hold a JSON object, found {type(d).__name__}")
    args, tied = BY_NAME[layout].parse(file, d)
    return (file, args, tied, d) if with_dict else (file, args, tied)


def _check_manifest(folder: Path, config_file: Path, config: dict) -> None:
    """Version 2 lists its files: each must be there, complete, and from the same save."""
    manifest = config.get("files")
    if config.get("version", 1) < 2:
        return  # written before manifests (the shipped model): nothing to compare
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{config_file} lacks its 'files' list: an incomplete save; re-save the model")
    for name, entry in manifest.items():
        if not isinstance(entry, dict) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{config_file}: its 'files' entry {name!r}: {entry!r} is not a file name "
                                  f"with its size (a hand-edited or damaged config?): re-save the model")
        file = folder / name
        if not file.is_file() or file.stat().st_size != entry.get("bytes"):
            raise CheckpointError(f"{file} is missing or not the file {config_file.name} lists "
                                  f"(an interrupted save?): re-save the model")
        if "save_id" in entry and (safe_open(file).metadata() or {}).get("mistral_lab_save_id") != entry["save_id"]:
            raise CheckpointError(f"{file} comes from another save than {config_file.name} "
                                  f"(an interrupted save?): re-save the model")
        if "sha256" in entry and files.sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file} differs from the file {config_file.name} lists: re-save the model")


def _check(idx: dict, names: dict, expected: dict, layout: Layout, where: Path, config: str, tied: bool) -> None:
    """Every tensor the model needs is there, nothing else, each of the right shape and a float type."""
    missing = [raw for raw in names.values() if raw not in idx]
    if missing:
        raise CheckpointError(f"{where}: {_some(missing)} missing: the weights do not match {config} "
                              f"(incomplete download, or another model's config?)")
    extra = [raw for raw in idx if raw not in names.values() and not layout.tolerated(raw)
             and not (tied and raw == "lm_head.weight")]
    if extra:
        raise CheckpointError(f"{where}: {_some(extra)} unexpected: the weights hold more than {config} "
                              f"describes (another model's config?)")
    for ours, raw in names.items():
        shape, dtype = idx[raw][0], idx[raw][1]
        if shape != expected[ours]:
            raise CheckpointError(f"{where}: tensor {raw} has shape {list(shape)}, expected "
                                  f"{list(expected[ours])} from {config}: the config and the weights disagree")
        if (dtype.startswith("F8") if isinstance(dtype, str)  # safetensors' names, torch's (.pth)
                else dtype.is_floating_point and dtype.itemsize == 1):
            shown = str(dtype).removeprefix("torch.")
            raise CheckpointError(f"{where}: tensor {raw} is stored as {shown}, an 8-bit float (a quantized "
                                  f"checkpoint): this loader reads F16, BF16 or F32 weights; load the "
                                  f"unquantized release, or dequantize and re-save it")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CheckpointError(f"{where}: tensor {raw} has dtype {str(dtype).removeprefix('torch.')}, expected "
                                  f"a floating-point type: these are not model weights")


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} tensor{'s' if len(names) > 1 else ''} ({shown})"


def default_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    if device.type == "cpu" and stored in (torch.bfloat16, torch.float16):
        return torch.float32  # half-precision matmuls are slow on CPUs
    return stored
