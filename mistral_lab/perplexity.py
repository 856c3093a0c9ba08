"""Perplexity of a text file of any length, in memory that does not grow with it.

The file is read in blocks (checked to be UTF-8 as it goes), cut after a newline,
tokenized block by block, and fed to the model chunk by chunk over a rolling cache.
Only running sums are kept: no per-token tensor outlives its chunk. Peak memory is
the model, one block of text, its ids, the cache (W slots) and one chunk's logits.

Tokenizing in blocks gives the very ids of tokenizing the whole text: a block after
the first starts just after a newline, and is encoded as "\\n" + block with the ids of
"\\n" alone removed, so sentencepiece's dummy-prefix space lands where it would in the
whole text. (tests/test_cli.py checks this against encode() of the whole text.)

A model without a window has no rolling buffer: its cache grows with the text.

    python -m mistral_lab.perplexity --bench-mb 10 --out benchmarks/perplexity_memory.json
measures the CLI's peak RSS and wall time on a generated file (assets/heldout.txt repeated).
"""
from __future__ import annotations

import codecs
import math
import sys
from pathlib import Path

import torch

BLOCK_BYTES = 1 << 20


def text_blocks(path: Path, block_bytes: int = BLOCK_BYTES):
    """Yield the text of `path` in pieces that end just after a newline (the last one may
    not); a file that is not UTF-8 fails with the offset of its first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry, offset = "", 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(block_bytes)
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                bad = offset + max(e.start - len(decoder.getstate()[0]), 0)
                raise ValueError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02X} near offset {bad}): "
                                 f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > {path}.utf8") from None
            offset += len(raw)
            if not raw:
                if text:
                    yield text
                return
            cut = text.rfind("\n") + 1
            carry = text[cut:]
            if cut:
                yield text[:cut]


def token_blocks(tok, path: Path, block_bytes: int = BLOCK_BYTES):
    """Yield (text, ids) of `path` block by block; the ids, joined, are tok.encode(whole text)."""
    newline = tok.sp.encode("\n")
    first = True
    for text in text_blocks(path, block_bytes):
        if first:
            yield text, tok.encode(text)
            first = False
            continue
        ids = tok.sp.encode("\n" + text)
        if ids[:len(newline)] != newline:  # never seen with sentencepiece BPE: say so rather than guess
            raise RuntimeError(f"the tokenizer {tok.model_file} does not split at newlines: cannot stream {path}")
        yield text, ids[len(newline):]


@torch.inference_mode()
def file_perplexity(model, tok, path, *, chunk_size: int | None = None, max_tokens: int | None = None,
                    progress: bool | None = None) -> dict:
    """{"tokens", "nll", "perplexity"} of the text in `path` as one sequence (BOS first).
    progress: a bar on stderr (None: only when stderr is a terminal)."""
    from tqdm.auto import tqdm

    path = Path(path)
    chunk = chunk_size or model.args.sliding_window or 512
    device = next(model.parameters()).device
    cache = model.new_cache()
    nll, n, pending = 0.0, 0, []
    limit = max_tokens if max_tokens is not None else math.inf

    def run(x: list[int], y: list[int]) -> None:
        nonlocal nll, n
        logits = model(torch.tensor([x], device=device), cache)[0]  # (T, vocab) fp32
        logp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(y, device=device)[:, None])
        nll -= float(logp.double().sum())  # a Python float: nothing per token is kept
        n += len(y)

    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="perplexity", file=sys.stderr,
              disable=(None if progress is None else not progress)) as bar:
        for text, ids in token_blocks(tok, path):
            pending.extend(ids)
            while len(pending) > chunk and n < limit:  # a chunk and the token after it
                take = int(min(chunk, limit - n))
                run(pending[:take], pending[1:take + 1])
                del pending[:take]
            bar.update(len(text.encode("utf-8")))
            if n >= limit:
                break
    if n < limit and len(pending) >= 2:
        take = int(min(len(pending) - 1, limit - n))
        run(pending[:take], pending[1:take + 1])
    if n == 0:
        raise ValueError(f"{path} holds a single token: perplexity needs at least two")
    return {"file": str(path), "tokens": n, "nll": round(nll / n, 5), "perplexity": round(math.exp(nll / n), 3)}


def bench_memory(size_mb: float, out: Path | None, workdir: Path) -> dict:
    """Peak RSS and wall time of `python -m mistral_lab perplexity` on a generated file."""
    import json
    import os
    import subprocess
    import time

    from . import files

    root = Path(__file__).resolve().parent.parent
    seed = (root / "assets" / "heldout.txt").read_text(encoding="utf-8")
    target = int(size_mb * 1e6)
    text = (seed * (target // len(seed) + 1))[:target]
    text = text[: text.rfind("\n") + 1]
    sample = workdir / f"perplexity_{size_mb:g}mb.txt"
    files.atomic_write_text(sample, text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    # The CLI itself, in a fresh interpreter that reports its own peak RSS as it exits.
    code = ("import resource, sys; from mistral_lab.__main__ import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "perplexity", str(sample)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"perplexity failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    result = json.loads(r.stdout)
    peak_kib = int(r.stderr.rsplit("MAXRSS_KIB", 1)[1].split()[0])  # Linux: KiB
    report = {"environment": files.environment("cpu"), "model": "assets/model (shipped)",
              "file_bytes": sample.stat().st_size, "tokens": result["tokens"], "perplexity": result["perplexity"],
              "peak_rss_mib": round(peak_kib / 1024, 1), "wall_s": round(wall, 1),
              "command": "python -m mistral_lab perplexity FILE (default chunk = W)"}
    sample.unlink()
    if out is not None:
        files.atomic_write_json(out, report)
    return report


def main(argv=None) -> int:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(prog="python -m mistral_lab.perplexity", description=__doc__.split("\n\n")[0])
    p.add_argument("--bench-mb", type=float, nargs="+", default=[10.0], help="sizes of the generated files, MB")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in a.bench_mb:  # one subprocess per size: each peak RSS is its own
            reports.append(bench_memory(mb, None, Path(tmp)))
            print(json.dumps({k: v for k, v in reports[-1].items() if k != "environment"}), file=sys.stderr)
    if a.out is not None:
        from . import files

        files.atomic_write_json(a.out, {"environment": reports[0]["environment"], "runs": [
            {k: v for k, v in r.items() if k != "environment"} for r in reports]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
