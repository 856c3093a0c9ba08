"""Pre-fill (in chunks), scoring and generation over a KV cache.

Pre-fill with chunking (the paper, section 2): the prompt is known in advance, so its
keys and values are computed in chunks of `chunk_size` tokens (default W). Each chunk
attends causally to itself and, through the window, to the cache; then it is written.
Any chunk size >= 1 gives the same result -- tests pin that.

Generation: pre-fill the prompt, pick the first new token from its last logits, then
one decode step per token (engines.choose picks what runs the step; sampling.Sampler
picks the token) until max_new_tokens or EOS.

Batches. generate() and score() take one sequence (a list of ids or a 1-D tensor) or a
batch of them (a list of lists, or a 2-D tensor) of any lengths. A batch shares one
cache in which every sequence has its own positions and its own rows of slots; shorter
prompts are padded on the right with position -1 (never written, never attended); each
sequence stops on its own (EOS at its own step) and later steps give it no token. The
result for each sequence is what generating it alone gives: greedy tokens exactly
(logits to 1e-5), and with sampling too, since each sequence draws from its own
generator seeded with the seed (sampling.Sampler).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import engines
from .cache import KVCache
from .engines import ENGINES
from .model import Transformer
from .sampling import Sampler, check_sampling
from .threads import limited
from .tokens import check_batch, lengths_of, pad, sequences


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    threads: int  # torch's intra-op threads during this generation (read back, not the policy recomputed)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> float:
        # The first new token comes from the pre-fill logits; each later one costs a decode step.
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else float("inf")


@dataclass
class Generation:
    prompt: list[int]
    new_tokens: list[int]
    logprobs: list[float]  # log p(new token | everything before it), under the model's logits
    stop_reason: str  # "eos" or "length"
    stats: GenerationStats
    cache: KVCache = field(repr=False)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.new_tokens


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size!r}")


def _default_chunk(model: Transformer, n: int) -> int:
    return model.args.sliding_window or n


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously): before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def prefill(model: Transformer, tokens: torch.Tensor, cache: KVCache, chunk_size: int | None = None,
            *, lengths=None, all_logits: bool = False) -> torch.Tensor:
    """Feed tokens (B, T) through the model in chunks, filling `cache`.

    lengths (B,): real tokens per row when the prompts differ in length (padded on the
    right). Returns the logits of each row's last real token (B, vocab), or of every
    token (B, T, vocab).
    """
    _check_chunk_size(chunk_size)
    check_batch(tokens, model.args.vocab_size)
    B, T = tokens.shape
    n = lengths_of(lengths, B, T)
    chunk = chunk_size or _default_chunk(model, T)
    outs, last = [], None
    for i in range(0, T, chunk):
        piece = (n - i).clamp(0, min(chunk, T - i))  # real tokens of each row in this chunk
        logits = model(tokens[:, i:i + chunk], cache, lengths=None if lengths is None else piece,
                       last_only=not all_logits)
        if all_logits:
            outs.append(logits)
            continue
        ends_here = (piece > 0) & (n <= i + chunk)  # rows whose last real token is in this chunk
        last = logits[:, -1] if last is None else torch.where(ends_here[:, None].to(logits.device), logits[:, -1], last)
    return torch.cat(outs, dim=1) if all_logits else last


@torch.inference_mode()
def score(model: Transformer, tokens, chunk_size: int | None = None):
    """log p(token_t | tokens_<t) for t = 1..T-1, computed by chunked pre-fill: (T-1,) fp32.

    A batch (list of sequences or a 2-D tensor) gives a list, one tensor per sequence.
    """
    seqs, batched = sequences(tokens, model.tok_embeddings.weight.device)
    if any(len(s) < 2 for s in seqs):
        raise ValueError("scoring needs at least two tokens (the first one is only context)")
    _check_chunk_size(chunk_size)
    ids, lengths = pad(seqs)
    B, T = ids.shape
    chunk = chunk_size or _default_chunk(model, T)
    cache, out = model.new_cache(B), []
    # chunk by chunk, so that only one chunk's logits (B x chunk x vocab) exist at a time
    for i in range(0, T - 1, chunk):
        piece = (lengths - i).clamp(0, min(chunk, T - i))
        logp = torch.log_softmax(model(ids[:, i:i + chunk], cache, lengths=piece), dim=-1)  # (B, c, vocab)
        targets = ids[:, i + 1:i + 1 + chunk]  # (B, c') with c' <= c
        out.append(logp[:, :targets.shape[1]].gather(-1, targets[..., None])[..., 0])
    logps = torch.cat(out, dim=1)  # (B, T-1); entries past a row's length are padding
    result = [logps[b, :int(lengths[b]) - 1] for b in range(B)]
    return result if batched else result[0]


def _check_eos(eos_id, vocab_size: int) -> None:
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int)
                               or not 0 <= eos_id < vocab_size):
        raise ValueError(f"eos_id must be a token id in [0, {vocab_size}) or None, got {eos_id!r}: "
                         f"pass tok.eos_id")


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    chunk_size: int | None = None,
    cache: KVCache | None = None,
    on_token: Callable[[int], None] | None = None,
    engine: str = "auto",
    threads: int | None = None,
):
    """Generate up to max_new_tokens after `prompt` (a list of token ids), or after each
    prompt of a batch (a list of lists: returns a list of Generation, one per prompt).

    Stops early at `eos_id` (the EOS token is kept in new_tokens), each sequence of a
    batch on its own. `on_token` is called with each new token as it is produced (for
    streaming; one sequence only). With the default rolling buffer the generation can run
    to any length in constant cache memory.

    engine picks what runs each decode step (the pre-fill is always the model): "model",
    "fast", "fast-fp16", "static" or "auto" (engines.ENGINES; "auto" takes the lean CPU
    step where it applies, the static step on a GPU, and the readable model inside
    trace.record(), which records what the model does).

    threads: CPU threads for this call (mistral_lab.threads: an explicit number, else
    OMP_NUM_THREADS / MKL_NUM_THREADS, else the policy's default for this model). The
    caller's setting is restored after.
    """
    with limited(threads, model=model):
        return _generate(model, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, eos_id=eos_id, chunk_size=chunk_size, cache=cache, on_token=on_token,
                         engine=engine)


def _generate(model, prompt, max_new_tokens, *, temperature, top_k, top_p, seed, eos_id, chunk_size, cache,
              on_token, engine):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    _check_chunk_size(chunk_size)
    check_sampling(temperature, top_k, top_p, seed)
    _check_eos(eos_id, model.args.vocab_size)
    seqs, batched = sequences(prompt, model.tok_embeddings.weight.device)
    if on_token is not None and batched:
        raise ValueError("on_token streams one sequence: generate a batch without it")
    ids, lengths = pad(seqs)
    B = len(seqs)
    device = ids.device
    cache = cache if cache is not None else model.new_cache(B)
    if cache.batch_size != B:
        raise ValueError(f"the cache holds {cache.batch_size} sequences but {B} prompts were given: "
                         f"use model.new_cache({B})")
    sampler = Sampler(B, temperature, top_k, top_p, seed, device)
    end = int((cache.seq_pos + lengths).max()) + max_new_tokens - 1  # one past the last position decoded
    step = engines.choose(model, cache, engine, sampler, end=end) if max_new_tokens > 1 else None

    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, chunk_size, lengths=None if B == 1 else lengths)  # (B, vocab)
    token, logp = sampler(logits)  # the first new token of each sequence
    new: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    stop = ["length"] * B
    running = [True] * B  # host-side flags: the loop reads them every token
    synchronize(device)
    t1 = time.perf_counter()
    while max_new_tokens > 0:
        toks, lps = token.tolist(), logp.tolist()  # the host waits here, once a token
        for b in range(B):
            if not running[b]:
                continue
            new[b].append(toks[b])
            logprobs[b].append(lps[b])
            if on_token is not None:
                on_token(toks[b])
            if eos_id is not None and toks[b] == eos_id:
                stop[b], running[b] = "eos", False
            elif len(new[b]) == max_new_tokens:
                running[b] = False
        if not any(running):
            break
        token, logp = step(token, torch.tensor(running))
    synchronize(device)
    t2 = time.perf_counter()
    out = [Generation(seqs[b].tolist(), new[b], logprobs[b], stop[b],
                      GenerationStats(len(seqs[b]), len(new[b]), t1 - t0, t2 - t1, torch.get_num_threads()), cache)
           for b in range(B)]
    return out if batched else out[0]


__all__ = ["ENGINES", "Generation", "GenerationStats", "generate", "prefill", "score", "synchronize"]
