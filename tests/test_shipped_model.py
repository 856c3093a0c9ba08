"""The model shipped in assets/model: it loads by default, writes Shakespeare-like text,
and predicts held-out plays far better than a unigram model."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mistral_lab as ml
from mistral_lab.data import corpus

ASSETS = Path(__file__).resolve().parent.parent / "assets"
pytestmark = pytest.mark.skipif(not (ASSETS / "model").is_dir(), reason="assets/model is not built")

# Held-out perplexity per token (assets/README.md reports the measured value); the
# unigram model of the training split scores UNIGRAM_PERPLEXITY on the same stream.
PERPLEXITY_BOUND = 60.0
UNIGRAM_PERPLEXITY = 528.96


@pytest.fixture(scope="module")
def model():
    return ml.load()


@pytest.fixture(scope="module")
def heldout_stream():
    text = (ASSETS / "heldout.txt").read_text()
    return corpus.encode_corpus(ASSETS / "model" / "tokenizer.model", text)


def test_default_load_is_the_shipped_model(model):
    assert model.args == ml.preset("shakespeare")
    assert ml.load_tokenizer().vocab_size == model.args.vocab_size == 4096
    size = sum(f.stat().st_size for f in (ASSETS / "model").iterdir())
    assert size <= 25 * 2**20


def test_heldout_perplexity_far_below_unigram(model, heldout_stream):
    logp = ml.score(model, torch.from_numpy(heldout_stream.astype(np.int64)))
    ppl = math.exp(-logp.mean().item())
    assert ppl < PERPLEXITY_BOUND, ppl  # (the bound is itself below a fifth of the unigram model's)



def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mistral_lab", *args], capture_output=True, text=True, env=env, timeout=300)


FUNCTION_WORDS = {"the", "and", "i", "to", "of", "my", "you", "a", "is", "in", "that", "me", "thou", "not"}


def test_cli_generate_romeo():
    r = _cli("generate", "--prompt", "ROMEO:", "--max-new-tokens", "200", "--seed", "0")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith("ROMEO:") and len(text) > 400
    assert "decode" in r.stderr and "tok/s" in r.stderr


def test_samples_read_like_the_corpus(model):
    """Five sampled continuations (temperature 0.8, top-p 0.95, as the CLI): English words,
    mostly. One sample may be a cast list (names only, as in the plays' front matter), so
    the check is over all five."""
    tok = ml.load_tokenizer()
    words = []
    for seed in range(5):
        out = ml.generate(model, tok.encode("ROMEO:"), 200, temperature=0.8, top_p=0.95, seed=seed)
        words += tok.decode(out.new_tokens).split()
    common = sum(w.strip(".,;:!?'[]").lower() in FUNCTION_WORDS for w in words)
    assert len(words) > 300 and common > 0.12 * len(words), (common, len(words))


def test_cli_perplexity_of_a_file(tmp_path):
    f = tmp_path / "speech.txt"
    f.write_text("ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n")
    r = _cli("perplexity", str(f))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] > 20 and math.isclose(out["perplexity"], math.exp(out["nll"]), rel_tol=1e-3)
    assert out["perplexity"] < UNIGRAM_PERPLEXITY


@pytest.mark.parametrize("args, message", [
    (["perplexity", "/no/such/file.txt"], "does not exist"),
    (["generate", "--prompt", "", "--max-new-tokens", "5"], "prompt is empty"),
    (["generate", "--prompt", "x", "--chunk-size", "0"], "expected a positive integer"),
    (["generate", "--prompt", "x", "--model", "/no/such/dir"], "does not exist"),
    (["memory", "--preset", "mistral-99b"], "invalid choice: 'mistral-99b'"),
])
def test_cli_bad_input_is_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
