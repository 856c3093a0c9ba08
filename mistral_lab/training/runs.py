"""Run folders: what a training run writes, and the checks made before it writes anything.

A run folder holds the model (project layout: mistral_lab.json, model.safetensors,
tokenizer.model), train_info.json (settings, data, environment, wall time),
train_log.jsonl and checkpoint.pt, and by default the corpus in data/. A run writes only
into a new or empty folder, or one holding its own run (--resume continues it; --overwrite
replaces a run's files, and only in a folder that holds nothing but a run): a folder
holding anything else -- another model, a user's files -- is refused, untouched.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import files, threads
from ..checkpoints import save
from ..checkpoints.layouts import PREVIOUS
from ..checkpoints.saving import recover
from ..config import preset
from ..data import corpus
from .train import TrainConfig, read_checkpoint, read_log, resume_settings, train

# What a run writes into its folder (besides the corpus in data/, by default).
RUN_FILES = ("mistral_lab.json", "model.safetensors", "tokenizer.model", "train_info.json", "checkpoint.pt",
             "train_log.jsonl", "run.json")
RUN_MARKS = ("checkpoint.pt", "train_log.jsonl", "run.json", "train_info.json")  # only a run writes these


def foreign(out_dir: Path) -> list[str]:
    """What out_dir holds that no run writes (a run's corpus in data/, a save's temporary
    files and kept previous model aside); everything when it holds no run at all."""
    held = sorted(p.name for p in Path(out_dir).iterdir())
    if not any(n in RUN_MARKS for n in held):
        return held
    own = set(RUN_FILES) | {"data", PREVIOUS}
    return [n for n in held if n not in own and not (n.startswith(".") and n.endswith(".tmp"))
            and not n.startswith(f"{PREVIOUS}.")]


def prepare_out(out_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Make sure a run may write to out_dir: empty or new, or (resume) its own run, or
    (overwrite) the old run's files removed first. Anything else is refused, untouched."""
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder: give --out a folder")
    if resume:
        for name in RUN_FILES:  # a FIFO or a folder under a run's name would block or fail mid-run
            f = out_dir / name
            if (f.exists() or f.is_symlink()) and not f.is_file():
                raise ValueError(f"{f} is not a regular file ({_kind(f)}): a run writes it as a file; "
                                 f"remove or rename it, then resume")
        read_checkpoint(out_dir)  # fails in one line when there is nothing to resume
        recover(out_dir)  # a save cut by a kill: its old model back, its temporary files gone
        log = out_dir / "train_log.jsonl"
        if log.is_file():
            data = log.read_bytes()
            if data and not data.endswith(b"\n"):  # cut by a kill mid-line: the next record starts afresh
                with open(log, "ab") as f:
                    f.write(b"\n")
            if data.strip():
                read_log(log)  # refuses a log of another version before anything is appended
        return
    files.check_writable(out_dir / "train_log.jsonl") if out_dir.is_dir() else _check_parent(out_dir)
    held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if not held or held == ["data"]:  # new, empty, or the corpus of an attempt that stopped before its run began
        return
    if not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        if "checkpoint.pt" in held:
            raise FileExistsError(f"{out_dir} holds a training run: continue it with --resume, train into a new "
                                  f"folder, or pass --overwrite to replace it")
        if "train_log.jsonl" in held:  # no checkpoint: --resume has nothing to continue from
            raise FileExistsError(f"{out_dir} holds a training run that stopped before its first checkpoint "
                                  f"(nothing to resume): pass --overwrite to start it again, or train into a new folder")
        raise FileExistsError(f"{out_dir} is not empty ({shown}): train into a new folder, or pass --overwrite "
                              f"to replace the files of a run there")
    other = foreign(out_dir)
    if other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise FileExistsError(f"{out_dir} holds files that are not a training run's ({shown}): --overwrite "
                              f"replaces only a run of mistral_lab train; train into a new or empty folder")
    recover(out_dir)  # a save cut by a kill: its temporary files gone before the run's files
    for name in RUN_FILES:  # the config first: the folder stops being a loadable model at once
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / PREVIOUS, ignore_errors=True)


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_fifo():
        return "a FIFO"
    if path.is_symlink():
        return "a broken link"
    return "not a file"


def _check_parent(out_dir: Path) -> None:
    parent = out_dir.parent
    while not parent.exists():
        parent = parent.parent
    files.check_writable(parent / out_dir.name)


def read_run(out_dir: Path) -> dict:
    """run.json of a run folder (what --resume reads back: preset, data folder), {} if unreadable."""
    try:
        return json.loads((Path(out_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def finish(out_dir: Path, model, info: dict, *, t0: float, device: str, save_dtype=torch.float16,
           tokenizer_file=None) -> dict:
    """The end of every run: the model saved (project layout), then train_info.json (the run's
    settings, data, environment, wall time and the threads used, read back from torch)."""
    save(model, out_dir, dtype=save_dtype, tokenizer_file=tokenizer_file)
    info = {**info, "wall_s": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
            "environment": files.environment(device)}
    files.atomic_write_json(Path(out_dir) / "train_info.json", info)
    return info


def text_run(out_dir, *, preset_name: str | None = None, given: dict | None = None, resume: bool = False,
             overwrite: bool = False, device: str = "cpu", n_threads: int | None = None, data_dir=None,
             save_dtype=torch.float16, progress: bool = True) -> dict:
    """`python -m mistral_lab train`: train (or resume) a Shakespeare model in out_dir.

    given: the TrainConfig settings the user chose (the rest are TrainConfig's defaults; on
    resume each must equal the run's own). Returns train_info.json's contents."""
    out_dir, given = Path(out_dir), dict(given or {})
    prepare_out(out_dir, resume=resume, overwrite=overwrite)  # refuses before any work
    if resume:
        model_args, cfg = resume_settings(out_dir, given, device)
        run = read_run(out_dir)
        name = run.get("preset", preset_name)
        if preset_name is not None and preset(preset_name) != model_args:
            raise ValueError(f"{out_dir} is a run of another configuration than --preset {preset_name}: drop --preset")
        data_dir = Path(data_dir or run.get("data_dir") or out_dir / "data")
    else:
        name = preset_name or "shakespeare"
        if name == "passkey":
            raise ValueError("--preset passkey is the retrieval probe, trained on its own task: "
                             "python -m mistral_lab passkey train --out DIR")
        model_args = preset(name)
        cfg = TrainConfig(**given, device=device)
        data_dir = Path(data_dir) if data_dir else out_dir / "data"
    if not (data_dir / "corpus.json").is_file():
        corpus.check_data_dir(data_dir)  # the corpus will be built there: refused now, before any work
    with threads.limited(n_threads, kind=threads.kind_for(model_args.n_params())):
        stats = corpus.prepare(data_dir, vocab_size=model_args.vocab_size)
        train_tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
        heldout_tokens = np.fromfile(data_dir / "heldout.bin", dtype=np.uint16)
        info = {"preset": name, "args": model_args.to_dict(), "train": cfg.__dict__, "data": stats,
                "data_dir": str(data_dir), "torch": torch.__version__}
        out_dir.mkdir(parents=True, exist_ok=True)
        files.atomic_write_json(out_dir / "run.json", info)  # what --resume reads back (preset, data)
        t0 = time.time()
        model = train(model_args, train_tokens, heldout_tokens, cfg, out_dir, progress=progress, resume=resume)
        return finish(out_dir, model, info, t0=t0, device=device, save_dtype=save_dtype,
                      tokenizer_file=data_dir / "tokenizer.model")
