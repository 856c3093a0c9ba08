"""throughput.py at toy size on the CPU: the structure, the memory arithmetic, GQA vs MHA."""
import json

import pytest
import torch

from mistral_lab import files
from mistral_lab.bench import fixtures, serve, throughput
from mistral_lab.cache import cache_bytes
from mistral_lab.config import preset

ARGS = preset("tiny")  # 4 query heads over 2 K/V heads, W = 8, 3 layers
MHA_BYTES = ARGS.n_layers * 2 * ARGS.n_heads * ARGS.head_dim * 4  # fp32 K and V of one token, written out
BUDGET = 8 * ARGS.sliding_window * MHA_BYTES  # 8 MHA sequences' rolling buffers, 16 GQA ones


@pytest.fixture(scope="module")
def report():
    return throughput.run(ARGS, contexts=(16, 40), budget_bytes=BUDGET, steps=1, warmup=1)


def test_largest_batch_is_the_budget_over_one_sequence(report):
    assert fixtures.mha(ARGS).kv_bytes_per_token(4) == MHA_BYTES
    ratio = ARGS.n_heads // ARGS.n_kv_heads
    for s in report["summary"]:
        rolling = s["kind"] == "rolling"
        for variant, a in (("gqa", ARGS), ("mha", fixtures.mha(ARGS))):
            per_seq = cache_bytes(a, s["context"], rolling=rolling, bytes_per_element=4)
            assert s[f"{variant}_seq_bytes"] == per_seq
            assert s[f"{variant}_largest_batch"] == BUDGET // per_seq
            assert (s[f"{variant}_largest_batch"] + 1) * per_seq > BUDGET >= s[f"{variant}_largest_batch"] * per_seq
        if rolling:  # the buffer holds W tokens whatever the context: exactly `ratio` times the sequences
            assert s["gqa_largest_batch"] == 16 and s["mha_largest_batch"] == 16 // ratio
            assert s["batch_ratio"] == ratio
    full40 = next(s for s in report["summary"] if (s["kind"], s["context"]) == ("full", 40))
    assert (full40["gqa_largest_batch"], full40["mha_largest_batch"]) == (BUDGET // (40 * MHA_BYTES // 2),
                                                                          BUDGET // (40 * MHA_BYTES))


def test_rows_measure_every_batch_up_to_the_largest(report):
    rows = report["rows"]
    for s in report["summary"]:
        for v in ("gqa", "mha"):
            got = sorted(r["batch"] for r in rows if (r["variant"], r["kind"], r["context"]) == (v, s["kind"],
                                                                                              s["context"]))
            top = s[f"{v}_largest_batch"]
            assert got[-1] == top and got[0] == 1 and all(b & (b - 1) == 0 for b in got[:-1])
    for r in rows:
        assert r["cache_bytes"] == r["batch"] * r["seq_bytes"] <= BUDGET
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0
        if r["kind"] == "rolling":  # what the cache really allocated is what the arithmetic said
            assert r["allocated_bytes"] == r["cache_bytes"]
    assert report["threads"] == 1  # read back from torch during the run


def test_threads_are_restored():
    before = torch.get_num_threads()
    throughput.run(ARGS, contexts=(16,), budget_bytes=2 * 8 * MHA_BYTES, kinds=("rolling",), steps=1,
                   warmup=0, n_threads=1)
    assert torch.get_num_threads() == before


def test_filled_cache_holds_the_context():
    W = ARGS.sliding_window
    roll = fixtures.filled_cache(ARGS, 2, 21, rolling=True)
    assert roll.seq_pos.tolist() == [21, 21] and sorted(roll.positions()) == list(range(21 - W, 21))
    full = fixtures.filled_cache(ARGS, 1, 21, rolling=False, room=3)
    assert full.capacity == 24 and full.positions()[:21] == list(range(21)) and full.positions()[21:] == [-1] * 3
    assert bool((full.k[:, :, :21] != 0).all()) and bool((full.k[:, :, 21:] == 0).all())


def test_load_rows_round_trip(report, tmp_path):
    path = tmp_path / "t.json"
    doc = files.write_result(path, "throughput", report, command="pytest")
    rows = throughput.load_rows(path)
    assert len(rows) == len(report["rows"]) and rows[0]["env_date"] == doc["environment"]["date"]
    assert {"variant", "kind", "context", "batch", "tokens_per_s", "largest_batch"} <= set(rows[0])
    assert len(throughput.load_rows(path, "summary")) == len(report["summary"]) == 4
    with pytest.raises(ValueError, match="has no 'nope'"):
        throughput.load_rows(path, "nope")
    (tmp_path / "x.json").write_text(json.dumps({"benchmark": "cpu-decode"}))
    with pytest.raises(ValueError, match="is not a throughput or serve benchmark"):
        throughput.load_rows(tmp_path / "x.json")


def test_committed_cpu_result_is_consistent():
    """benchmarks/cpu_throughput.json: one run, its arithmetic as the function's."""
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "cpu_throughput.json"
    doc = json.loads(path.read_text())
    from mistral_lab.config import ModelArgs

    args = ModelArgs.from_dict(doc["args"])
    for s in throughput.load_rows(path, "summary"):
        for v, a in (("gqa", args), ("mha", fixtures.mha(args))):
            assert s[f"{v}_largest_batch"] == throughput.largest_batch(
                a, s["context"], doc["budget_bytes"], rolling=s["kind"] == "rolling", bytes_per_element=4)


def test_serve_runs_on_the_cpu_at_toy_size():
    """The GPU serving benchmark's CPU twin: every contender, the bandwidth arithmetic."""
    r = serve.serve(ARGS, batches=(1, 2), context=12, new_tokens=4, dtype=torch.float32, device="cpu",
                         backend="torch")
    impls = {(x["impl"], x["batch"]) for x in r["rows"]}
    assert impls == {(i, b) for i in ("mistral_lab_static", "mistral_lab_model", "transformers_generate")
                     for b in (1, 2)}
    for x in r["rows"]:
        step_s = x["step_ms"] / 1e3
        assert x["tokens_per_s"] == pytest.approx(x["batch"] / step_s, rel=1e-3)
        assert x["achieved_gb_per_s"] == pytest.approx((x["weight_bytes"] + x["kv_bytes_per_step"]) / step_s / 1e9,
                                                       abs=0.06)
    model = fixtures.random_model(ARGS)
    assert x["weight_bytes"] == 4 * (ARGS.n_params() - ARGS.vocab_size * ARGS.dim)  # all but the embedding
    assert sum(p.numel() for p in model.parameters()) == ARGS.n_params()
    with pytest.raises(ValueError, match="budget_bytes must be a positive"):
        throughput.run(ARGS, budget_bytes=0)
