"""Nothing lost, nothing silently wrong, third round (issue 23's unclear failures): each one
now fails in one line that names the file, field or value and says what to do. A real full
disk (a small tmpfs, where this machine lets the test mount one) at every point of a save
of every layout leaves the old model or the new one."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import mistral_lab as ml
from mistral_lab import checkpoints as weights
from mistral_lab.checkpoints import CheckpointError
from mistral_lab.checkpoints.layouts import PREVIOUS

from test_safety import ENV, models, same  # noqa: E402  (the first round's small models)
from test_safety_round2 import LAYOUTS, one_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def cli(*argv, timeout=300, **kw):
    return subprocess.run([PY, "-m", "mistral_lab", *argv], capture_output=True, env=ENV, cwd=ROOT,
                          timeout=timeout, **kw)


def last_line(stderr) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def shipped():
    return ml.load(), ml.load_tokenizer()


# ------------------------------------------------- wording: the message says what is wrong

def test_a_negative_number_in_scientific_notation_reaches_the_options_own_check():
    r = cli("train", "--lr", "-1e-3", "--out", "unused_run_folder")
    assert r.returncode == 2
    assert "argument --lr: expected a finite number > 0, got -0.001" in last_line(r.stderr)


def test_a_fifo_tokenizer_is_not_called_a_directory(tmp_path):
    fifo = tmp_path / "tok.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"tok\.fifo is not a regular file \(a pipe, socket or device\)"):
        ml.Tokenizer(fifo)
    with pytest.raises(ValueError, match=r"is a directory: pass a sentencepiece \.model file"):
        ml.Tokenizer(tmp_path)


def test_an_fp8_checkpoint_is_called_quantized_not_non_float(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "fp8"
    shutil.copytree(ROOT / "assets" / "passkey", folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, folder / "model.safetensors")
    config = json.loads((folder / "mistral_lab.json").read_text())
    config["files"]["model.safetensors"]["bytes"] = (folder / "model.safetensors").stat().st_size
    config["files"]["model.safetensors"].pop("save_id")
    (folder / "mistral_lab.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"is stored as F8_E4M3, an 8-bit float \(a quantized checkpoint\)"
                                              r".*load the unquantized release") as e:
        ml.load(folder)
    assert one_line(e.value)


@pytest.mark.parametrize("huge", [2**63, 2**70, -2**63 - 1])
def test_a_token_id_beyond_int64_is_outside_the_vocabulary(shipped, huge):
    with pytest.raises(ValueError, match=rf"token id {huge} is outside the vocabulary"):
        ml.generate(shipped[0], [1, huge], 2)
    with pytest.raises(ValueError, match=rf"token id {huge} is outside the vocabulary"):
        shipped[1].decode([huge])


def test_text_that_is_not_utf8_names_the_byte(shipped):
    tok = shipped[1]
    with pytest.raises(ValueError, match=r"not valid UTF-8: character 3 came from the byte b'\\xe9'; re-encode"):
        tok.encode("caf\udce9")  # how Python hands over the Latin-1 bytes of an argv or a file
    with pytest.raises(ValueError, match=r"character 1 is a lone surrogate U\+D800"):
        tok.encode("a\ud800")
    r = cli("generate", "--prompt", b"caf\xe9", "--max-new-tokens", "2")
    assert r.returncode == 2
    assert "the text is not valid UTF-8: character 3 came from the byte b'\\xe9'" in last_line(r.stderr)


def test_ctrl_c_while_the_command_imports_ends_in_one_line():
    p = subprocess.Popen([PY, "-m", "mistral_lab", "info"], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    time.sleep(0.3)  # Python is up, torch is being imported (about 2 s here)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err.decode().strip() == "interrupted"


def test_ctrl_c_in_a_notebook_kernel_stays_a_keyboard_interrupt():
    """Only the command line ends quietly: importing the package elsewhere leaves SIGINT alone."""
    code = "import signal, mistral_lab; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.stdout.strip() == "True", r.stderr


def test_bench_cpu_decode_has_the_tokenizer_flag_its_message_names(tmp_path):
    from mistral_lab.__main__ import build_parser

    assert build_parser().parse_args(["bench", "cpu-decode", "--tokenizer", "t.model"]).tokenizer == "t.model"
    r = cli("bench", "cpu-decode", "--model", "assets/passkey", "--tokens", "2", "--repeats", "1")
    assert r.returncode == 2
    line = last_line(r.stderr)
    assert "has no tokenizer.model" in line and "--tokenizer on the command line" in line


@pytest.mark.parametrize("entry", [5, "x", None, ["bytes", 1]])
def test_a_damaged_manifest_entry_is_one_line(tmp_path, entry):
    folder = tmp_path / "pk"
    shutil.copytree(ROOT / "assets" / "passkey", folder)
    config = json.loads((folder / "mistral_lab.json").read_text())
    config["files"]["model.safetensors"] = entry
    (folder / "mistral_lab.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"its 'files' entry 'model\.safetensors': .* is not a file name "
                                              r"with its size .*: re-save the model") as e:
        ml.load(folder)
    assert one_line(e.value)


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "pk"
    shutil.copytree(ROOT / "assets" / "passkey", folder)
    config = json.loads((folder / "mistral_lab.json").read_text())
    config["files"]["../elsewhere.safetensors"] = {"bytes": 1}
    (folder / "mistral_lab.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'\.\./elsewhere\.safetensors'.* is not a file name"):
        ml.load(folder)


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_a_dead_end(tmp_path):
    """--out points to --overwrite (not --resume, which has nothing to continue), and
    following the advice trains; a folder holding only the corpus of an attempt is reused."""
    out = tmp_path / "run"
    (out / "data").mkdir(parents=True)
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    small = ["train", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--quiet",
             "--data-dir", str(tmp_path / "corpus")]
    r = cli(*small, "--out", str(out))
    assert r.returncode == 2 and "stopped before its first checkpoint (nothing to resume): pass --overwrite" \
        in last_line(r.stderr)
    r = cli("train", "--resume", str(out))
    assert r.returncode == 2 and "start it again with --out" in last_line(r.stderr)
    assert cli(*small, "--out", str(out), "--overwrite").returncode == 0
    assert ml.load(out).args.n_layers > 0
    only_corpus = tmp_path / "again"
    (only_corpus / "data").mkdir(parents=True)
    r = cli(*small, "--out", str(only_corpus))
    assert r.returncode == 0, r.stderr


def test_a_batch_too_big_for_memory_says_how_many_fit(shipped, monkeypatch):
    from mistral_lab import config

    monkeypatch.setattr(config, "available_memory", lambda device: 64 * 2**20)  # a machine with 64 MiB free
    with pytest.raises(MemoryError, match=r"x 100,000 sequences needs .* use a smaller batch \(at most [\d,]+ "
                                          r"sequences of this cache fit\)") as e:
        ml.generate(shipped[0], torch.ones(100_000, 1, dtype=torch.long), 1)
    assert one_line(e.value)


# ------------------------------------------------- viz and masks: the value named, never clamped

@pytest.mark.parametrize("window", [-5, 0, 2.5, True, "8"])
def test_every_window_function_refuses_a_window_that_is_not_a_positive_integer(window):
    from mistral_lab.viz import masks as vm, receptive

    calls = [lambda: ml.window_mask(10, window), lambda: ml.keys_per_query(3, window),
             lambda: ml.receptive_field(6, window), lambda: ml.visible_pairs(10, window),
             lambda: vm.masks_figure(24, window), lambda: vm.pair_counts_figure(64, window),
             lambda: receptive.theory_rows(6, window)]
    for call in calls:
        with pytest.raises(ValueError, match=rf"window W must be a positive integer .*got {window!r}"):
            call()


def test_sizes_of_figures_are_checked_not_clamped(shipped):
    from mistral_lab.viz import masks as vm, memory, prefill

    model, tok = shipped
    ids = tok.encode("ROMEO: hello there friend")
    for call, match in [(lambda: ml.window_mask(-3, 4), r"the sequence length n must be a whole number >= 0, got -3"),
                        (lambda: vm.mask_explorer(24, -5), r"window must be an integer in 1\.\.32 .*got -5"),
                        (lambda: vm.mask_explorer(100, 6), r"n must be an integer in 2\.\.64 .*got 100"),
                        (lambda: memory.bytes_vs_tokens_figure(model.args, max_tokens=-1), r"max_tokens must be"),
                        (lambda: prefill.chunk_explorer(model, ids, tok.pieces(ids), chunk=0),
                         r"chunk must be a chunk size in 1\.\.128 \(up to 2W\), got 0"),
                        (lambda: prefill.chunk_explorer(model, ids, tok.pieces(ids), chunk=2.5), r"got 2\.5")]:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("layer,head,match", [
    (99, 0, r"layer 99 is not in these bands \(layers 0\.\.5\): pick one of them, or compute the bands with"),
    (-1, 0, r"layer -1 is not in these bands \(layers 0\.\.5\): pick one of them$"),
    (1.5, 0, r"layer 1\.5 is not in these bands"),
    (0, 99, r"head 99 is not in these bands \(heads 0\.\.7\)")])
def test_an_attention_figure_of_a_layer_or_head_not_in_the_bands_names_it(shipped, layer, head, match):
    from mistral_lab.experiments.attention import attention_bands
    from mistral_lab.viz.attention import attention_explorer, attention_figure

    bands = attention_bands(shipped[0], shipped[1].encode("ROMEO: hello"))
    with pytest.raises(ValueError, match=match):
        attention_figure(bands, layer, head)
    with pytest.raises(ValueError, match=match):
        attention_explorer(bands, layer=layer, head=head)


# ------------------------------------------------- a full disk: the file named, the result kept

def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from mistral_lab import files

    target = tmp_path / "result.json"
    target.write_text("the old result\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # where a full disk (or a full NFS server) reports it
    with pytest.raises(OSError, match=rf"no space left to write {target} \(.* MB free there; nothing was "
                                      r"replaced\): free some space, or write to another folder") as e:
        files.atomic_write_json(target, {"new": 1})
    assert e.value.errno == errno.ENOSPC and one_line(e.value)
    assert target.read_text() == "the old result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_result_that_cannot_be_written_after_the_work_is_printed_not_lost(tmp_path, monkeypatch, capsys):
    from mistral_lab.__main__ import main

    real = os.fsync

    def full(fd):  # the run's own files are fine; the result file meets a full disk
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(["passkey", "eval", "--samples", "1", "--quiet", "--out", str(tmp_path / "k.json")]) == 2
    out, err = capsys.readouterr()
    assert "no space left to write" in err and "the result is printed above as JSON: save it from there" in err
    doc = json.loads(out[out.index("{"):])
    assert doc["benchmark"] == "passkey" and doc["digest"]
    assert not (tmp_path / "k.json").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC. Needs the right to mount (root in a container that allows
    it); elsewhere the injected failures above and in test_safety_round2 stand in."""
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_real_full_disk_at_every_point_of_a_save_leaves_the_old_model_or_the_new(small_tmpfs, tmp_path, layout):
    """Free space from none to enough, in steps of 4 KiB (a page of tmpfs): the save over the
    old model (its files held open, so replacing them frees nothing) fails at every point
    where the disk fills, and each time the folder loads as the old model, with no temporary
    file left; once there is room it loads as the new one."""
    old, new = models(2)
    (tmp_path / "old.tok").write_bytes(b"old tokenizer" * 100)
    (tmp_path / "new.tok").write_bytes(b"new tokenizer" * 100)
    folder = small_tmpfs / "model"
    outcomes = []
    for free_kib in range(0, 1024, 4):
        shutil.rmtree(folder, ignore_errors=True)
        for f in small_tmpfs.glob("fill*"):
            f.unlink()
        layout(old, folder, tokenizer_file=tmp_path / "old.tok")
        held = [open(p, "rb") for p in folder.iterdir() if p.is_file()]
        left = shutil.disk_usage(small_tmpfs).free - free_kib * 1024
        if left < 0:
            break
        with open(small_tmpfs / f"fill{uuid.uuid4().hex[:6]}", "wb") as f:
            f.write(b"\0" * left)
        try:
            layout(new, folder, tokenizer_file=tmp_path / "new.tok")
            outcome = "new"
        except OSError as e:
            assert e.errno == errno.ENOSPC and one_line(e)
            assert f"no space left to write {folder}/" in str(e) and ".tmp" not in str(e), e
            outcome = "old"
        finally:
            for h in held:
                h.close()
        loaded = weights.load(folder)
        assert same(loaded, old if outcome == "old" else new), f"{free_kib} KiB free: loads as neither model"
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], f"{free_kib} KiB: temporary files"
        assert not (folder / PREVIOUS).exists()
        outcomes.append(outcome)
        if outcome == "new":
            break
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert outcomes.count("old") >= 3, "the sweep should meet the disk filling at several points of the save"
