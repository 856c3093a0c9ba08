"""Fuzzing with hypothesis: generated configs, token inputs and command lines either work or
fail with one line: never a traceback, never exit 0 with non-finite output. Small
max_examples and tiny models keep it to seconds."""
import json
import math
import string
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="pip install -r requirements/test.txt")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import mistral_lab as ml  # noqa: E402
from mistral_lab import __main__ as cli, checkpoints as weights  # noqa: E402
from mistral_lab.checkpoints import CheckpointError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPM = ROOT / "assets" / "tokenizer.model"
FAST = settings(max_examples=40, deadline=None, derandomize=True,  # the same examples in every CI run
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

ODD = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2))
SIZES = st.one_of(st.integers(1, 24).map(lambda n: 2 * n), ODD)  # mostly valid even sizes, some junk
FIELDS = dict(dim=SIZES, n_layers=st.one_of(st.integers(1, 2), ODD), head_dim=SIZES, hidden_dim=SIZES,
              n_heads=st.one_of(st.sampled_from([1, 2, 4]), ODD), n_kv_heads=st.one_of(st.sampled_from([1, 2]), ODD),
              vocab_size=st.one_of(st.integers(1, 64), ODD), sliding_window=st.one_of(st.integers(1, 6), ODD),
              norm_eps=st.one_of(st.sampled_from([1e-5, 1e-6]), ODD), rope_theta=st.one_of(st.just(1e4), ODD))


def one_line(e: BaseException) -> bool:
    return "\n" not in str(e) and bool(str(e).strip())


@FAST
@given(st.fixed_dictionaries(FIELDS), st.lists(st.integers(-2, 70), min_size=1, max_size=12))
def test_configs_and_tokens_work_or_fail_in_one_line(d, ids):
    try:
        args = ml.ModelArgs(**d)
    except (ValueError, TypeError) as e:
        assert one_line(e), e
        return
    torch.manual_seed(0)
    model = ml.Transformer(args).eval()
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids]), model.new_cache())
    except ValueError as e:  # ids outside the vocabulary
        assert one_line(e) and any(not 0 <= i < args.vocab_size for i in ids), e
        return
    assert logits.shape == (1, len(ids), args.vocab_size) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    args = ml.ModelArgs(dim=16, n_layers=1, head_dim=8, hidden_dim=24, n_heads=2, n_kv_heads=1, vocab_size=4096,
                        sliding_window=4)
    folder = tmp_path_factory.mktemp("fuzz_model")
    weights.save_mistral(ml.Transformer(args).eval(), folder, tokenizer_file=SPM)
    return folder


@FAST
@given(st.dictionaries(st.sampled_from(["dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads",
                                        "vocab_size", "sliding_window", "norm_eps", "rope_theta", "moe"]), ODD,
                       max_size=3))
def test_fuzzed_params_json_loads_or_fails_in_one_line(checkpoint, tmp_path_factory, change):
    folder = tmp_path_factory.mktemp("c")
    (folder / "consolidated.safetensors").symlink_to(checkpoint / "consolidated.safetensors")
    params = {**json.loads((checkpoint / "params.json").read_text()), **change}
    (folder / "params.json").write_text(json.dumps(params))
    try:
        model = weights.load(folder)
    except (CheckpointError, FileNotFoundError) as e:
        assert one_line(e), e
        return
    assert all(torch.isfinite(p).all() for p in model.parameters())


WORDS = ["info", "memory", "perplexity", "generate", "train", "bench", "--preset", "tiny", "shakespeare", "7b",
         "--tokens", "--batch-size", "--dtype", "fp16", "int8", "--model", "MODEL", "--tokenizer", "SPM", "mistral-v1",
         "--device", "cpu", "cuda", "cuda:7", "meta", "--backend", "torch", "--chunk-size", "--max-tokens",
         "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--engine", "fast", "auto",
         "FILE", "BADFILE", "0", "1", "3", "-1", "1e23", "nan", "inf", "0.5", "", "é", "--lr", "--debug-not"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_command_lines_work_or_fail_in_one_line(checkpoint, tmp_path_factory, capsys, words):
    tmp = tmp_path_factory.mktemp("argv")
    text = tmp / "t.txt"
    text.write_text("ROMEO. But soft, what light through yonder window breaks?\n" * 3)
    bad = tmp / "bad.txt"
    bad.write_bytes(b"\xff\xfe caf\xe9\n")
    subst = {"MODEL": str(checkpoint), "SPM": str(SPM), "FILE": str(text), "BADFILE": str(bad)}
    argv = [subst.get(w, w) for w in words]
    if "--max-new-tokens" not in argv:
        argv += ["--max-new-tokens", "3"] if "generate" in argv[:1] else []
    if argv[:1] in (["train"], ["bench"]):
        argv.append("--lr=0" if argv[:1] == ["train"] else "--tokens=0")  # never start minutes of work
    if argv[:1] in (["perplexity"], ["generate"]) and "--model" not in argv:
        argv += ["--model", str(checkpoint)]
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert err.strip().count("\n") == 0 and err.strip(), (argv, err)
    if rc == 0 and argv[:1] == ["perplexity"]:
        r = json.loads(out)
        assert math.isfinite(r["nll"]) and math.isfinite(r["perplexity"]), argv


@FAST
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_any_text_encodes_to_ids_the_model_accepts(checkpoint, text):
    from mistral_lab.checkpoints import load_tokenizer

    tok = load_tokenizer(checkpoint)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids) and tok.decode(ids) == text


# The tokenizer, trace and viz entry points: odd values work or fail in one line, and a value
# that works was taken as given (an id, a layer, a window is never cast or clamped).
IDS = st.one_of(st.integers(-2**64, 2**64), st.integers(0, 4200), ODD, st.characters())
ID_LISTS = st.one_of(st.lists(IDS, max_size=5), ODD, st.text(max_size=5))


@FAST
@given(ID_LISTS, st.text(max_size=12))  # st.text() includes lone surrogates: bytes that were not UTF-8
def test_the_tokenizer_takes_ids_and_text_or_fails_in_one_line(checkpoint, ids, text):
    from mistral_lab.checkpoints import load_tokenizer
    from mistral_lab.tokenizer import StreamDecoder

    tok = load_tokenizer(checkpoint)
    for call in (lambda: tok.decode(ids), lambda: tok.pieces(ids), lambda: StreamDecoder(tok, ids),
                 lambda: tok.id_to_piece(ids), lambda: tok.encode(text)):
        try:
            call()
        except (ValueError, TypeError) as e:
            assert one_line(e), e
    if isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < tok.vocab_size for i in ids):
        assert tok.pieces(ids) == [tok.sp.id_to_piece(i) for i in ids]  # valid ids: taken as they are


@pytest.fixture(scope="module")
def shipped():
    return ml.load(), ml.load_tokenizer()


@FAST
@given(st.one_of(st.lists(ODD, max_size=3), ODD), st.one_of(st.lists(ODD, max_size=3), ODD))
def test_trace_records_the_layers_and_heads_asked_for_or_fails_in_one_line(shipped, layers, heads):
    from mistral_lab import trace

    model, _ = shipped
    try:
        with trace.record(layers=layers, heads=heads, probs=True) as t:
            ml.generate(model, [1, 529, 30], 1)
    except (ValueError, TypeError) as e:
        assert one_line(e), e
        return
    asked = range(model.args.n_layers) if layers is None else layers
    assert {c.layer for c in t.attention} == set(asked), layers
    kept = model.args.n_heads if heads is None else len(heads)
    assert all(c.probs.shape[1] == kept for c in t.attention), heads


@FAST
@given(ODD, ODD, ODD)
def test_mask_and_window_functions_take_the_values_given_or_fail_in_one_line(n, window, layers):
    from mistral_lab.viz import masks as vm

    for call, check in [(lambda: ml.window_mask(n, window), lambda m: m.shape == (n, n)),
                        (lambda: ml.visible_pairs(n, window), lambda v: v == int(ml.window_mask(n, window).sum())),
                        (lambda: ml.receptive_field(layers, window), lambda v: v == layers * (window - 1)),
                        (lambda: vm.masks_figure(n, window), lambda fig: len(fig.data) >= 2)]:
        try:
            value = call()
        except (ValueError, TypeError) as e:
            assert one_line(e), e
            continue
        assert check(value), (n, window, layers)


@pytest.fixture(scope="module")
def bands(shipped):
    from mistral_lab.experiments.attention import attention_bands

    model, tok = shipped
    return attention_bands(model, tok.encode("ROMEO: hi"), layers=[0, 1], heads=[0, 3])


@FAST
@given(ODD, ODD)
def test_attention_figures_take_the_layer_and_head_given_or_fail_in_one_line(bands, layer, head):
    from mistral_lab.viz.attention import attention_figure

    try:
        fig = attention_figure(bands, layer, head)
    except (ValueError, TypeError) as e:
        assert one_line(e), e
        return
    assert layer in (0, 1) and head in (0, 3) and f"layer {layer}, head {head}" in fig.layout.title.text
