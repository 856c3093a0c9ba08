"""Writing a model in any of the three layouts, all or nothing.

    save(model, path)          the mistral_lab layout (+ tokenizer.model)
    save_mistral / save_hf     Mistral's original layout / Hugging Face's

Every file is written to a temporary name beside its target (files.atomic_write); when
all of them are complete, the old config is removed, the weights and tokenizer are
renamed into place, and the config is written last. The config is what makes a folder
loadable, so a kill or a full disk at any moment leaves the previous model, or the new
one, or a folder `load` refuses in one line: never a mix. The mistral_lab config also
lists its files (size, and an id stored in the weights' header; the tokenizer's sha256),
so weights from another save are refused too.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from .. import files as _files
from ..model import Transformer
from .layouts import BY_NAME, HF, MISTRAL, OWN
from .tensorfiles import write_safetensors


def save(model: Transformer, path, *, dtype: torch.dtype | None = None, tokenizer_file=None) -> Path:
    """Write the mistral_lab layout: mistral_lab.json + model.safetensors (+ tokenizer.model)."""
    return save_layout(model, path, OWN, dtype=dtype, tokenizer_file=tokenizer_file)


def save_mistral(model: Transformer, path, *, dtype: torch.dtype | None = None, tokenizer_file=None) -> Path:
    """Write Mistral's original layout: params.json + consolidated.safetensors."""
    return save_layout(model, path, MISTRAL, dtype=dtype, tokenizer_file=tokenizer_file)


def save_hf(model: Transformer, path, *, dtype: torch.dtype | None = None, tokenizer_file=None) -> Path:
    """Write the Hugging Face layout (config.json + model.safetensors, wq/wk permuted):
    MistralForCausalLM.from_pretrained(path) runs it."""
    return save_layout(model, path, HF, dtype=dtype, tokenizer_file=tokenizer_file)


def save_layout(model: Transformer, path, layout: str, *, dtype=None, tokenizer_file=None) -> Path:
    """Write `model` in `layout` into the folder `path`, all or nothing (module docstring)."""
    spec = BY_NAME[layout]
    model = getattr(model, "_orig_mod", model)  # a torch.compile'd model wraps the real one
    args = model.args
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {spec.to_file(k): spec.save_tensor(k, t, args) for k, t in _state(model, dtype).items()}
    stored = next(iter(tensors.values())).dtype
    save_id = uuid.uuid4().hex
    meta = {"format": "pt", "mistral_lab_save_id": save_id}  # "pt": what transformers expects
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        staged.append((_stage(folder / spec.weights_file, lambda f: write_safetensors(f, tensors, meta)),
                       folder / spec.weights_file))
        tok_target = folder / "tokenizer.model"
        if tokenizer_file is not None and Path(tokenizer_file).resolve() != tok_target.resolve():
            data = Path(tokenizer_file).read_bytes()
            staged.append((_stage(tok_target, lambda f: f.write(data)), tok_target))
        config = spec.config_for(args, stored)
        if layout == OWN:
            config["files"] = {spec.weights_file: {"bytes": staged[0][0].stat().st_size, "save_id": save_id}}
            if tok_target.is_file() or tokenizer_file is not None:
                src = staged[1][0] if len(staged) > 1 else tok_target
                config["files"]["tokenizer.model"] = {"bytes": src.stat().st_size, "sha256": _files.sha256(src)}
        # Everything is on disk: now the short switch. Without its config the folder is
        # refused by load, so no moment shows the old config beside the new weights.
        (folder / spec.config_file).unlink(missing_ok=True)
        for tmp, final in staged:
            os.replace(tmp, final)
        staged = []
        _files.atomic_write_json(folder / spec.config_file, config)
    finally:
        for tmp, _ in staged:  # an error before the switch: drop the temporary files
            tmp.unlink(missing_ok=True)
    return folder


def _stage(target: Path, write) -> Path:
    """A complete, fsync'ed temporary file beside `target` (renamed into place later)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _files.atomic_write(tmp, write)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _state(model, dtype) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        t = t.detach().to(device="cpu", dtype=dtype or t.dtype).contiguous()
        if t.data_ptr() in seen:  # tied weights: write each name's own copy
            t = t.clone()
        seen.add(t.data_ptr())
        out[name] = t
    return out
