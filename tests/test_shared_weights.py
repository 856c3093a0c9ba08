"""One copy of the weights for every process (checkpoints/shared.py): a shared load computes
exactly what a private load computes, a second process maps the same pages, an edited
weight stays private to its process, and a stale, damaged or unwritable file never gives
wrong numbers."""
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from mistral_lab import generate
from mistral_lab.checkpoints import load, load_tokenizer, save, share
from mistral_lab.checkpoints import shared as shared_weights
from mistral_lab.checkpoints.shared import ENV
from mistral_lab.config import preset
from mistral_lab.engines.fast import decode_step
from mistral_lab.files import sha256
from mistral_lab.model import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)  # each test says where (or whether) to share


def _files(folder) -> list:
    return sorted(folder.glob("*.safetensors"))  # (beside them: .lock, the writers' lock)


def _file_backed(model, folder) -> bool:
    """Whether the model's weights and its fast step's matrices are views of a file in `folder`."""
    maps = Path("/proc/self/maps").read_text()
    step = decode_step(model)
    ptrs = [model.tok_embeddings.weight.data_ptr(), model.layers[0].attention.wq.weight.data_ptr(),
            step.output.data_ptr(), step.layers[-1].w13.data_ptr()]
    regions = [(int(a, 16), int(b, 16)) for line in maps.splitlines() if f" {folder}/" in line
               for a, b in [line.split()[0].split("-")]]
    return bool(regions) and all(any(a <= p < b for a, b in regions) for p in ptrs)


def test_a_shared_load_computes_what_a_private_load_computes(tmp_path):
    """The shipped model: state bitwise equal, and 3W+ sampled tokens (the buffer wraps
    three times) token for token and logprob for logprob, on both decode engines."""
    folder = tmp_path / "weights"
    private, mapped = load(shared=False), load(shared=folder)
    assert _file_backed(mapped, folder) and not _file_backed(private, folder)
    a, b = private.state_dict(), mapped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    ids = load_tokenizer().encode("ROMEO.")
    n = 3 * private.args.sliding_window + 10
    for engine in ("fast", "model"):
        x = generate(private, ids, n, temperature=0.8, top_k=50, seed=1, engine=engine)
        y = generate(mapped, ids, n, temperature=0.8, top_k=50, seed=1, engine=engine)
        assert x.new_tokens == y.new_tokens and x.logprobs == y.logprobs, engine
    (file,) = _files(folder)
    assert oct(file.stat().st_mode & 0o777) == "0o444" and oct(folder.stat().st_mode & 0o777) == "0o755"
    assert all(t.data_ptr() % 64 == 0 for t in mapped.state_dict().values())  # aligned as torch's own tensors


def test_a_second_process_maps_the_same_pages(tmp_path):
    """PSS halves for the file's pages when two processes have it mapped: one physical copy.
    The child also runs the command a teacher runs, which finds the file already current."""
    folder = tmp_path / "weights"
    mine = load(shared=folder)
    step = decode_step(mine)
    for t in [*mine.state_dict().values(), *(w for layer in step.layers for w in (layer.wqkv, layer.wo, layer.w13,
                                                                                   layer.w2)), step.output]:
        float(t.sum())  # every page of the file resident in this process too
    (file,) = _files(folder)
    child = textwrap.dedent(f"""
        import subprocess, sys
        from mistral_lab.checkpoints import load
        from mistral_lab.engines.fast import decode_step
        m = load()  # from {ENV}
        for t in [*m.state_dict().values(), *(w for layer in decode_step(m).layers
                                                 for w in (layer.wqkv, layer.wo, layer.w13, layer.w2)),
                  decode_step(m).output]:
            float(t.sum())
        rss = pss = 0
        inside = False
        for line in open("/proc/self/smaps"):
            if "-" in line.split()[0] and len(line.split()) >= 5:
                inside = line.rstrip().endswith({str(file)!r})
            elif inside and line.startswith(("Rss:", "Pss:")):
                rss, pss = (rss + int(line.split()[1]), pss) if line.startswith("Rss") else (rss, pss + int(line.split()[1]))
        print(rss, pss)
        cli = subprocess.run([sys.executable, "-m", "mistral_lab", "share-weights"], capture_output=True, text=True)
        print(cli.returncode, cli.stdout.split(" ")[0])
    """)
    env = {**os.environ, ENV: str(folder), "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    (rss, pss), (rc, shown) = [line.split() for line in out.stdout.split("\n")[:2]]
    assert int(rss) * 1024 >= 0.95 * file.stat().st_size, "the child does not hold the whole file resident"
    assert int(pss) <= 0.55 * int(rss), f"PSS {pss} kB of RSS {rss} kB: the pages are not shared"
    assert rc == "0" and shown == str(file) and _files(folder) == [file]


def test_an_edited_weight_stays_in_its_process(tmp_path):
    """An in-place edit (an experiment) copies the page for this process: the file is
    unchanged, the fast step repacks and agrees with the readable model on the edit."""
    folder = tmp_path / "weights"
    m = load(shared=folder)
    (file,) = _files(folder)
    before = sha256(file)
    shared_step = decode_step(m)
    m.layers[0].feed_forward.w2.weight.mul_(0.5)
    step = decode_step(m)
    assert step is not shared_step and not torch.equal(step.layers[0].w2, shared_step.layers[0].w2)
    ids = load_tokenizer().encode("ROMEO.")
    fast, readable = generate(m, ids, 20, engine="fast"), generate(m, ids, 20, engine="model")
    assert fast.new_tokens == readable.new_tokens
    assert sha256(file) == before
    assert torch.equal(load(shared=folder).layers[0].feed_forward.w2.weight,
                       load(shared=False).layers[0].feed_forward.w2.weight)


def test_a_retrained_checkpoint_gets_a_new_file_and_a_damaged_one_is_rewritten(tmp_path):
    ckpt, folder = tmp_path / "ckpt", tmp_path / "weights"
    torch.manual_seed(0)
    save(Transformer(preset("tiny")), ckpt)
    first = load(ckpt, shared=folder)
    (old,) = _files(folder)
    torch.manual_seed(1)
    retrained = Transformer(preset("tiny"))
    save(retrained, ckpt)
    killed, writing = folder / f".{old.name}.k1.tmp", folder / f".{old.name}.w2.tmp"  # a killed writer's, a live one's
    for part in (killed, writing):
        part.write_bytes(b"part")
    os.utime(killed, (1e9, 1e9))
    second = load(ckpt, shared=folder)
    assert not killed.exists() and writing.exists()
    writing.unlink()
    (new,) = _files(folder)
    assert new != old and torch.equal(second.output.weight, retrained.output.weight.float())
    gone = tmp_path / "deleted_run"  # a checkpoint whose folder is removed: its file goes at the next write
    save(retrained, gone)
    load(gone, shared=folder)
    assert len(_files(folder)) == 2
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    assert not torch.equal(first.output.weight, second.output.weight)
    header = new.read_bytes()[: 8 + int.from_bytes(new.read_bytes()[:8], "little")]
    for damage in (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),  # cut short
                   lambda f: f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 64),  # not ours
                   lambda f: f.write_bytes(header.replace(b'"dtype":"F32"', b'"dtype":[1]')),  # ours, mangled
                   lambda f: f.chmod(0o664)):  # writable by others: not trusted
        new.chmod(0o644)
        damage(new)
        again = load(ckpt, shared=folder)
        assert torch.equal(again.output.weight, retrained.output.weight.float())
        assert sha256(new) == sha256(share(ckpt, tmp_path / "check"))  # rewritten whole
        assert _files(folder) == [new]  # and the deleted run's file removed with that write


def test_a_folder_that_cannot_hold_the_file(tmp_path, monkeypatch):
    """From the environment: a warning that says what to run, and a private copy. Named by
    the caller or the command: one line, no traceback."""
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(ENV, str(blocked / "weights"))
    with pytest.warns(UserWarning, match=r"is a file, not a folder\): this process loads its own copy; run `python -m mistral_lab share-weights"):
        m = load()
    assert torch.equal(m.output.weight, load(shared=False).output.weight)
    with pytest.raises(OSError, match="cannot keep the shared weights in"):
        load(shared=blocked / "weights")
    cli = subprocess.run([sys.executable, "-m", "mistral_lab", "share-weights", "--dir", str(blocked)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert cli.returncode == 2 and cli.stderr.startswith("error: cannot keep the shared weights in")
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr


def test_what_is_not_shared(tmp_path, monkeypatch):
    for wrong in (True, 3):
        with pytest.raises(TypeError, match="shared must be a folder"):
            load(shared=wrong)
    folder = tmp_path / "weights"
    monkeypatch.setenv(ENV, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _file_backed(load(dtype=torch.float16, device="cpu"), folder)  # not the fp32 policy: private
    assert not folder.exists()
    monkeypatch.chdir(tmp_path)
    for off in ("off", "0", ""):
        monkeypatch.setenv(ENV, off)
        load()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder named "off" or "0" either
    monkeypatch.setenv(ENV, str(folder))
    assert shared_weights.folder_from_env(shared_weights.AUTO_MAX_BYTES + 1) is None  # a 7B: never from the env
    monkeypatch.setenv(ENV, str(folder))
    assert _file_backed(load(), folder)


def test_a_class_starting_at_once_writes_one_file_that_all_map(tmp_path):
    """Three kernels start together with no file yet: one writes (the others wait on the
    lock), and all three map that one file (the same inode), none a copy of its own."""
    folder = tmp_path / "weights"
    child = textwrap.dedent("""
        import os, sys
        from mistral_lab.checkpoints import load
        m = load()
        p = m.layers[0].attention.wq.weight.data_ptr()
        for line in open("/proc/self/maps"):
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            if a <= p < b:
                print(line.split()[4], line.split()[-1])
    """)
    env = {**os.environ, ENV: str(folder), "PYTHONPATH": REPO}
    kids = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(3)]
    outs = [k.communicate(timeout=180) for k in kids]
    assert all(k.returncode == 0 for k in kids), [e[-1000:] for _, e in outs]
    (file,) = _files(folder)
    assert {o.split()[0] for o, _ in outs} == {str(file.stat().st_ino)}, outs
    assert {o.split()[1] for o, _ in outs} == {str(file)}


def test_an_edit_through_data_is_seen(tmp_path):
    """.data edits leave no version behind: the step checks the weights against the file."""
    m = load(shared=tmp_path / "weights")
    m.layers[0].attention.wo.weight.data.mul_(0.5)
    ids = load_tokenizer().encode("ROMEO.")
    a, b = generate(m, ids, 20, engine="fast"), generate(m, ids, 20, engine="model")
    assert a.new_tokens == b.new_tokens and max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_a_checkpoint_replaced_while_it_is_read_is_not_shared(tmp_path):
    ckpt, folder = tmp_path / "ckpt", tmp_path / "weights"
    torch.manual_seed(0)
    model = Transformer(preset("tiny"))
    save(model, ckpt)
    sources = [ckpt / "mistral_lab.json", ckpt / "model.safetensors"]
    source = shared_weights.identity(ckpt, sources)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def read_then_replaced():
        state = {k: v.float() for k, v in model.state_dict().items()}
        save(model, ckpt)  # a new save lands while this process reads the old one
        return state
    with pytest.warns(UserWarning, match="changed while it was read"):
        state, packed, _ = shared_weights.load_state(folder, ckpt, source, sources, expected,
                                                     model.args.n_layers, read_then_replaced, strict=False)
    assert packed is None and not _files(folder)


def test_a_folder_others_can_write_is_refused(tmp_path):
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    with pytest.raises(OSError, match="can be written by other users"):
        load(shared=open_folder)
    assert not _files(open_folder)
