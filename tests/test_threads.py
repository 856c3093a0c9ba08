"""The thread policy: explicit > OMP/MKL environment > the default for the work; the
affinity and the cgroup quota bound it; limited() restores the caller's setting."""
from __future__ import annotations

import importlib

import pytest
import torch

import mistral_lab as ml
from mistral_lab import threads


def test_explicit_argument_wins_up_to_the_usable_cpus():
    c = threads.choose(3, environ={"OMP_NUM_THREADS": "1"}, cpus=4)
    assert (c.n, c.source) == (3, "argument")
    for huge in (5, 100_000):  # more threads than cores only wait (100,000 crashed OpenMP)
        c = threads.choose(huge, cpus=4)
        assert c.n == 4 and "capped at 4 usable CPUs" in c.source
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="positive integer"):
            threads.choose(bad)


def test_environment_wins_over_the_default_and_is_capped():
    assert threads.choose(environ={"OMP_NUM_THREADS": "2"}, cpus=4).n == 2
    assert threads.choose(environ={"MKL_NUM_THREADS": "3"}, cpus=4).n == 3
    assert threads.choose(environ={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "3"}, cpus=4).source.startswith("OMP")
    c = threads.choose(environ={"OMP_NUM_THREADS": "64"}, cpus=2)  # a hub image's node-wide setting
    assert c.n == 2 and "capped" in c.source
    assert threads.choose(environ={"OMP_NUM_THREADS": "4,2"}, cpus=8).n == 4
    for junk in ("", "abc", "0"):  # ignored, as OpenMP ignores them
        assert threads.choose(environ={"OMP_NUM_THREADS": junk}, cpus=4).source.startswith("default")


def test_defaults_per_kind():
    assert threads.choose(environ={}, cpus=8).n == 1  # a small model, any work
    assert threads.choose(kind="all", environ={}, cpus=8).n == 8
    with pytest.raises(ValueError, match="kind"):
        threads.choose(kind="prefill")
    assert threads.kind_for(6_622_464) == "one" and threads.kind_for(7_241_732_096) == "all"
    assert threads.kind_for(torch.nn.Linear(4, 4)) == "one"


def test_cgroup_quota(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "none") == 1.5
    v2.write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(v2, tmp_path / "none") is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "missing", v1) == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path / "missing", v1) is None
    assert threads.usable_cpus(affinity=16, quota=1.5) == 2
    assert threads.usable_cpus(affinity=2, quota=8.0) == 2
    assert threads.usable_cpus(affinity=4, quota=0.2) == 1
    assert threads.usable_cpus() >= 1


def test_limited_sets_and_restores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with threads.limited() as c:
        assert torch.get_num_threads() == c.n == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError):
        with threads.limited(2):
            assert torch.get_num_threads() == 2
            raise KeyError("inside")
    assert torch.get_num_threads() == before


def test_no_side_effect_at_import():
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        importlib.reload(threads)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_classroom_workers_apply_the_policy():
    from mistral_lab.bench import classroom

    r = classroom.run_group(2, "ours", 4)
    assert r["processes"] == 2 and r["tokens_each"] == 4 and len(r["seconds"]) == 2
    assert r["threads_per_process"] == [1]  # read back from torch inside each worker's generation
    r = classroom.run_group(1, "ours", 4, threads=2)
    assert r["threads_per_process"] == [min(2, threads.usable_cpus())]
    assert r["aggregate_tokens_per_s"] > 0 and r["peak_rss_mib_max"] > 0


def test_cli_threads_option():
    from mistral_lab.__main__ import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "x", "--threads", "2"])
    assert args.threads == 2
    assert build_parser().parse_args(["perplexity", "f.txt"]).threads is None
    assert build_parser().parse_args(["bench", "classroom"]).what == "classroom"


def test_generate_applies_the_policy_and_restores(monkeypatch):
    import torch

    import mistral_lab as ml

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    torch.manual_seed(0)
    model = ml.Transformer(ml.preset("tiny")).eval()
    before = torch.get_num_threads()
    seen = []
    ml.generate(model, [1, 2, 3], 3, on_token=lambda t: seen.append(torch.get_num_threads()))
    assert seen == [1, 1, 1] and torch.get_num_threads() == before  # a small model decodes on one thread
    seen.clear()
    ml.generate(model, [1, 2, 3], 2, threads=2, on_token=lambda t: seen.append(torch.get_num_threads()))
    assert seen == [min(2, threads.usable_cpus())] * 2 and torch.get_num_threads() == before


def test_committed_measurement_holds_the_defaults():
    """benchmarks/threads.json (`bench threads`): every kind of work at one thread and at every
    usable CPU, idle and beside a busy process. The default may be no more than 10% slower than
    one thread beside a busy process, for every kind; the threads recorded are read back from torch."""
    import json
    from pathlib import Path

    d = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "threads.json").read_text())
    kinds = {r["kind"] for r in d["summary"]}
    assert kinds == {"score", "prefill", "decode", "train_step"}
    for r in d["summary"]:
        assert r["default_over_one_busy"] <= 1.10, r
    counts = {r["threads"] for r in d["rows"]}
    assert counts == {1, d["usable_cpus"]}, "threads read back from torch: one and every usable CPU"
    assert {r["busy_process"] for r in d["rows"]} == {False, True}
    # the module's docstring quotes this file
    by = {r["kind"]: r for r in d["summary"]}
    quoted = (f"took {by['score']['busy_all_s']:.2f} s with two threads beside one busy process against "
              f"{by['score']['busy_one_s']:.2f} s with one, a pre-fill {by['prefill']['busy_all_s']:.2f} s against "
              f"{by['prefill']['busy_one_s']:.2f} s ({d['usable_cpus']} vCPUs, {d['date'][:10]}; idle, two threads were "
              f"only {1 / by['score']['all_over_one_idle']:.2f}x faster at scoring)")
    assert quoted in " ".join(threads.__doc__.split()), quoted
    # the default it measured is today's policy for the shipped model on a machine of that size
    model = ml.load()
    assert {r["default_threads"] for r in d["summary"]} == {
        threads.choose(kind=threads.kind_for(model), environ={}, cpus=d["usable_cpus"]).n}
