"""Hugging Face transformers' MistralForCausalLM as the numerical oracle for the loader.

A small random Mistral is built offline by transformers, saved with save_pretrained, and
loaded through our loader (which un-permutes wq/wk for interleaved RoPE). Same logits
over sequences several windows long; the same greedy tokens through our rolling buffer
as through HF's generate (whose cache for Mistral is itself a sliding window).
"""
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the hub

import pytest
import torch

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.checkpoints import layouts

transformers = pytest.importorskip("transformers")
from transformers import MistralConfig, MistralForCausalLM  # noqa: E402

W = 6  # sliding window
VOCAB = 97


def hf_model(impl="eager", seed=0, **changes) -> MistralForCausalLM:
    config = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=96, sliding_window=W,
                  rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=256,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config.update(changes)
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**config, attn_implementation=impl)).eval()
    with torch.no_grad():  # larger than HF's init (std 0.02): peaked logits, clear greedy choices
        for p in model.parameters():
            p.normal_(0, 2 / p.shape[1] ** 0.5) if p.dim() == 2 else p.normal_(1, 0.2)
    return model


def tokens(n, seed=1):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def hf(request, tmp_path_factory):
    """(HF model, its save_pretrained directory) for each attention implementation."""
    model = hf_model(request.param)
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(params=["hf", "mistral"])
def ours(request, hf, tmp_path):
    """Our model loaded from HF's files, or from the Mistral original layout converted from them."""
    model = weights.load(hf[1])
    if request.param == "mistral":
        model = weights.load(weights.save_mistral(model, tmp_path / "mistral"))
    return model


@torch.no_grad()
def test_logits_match_hf(hf, ours):
    x = tokens(5 * W + 3)
    expected = hf[0](x).logits
    torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
    assert ours.args.sliding_window == W


@pytest.mark.parametrize("prompt_len", [W + 1, 2 * W + 3])
def test_greedy_generation_matches_hf(hf, ours, prompt_len):
    model = hf[0]
    prompt = tokens(prompt_len, seed=2)
    new = 4 * W
    out = model.generate(prompt, do_sample=False, max_new_tokens=new, return_dict_in_generate=True)
    theirs = out.sequences[0, prompt_len:].tolist()
    assert len(theirs) == new
    # HF's own cache is a sliding window for Mistral: it never holds more than W keys ...
    assert all(layer.keys.shape[-2] <= W for layer in out.past_key_values.layers)
    # ... and its generation agrees with re-scoring the whole sequence without a cache.
    with torch.no_grad():
        rescored = model(out.sequences).logits[0, prompt_len - 1:-1].argmax(-1).tolist()
    assert rescored == theirs
    assert ml.generate(ours, prompt[0].tolist(), new).new_tokens == theirs


def test_mistral_layout_holds_the_same_tensors(hf, tmp_path):
    loaded = weights.load(hf[1])
    again = weights.load(weights.save_mistral(loaded, tmp_path))
    assert same_tensors(loaded, again) and again.args == loaded.args.replace(max_seq_len=8192)


# ------------------------------------------------------------- round trips

def test_own_layout_round_trip(hf, tmp_path):
    loaded = weights.load(hf[1])
    again = weights.load(weights.save(loaded, tmp_path))
    assert same_tensors(loaded, again) and again.args == loaded.args


def test_save_hf_round_trip_and_hf_runs_it(hf, tmp_path):
    model, folder = hf
    loaded = weights.load(folder)
    weights.save_hf(loaded, tmp_path)
    assert same_tensors(weights.load(tmp_path), loaded)  # permute and un-permute are inverses
    back = MistralForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert back.config.sliding_window == W and back.config.rope_parameters["rope_theta"] == 10000.0
    assert all(torch.equal(p, model.state_dict()[k]) for k, p in back.state_dict().items())


def test_permutation_is_hf_conversion_and_invertible():
    w = torch.randn(4 * 16, 64)
    hf_w = w.view(4, 8, 2, 64).transpose(1, 2).reshape(64, 64)  # HF's convert_mistral_weights_to_hf
    assert torch.equal(layouts.permute_for_hf(w, 4), hf_w)
    assert torch.equal(layouts.unpermute_from_hf(hf_w, 4), w)


# ------------------------------------------------------------- variants of the files

@torch.no_grad()
def test_no_window_is_full_attention(tmp_path):
    model = hf_model(sliding_window=None)
    model.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["sliding_window"] is None
    ours = weights.load(tmp_path / "hf")
    assert ours.args.sliding_window is None
    x = tokens(3 * W)
    torch.testing.assert_close(ours(x), model(x).logits, atol=1e-4, rtol=0)
    # A model without a window needs a full cache (a rolling buffer has no size to take).
    theirs = model.generate(x[:, :W + 1], do_sample=False, max_new_tokens=3 * W)[0, W + 1:].tolist()
    assert ml.generate(ours, x[0, :W + 1].tolist(), 3 * W, cache=ours.new_cache(full=True)).new_tokens == theirs
    weights.save_mistral(ours, tmp_path / "orig")
    assert "sliding_window" not in json.loads((tmp_path / "orig" / "params.json").read_text())
    assert weights.load(tmp_path / "orig").args.sliding_window is None
    params = json.loads((tmp_path / "orig" / "params.json").read_text())
    (tmp_path / "orig" / "params.json").write_text(json.dumps({**params, "sliding_window": None}))
    assert weights.load(tmp_path / "orig").args.sliding_window is None


def test_sharded_hf_checkpoint(hf, tmp_path):
    hf[0].save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    assert same_tensors(weights.load(tmp_path), weights.load(hf[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pth_checkpoint(hf, tmp_path, dtype):
    loaded = weights.load(hf[1])
    weights.save_mistral(loaded, tmp_path)
    (tmp_path / "consolidated.safetensors").unlink()
    torch.save({k: v.to(dtype) for k, v in loaded.state_dict().items()}, tmp_path / "consolidated.00.pth")
    again = weights.load(tmp_path)
    assert again.output.weight.dtype == torch.float32  # bf16 on CPU loads as fp32
    expected = {k: v.to(dtype).float() for k, v in loaded.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())


@torch.no_grad()
def test_tied_embeddings(tmp_path):
    model = hf_model(tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    ours = weights.load(tmp_path)
    assert "lm_head.weight" not in stored
    assert torch.equal(ours.output.weight, ours.tok_embeddings.weight)
    x = tokens(2 * W)
    torch.testing.assert_close(ours(x), model(x).logits, atol=1e-4, rtol=0)
