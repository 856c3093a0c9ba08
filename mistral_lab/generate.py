"""Pre-fill (in chunks), decode, sampling and generation over a KV cache.

Pre-fill with chunking (the paper, section 2): the prompt is known in advance, so its
keys and values are computed in chunks of `chunk_size` tokens (default W). Each chunk
attends causally to itself and, through the window, to the cache; then it is written.
Any chunk size >= 1 gives the same result -- tests pin that.

Batches. generate() and score() take one sequence (a list of ids or a 1-D tensor) or a
batch of them (a list of lists, or a 2-D tensor) of any lengths. A batch shares one
cache in which every sequence has its own positions and its own rows of slots; shorter
prompts are padded on the right with position -1 (never written, never attended); each
sequence stops on its own (EOS at its own step) and later steps give it no token. The
result for each sequence is what generating it alone gives (tests pin it to 1e-5).
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .cache import KVCache
from .model import Transformer
from .static_decode import StaticDecode


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float

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


def _int_like(x) -> bool:
    """An integer token id: a Python or numpy integer, or a 0-d integer tensor (no bools, no floats)."""
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.dtype.is_floating_point and x.dtype != torch.bool and not x.is_complex()
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@torch.inference_mode()
def prefill(model: Transformer, tokens: torch.Tensor, cache: KVCache, chunk_size: int | None = None,
            *, lengths=None, all_logits: bool = False) -> torch.Tensor:
    """Feed tokens (B, T) through the model in chunks, filling `cache`.

    lengths (B,): real tokens per row when the prompts differ in length (padded on the
    right). Returns the logits of each row's last real token (B, vocab), or of every
    token (B, T, vocab).
    """
    _check_chunk_size(chunk_size)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (batch, length) tensor of ids, got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if tokens.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    B, T = tokens.shape
    n = torch.full((B,), T, dtype=torch.long) if lengths is None else torch.as_tensor(lengths, dtype=torch.long).cpu()
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


def _as_sequences(tokens, model: Transformer) -> tuple[list[torch.Tensor], bool]:
    """(list of 1-D id tensors on the model's device, whether the input was a batch)."""
    device = next(model.parameters()).device
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
            raise ValueError(f"token ids must be integers, got a {tokens.dtype} tensor")
        if tokens.dim() not in (1, 2):
            raise ValueError(f"tokens must be one sequence (1-D) or a batch (2-D), got shape {tuple(tokens.shape)}")
        batched = tokens.dim() == 2
        seqs = list(tokens.to(device=device, dtype=torch.long)) if batched else [tokens.to(device=device, dtype=torch.long)]
    else:
        items = list(tokens)
        # a batch is a list of sequences; anything else is one sequence (its ids checked below)
        batched = bool(items) and isinstance(items[0], (list, tuple, torch.Tensor)) and not _int_like(items[0])
        seqs = [_ids(x, device) for x in items] if batched else [_ids(items, device)]
    if not seqs:
        raise ValueError("the batch is empty: give at least one prompt")
    for s in seqs:
        if s.numel() == 0:
            raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    return seqs, batched


def _ids(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.dim() != 1:
            raise ValueError(f"each prompt must be a 1-D tensor of integer ids, got {x.dtype} of shape {tuple(x.shape)}")
        return x.to(device=device, dtype=torch.long)
    x = list(x)
    bad = next((t for t in x if not _int_like(t)), None)
    if bad is not None:
        raise ValueError(f"token ids must be integers, got {bad!r} ({type(bad).__name__})")
    return torch.tensor([int(t) for t in x], dtype=torch.long, device=device)


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences with id 0 (its position is -1: never seen): (B, T) ids, (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = seqs[0].new_zeros(len(seqs), int(lengths.max()))
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
    return ids, lengths


@torch.inference_mode()
def score(model: Transformer, tokens, chunk_size: int | None = None):
    """log p(token_t | tokens_<t) for t = 1..T-1, computed by chunked pre-fill: (T-1,) fp32.

    A batch (list of sequences or a 2-D tensor) gives a list, one tensor per sequence.
    """
    seqs, batched = _as_sequences(tokens, model)
    if any(len(s) < 2 for s in seqs):
        raise ValueError("scoring needs at least two tokens (the first one is only context)")
    _check_chunk_size(chunk_size)
    ids, lengths = _pad(seqs)
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


def check_sampling(temperature, top_k, top_p, seed=None) -> None:
    """One line per bad setting, before any work: finite temperature >= 0, integer top_k
    >= 1, top_p in (0, 1], an integer seed in [0, 2**63)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, vocab): greedy at temperature 0, else sampled
    from the softmax at that temperature, restricted to the top_k tokens and to the
    smallest set whose probability reaches top_p (nucleus)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filtered_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


def filtered_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """logits / temperature (> 0) in fp32, -inf outside the top_k tokens and outside the
    nucleus of top_p: what sample() and the static decode step draw from. Device ops
    only (no host sync), so a CUDA graph can hold it."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


ENGINES = ("auto", "model", "fast", "fast-fp16", "static")


def _decode_step(model: Transformer, cache: KVCache, engine: str, **static):
    """The packed decode step for this engine, a static_decode.StaticDecode (built with
    `static`: end and the sampling settings), or None for Transformer.forward."""
    from .fast_decode import DecodeStep, decode_step

    if engine == "model":
        return None
    if engine == "static":
        why_not = StaticDecode.unsupported(model, cache)
        if why_not is not None:
            raise ValueError(f"engine='static' cannot run here: {why_not}; use engine='model'")
        return StaticDecode(model, cache, **static)
    why_not = DecodeStep.unsupported(model, cache)
    if engine == "auto":
        if why_not is None:
            return decode_step(model)
        # on a GPU the static step, captured in a CUDA graph, at any batch size
        if cache.k.device.type == "cuda" and StaticDecode.unsupported(model, cache) is None:
            return StaticDecode(model, cache, **static)
        return None
    if why_not is not None:
        raise ValueError(f"engine={engine!r} cannot run here: {why_not}; use engine='model'")
    return decode_step(model, "fp16" if engine == "fast-fp16" else "fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

    engine picks what runs each decode step (the pre-fill is always the model):
    "model" is Transformer.forward; "fast" is fast_decode.DecodeStep, the same function
    in far fewer operations (one sequence on the CPU, torch backend); "fast-fp16" is
    that step with fp16 weight matrices; "static" is static_decode.StaticDecode (any
    batch, sampling on the device, a CUDA graph on a GPU, eager on the CPU); "auto" takes
    "fast" where it applies, else "static" on a GPU, else "model" (and "model" inside
    trace.record(), which records what the model does).

    threads: CPU threads for this call (mistral_lab.threads: an explicit number, else
    OMP_NUM_THREADS / MKL_NUM_THREADS, else one thread for a small model -- beside one busy
    process it kept 433 tok/s where torch's default two threads fell to 79; idle, two would
    gain 1.4x (benchmarks/classroom.json) -- or every usable CPU for a large one). The
    caller's setting is restored after.
    """
    from . import threads as thread_policy

    with thread_policy.limited(threads, kind=thread_policy.kind_for(model)):
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
    seqs, batched = _as_sequences(prompt, model)
    if on_token is not None and batched:
        raise ValueError("on_token streams one sequence: generate a batch without it")
    ids, lengths = _pad(seqs)
    B = len(seqs)
    device = ids.device
    cache = cache if cache is not None else model.new_cache(B)
    if cache.batch_size != B:
        raise ValueError(f"the cache holds {cache.batch_size} sequences but {B} prompts were given: "
                         f"use model.new_cache({B})")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    end = int((cache.seq_pos + lengths).max()) + max_new_tokens - 1  # one past the last position decoded
    step = _decode_step(model, cache, engine, end=end, temperature=temperature, top_k=top_k, top_p=top_p,
                        generator=generator) if max_new_tokens > 1 else None
    static = isinstance(step, StaticDecode)  # it samples on the device
    picked = None  # (tokens, log-probabilities) a static step picked, on the device

    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, chunk_size, lengths=None if B == 1 else lengths)  # (B, vocab)
    new: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    stop = ["length"] * B
    running = [True] * B  # host-side flags: the loop reads them every token
    _sync(device)
    t1 = time.perf_counter()
    while max_new_tokens > 0:
        if picked is None:
            token = sample(logits, temperature, top_k, top_p, generator)  # (B,)
            logp = torch.log_softmax(logits.float(), -1).gather(-1, token[:, None])[:, 0].tolist()
        else:  # the static step's: the host waits here, once a token (EOS, streaming, results)
            token, logp = picked[0], picked[1].tolist()
        toks = token.tolist()
        for b in range(B):
            if not running[b]:
                continue
            new[b].append(toks[b])
            logprobs[b].append(logp[b])
            if on_token is not None:
                on_token(toks[b])
            if eos_id is not None and toks[b] == eos_id:
                stop[b], running[b] = "eos", False
            elif len(new[b]) == max_new_tokens:
                running[b] = False
        if not any(running):
            break
        if static:
            picked = step(token, torch.tensor(running))
        elif step is not None:
            logits = step(toks[0], cache)
        elif all(running):
            logits = model(token[:, None], cache)[:, -1]
        else:  # a stopped sequence gets no token: position -1, nothing written, nothing attended
            alive = torch.tensor(running)
            feed = torch.where(alive.to(device), token, 0)[:, None]
            logits = model(feed, cache, lengths=alive.long())[:, -1]
    _sync(device)
    t2 = time.perf_counter()
    out = [Generation(seqs[b].tolist(), new[b], logprobs[b], stop[b],
                      GenerationStats(len(seqs[b]), len(new[b]), t1 - t0, t2 - t1), cache) for b in range(B)]
    return out if batched else out[0]
