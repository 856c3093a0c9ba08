"""The parameters cell's model: open_model's precedence (the value given, then MISTRAL_LAB_*,
then the default) and its one-line errors for every bad parameter."""
from __future__ import annotations

import shutil

import pytest
import torch

from mistral_lab.data.assets import default_model_path
from mistral_lab.experiments.session import NotebookError, open_model
from second_checkpoints import OTHER, write


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return write(tmp_path_factory.mktemp("ckpt") / "other")


def _one_line(call) -> str:
    with pytest.raises(NotebookError) as e:
        call()
    (line,) = e.value._render_traceback_()  # what the notebook shows: one line, no traceback
    assert "\n" not in str(e.value)
    return str(e.value)


def test_default_is_the_shipped_model(monkeypatch):
    monkeypatch.delenv("MISTRAL_LAB_MODEL", raising=False)
    lab = open_model()
    assert lab.shipped and lab.path == default_model_path() and lab.dtype == torch.float32
    assert "the shipped model" in repr(lab)


def test_environment_fills_a_default_and_a_given_value_wins(monkeypatch, other):
    monkeypatch.setenv("MISTRAL_LAB_MODEL", str(other))
    lab = open_model(None)
    assert not lab.shipped and lab.args.dim == OTHER.dim and lab.window == OTHER.sliding_window
    assert open_model(str(default_model_path())).shipped  # papermill's -p wins over the environment
    monkeypatch.setenv("MISTRAL_LAB_DTYPE", "bf16")
    assert "on the CPU" in _one_line(lambda: open_model(None))


@pytest.mark.parametrize("device, dtype, said", [
    ("cpu", "bf16", "dtype = 'bf16' on the CPU"), ("tpu", "auto", "'tpu' is not a device"),
    ("auto", "int8", "'int8' is not one of")])
def test_bad_device_or_dtype(device, dtype, said, monkeypatch):
    monkeypatch.delenv("MISTRAL_LAB_MODEL", raising=False)
    assert said in _one_line(lambda: open_model(None, device, dtype))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu():
    assert "no CUDA GPU is visible" in _one_line(lambda: open_model(None, "cuda"))


def test_bad_folders(tmp_path, other):
    assert "does not exist" in _one_line(lambda: open_model(tmp_path / "nope"))
    assert "no params.json, config.json or mistral_lab.json" in _one_line(lambda: open_model(tmp_path))
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(other, bare)
    (bare / "tokenizer.model").unlink()
    said = _one_line(lambda: open_model(bare))
    assert "has no tokenizer.model: copy the tokenizer the model was trained with" in said
