"""Pre-fill (in chunks), decode, sampling and generation over a KV cache.

Pre-fill with chunking (the paper, section 2): the prompt is known in advance, so its
keys and values are computed in chunks of `chunk_size` tokens (default W). Each chunk
attends causally to itself and, through the window, to the cache; then it is written.
Any chunk size >= 1 gives the same result -- tests pin that.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .cache import KVCache
from .model import Transformer


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
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size!r}")


def _default_chunk(model: Transformer, n: int) -> int:
    return model.args.sliding_window or n


@torch.inference_mode()
def prefill(model: Transformer, tokens: torch.Tensor, cache: KVCache, chunk_size: int | None = None,
            *, all_logits: bool = False) -> torch.Tensor:
    """Feed tokens (B, T) through the model in chunks, filling `cache`.

    Returns the logits of the last token (B, vocab), or of every token (B, T, vocab).
    """
    _check_chunk_size(chunk_size)
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    chunk = chunk_size or _default_chunk(model, tokens.shape[1])
    outs = []
    for i in range(0, tokens.shape[1], chunk):
        logits = model(tokens[:, i:i + chunk], cache, last_only=not all_logits)
        outs.append(logits)
    return torch.cat(outs, dim=1) if all_logits else outs[-1][:, -1]


@torch.inference_mode()
def score(model: Transformer, tokens: Sequence[int] | torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t = 1..T-1, computed by chunked pre-fill: (T-1,) fp32."""
    ids = _as_batch(tokens, model)
    if ids.shape[1] < 2:
        raise ValueError("scoring needs at least two tokens (the first one is only context)")
    _check_chunk_size(chunk_size)
    chunk = chunk_size or _default_chunk(model, ids.shape[1])
    cache, out = model.new_cache(), []
    # chunk by chunk, so that only one chunk's logits (chunk x vocab) exist at a time
    for i in range(0, ids.shape[1] - 1, chunk):
        logp = torch.log_softmax(model(ids[:, i:i + chunk], cache)[0], dim=-1)  # (c, vocab)
        targets = ids[0, i + 1:i + 1 + chunk]
        out.append(logp[: len(targets)].gather(-1, targets[:, None])[:, 0])
    return torch.cat(out)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, vocab): greedy at temperature 0, else sampled
    from the softmax at that temperature, restricted to the top_k tokens and to the
    smallest set whose probability reaches top_p (nucleus)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
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
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


def _as_batch(tokens, model: Transformer) -> torch.Tensor:
    device = next(model.parameters()).device
    if isinstance(tokens, torch.Tensor):
        ids = tokens.to(device=device, dtype=torch.long)
    else:
        ids = torch.tensor(list(tokens), dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    return ids


ENGINES = ("auto", "model", "fast", "fast-fp16")


def _decode_step(model: Transformer, cache: KVCache, engine: str):
    """The packed decode step for this engine, or None for Transformer.forward."""
    from .fast_decode import DecodeStep, decode_step

    if engine == "model":
        return None
    ok = DecodeStep.supports(model, cache)
    if engine == "auto":
        return decode_step(model) if ok else None
    if not ok:
        raise ValueError(f"engine={engine!r} runs one sequence of an fp32 model on the CPU with the torch backend, "
                         f"over a rolling buffer of W slots or a full cache, outside trace.record(): "
                         f"use engine='model' here")
    return decode_step(model, "fp16" if engine == "fast-fp16" else "fp32")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: Sequence[int],
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
) -> Generation:
    """Generate up to max_new_tokens after `prompt` (a list of token ids).

    Stops early at `eos_id` (the EOS token is kept in new_tokens). `on_token` is called
    with each new token as it is produced (for streaming). With the default rolling
    buffer the generation can run to any length in constant cache memory.

    engine picks what runs each decode step (the pre-fill is always the model):
    "model" is Transformer.forward; "fast" is fast_decode.DecodeStep, the same function
    in far fewer operations (one sequence on the CPU, torch backend); "fast-fp16" is
    that step with fp16 weight matrices; "auto" takes "fast" where it applies (and not
    inside trace.record(), which records what the model does), else "model".
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    _check_chunk_size(chunk_size)
    ids = _as_batch(prompt, model)
    if ids.shape[0] != 1:
        raise ValueError("generate() takes one prompt (a list of token ids)")
    sample(torch.zeros(1, 2), temperature, top_k, top_p)  # validate the sampling settings up front
    cache = cache if cache is not None else model.new_cache()
    step = _decode_step(model, cache, engine)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=ids.device).manual_seed(seed)

    t0 = time.perf_counter()
    logits = prefill(model, ids, cache, chunk_size)
    new: list[int] = []
    logprobs: list[float] = []
    stop = "length"
    _sync(ids.device)
    t1 = time.perf_counter()
    while len(new) < max_new_tokens:
        token = sample(logits, temperature, top_k, top_p, generator)  # (1,)
        tok = int(token)
        new.append(tok)
        logprobs.append(float(torch.log_softmax(logits[0].float(), -1)[tok]))
        if on_token is not None:
            on_token(tok)
        if eos_id is not None and tok == eos_id:
            stop = "eos"
            break
        if len(new) == max_new_tokens:
            break
        logits = model(token[:, None], cache)[:, -1] if step is None else step(tok, cache)
    _sync(ids.device)
    t2 = time.perf_counter()
    stats = GenerationStats(ids.shape[1], len(new), t1 - t0, t2 - t1)
    return Generation(ids[0].tolist(), new, logprobs, stop, stats, cache)
