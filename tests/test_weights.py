"""Checkpoint loading without Hugging Face: bad inputs give one clear line naming the file,
dtype rules, paths inside a checkpoint, the tokenizer beside it, and no network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.data import assets
from mistral_lab.checkpoints import CheckpointError

ARGS = ml.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2,
                    vocab_size=50, sliding_window=4)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ml.Transformer(ARGS).eval()


def same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def edit_json(file, **changes):
    d = json.loads(file.read_text())
    d.update(changes)
    file.write_text(json.dumps(d))


def edit_tensors(file, fn):
    t = load_file(file)
    fn(t)
    save_file(t, file)


# ------------------------------------------------------------- paths and configs

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nowhere does not exist"):
        weights.load(tmp_path / "nowhere")


def test_missing_shipped_model(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS", tmp_path / "assets")  # a checkout whose assets/ lost the model
    with pytest.raises(FileNotFoundError, match=r"shipped model is missing: .*python -m mistral_lab train"):
        weights.load()
    with pytest.raises(FileNotFoundError, match=r"shipped model is missing"):
        weights.load_tokenizer()


def test_default_model_path_is_in_the_repository():
    assert weights.default_model_path() == ROOT / "assets" / "model"
    assert ml.default_model_path() == weights.default_model_path()  # forwarded by the package


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no params\.json, config\.json or mistral_lab\.json in .*"):
        weights.load(tmp_path)


def test_unknown_own_format(tmp_path, model):
    weights.save(model, tmp_path)
    edit_json(tmp_path / "mistral_lab.json", format="foo")
    with pytest.raises(CheckpointError, match=r"mistral_lab\.json has format 'foo', expected 'mistral_lab'"):
        weights.load(tmp_path)


@pytest.mark.parametrize("model_type", ["llama", None])
def test_hf_model_type_not_mistral(tmp_path, model, model_type):
    weights.save_hf(model, tmp_path)
    edit_json(tmp_path / "config.json", model_type=model_type)
    with pytest.raises(CheckpointError, match=r"config\.json has model_type .*only 'mistral'"):
        weights.load(tmp_path)


def test_hf_rope_scaling_refused(tmp_path, model):
    weights.save_hf(model, tmp_path)
    edit_json(tmp_path / "config.json", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(CheckpointError, match=r"config\.json uses RoPE scaling 'yarn'"):
        weights.load(tmp_path)


def test_invalid_json(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    (tmp_path / "params.json").write_text("{dim: 4096")
    with pytest.raises(CheckpointError, match=r"params\.json is not valid JSON"):
        weights.load(tmp_path)


def test_config_missing_key(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    d = json.loads((tmp_path / "params.json").read_text())
    del d["hidden_dim"]
    (tmp_path / "params.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"params\.json lacks hidden_dim"):
        weights.load(tmp_path)


@pytest.mark.parametrize("save, file, change, message", [
    (weights.save_mistral, "params.json", {"n_kv_heads": 3}, r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
    (weights.save_mistral, "params.json", {"sliding_window": 0}, r"sliding_window must be a positive integer"),
    (weights.save_hf, "config.json", {"head_dim": 7}, r"head_dim must be even"),
    (weights.save, "mistral_lab.json", {"args": {**ARGS.to_dict(), "n_layers": -1}}, r"n_layers must be a positive"),
])
def test_config_failing_model_args(tmp_path, model, save, file, change, message):
    save(model, tmp_path)
    edit_json(tmp_path / file, **change)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / file}: ModelArgs\.{message}"):
        weights.load(tmp_path)


# ------------------------------------------------------------- weights files

def test_missing_weights_file(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    (tmp_path / "consolidated.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no consolidated\.safetensors or consolidated\.00\.pth beside"):
        weights.load(tmp_path)


def test_missing_shard(tmp_path, model):
    weights.save_hf(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=r"model-00001-of-00002\.safetensors is missing \(listed in"):
        weights.load(tmp_path)


def test_missing_tensors(tmp_path, model):
    weights.save(model, tmp_path)
    edit_tensors(tmp_path / "model.safetensors", lambda t: [t.pop(k) for k in sorted(t)[:7]])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 7 tensors \((\S+, ){5}\.\.\.\) missing"):
        weights.load(tmp_path)


def test_missing_tensor_named_as_in_the_file(tmp_path, model):
    weights.save_hf(model, tmp_path)
    edit_tensors(tmp_path / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"1 tensor \(model\.layers\.1\.mlp\.up_proj\.weight\) missing"):
        weights.load(tmp_path)


def test_unexpected_tensors(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    edit_tensors(tmp_path / "consolidated.safetensors",
                 lambda t: t.update({"layers.2.ffn_norm.weight": torch.ones(32), "rope.freqs": torch.ones(4)}))
    with pytest.raises(CheckpointError, match=r"2 tensors \(layers\.2\.ffn_norm\.weight, rope\.freqs\) unexpected"):
        weights.load(tmp_path)


def test_misshaped_tensor(tmp_path, model):
    weights.save(model, tmp_path)
    edit_tensors(tmp_path / "model.safetensors", lambda t: t.update({"layers.0.attention.wk.weight": torch.zeros(32, 32)}))
    with pytest.raises(CheckpointError,
                       match=r"tensor layers\.0\.attention\.wk\.weight has shape \[32, 32\], expected \[16, 32\]"):
        weights.load(tmp_path)


def test_config_and_weights_of_different_models(tmp_path, model):
    weights.save(model, tmp_path)
    edit_json(tmp_path / "mistral_lab.json", args={**ARGS.to_dict(), "vocab_size": 51})
    with pytest.raises(CheckpointError, match=r"tok_embeddings\.weight has shape \[50, 32\], expected \[51, 32\]"):
        weights.load(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "junk", "empty"])
def test_corrupt_safetensors(tmp_path, model, damage):
    weights.save(model, tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "junk": b"not a tensor file at all", "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or not a safetensors file"):
        weights.load(tmp_path)


def test_corrupt_pth(tmp_path, model):
    weights.save_mistral(model, tmp_path)
    (tmp_path / "consolidated.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "consolidated.00.pth")
    data = (tmp_path / "consolidated.00.pth").read_bytes()
    (tmp_path / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth is truncated or not a PyTorch checkpoint"):
        weights.load(tmp_path)


def test_errors_are_one_line(tmp_path, model):
    weights.save(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(CheckpointError) as e:
        weights.load(tmp_path)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


# ------------------------------------------------------------- what loads, and how

def test_loaded_model_is_frozen_in_eval_mode(tmp_path, model):
    loaded = weights.load(weights.save(model, tmp_path))
    assert not loaded.training
    assert all(not p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    assert same_tensors(loaded, model) and loaded.args == ARGS


def test_path_may_name_a_file_in_the_checkpoint(tmp_path, model):
    weights.save(model, tmp_path / "own")
    weights.save_mistral(model, tmp_path / "orig")
    for file in ["own/mistral_lab.json", "own/model.safetensors", "orig/params.json", "orig/consolidated.safetensors"]:
        assert same_tensors(weights.load(tmp_path / file), model), file


def test_both_original_and_hf_files_prefers_the_original(tmp_path, model):
    weights.save_hf(model, tmp_path)
    weights.save_mistral(model, tmp_path)
    assert weights.locate(tmp_path)[1] == weights.MISTRAL
    assert weights.locate(tmp_path / "config.json")[1] == weights.HF
    assert same_tensors(weights.load(tmp_path / "config.json"), model)


def test_dtype_rules(tmp_path, model):
    weights.save(model, tmp_path, dtype=torch.bfloat16)
    assert weights.load(tmp_path).tok_embeddings.weight.dtype == torch.float32  # bf16 on CPU -> fp32
    loaded = weights.load(tmp_path, dtype=torch.bfloat16)  # explicit dtype wins
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(loaded.output.weight, model.output.weight.bfloat16())
    assert weights.default_dtype(torch.bfloat16, torch.device("cuda")) == torch.bfloat16
    assert weights.default_dtype(torch.float16, torch.device("cpu")) == torch.float32
    assert weights.default_dtype(torch.float32, torch.device("cpu")) == torch.float32


def test_legacy_configs(tmp_path, model):
    """transformers 4.x config.json: top-level rope_theta, head_dim null; old params.json: no head_dim."""
    weights.save_hf(model, tmp_path / "hf")
    d = json.loads((tmp_path / "hf" / "config.json").read_text())
    del d["rope_parameters"]
    d.update(rope_theta=1e6, rope_scaling=None, head_dim=None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(d))
    args = weights.load(tmp_path / "hf").args
    assert (args.rope_theta, args.head_dim) == (1e6, 8)
    weights.save_mistral(model, tmp_path / "orig")
    edit_json(tmp_path / "orig" / "params.json", head_dim=None)
    assert weights.load(tmp_path / "orig").args == ARGS.replace(max_seq_len=8192)


def test_tokenizer_beside_checkpoint(tmp_path, model):
    """The tokenizer.model in the folder; a checkpoint without one is an error naming the
    way out (never Mistral's 32000-piece tokenizer in silence); sizes must agree."""
    from mistral_lab.checkpoints import load_tokenizer

    small = ROOT / "assets" / "tokenizer.model"  # 4096 pieces
    weights.save(model.__class__(ARGS.replace(vocab_size=4096)), tmp_path / "own", tokenizer_file=small)
    assert (tmp_path / "own" / "tokenizer.model").read_bytes() == small.read_bytes()
    for p in ("own", "own/model.safetensors", "own/tokenizer.model"):
        assert weights.load_tokenizer(tmp_path / p).vocab_size == 4096
        assert load_tokenizer(tmp_path / p).vocab_size == 4096
    weights.save_mistral(model, tmp_path / "orig")
    with pytest.raises(FileNotFoundError, match=r"orig has no tokenizer\.model: pass the tokenizer .*--tokenizer"):
        weights.load_tokenizer(tmp_path / "orig")
    with pytest.raises(ValueError, match=r"has 4096 pieces but the model in .*orig has vocab_size 50"):
        load_tokenizer(tmp_path / "orig", tokenizer=small)
    with pytest.raises(ValueError, match=r"has 32000 pieces but the model in .*orig has vocab_size 50"):
        load_tokenizer(tmp_path / "orig", tokenizer="mistral-v1")
    assert load_tokenizer(tmp_path / "orig", tokenizer=small, check=False).vocab_size == 4096
    assert load_tokenizer(small).vocab_size == 4096  # a bare file: nothing to compare with
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        weights.load_tokenizer(tmp_path / "nowhere")


def test_loading_never_touches_the_network(tmp_path, model):
    """In a fresh interpreter with sockets disabled: no connection, and no hub library imported."""
    weights.save(model, tmp_path / "own")
    weights.save_mistral(model, tmp_path / "orig")
    weights.save_hf(model, tmp_path / "hf")
    code = f"""
import socket, sys
def refuse(*a, **k): raise AssertionError("network access")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
from mistral_lab import checkpoints as weights
for d in ("own", "orig", "hf"):
    weights.load({str(tmp_path)!r} + "/" + d)
bad = [m for m in ("transformers", "huggingface_hub", "requests", "urllib3") if m in sys.modules]
assert not bad, bad
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
