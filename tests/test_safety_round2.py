"""Nothing lost, nothing silently wrong, second round (issue 23): a save killed at any
step leaves the old model or the new one; train never replaces or writes into a folder
that is not its own; every id, layer and head is checked; config keys that would be
ignored are refused; sizes that set an allocation are checked before it."""
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.checkpoints import CheckpointError, saving
from mistral_lab.checkpoints.layouts import PREVIOUS, previous

from test_safety import ARGS, Boom, models, same  # noqa: E402  (the first round's small models)

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = [weights.save, weights.save_mistral, weights.save_hf]


def one_line(e) -> bool:
    return "\n" not in str(e) and str(e).strip() != ""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------- saving: the old model or the new one

class Images:
    """Copy the folder just before every os.replace and os.unlink (and os.rename) a save
    makes: each copy is what a SIGKILL at that instant would leave on disk."""

    def __init__(self, folder: Path, dest: Path):
        self.folder, self.dest, self.taken = folder, dest, []

    def wrap(self, real):
        def call(*a, **kw):
            self.take()
            return real(*a, **kw)
        return call

    def take(self):
        img = self.dest / f"img{len(self.taken)}"
        shutil.copytree(self.folder, img, symlinks=True)
        self.taken.append(img)


def check_image(img: Path, old, new, toks: dict) -> str:
    """The folder loads as the old model or the new one, with that model's tokenizer; then
    recover() (what the next save, --resume and --overwrite do) leaves the same, clean."""
    outcomes = []
    for _ in range(2):
        loaded = weights.load(img)
        which = "old" if same(loaded, old) else "new" if same(loaded, new) else None
        assert which is not None, f"{img}: loads as neither model"
        assert sha(previous(img) / "tokenizer.model") == toks[which], f"{img}: the other model's tokenizer"
        outcomes.append(which)
        saving.recover(img)
        assert not (img / PREVIOUS).exists()
        assert not [p.name for p in img.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    assert outcomes[0] == outcomes[1], "recover changed which model the folder holds"
    return outcomes[0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_kill_at_every_step_of_a_save_leaves_the_old_model_or_the_new(tmp_path, monkeypatch, layout):
    old, new = models(2)
    (tmp_path / "old.tok").write_bytes(b"old tokenizer")
    (tmp_path / "new.tok").write_bytes(b"new tokenizer")
    toks = {"old": sha(tmp_path / "old.tok"), "new": sha(tmp_path / "new.tok")}
    folder = tmp_path / "model"
    layout(old, folder, tokenizer_file=tmp_path / "old.tok")
    (folder / "notes.txt").write_text("the user's own file")
    images = Images(folder, tmp_path)
    for name in ("replace", "unlink", "rename"):
        monkeypatch.setattr(os, name, images.wrap(getattr(os, name)))
    layout(new, folder, tokenizer_file=tmp_path / "new.tok")
    monkeypatch.undo()
    images.take()
    assert len(images.taken) >= 6
    seen = [check_image(img, old, new, toks) for img in images.taken]
    assert seen[0] == "old" and seen[-1] == "new"
    assert seen == sorted(seen, key=["old", "new"].index), "the folder went back to the old model"
    assert (folder / "notes.txt").read_text() == "the user's own file"
    assert not (folder / PREVIOUS).exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_failure_at_every_replace_leaves_a_model_that_loads(tmp_path, monkeypatch, layout):
    """A failure at the k-th os.replace, for every k: the folder loads (old or new), never
    refused, and no temporary file or kept copy is left behind."""
    old, new = models(2)
    (tmp_path / "old.tok").write_bytes(b"old tokenizer")
    (tmp_path / "new.tok").write_bytes(b"new tokenizer")
    toks = {"old": sha(tmp_path / "old.tok"), "new": sha(tmp_path / "new.tok")}
    for k in range(1, 20):
        folder = tmp_path / f"k{k}"
        layout(old, folder, tokenizer_file=tmp_path / "old.tok")
        boom = Boom(os.replace, k)
        monkeypatch.setattr(os, "replace", boom)
        try:
            layout(new, folder, tokenizer_file=tmp_path / "new.tok")
            failed = False
        except OSError as e:
            failed = True
            assert e.errno == errno.ENOSPC
        monkeypatch.undo()
        assert not (folder / PREVIOUS).exists()
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
        which = check_image(folder, old, new, toks)
        if failed:
            assert which == "old"
        else:
            assert which == "new"
            break
    else:
        pytest.fail("the save never completed")


def test_leftover_temporary_files_are_removed_by_the_next_save(tmp_path):
    old, new = models(2)
    weights.save(old, tmp_path)
    left = [tmp_path / "..model.safetensors.1a2b3c4d.tmp.x9y8z7.tmp", tmp_path / ".mistral_lab.json.abc.tmp",
            tmp_path / f"{PREVIOUS}.1a2b3c4d"]
    left[0].write_bytes(b"\0" * 1000)
    left[1].write_text("{}")
    left[2].mkdir()
    mine = tmp_path / ".my_notes.tmp"  # not a name a save writes: not ours to remove
    mine.write_text("keep")
    weights.save(new, tmp_path)
    assert not any(p.exists() for p in left)
    assert mine.exists()
    assert same(weights.load(tmp_path), new)


# ------------------------------------------------- config keys that would be ignored

@pytest.mark.parametrize("key,value", [("sliding_window", 8), ("rope_theta", 1e6), ("norm_eps", 1e-6),
                                       ("dtype", "float16"), ("comment", "x")])
def test_top_level_keys_outside_args_are_refused(tmp_path, key, value):
    weights.save(models(1)[0], tmp_path)
    d = json.loads((tmp_path / "mistral_lab.json").read_text())
    d[key] = value
    (tmp_path / "mistral_lab.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=rf"top-level key\(s\) \['{key}'\] are not read .*move them into 'args'") as e:
        weights.load(tmp_path)
    assert one_line(e.value)
    with pytest.raises(CheckpointError):
        weights.read_config(*weights.locate(tmp_path))  # info reads the config the same way


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_rope_scaling_in_params_json_is_refused(tmp_path, key):
    weights.save_mistral(models(1)[0], tmp_path)
    d = json.loads((tmp_path / "params.json").read_text())
    d[key] = {"type": "linear", "factor": 8}
    (tmp_path / "params.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=rf"sets {key} .*only plain RoPE is supported") as e:
        weights.load(tmp_path)
    assert one_line(e.value)
    d[key] = None  # null: no scaling, as written by some converters
    (tmp_path / "params.json").write_text(json.dumps(d))
    weights.load(tmp_path)


# ------------------------------------------------- train writes only into its own folders

def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    from mistral_lab.training import runs

    hf = tmp_path / "hf"
    weights.save_hf(models(1)[0], hf, tokenizer_file=ROOT / "assets" / "tokenizer.model")
    before = snapshot(hf)
    with pytest.raises(FileExistsError, match=r"holds files that are not a training run's \(config\.json, "
                                              r"model\.safetensors, tokenizer\.model\)") as e:
        runs.prepare_out(hf, overwrite=True)
    assert one_line(e.value) and "--overwrite replaces only a run" in str(e.value)
    assert snapshot(hf) == before
    (hf / "train_log.jsonl").write_text("")  # a run's log beside another model's config: still not a run
    with pytest.raises(FileExistsError, match=r"not a training run's \(config\.json\)"):
        runs.prepare_out(hf, overwrite=True)
    assert (hf / "model.safetensors").is_file()
    run = tmp_path / "run"  # a run (with its corpus and a save's leftovers): replaced
    weights.save(models(1)[0], run)
    for name in ("train_log.jsonl", "run.json", "checkpoint.pt", "..model.safetensors.ab.tmp.cd.tmp"):
        (run / name).write_text("")
    (run / "data").mkdir()
    (run / PREVIOUS).mkdir()
    runs.prepare_out(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["data"]


def test_cli_overwrite_and_data_dir_refuse_another_model(tmp_path, capsys):
    from mistral_lab.__main__ import main

    model = tmp_path / "saved"
    weights.save(models(1)[0], model, tokenizer_file=ROOT / "assets" / "tokenizer.model")
    before = snapshot(model)
    small = ["train", "--preset", "tiny", "--steps", "2", "--quiet", "--threads", "1"]
    assert main([*small, "--out", str(model), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a training run's" in err
    assert main([*small, "--out", str(tmp_path / "new_run"), "--data-dir", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds files that are not a corpus (mistral_lab.json" in err
    assert snapshot(model) == before
    assert not (tmp_path / "new_run").exists()


def test_data_dir_holding_only_a_corpus_is_accepted(tmp_path):
    from mistral_lab.data import corpus

    corpus.check_data_dir(tmp_path / "new")
    (tmp_path / "part").mkdir()
    for name in ("tokenizer.model", "train.bin", ".heldout.bin.x1y2.tmp"):
        (tmp_path / "part" / name).write_bytes(b"")
    corpus.check_data_dir(tmp_path / "part")  # a corpus cut part-way: rebuilt
    (tmp_path / "part" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a corpus \(notes\.txt\)"):
        corpus.check_data_dir(tmp_path / "part")


# ------------------------------------------------- threads: capped or refused, never a crash

def test_an_explicit_thread_count_is_capped_at_the_usable_cpus():
    from mistral_lab import threads

    cpus = threads.usable_cpus()
    assert threads.choose(10**5).n == cpus
    assert "capped at" in threads.choose(10**5).source
    before = torch.get_num_threads()
    with threads.limited(10**5) as choice:
        assert choice.n == cpus and torch.get_num_threads() == cpus
    assert torch.get_num_threads() == before
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            threads.choose(bad)


@pytest.mark.parametrize("argv", [
    ["generate", "--prompt", "hi", "--max-new-tokens", "3"], ["train", "--out", "X"], ["passkey", "train", "--out", "X"],
    ["passkey", "eval"], ["perplexity", "README.md"], ["context-use", "--out", "X.json"], ["bench", "threads"]])
def test_every_command_refuses_a_huge_thread_count_in_one_line(argv, capsys, tmp_path):
    from mistral_lab.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([*[str(tmp_path / a) if a.startswith("X") else a for a in argv], "--threads", "100000"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected a number of threads in 1..1024, got 100000" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------- ids, layers and heads: checked, never cast

@pytest.fixture(scope="module")
def shipped():
    return ml.load(), weights.load_tokenizer()


@pytest.mark.parametrize("eos", ["x", 10**6, -1, True, 2.0, 4096])
def test_a_bad_eos_id_is_refused(shipped, eos):
    model, _ = shipped
    with pytest.raises(ValueError, match=r"eos_id must be a token id in \[0, 4096\) or None, got") as e:
        ml.generate(model, [1, 529], 2, eos_id=eos)
    assert one_line(e.value)


@pytest.mark.parametrize("ids", [torch.tensor([1.9, 529.7]), [True, True], ["529"], [2.0], None])
def test_the_tokenizer_refuses_ids_that_are_not_integers(shipped, ids):
    import numpy as np
    from mistral_lab.tokenizer import StreamDecoder

    _, tok = shipped
    ids = np.array([1.0, 529.0]) if ids is None else ids
    for call in (tok.decode, tok.pieces, lambda x: StreamDecoder(tok, x), lambda x: StreamDecoder(tok).push(x[0]),
                 lambda x: tok.id_to_piece(x[0])):
        with pytest.raises((ValueError, TypeError), match="must be integers") as e:
            call(ids)
        assert one_line(e.value)
    assert tok.decode(torch.tensor([1, 529])) == tok.decode([1, 529])  # integer tensors are fine


@pytest.mark.parametrize("kw,match", [
    ({"layers": [99]}, r"99 is not one of this model's layers \(0\.\.5\)"),
    ({"layers": [-1]}, r"-1 is not a layer id"), ({"layers": ["a"]}, r"'a' is not a layer id"),
    ({"layers": [1.0]}, r"1\.0 is not a layer id"), ({"layers": [True]}, r"True is not a layer id"),
    ({"layers": 3}, r"takes a list of ids, got 3"), ({"layers": []}, r"layers=\[\]\) would record nothing"),
    ({"heads": [-1]}, r"-1 is not a head id"), ({"heads": [1.7]}, r"1\.7 is not a head id"),
    ({"heads": [99]}, r"99 is not one of this model's heads \(0\.\.7\)"),
    ({"heads": []}, r"heads=\[\]\) would record nothing")])
def test_trace_and_attention_bands_refuse_bad_layers_and_heads(shipped, kw, match):
    from mistral_lab import trace
    from mistral_lab.experiments.attention import attention_bands

    model, _ = shipped
    with pytest.raises(ValueError, match=match) as e:
        with trace.record(probs=True, **kw):
            ml.generate(model, [1, 529, 30], 2)
    assert one_line(e.value)
    with pytest.raises(ValueError, match=match):
        attention_bands(model, [1, 529, 30], **kw)


@pytest.mark.parametrize("ids,match", [([1.0, 2.0], "must be integers"), ([True, False], "must be integers"),
                                       (torch.tensor([[1, 2], [3, 4]]), r"one sequence \(1-D\), got shape \(2, 2\)"),
                                       (torch.tensor([1.5, 2.5]), "must be integers")])
def test_attention_bands_refuses_ids_that_are_not_one_sequence_of_integers(shipped, ids, match):
    from mistral_lab.experiments.attention import attention_bands

    with pytest.raises(ValueError, match=match) as e:
        attention_bands(shipped[0], ids)
    assert one_line(e.value)


def test_attention_band_of_a_head_not_recorded_names_it(shipped):
    from mistral_lab import trace

    with trace.record(layers=[0], probs=True, heads=[0, 5]) as t:
        ml.generate(shipped[0], [1, 529, 30], 1)
    t.attention_band(0, 5)
    with pytest.raises(ValueError, match=r"head 3 was not recorded \(heads=\[0, 5\]\)"):
        t.attention_band(0, 3)


# ------------------------------------------------- output paths checked before the work

@pytest.mark.parametrize("argv", [["passkey", "eval", "--samples", "1"], ["context-use"], ["bench", "cpu-decode"],
                                  ["bench", "perplexity-memory", "--mb", "0.01"], ["bench", "threads"]])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_work(argv, tmp_path, capsys):
    import time

    from mistral_lab.__main__ import main

    t0 = time.perf_counter()
    assert main([*argv, "--out", str(tmp_path / "missing" / "r.json")]) == 2
    assert time.perf_counter() - t0 < 5, "refused only after the work"
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the folder" in err and "does not exist" in err
    (tmp_path / "dir.json").mkdir()
    assert main([*argv, "--out", str(tmp_path / "dir.json")]) == 2
    assert "it is a folder" in capsys.readouterr().err


# ------------------------------------------------- sizes that set an allocation: checked first

@pytest.fixture
def little_memory(monkeypatch):
    """A machine with 64 MiB free: what a huge window or cache would meet."""
    from mistral_lab import config

    monkeypatch.setattr(config, "available_memory", lambda device: 64 * 2**20)


def test_a_huge_window_is_refused_at_load_with_the_bytes_it_needs(little_memory):
    with pytest.warns(UserWarning, match="untrained_window"):
        with pytest.raises(CheckpointError, match=r"a rolling buffer of W = 1,000,000 slots needs [\d.]+ GiB "
                                                  r"\([\d,]+ bytes\) but only 0\.1 GiB is free") as e:
            ml.load(ROOT / "assets" / "model-full", untrained_window=10**6)
    assert one_line(e.value)
    with pytest.warns(UserWarning):
        ml.load(ROOT / "assets" / "model-full", untrained_window=64)  # a small one still fits


def test_a_huge_window_in_a_config_is_refused_at_load(tmp_path, little_memory):
    weights.save(models(1)[0], tmp_path)
    d = json.loads((tmp_path / "mistral_lab.json").read_text())
    d["args"]["sliding_window"] = 10**9
    (tmp_path / "mistral_lab.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"mistral_lab\.json: a rolling buffer of W = 1,000,000,000 slots needs"):
        weights.load(tmp_path)


def test_the_static_engine_checks_the_cache_for_max_new_tokens_first(little_memory):
    model = ml.load(ROOT / "assets" / "model-full")
    with pytest.raises(MemoryError, match=r"a KV cache of 1,000,00\d slots x 1 sequence needs [\d.]+ GiB .*generate "
                                          r"fewer tokens") as e:
        ml.generate(model, [1, 529, 30], 10**6, engine="static")
    assert one_line(e.value)
    with pytest.raises(MemoryError, match=r"x 100,000 sequences needs"):
        model.new_cache(10**5)


# ------------------------------------------------- the batch API's promise, with sampling

@pytest.mark.parametrize("engine", ["auto", "model", "static"])
@pytest.mark.parametrize("sampling", [dict(temperature=1.0, seed=3), dict(temperature=0.9, top_k=20, top_p=0.9, seed=7)])
def test_each_row_of_a_seeded_sampled_batch_equals_that_prompt_alone(shipped, engine, sampling):
    """README: each result of a batch equals generating that prompt alone -- with sampling
    too, since each sequence draws from its own generator seeded with the seed."""
    model, tok = shipped
    prompts = [tok.encode("ROMEO."), tok.encode("JULIET. O Romeo, Romeo!"), [1]]
    batch = ml.generate(model, prompts, 12, engine=engine, **sampling)
    for prompt, row in zip(prompts, batch):
        alone = ml.generate(model, prompt, 12, engine=engine, **sampling)
        assert row.new_tokens == alone.new_tokens


# ------------------------------------------------- --resume never blocks on a FIFO

@pytest.mark.parametrize("name", ["train_log.jsonl", "checkpoint.pt"])
def test_resume_refuses_a_fifo_under_a_run_file_name(tmp_path, name):
    from mistral_lab.training import runs

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / name).unlink(missing_ok=True)
    os.mkfifo(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name} is not a regular file \(a FIFO\): .*remove or rename it") as e:
        runs.prepare_out(tmp_path, resume=True)
    assert one_line(e.value)


# ------------------------------------------------- perplexity streams a file without newlines

@pytest.mark.parametrize("sep", [" ", "  ", "\n"])
def test_a_file_without_newlines_is_streamed_with_the_ids_of_the_whole(tmp_path, shipped, sep):
    from mistral_lab.experiments.perplexity import text_blocks, token_blocks

    _, tok = shipped
    text = (ROOT / "assets" / "heldout.txt").read_text(encoding="utf-8")[:60000].replace("\n", sep)
    f = tmp_path / "one_line.txt"
    f.write_text(text, encoding="utf-8")
    blocks = list(text_blocks(f, 2000))
    assert "".join(blocks) == text
    assert max(len(b) for b in blocks) < 2 * 2000 + 200, "the text was held whole"
    assert [i for _, ids in token_blocks(tok, f, 2000) for i in ids] == tok.encode(text)
