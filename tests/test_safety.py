"""Nothing lost, nothing silently wrong: saves are all or nothing (full disk, kill at any
moment), a run never writes over another folder, and --resume ends bitwise equal to an
uninterrupted run."""
import errno
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.checkpoints import saving
from mistral_lab.data import corpus
from mistral_lab.training import runs
from mistral_lab.training.train import TrainConfig, read_log, train
from mistral_lab.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
ARGS = ml.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2, vocab_size=50,
                    sliding_window=4)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def models(n):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(ml.Transformer(ARGS).eval())
    return out


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(e) -> bool:
    return "\n" not in str(e) and str(e).strip() != ""


# ------------------------------------------------------------- saving: all or nothing

class Boom:
    """Raise ENOSPC at the k-th call of `real`, as a full disk would."""

    def __init__(self, real, k):
        self.real, self.k, self.calls = real, k, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.k:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(*a, **kw)


@pytest.mark.parametrize("layout", [weights.save, weights.save_mistral, weights.save_hf])
@pytest.mark.parametrize("target", ["write", "fsync", "replace"])
def test_full_disk_at_any_moment_keeps_the_previous_model(tmp_path, monkeypatch, layout, target):
    old, new = models(2)
    spm = ROOT / "assets" / "tokenizer.model"
    for k in range(1, 12):
        folder = tmp_path / f"k{k}"
        layout(old, folder, tokenizer_file=spm)
        before = snapshot(folder)
        if target == "write":  # mid-file: part of the weights is written, then the disk is full
            def partial(f, tensors, meta):
                f.write(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(saving, "write_safetensors", partial)
        else:  # the k-th fsync or rename of the save (files.os is os: every write is covered)
            monkeypatch.setattr(os, target, Boom(getattr(os, target), k))
        failed = False
        try:
            layout(new, folder, tokenizer_file=spm)
        except OSError as e:
            failed = True
            assert e.errno == errno.ENOSPC
        monkeypatch.undo()
        assert not list(folder.glob(".*.tmp")), "temporary files left behind"
        try:
            loaded = weights.load(folder)
        except (CheckpointError, FileNotFoundError) as e:  # refused, in one line: never half-accepted
            assert failed and one_line(e)
            continue
        if failed:
            assert same(loaded, old) or same(loaded, new)
            if same(loaded, old) and snapshot(folder) != before:
                pytest.fail("the previous model loads but its files changed")
        else:
            assert same(loaded, new)
            break
        if target == "write":
            assert failed and same(loaded, old)
            break


def test_weights_of_another_save_are_refused(tmp_path):
    a, b = models(2)
    weights.save(a, tmp_path / "a")
    weights.save(b, tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"model\.safetensors comes from another save .*re-save"):
        weights.load(tmp_path / "a")
    d = json.loads((tmp_path / "b" / "mistral_lab.json").read_text())
    del d["files"]
    (tmp_path / "b" / "mistral_lab.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"lacks its 'files' list"):
        weights.load(tmp_path / "b")


def test_unknown_format_version_refused(tmp_path):
    weights.save(models(1)[0], tmp_path)
    d = json.loads((tmp_path / "mistral_lab.json").read_text())
    d["version"] = 99
    (tmp_path / "mistral_lab.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"format version 99; this mistral_lab reads versions 1 to 2"):
        weights.load(tmp_path)


def test_written_files_have_ordinary_modes(tmp_path):
    weights.save(models(1)[0], tmp_path, tokenizer_file=ROOT / "assets" / "tokenizer.model")
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp_path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


# ------------------------------------------------------------- training: resume, refusals

CFG = TrainConfig(steps=9, batch_size=2, seq_len=16, lr=3e-3, warmup=2, eval_every=3, eval_batches=1)
DATA = np.tile(np.arange(40, dtype=np.uint16), 30)


class Stop(Exception):
    pass


def stop_at(step):
    def log(rec):
        if rec["step"] == step:
            raise Stop  # as a kill right after this step was logged
    return log


def strip(records):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


@pytest.mark.parametrize("stop", [4, 6])  # between checkpoints, and just after one
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, stop):
    tiny = ml.preset("tiny")
    whole = train(tiny, DATA, DATA, CFG, tmp_path / "whole", progress=False)
    with pytest.raises(Stop):
        train(tiny, DATA, DATA, CFG, tmp_path / "cut", progress=False, log=stop_at(stop))
    lines_before = (tmp_path / "cut" / "train_log.jsonl").read_text()
    resumed = train(tiny, DATA, DATA, CFG, tmp_path / "cut", progress=False, resume=True)
    for k, v in whole.state_dict().items():
        assert v.numpy().tobytes() == resumed.state_dict()[k].numpy().tobytes(), k
    log = (tmp_path / "cut" / "train_log.jsonl").read_text()
    assert log.startswith(lines_before)  # appended, never truncated
    assert '"event": "resume", "from_step": 6' in log or '"from_step": 3' in log
    assert strip(read_log(tmp_path / "cut" / "train_log.jsonl")) == strip(read_log(tmp_path / "whole" / "train_log.jsonl"))
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 9 and a["data_rng"] == b["data_rng"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])


def test_resume_refuses_other_settings_and_versions(tmp_path):
    tiny = ml.preset("tiny")
    with pytest.raises(Stop):
        train(tiny, DATA, DATA, CFG, tmp_path, progress=False, log=stop_at(4))
    with pytest.raises(ValueError, match=r"other settings than its run: lr=0\.001 \(the run: 0\.003\)"):
        train(tiny, DATA, DATA, TrainConfig(**{**CFG.__dict__, "lr": 1e-3}), tmp_path, progress=False, resume=True)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    buf = io.BytesIO()
    torch.save({**ckpt, "version": 7}, buf)
    (tmp_path / "checkpoint.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"checkpoint format version 7; this mistral_lab resumes version 1"):
        train(tiny, DATA, DATA, CFG, tmp_path, progress=False, resume=True)
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write(json.dumps({"v": 5, "step": 99}) + "\n")
    with pytest.raises(ValueError, match=r"line 5 has log version 5"):
        read_log(tmp_path / "train_log.jsonl")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A prepared corpus for the tiny preset (512 pieces) from the shipped held-out text:
    train commands reuse it (corpus.json) and need no corpus package."""
    text = (ROOT / "assets" / "heldout.txt").read_text(encoding="utf-8")
    docs = corpus.split_documents(text)
    small = corpus.Corpus(train=corpus.DOC_SEP.join(docs[1:]), heldout=docs[0], train_works=("b", "c"),
                          heldout_works=("a",))
    folder = tmp_path_factory.mktemp("data")
    corpus.prepare(folder, vocab_size=512, corpus=small)
    return folder


def cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "mistral_lab", *argv], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


TRAIN = ["train", "--preset", "tiny", "--steps", "12", "--batch-size", "2", "--seq-len", "32", "--eval-every", "2",
         "--warmup", "2", "--quiet", "--threads", "1"]


def test_train_onto_a_foreign_folder_refuses_and_leaves_it_untouched(tmp_path, data_dir):
    torch.manual_seed(0)
    weights.save_hf(models(1)[0], tmp_path / "hf")
    before = snapshot(tmp_path / "hf")
    r = cli(*TRAIN, "--data-dir", str(data_dir), "--out", str(tmp_path / "hf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "is not empty" in r.stderr and "new folder" in r.stderr and "--overwrite" in r.stderr
    assert snapshot(tmp_path / "hf") == before


def test_kill_train_at_random_moments_then_resume(tmp_path, data_dir):
    """SIGKILL a real `train` process at random moments: the folder is always either refused
    in one line or a complete model; --resume then ends bitwise equal to an uninterrupted run."""
    whole = tmp_path / "whole"
    r = cli(*TRAIN, "--data-dir", str(data_dir), "--out", str(whole))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cut"
    rng = random.Random(0)
    started = False
    for attempt in range(3):
        argv = [*TRAIN, "--data-dir", str(data_dir), *(["--resume", str(out)] if started else ["--out", str(out)])]
        p = subprocess.Popen([sys.executable, "-m", "mistral_lab", *argv], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(3.0, 6.0))  # the interpreter starts in ~2-3 s; training takes a few more
        p.send_signal(signal.SIGKILL)
        p.wait()
        started = started or (out / "checkpoint.pt").is_file()
        if (out / "mistral_lab.json").is_file() or (out / "model.safetensors").is_file():
            try:
                weights.load(out)  # a model that loads is a complete one (its manifest says so)
            except (CheckpointError, FileNotFoundError) as e:
                assert one_line(e)
    r = cli(*TRAIN, "--data-dir", str(data_dir), *(["--resume", str(out)] if started else ["--out", str(out), "--overwrite"]))
    assert r.returncode == 0, r.stderr
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same(weights.load(whole), weights.load(out))
    assert strip(read_log(whole / "train_log.jsonl")) == strip(read_log(out / "train_log.jsonl"))


def test_out_refusals_and_overwrite(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.jsonl").write_text("")
    # A run that stopped before its first checkpoint: each message points at the way out, not at the other.
    with pytest.raises(FileExistsError, match=r"stopped before its first checkpoint \(nothing to resume\): "
                                              r"pass --overwrite to start it again"):
        runs.prepare_out(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt does not exist: the run .* stopped before its "
                                                r"first checkpoint.*--overwrite"):
        runs.prepare_out(tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"holds a training run: continue it with --resume"):
        runs.prepare_out(tmp_path / "run")
    (tmp_path / "run" / "checkpoint.pt").unlink()
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt does not exist: there is no run to resume"):
        runs.prepare_out(tmp_path / "empty_run", resume=True)
    with pytest.raises(ValueError, match="choose one"):
        runs.prepare_out(tmp_path / "run", resume=True, overwrite=True)
    runs.prepare_out(tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "train_log.jsonl").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        runs.prepare_out(tmp_path / "file")
    runs.prepare_out(tmp_path / "new" / "deeper")  # a new folder: fine


def test_cli_resume_continues_and_refuses_other_settings(tmp_path, data_dir, capsys):
    from mistral_lab.__main__ import main

    out = tmp_path / "run"
    small = ["train", "--preset", "tiny", "--steps", "4", "--batch-size", "2", "--seq-len", "16", "--eval-every", "2",
             "--quiet", "--data-dir", str(data_dir)]
    assert main([*small, "--out", str(out)]) == 0
    before = weights.load(out)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # finished: saves the same model again
    assert same(weights.load(out), before)
    assert main(["train", "--resume", str(out), "--steps", "6", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained with steps=4, not 6: resume without --steps" in err
    assert main([*small, "--out", str(out)]) == 2
    assert "holds a training run: continue it with --resume" in capsys.readouterr().err
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line).get("step") for line in log] == [1, 2, 3, 4, None]  # + the resume marker
    assert all(json.loads(line)["v"] == 1 for line in log)
