"""The numbers docs/TEACHING.md states about the 7B, recomputed from the package's arithmetic:
edit the preset or the cache and the page must change with it."""
from __future__ import annotations

from pathlib import Path

import pytest

import mistral_lab as ml
from mistral_lab.cache import cache_bytes
from mistral_lab.experiments import attention as xa

TEACHING = (Path(__file__).resolve().parent.parent / "docs" / "TEACHING.md").read_text()


def test_teaching_7b_memory_table_matches_the_arithmetic():
    a = ml.preset("mistral-7b-v0.1")
    n = a.n_params()
    tokens, layers = xa.plan(a, 2000, budget_bytes=256 * 2**20)
    stated = {
        f"{n:,} parameters": True,
        f"{n * 2 / 1e9:.1f} GB ({n * 2 / 2**30:.1f} GiB)": True,
        f"{n * 4 / 1e9:.1f} GB ({n * 4 / 2**30:.1f} GiB)": True,
        f"W = {a.sliding_window:,} positions × {a.kv_bytes_per_token() // 1024} KiB": True,
        f"| {cache_bytes(a, 32768, rolling=True) // 2**20} MiB |": cache_bytes(a, a.sliding_window, rolling=True) == cache_bytes(a, 32768, rolling=True),
        f"full cache at 32,768 tokens (05's comparison) | {cache_bytes(a, 32768, rolling=False) // 2**30} GiB": True,
        f"{tokens} tokens of layer {layers[0]}": len(layers) == 1,
    }
    missing = [text for text, holds in stated.items() if not holds or text not in TEACHING]
    assert not missing, "docs/TEACHING.md no longer states: " + "; ".join(missing)


import json  # noqa: E402

from mistral_lab.masks import visible_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bench(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / f"{name}.json").read_text())


def _ms(rows, impl, kind="prefill"):
    return " / ".join(f"{r['ms']:.2f}" for r in rows if r["impl"] == impl and r["kind"] == kind)


def _readme_claims() -> dict[str, str]:
    """README's text -> the benchmark it reads: each fragment is rendered here from the JSON."""
    d = _bench("cpu_decode")["results"]
    s = _bench("cpu_decode")["speedups"]
    att = _bench("h100_attention")["rows"]
    dec = {r["impl"]: r for r in _bench("h100_decode")["rows"] if r["N"] == 4096}
    ctx = _bench("context_use")
    pos = {k: dict(zip(ctx[k]["loss_by_position"]["start"], ctx[k]["loss_by_position"]["loss"])) for k in ("swa", "full")}
    key = dict(zip(ctx["passkey"]["distance"], ctx["passkey"]["accuracy"]))
    vs = {r["N"]: r["vs"] for r in att if r["impl"] == "triton_swa"}
    sweep = {(r["busy_process"], r["threads"]): r["api_tokens_per_s"] for r in _bench("classroom")["thread_sweep"]}
    a = ml.preset("mistral-7b-v0.1")
    full, rolling = cache_bytes(a, 32768, rolling=False), cache_bytes(a, 32768, rolling=True)
    log = (ROOT / "benchmarks" / "logs" / "h100_tests_and_tuning.txt").read_text()
    seven = json.loads(next(line for line in log.splitlines() if line.startswith('{"params_b"')))
    cpu_train = json.loads((ROOT / "benchmarks" / "logs" / "cpu_train_info.json").read_text())
    small, big = sorted(_bench("perplexity_memory")["runs"], key=lambda r: r["file_bytes"])
    return {
        "perplexity memory": f"scoring {small['file_bytes'] / 1e6:.0f} MB of text peaked at {small['peak_rss_mib']:.0f} "
                             f"MiB and {big['file_bytes'] / 1e6:.0f} MB ({big['tokens']:,} tokens) at "
                             f"{big['peak_rss_mib']:.0f} MiB, so ten times the text costs "
                             f"{100 * (big['peak_rss_mib'] / small['peak_rss_mib'] - 1):.0f}% more memory",
        "7B shapes on the H100": f"triton backend: pre-fill {seven['triton']['prefill_s']:.2f} s, peak "
                                 f"{seven['triton']['peak_gib']:.1f} GiB; torch backend: {seven['torch']['prefill_s']:.2f} s, "
                                 f"{seven['torch']['peak_gib']:.1f} GiB",
        "training on the CPU": f"{cpu_train['wall_s']:,.0f} s on the 2-core CPU",
        "threads busy": f"({sweep[True, 1]:.0f} tok/s beside a busy process, where torch's default two threads fall to "
                        f"{sweep[True, 2]:.0f}; idle, two threads give {sweep[False, 2] / sweep[False, 1]:.1f}x the rate of one)",
        "cpu_decode fp32": f"fast step fp32 **{d['mistral_lab_fast']['tokens_per_s']:.0f} tok/s** vs transformers fp32 "
                           f"{d['transformers_fp32']['tokens_per_s']:.0f} ({s['fast_fp32 / transformers_fp32 (same precision)']:.2f}x",
        "cpu_decode fp16": f"{d['mistral_lab_fast_fp16']['tokens_per_s']:.0f} tok/s vs transformers' default load of this "
                           f"fp16 checkpoint (fp16) {d['transformers_default']['tokens_per_s']:.0f} "
                           f"({s['fast_fp16 / transformers_default (float16 weights both)']:.2f}x",
        "cpu_decode readable": f"the readable model {d['mistral_lab_model']['tokens_per_s']:.0f}",
        "h100 prefill ours": f"{_ms(att, 'triton_swa')} ms at 4K / 8K / 16K / 32K",
        "h100 prefill flex": f"FlexAttention with the window mask {_ms(att, 'flex_window')}",
        "h100 prefill sdpa": f"causal flash (SDPA) {_ms(att, 'sdpa_causal')}",
        "h100 ratios": f"({vs[16384]['sdpa_causal']:.2f}x), {vs[32768]['sdpa_causal']:.2f}x at 32K",
        "h100 decode": f"{1000 * dec['triton_decode']['ms']:.1f} us per step (CUDA graph), "
                       f"{dec['triton_decode']['gbps_min_bytes'] / 1000:.2f} TB/s",
        "h100 decode sdpa": f"SDPA over the same buffer {1000 * dec['sdpa_rolling']['ms']:.1f} us",
        "window work at 16K": f"{visible_pairs(16384, None) / visible_pairs(16384, 4096):.2f}x less work",
        "memory at 32K": f"{full // 2**30} GiB full vs {rolling / 2**30:.1f} GiB rolling: {full // rolling}x",
        "long positions": f"{pos['swa'][16384]:.2f} nats at 16K-32K vs {pos['swa'][256]:.2f} at 256-511",
        "twin positions": f"rises from {pos['full'][256]:.2f} to {pos['full'][4096]:.2f} by 4K-8K",
        "probe": f">= {int(100 * min(v for d, v in key.items() if d <= 56))}% right to d = 56, chance "
                 f"(1/{round(1 / ctx['passkey']['chance'])}) from d = {ctx['passkey']['bound'] + 1} on",
    }


@pytest.mark.parametrize("claim", sorted(_readme_claims()))
def test_readme_number_is_its_benchmark(claim):
    text = _readme_claims()[claim]
    assert text in " ".join(README.split()), f"README no longer says {text!r} ({claim}): re-render it from the JSON"


def _classroom_table(d: dict) -> str:
    g = {(x["engine"], x["processes"]): x for x in d["groups"]}
    rows = ["| processes | own copy: aggregate tok/s | own copy: slowest / median s | shared copy: aggregate tok/s | "
            "shared copy: slowest / median s | CPU s per process: own / shared | PSS MiB: own / shared | "
            "transformers: aggregate tok/s | transformers: slowest s |", "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({k[1] for k in g}):
        o, m, t = g["ours", n], g["shared", n], g["transformers", n]
        rows.append(f"| {n} | {o['aggregate_tokens_per_s']:.0f} | {o['slowest_s']:.2f} / {o['median_s']:.2f} | "
                    f"{m['aggregate_tokens_per_s']:.0f} | {m['slowest_s']:.2f} / {m['median_s']:.2f} | "
                    f"{o['cpu_s_per_process_median']:.2f} / {m['cpu_s_per_process_median']:.2f} | "
                    f"{o['pss_mib_median']:.0f} / {m['pss_mib_median']:.0f} | "
                    f"{_rate(t)} | {_slowest(t)} |")
    return "\n".join(rows)


def _rate(g: dict) -> str:  # a group stopped at its time limit has an upper bound only
    return f"<= {g['aggregate_tokens_per_s_at_most']:.3g}" if g["timed_out"] else f"{g['aggregate_tokens_per_s']:.3g}"


def _slowest(g: dict) -> str:
    return f"> {g['limit_s']:.0f}" if g["timed_out"] else f"{g['slowest_s']:.3g}"


def classroom_text(d: dict) -> list[str]:
    """What TEACHING's classroom section says, rendered from benchmarks/classroom.json."""
    g = {(x["engine"], x["processes"]): x for x in d["groups"]}
    one, eight, own8 = g["ours", 1], g["shared", 8], g["ours", 8]
    goal = d["goal"]
    sweep = {(r["busy_process"], r["threads"]): r["api_tokens_per_s"] for r in d["thread_sweep"]}
    cpus = d["usable_cpus"]
    return [f"Fairness met ({goal['slowest_over_median_8']}x the median with 8)",
            f"{goal['aggregate_8']:.0f} against 0.8 x {one['aggregate_tokens_per_s']:.0f} x {cpus} = "
            f"{goal['target']:.0f} ({goal['aggregate_8'] / (one['aggregate_tokens_per_s'] * cpus):.2f}x)",
            f"each with its own copy, {own8['aggregate_tokens_per_s']:.0f}",
            f"cost {one['cpu_s_per_process_median']:.2f} CPU s alone, {own8['cpu_s_per_process_median']:.2f} CPU s "
            f"each when eight hold their own copies and {eight['cpu_s_per_process_median']:.2f} when they share one",
            f"({sweep[False, 2]:.0f} vs {sweep[False, 1]:.0f} tok/s, API)",
            f"fall to {sweep[True, 2]:.0f} tok/s while one keeps {sweep[True, 1]:.0f}",
            f"ours is {'at least ' if goal['ours_over_transformers_8_is_lower_bound'] else ''}"
            f"{goal['ours_over_transformers_8']:.0f}x faster in aggregate",
            f"peak RSS {max(x['peak_rss_mib_max'] for x in d['groups'] if x['engine'] == 'ours'):.0f} MiB per process "
            f"(ours) and {max(x['peak_rss_mib_max'] for x in d['groups'] if x['engine'] == 'transformers' and not x['timed_out']):.0f} MiB "
            f"(transformers), and {max(x['peak_rss_mib_max'] for x in d['groups'] if x['engine'] == 'shared'):.0f} MiB",
            f"PSS {own8['pss_mib_median']:.0f} MiB with its own copy and {eight['pss_mib_median']:.0f} MiB sharing one",
            f"own pages {own8['uss_mib_median']:.0f} and {eight['uss_mib_median']:.0f} MiB",
            f"the file is {d['shared_weights_file_mib']:.1f} MiB"]


def test_teaching_classroom_numbers_are_the_committed_run():
    d = _bench("classroom")
    said = " ".join(TEACHING.split())
    assert _classroom_table(d) in TEACHING, "TEACHING's classroom table is not benchmarks/classroom.json's"
    for text in classroom_text(d):
        assert text in said, f"TEACHING no longer says {text!r}: re-render it from benchmarks/classroom.json"


def test_teaching_thread_table_is_the_committed_measurement():
    d = _bench("threads")
    names = {"score": "scoring 2,048 tokens", "prefill": "pre-fill of 2,048 tokens", "decode": "decode, 128 tokens",
             "train_step": "a training step (8 x 256, bf16 autocast)"}
    for r in d["summary"]:
        row = (f"| {names[r['kind']]} | {r['idle_one_s']:.2f} | {r['idle_all_s']:.2f} | {r['busy_one_s']:.2f} | "
               f"{r['busy_all_s']:.2f} |")
        assert row in TEACHING, f"TEACHING's thread table is not benchmarks/threads.json's: {row}"
    said = " ".join(TEACHING.split())
    assert f"up to {max(r['all_over_one_busy'] for r in d['summary']):.1f}x the time of one" in said


ASSETS_README = (ROOT / "assets" / "README.md").read_text()


def _e(x: float) -> str:  # 0.001 -> "1e-3", as the page writes a learning rate
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _info(name: str) -> dict:
    return json.loads((ROOT / "assets" / name / "train_info.json").read_text())


def test_assets_readme_states_what_each_train_info_recorded():
    m, f, p = _info("model"), _info("model-full"), _info("passkey")
    t, pt = m["train"], p["train"]
    acc = dict(zip(p["accuracy_by_distance"]["distance"], p["accuracy_by_distance"]["accuracy"]))
    bound = ml.receptive_field(p["args"]["n_layers"], p["args"]["sliding_window"])
    perfect = max(d for d in acc if all(acc[e] == 1.0 for e in acc if e <= d))
    chance = [a for d, a in acc.items() if d > bound]
    stated = [
        f"{t['steps']} x {t['batch_size']} x {t['seq_len']} = {t['steps'] * t['batch_size'] * t['seq_len'] / 1e6:.2f}M tokens",
        f"lr {_e(t['lr'])} -> {_e(t['min_lr'])} cosine, {t['warmup']} warm-up steps, clip {t['grad_clip']}",
        f"{m['wall_s']} s (37.9 s on a second run), {m['date']}, torch {m['torch']}",
        f"one NVIDIA H200, {f['wall_s']} s",
        f"{pt['steps']} steps x {pt['batch_size']} sequences of {pt['seq_len']} tokens",
        f"lr {_e(pt['lr'])} -> {_e(pt['min_lr'])} cosine",
        f"one thread, {p['wall_s']} s",
        f"1.00 for every d from 1 to {perfect}, {acc[perfect + 4]:.2f} at {perfect + 4}, then chance: "
        f"{min(chance):.2f}-{max(chance):.2f} from {min(d for d in acc if d > bound)} to {max(acc)}",
    ]
    said = " ".join(ASSETS_README.split())
    missing = [s for s in stated if s not in said]
    assert not missing, "assets/README.md no longer states: " + "; ".join(missing)


def test_teaching_time_per_notebook_is_the_committed_run():
    d = json.loads((ROOT / "benchmarks" / "logs" / "cpu_notebooks.json").read_text())
    assert {r["notebook"] for r in d["rows"]} == {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert all(r["finished"] for r in d["rows"])
    for r in d["rows"]:
        row = f"| {r['notebook'].removesuffix('.ipynb')} | {r['seconds']:.1f} | {r['kernel_peak_rss_mib']} |"
        assert row in TEACHING, f"TEACHING's time table is not benchmarks/logs/cpu_notebooks.json's: {row}"
    assert f"All ten in {sum(r['seconds'] for r in d['rows']):.0f} s" in TEACHING


def hub_text(d: dict) -> dict[str, str]:
    """TEACHING's hub section, rendered from benchmarks/classroom_hub.json."""
    c = {r["users"]: r for r in d["classes"]}
    rows = ["| students | notebook 03: median / slowest s | slowest / median | servers ready s | "
            "peak MiB: kernel / server | kernel after the run, MiB: PSS / own |", "|---|---|---|---|---|---|"]
    for n, r in sorted(c.items()):
        rows.append(f"| {n} | {r['notebook_03_s']['median']:.1f} / {r['notebook_03_s']['slowest']:.1f} | "
                    f"{r['slowest_over_median']:.2f} | {r['servers_ready_s']:.0f} | "
                    f"{r['peak_kernel_mib_max']:.0f} / {r['peak_server_mib_max']:.0f} | "
                    f"{r['kernel_pss_mib_median']:.0f} / {r['kernel_uss_mib_median']:.0f} |")
    one, four, eight = c[1], c[4], c[8]
    cores = d["environment"]["cpu_count"]
    goal = d["goal"]
    return {"HUB_TABLE": "\n".join(rows),
            "HUB_ONE": f"{one['notebook_03_s']['median']:.1f}", "HUB_FOUR": f"{four['notebook_03_s']['median']:.1f}",
            "HUB_EIGHT": f"{eight['notebook_03_s']['median']:.1f}",
            "HUB_FAIR": f"{max(r['slowest_over_median'] for r in c.values()):.2f}x",
            "HUB_PER_CORE": f"{cores} x {eight['notebook_03_s']['median']:.1f} / 8 = "
                            f"{cores * eight['notebook_03_s']['median'] / 8:.1f} s of a core against "
                            f"{one['notebook_03_s']['median']:.1f} s alone",
            "HUB_COST": f"{100 * (cores * eight['notebook_03_s']['median'] / 8 / one['notebook_03_s']['median'] - 1):.0f}% "
                        f"more core time",
            "HUB_GOAL": f"{goal['aggregate_8']:.0f} tokens/s in aggregate against 0.8 x "
                        f"{one['aggregate_tokens_per_s']:.0f} x {cores} = {goal['target']:.0f}",
            "HUB_READY": f"Starting 8 servers at once takes {eight['servers_ready_s']:.0f} s",
            "HUB_SERVER": f"{max(r['peak_server_mib_max'] for r in c.values()):.0f}",
            "HUB_KERNEL": f"{max(r['peak_kernel_mib_max'] for r in c.values()):.0f}",
            "HUB_SHARED": f"{eight['kernels_mapping_shared_weights']} of the 8 kernels mapped the class's one copy",
            "HUB_PSS": f"each kernel's PSS was {eight['kernel_pss_mib_median']:.0f} MiB, "
                       f"{eight['kernel_uss_mib_median']:.0f} MiB of it its own pages"}


def test_teaching_hub_numbers_are_the_committed_run():
    prose = " ".join(TEACHING.split())  # a sentence may wrap anywhere; the table is checked line by line
    for key, text in hub_text(_bench("classroom_hub")).items():
        assert text in (TEACHING if key == "HUB_TABLE" else prose), f"TEACHING no longer says {text!r} ({key}): re-render it from benchmarks/classroom_hub.json"
