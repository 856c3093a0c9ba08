"""Writing a model in any of the three layouts, all or nothing.

    save(model, path)          the mistral_lab layout (+ tokenizer.model)
    save_mistral / save_hf     Mistral's original layout / Hugging Face's

Every file is written to a temporary name beside its target (files.atomic_write). When
all of them are complete, the old model's files (every config, the weights, the
tokenizer) are hard-linked into PREVIOUS (a hidden folder inside the model's folder:
no copy, the same disk), which is renamed into place only once it is complete. Then the
old configs are removed, the weights and tokenizer are renamed into place, the config is
written last, and PREVIOUS is removed. So at every instant the folder holds the old
model, or the new one, or no config beside a complete PREVIOUS, which `load`,
`load_tokenizer` and `info` read instead (layouts.previous): a kill or a full disk at
any moment leaves the previous model or the new one, never neither. The next save (and
train's --resume and --overwrite, through `recover`) puts an interrupted switch's old
model back and removes the temporary files a kill left behind. The mistral_lab config
also lists its files (size, and an id stored in the weights' header; the tokenizer's
sha256), so weights from another save are refused too.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import torch

from .. import files as _files
from ..model import Transformer
from .layouts import BY_NAME, HF, LAYOUTS, MISTRAL, OWN, PREVIOUS, has_config
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
    recover(folder)  # an interrupted earlier save: its old model back, its temporary files gone
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
        # Everything is on disk: keep the old model in PREVIOUS, then the short switch.
        # Without a config the folder is read from PREVIOUS, so no moment shows neither
        # model, nor the old config beside the new weights.
        replaced = {final.name for _, final in staged}
        stale = [x.config_file for x in LAYOUTS if x.config_file == spec.config_file or x.weights_file in replaced]
        try:
            kept = _keep_previous(folder, stale + sorted(replaced))
            for name in stale:
                (folder / name).unlink(missing_ok=True)
            for tmp, final in staged:
                os.replace(tmp, final)
            staged = []
            _files.atomic_write_json(folder / spec.config_file, config)
        except BaseException:  # a full disk mid-switch: the old model back at once (else at the next save)
            try:
                recover(folder)
            except OSError:
                pass
            raise
        if kept:
            shutil.rmtree(folder / PREVIOUS, ignore_errors=True)
    finally:
        for tmp, _ in staged:  # an error before the switch: drop the temporary files
            tmp.unlink(missing_ok=True)
    return folder


def recover(folder) -> None:
    """Undo what a killed save left in `folder`: put the old model back from PREVIOUS when
    the switch was cut (no config beside a complete PREVIOUS), drop PREVIOUS otherwise,
    and remove the temporary files of the model's names. Called by every save, and by
    train's --resume and --overwrite before they touch the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    prev = folder / PREVIOUS
    if prev.is_dir() and not has_config(folder) and has_config(prev):
        configs = {x.config_file for x in LAYOUTS}
        names = sorted(p.name for p in prev.iterdir() if p.is_file())
        for name in sorted(names, key=lambda n: n in configs):  # the configs last: then it loads again
            os.replace(prev / name, folder / name)
        _files.fsync_dir(folder)
    for p in folder.iterdir():
        if p.name.startswith(f"{PREVIOUS}.") or p.name == PREVIOUS:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif p.is_file() and p.name.endswith(".tmp") and any(p.name.lstrip(".").startswith(f"{n}.") for n in _MODEL_NAMES):
            p.unlink(missing_ok=True)


# Every file a save may write: the temporary files of these names are its own.
_MODEL_NAMES = sorted({x.config_file for x in LAYOUTS} | {x.weights_file for x in LAYOUTS} | {"tokenizer.model"})


def _keep_previous(folder: Path, names: list[str]) -> bool:
    """Hard-link the old model's files named `names` into folder/PREVIOUS (a copy where
    the file system has no hard links), complete before it takes its name. False when
    the folder holds no model yet (nothing to keep)."""
    if not has_config(folder):
        return False
    shutil.rmtree(folder / PREVIOUS, ignore_errors=True)
    part = folder / f"{PREVIOUS}.{uuid.uuid4().hex[:8]}"
    part.mkdir()
    for name in dict.fromkeys([*names, "tokenizer.model"]):  # the tokenizer too: read with the old config
        src = folder / name
        if not src.is_file():
            continue
        try:
            os.link(src, part / name)
        except OSError:
            shutil.copyfile(src, part / name)
    _files.fsync_dir(part)
    os.replace(part, folder / PREVIOUS)
    _files.fsync_dir(folder)
    return True


def _stage(target: Path, write) -> Path:
    """A complete, fsync'ed temporary file beside `target` (renamed into place later)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _files.atomic_write(tmp, write)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # name the file, not its temporary
            raise _files.disk_full(target, e) from None
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
