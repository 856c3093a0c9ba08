"""One validator for every config, and the checks on weights, training settings and memory."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.config import MAX_SIZE, check_fits
from mistral_lab.training.train import TrainConfig
from mistral_lab.checkpoints import CheckpointError

ARGS = ml.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2, vocab_size=50,
                    sliding_window=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ml.Transformer(ARGS).eval()


@pytest.mark.parametrize("change, message", [
    ({"sliding_window": True}, r"sliding_window must be a positive integer .* got True"),
    ({"sliding_window": 0}, r"sliding_window must be a positive integer"),
    ({"sliding_window": 4.0}, r"sliding_window must be a positive integer"),
    ({"n_layers": True}, r"n_layers must be a positive integer, got True"),
    ({"dim": 32.0}, r"dim must be a positive integer, got 32\.0"),
    ({"vocab_size": -3}, r"vocab_size must be a positive integer"),
    ({"max_seq_len": 0}, r"max_seq_len must be a positive integer"),
    ({"hidden_dim": MAX_SIZE + 1}, r"hidden_dim = 16777217 is beyond any model"),
    ({"rope_theta": math.inf}, r"rope_theta must be a finite positive number, got inf"),
    ({"rope_theta": math.nan}, r"rope_theta must be a finite positive number, got nan"),
    ({"rope_theta": "1e4"}, r"rope_theta must be a finite positive number, got '1e4'"),
    ({"norm_eps": 0}, r"norm_eps must be a finite positive number"),
    ({"norm_eps": False}, r"norm_eps must be a finite positive number, got False"),
    ({"n_kv_heads": 3}, r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
    ({"head_dim": 7}, r"head_dim must be even"),
])
def test_model_args_validator(change, message):
    with pytest.raises(ValueError, match=rf"ModelArgs\.{message}"):
        ARGS.replace(**change)


def test_numbers_from_json_are_floats():
    assert ARGS.replace(rope_theta=10000, norm_eps=1).rope_theta == 10000.0
    assert isinstance(ARGS.replace(rope_theta=10000).rope_theta, float)
    for preset in ml.PRESETS.values():  # the presets pass the same validator
        assert ml.ModelArgs(**preset.to_dict()) == preset


@pytest.mark.parametrize("save, file, change, message", [
    (weights.save_mistral, "params.json", {"sliding_window": True}, r"sliding_window must be a positive integer"),
    (weights.save_mistral, "params.json", {"rope_theta": "big"}, r"rope_theta must be a finite positive number"),
    (weights.save_hf, "config.json", {"rms_norm_eps": -1e-6}, r"norm_eps must be a finite positive number"),
    (weights.save_hf, "config.json", {"num_hidden_layers": 2.5}, r"n_layers must be a positive integer"),
    (weights.save, "mistral_lab.json", {"args": {**ARGS.to_dict(), "dim": True}}, r"dim must be a positive integer"),
])
def test_every_layout_uses_the_validator(tmp_path, model, save, file, change, message):
    save(model, tmp_path)
    d = json.loads((tmp_path / file).read_text())
    d.update(change)
    (tmp_path / file).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=rf"{file}: ModelArgs\.{message}"):
        weights.load(tmp_path)


def test_hf_rope_parameters_as_a_string(tmp_path, model):
    weights.save_hf(model, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["rope_parameters"] = "default"
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"config\.json: rope_parameters must be an object .*got str") as e:
        weights.load(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(tmp_path, model, bad):
    weights.save_mistral(model, tmp_path)
    t = load_file(tmp_path / "consolidated.safetensors")
    t["layers.1.feed_forward.w2.weight"][3, 4] = bad
    save_file(t, tmp_path / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor layers\.1\.feed_forward\.w2\.weight holds NaN or infinite"):
        weights.load(tmp_path)


def test_integer_tensors_are_not_weights(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    t = load_file(tmp_path / "consolidated.safetensors")
    t["norm.weight"] = torch.ones(32, dtype=torch.int64)
    save_file(t, tmp_path / "consolidated.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor norm\.weight has dtype int64, expected a floating-point"):
        weights.load(tmp_path)


def test_sizes_beyond_memory_are_refused_before_allocating():
    huge = ml.ModelArgs(dim=1 << 16, n_layers=1 << 10, head_dim=128, hidden_dim=1 << 18, n_heads=512,
                        n_kv_heads=8, vocab_size=1 << 17, sliding_window=None)
    with pytest.raises(ValueError, match=r"the model needs .* GiB .* but only .* GiB is free on cpu"):
        check_fits(huge, 4)
    check_fits(ARGS, 4)


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.0}, r"lr must be a finite number > 0"), ({"lr": -1e-3}, r"lr must be"),
    ({"lr": math.nan}, r"lr must be"), ({"seed": 10**23}, r"seed must be an integer in \[0, 2\*\*63\)"),
    ({"seed": -1}, r"seed must be"), ({"steps": True}, r"steps must be a positive integer, got True"),
    ({"min_lr": 1.0}, r"min_lr must be a finite number in \[0, lr"), ({"autocast": 1}, r"autocast must be"),
])
def test_train_config_validator(change, message):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{message}"):
        TrainConfig(**change)
