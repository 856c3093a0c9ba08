"""Perplexity of a text file of any length, in memory that does not grow with it.

The file is read in blocks (checked to be UTF-8 as it goes), cut after a newline (in
a line longer than a block, before a space between two words), tokenized block by block, and fed to the model chunk by chunk over a rolling cache.
Only running sums are kept: no per-token tensor outlives its chunk. Peak memory is
the model, one block of text, its ids, the cache (W slots) and one chunk's logits.

Tokenizing in blocks gives the very ids of tokenizing the whole text: a block after
the first starts just after a newline, and is encoded as "\\n" + block with the ids of
"\\n" alone removed, so sentencepiece's dummy-prefix space lands where it would in the
whole text. (tests/test_cli.py checks this against encode() of the whole text.)

A model without a window has no rolling buffer: its cache grows with the text.

`python -m mistral_lab bench perplexity-memory` (bench/perplexity_memory.py) measures
the CLI's peak RSS and wall time on a generated file (assets/heldout.txt repeated).
"""
from __future__ import annotations

import codecs
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

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
            if not cut and len(text) > block_bytes:  # a long line: cut before a space between two words
                cut = _word_gap(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]


def _word_gap(text: str) -> int:
    """The index of the last single space between two non-space characters (0: none). A
    piece never crosses it (split_by_whitespace), so the ids on both sides are the same."""
    for i in range(len(text) - 2, 0, -1):
        if text[i] == " " and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
    return 0


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
            raise ValueError(f"the tokenizer {tok.model_file} does not split at newlines: cannot stream {path}")
        yield text, ids[len(newline):]


@torch.inference_mode()
def file_perplexity(model, tok, path, *, chunk_size: int | None = None, max_tokens: int | None = None,
                    progress: bool | None = None) -> dict:
    """{"tokens", "nll", "perplexity"} of the text in `path` as one sequence (BOS first).
    progress: a bar on stderr (None: only when stderr is a terminal)."""
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
