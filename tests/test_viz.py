"""The notebooks' figure and widget builders: labels survive plotly's HTML, the explorers
redraw, and every number a figure shows comes from the package's one definition."""
import html
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("plotly")

import mistral_lab as ml  # noqa: E402
from mistral_lab.cache import KVCache, cache_bytes  # noqa: E402
from mistral_lab.masks import receptive_field, visible_pairs, window_mask  # noqa: E402
from mistral_lab.viz import cache as vc  # noqa: E402
from mistral_lab.viz import escape_label  # noqa: E402
from mistral_lab.viz import gqa, kernels as kviz, masks as vm, memory, prefill as vp, receptive as vr  # noqa: E402
from mistral_lab.experiments import prefill as xp  # noqa: E402
from mistral_lab.experiments import memory as xm  # noqa: E402
from mistral_lab.experiments import gqa as xg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Pieces that plotly would swallow as tags or entities if shown raw.
TRICKY = ["<s>", "</s>", "<0x0A>", "&", "▁a&b", "x"]
TINY = ml.preset("tiny")


def _strings(obj):
    """Every string inside a figure's JSON (labels, ticks, titles, hover text)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _assert_escaped(fig, pieces=TRICKY):
    strings = list(_strings(json.loads(fig.to_json())))
    text = "\n".join(strings)
    for raw in ("<s>", "</s>", "<0x0A>"):
        if raw in pieces:
            assert html.escape(raw) in text, raw
            assert not any(raw in s for s in strings), f"{raw} reaches plotly unescaped"
    assert "&amp;" in text
    assert not any("&" in s.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "") for s in strings)


# ----------------------------------------------------------------------------- escaping

def test_escape_label_is_html_escape():
    for s in TRICKY + ['say "hi"', "it's", ""]:
        assert escape_label(s) == html.escape(s)
    assert escape_label("<s>") == "&lt;s&gt;" and escape_label("&") == "&amp;"


def test_slots_figure_escapes_pieces():
    writes = [type("W", (), dict(layer=0, slot=p % 4, position=p, evicted=-1))() for p in range(len(TRICKY))]
    history = vc.buffer_history(writes, 4)
    _assert_escaped(vc.slots_figure(history, TRICKY, step=len(TRICKY) - 1, per_row=4), TRICKY[-4:])


def test_chunk_figure_escapes_pieces():
    fig = vp.chunk_figure(TRICKY, [0, 1, 2, -1], start=3, length=3, window=4)
    _assert_escaped(fig)
    assert any("slot 3: empty" in s for s in _strings(json.loads(fig.to_json())))


def test_group_heads_figure_escapes_pieces():
    probs = torch.rand(4, len(TRICKY), len(TRICKY))
    _assert_escaped(gqa.group_heads_figure(probs, TRICKY, group=1, n_rep=2))


def test_tokens_figure_escapes_pieces():
    from mistral_lab.viz import chat

    class Tok:
        def pieces(self, ids):
            return [TRICKY[i] for i in ids]

    fig = chat.tokens_figure(Tok(), list(range(len(TRICKY))))
    _assert_escaped(fig)
    colours = fig.data[0].marker.color
    assert colours[0] == colours[1] == "#e06666" and colours[2] == "#9fc5e8"  # markers found on the raw pieces


# ----------------------------------------------------------------------------- one definition per concept

def test_pair_counts_are_visible_pairs():
    for n in (1, 5, 6, 7, 24):
        for w in (1, 6, 30):
            c = vm.pair_counts(n, w)
            assert c["window"] == c["window_formula"] == visible_pairs(n, w) == int(window_mask(n, w).sum())
            assert c["causal"] == c["causal_formula"] == visible_pairs(n, None)


def test_receptive_field_figures_use_the_definition():
    rows = vr.theory_rows(6, 64)
    assert rows[0][1] == 6 * 64 == receptive_field(6, 65) and rows[1][1] == 6 * 63 == receptive_field(6, 64)
    fig = vr.reach_figure(torch.ones(4, 200), position=199, window=64)
    assert list(fig.data[0].y) == [receptive_field(k, 64) for k in range(4)]


def test_gqa_decode_bytes_are_cache_bytes():
    args = ml.preset("mistral-7b-v0.1")
    d = xg.decode_kv_bytes(args, 32768)
    assert list(d.values()) == [4 * 2**29, 2**29, 2**29 // 8]  # MHA, GQA (8 KV heads), MQA over 4096 slots
    assert d["GQA (8 KV heads)"] == cache_bytes(args, 32768, rolling=True)


def test_memory_for_chunk_cache_is_the_real_buffer():
    cache = KVCache(TINY, dtype=torch.float32)
    row = xp.memory_for_chunk(TINY, 16)
    assert row["cache"] == cache.nbytes == cache_bytes(TINY, 10**6, rolling=True, bytes_per_element=4)
    assert row["scores"] == TINY.n_heads * 16 * (TINY.sliding_window + 16) * 4
    with pytest.raises(ValueError, match="sliding window"):
        xp.memory_for_chunk(TINY.replace(sliding_window=None), 16)


def test_measured_figure_keeps_both_caches_readable():
    run = xm.PrefillRun("rolling buffer", tokens=[8, 16], nbytes=[1000, 1000])
    big = xm.PrefillRun("full cache", tokens=[8, 16], nbytes=[10**6, 2 * 10**6])
    fig = memory.measured_figure([run, big], TINY)
    assert fig.layout.yaxis.type == "log" and all(y > 0 for tr in fig.data for y in tr.y)


# ----------------------------------------------------------------------------- widgets

def test_controls_draws_now_and_on_every_change():
    widgets = pytest.importorskip("ipywidgets")
    from mistral_lab.viz.widgets import controls

    calls = []
    a, b = widgets.IntSlider(value=1, max=9), widgets.IntSlider(value=2, max=9)
    ui = controls(lambda a, b: calls.append((a, b)) or f"{a},{b}", a=a, b=b)
    assert calls == [(1, 2)] and isinstance(ui.controls, widgets.HBox) and ui.figure == "1,2"
    b.value = 5
    a.value = 3
    assert calls == [(1, 2), (1, 5), (3, 5)] and ui.figure == "3,5"
    one = controls(lambda step: step, step=widgets.IntSlider(value=4))
    assert isinstance(one.controls, widgets.IntSlider)  # a single slider is not wrapped


def test_explorer_is_one_output_with_a_live_face_and_a_saved_figure():
    """One bundle: the widget (live), the figure's plotly JSON (what a cold, untrusted
    notebook shows) and one line of text (never a widget repr)."""
    widgets = pytest.importorskip("ipywidgets")
    from mistral_lab.viz.widgets import COLD_TEXT, PLOTLY_MIME, controls

    s = widgets.IntSlider(value=2, max=9)
    ui = controls(lambda x: vm.masks_figure(x + 2, 2), x=s)
    bundle = ui._repr_mimebundle_()
    assert bundle["text/plain"] == COLD_TEXT and "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == ui.widget.model_id
    first = bundle[PLOTLY_MIME]
    assert len(first["data"]) == 3 and first["data"][0]["z"]  # the three masks, 4 tokens
    s.value = 5
    moved = ui._repr_mimebundle_()[PLOTLY_MIME]
    assert moved != first and ui.widget.children == (s, ui.output)


def test_chunk_explorer_clamps_the_index_before_drawing():
    pytest.importorskip("ipywidgets")
    torch.manual_seed(0)
    model = ml.Transformer(TINY).eval()
    ids = list(range(40))
    ui = vp.chunk_explorer(model, ids, [str(i) for i in ids], chunk=4, index=9)
    size, idx = ui.controls.children
    size.value = 16  # 40 tokens in chunks of 16: index 0..2
    assert idx.max == 2 and idx.value == 2


# ----------------------------------------------------------------------------- notebook 07's benchmarks

def test_kernel_plots_name_and_colour_each_method_once():
    ours = [dict(N=n, impl=i, ms=1.0 + k) for n in (4096, 32768) for k, i in enumerate(kviz.METHOD_NAMES)]
    a = kviz.prefill_bench_figure(ours, "ours")
    colour = {tr.name: tr.line.color for tr in a.data}
    assert set(colour) == set(kviz.METHOD_COLOURS) and colour == kviz.METHOD_COLOURS
    assert list(a.layout.xaxis.ticktext) == ["4K", "32K"]
    assert kviz.tokens_tick(1000) == "1,000" and kviz.tokens_tick(16384) == "16K"


def test_benchmark_json_round_trip(tmp_path):
    """What bench attention writes (files.write_result) is what notebook 07 reads: device, rows, the summary."""
    from mistral_lab import files
    from mistral_lab.bench import kernels as bench

    rows = bench._add_ratios([
        dict(kind="prefill", N=4096, impl="triton_swa", ms=0.5, tflops=1.0, window=4096, heads=32, kv_heads=8,
             head_dim=128, dtype="bfloat16", batch=1),
        dict(kind="prefill", N=4096, impl="sdpa_causal", ms=1.0, tflops=0.5, window=4096, heads=32, kv_heads=8,
             head_dim=128, dtype="bfloat16", batch=1)])
    doc = files.write_result(tmp_path / "bench.json", "attention", {"device": "a GPU", "rows": rows}, command="test")
    assert {"date", "commit", "command", "environment", "device", "rows", "digest"} <= set(doc)
    files.write_result(tmp_path / "threads.json", "threads", {"rows": [{"kind": "score", "threads": 1}]}, command="test")
    back = kviz.load_benchmarks(tmp_path)  # the kernel benchmark's rows only, not another result's
    assert [r["impl"] for r in back] == ["triton_swa", "sdpa_causal"] and back[0]["device"] == doc["device"]
    assert "2.00x" in kviz.benchmark_summary(back)


def test_committed_benchmarks_still_read():
    rows = kviz.load_benchmarks(ROOT / "benchmarks")
    if not rows:
        pytest.skip("no committed GPU benchmarks")
    text = kviz.benchmark_summary(rows)
    assert "pre-fill" in text and "decode" in text
