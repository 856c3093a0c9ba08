"""A decode step with static buffers, for serving on a GPU: captured once in a CUDA
graph and replayed per token. On the CPU the same step runs eagerly.

Why. At batch 1 a 7B decode step streams ~14.5 GB of weights: ~4.3 ms at an H100's
3.35 TB/s. The readable model launches ~600 small kernels a step from Python, and
its cache write asks the host where to write (nonzero, int() of a position): each
such question waits for the GPU to drain, so the GPU idles between launches. This
step asks nothing of the host:

- every tensor it touches is allocated once: the cache, the token fed back, the
  positions, the logits, the sampling noise; positions live on the device and advance
  in place (`pos += live`), the host's cache.seq_pos advances beside them on the host;
- the write is LayerCache.write_step (a scatter to slot position mod S, no nonzero);
- attention is the model's backend's decode (torch reference or the Triton kernel);
- the next token is picked on the device: argmax (greedy), or argmax(p / E) with E a
  static buffer of Exp(1) noise drawn from each sequence's generator before each step,
  which samples exactly from p (the exponential race; torch.multinomial checks its
  input with .item(), a sync, so it cannot sit in a graph);
- on CUDA the whole step (embedding, layers, norm, logits, sampling, position advance)
  is captured into one torch.cuda.CUDAGraph after a few eager warm-up steps on a side
  stream (Triton compiles, cuBLAS picks kernels), then replayed: one launch a token.

The layers are the model's own modules (TransformerBlock.forward with a backend whose
write is write_step), so the step computes what Transformer.forward computes on one
token: tests/test_static_decode.py holds it to 1e-5 (fp32) at every step through many
wraps of the buffer, batch 1 and ragged batches, both backends.

The host reads each step's tokens once (generate checks EOS and streams tokens): that
one wait per token is the only synchronisation, and it comes after the step is queued.
When a sequence stops, its `live` flag is copied to the device (a small host-to-device
copy, once per stopped sequence).

A full cache is made static by reserving its capacity once, before the first step
(prompt + new tokens); a cache of fixed capacity for a full-attention model must hold
them already (KVCache.reserve says so in one line).

    step = StaticDecode(model, cache, end=cache_end, temperature=0.0)
    token, logprob = step(token, running)      # (B,) device tensors, static buffers
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..backends import get_backend
from ..cache import KVCache
from ..sampling import Sampler, filtered_logits
from .readable import inference_only

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (torch.cuda.graphs' advice)


class _WriteStep:
    """The model's backend, with the decode write replaced by the sync-free write_step."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def decode(self, q, positions, cache, window):
        return self.inner.decode(q, positions, cache, window)

    def write(self, cache, k, v, positions):
        cache.write_step(k, v, positions)


class StaticDecode:
    """step(token, running) -> (next token, its log-probability), (B,) device tensors.

    token (B,): each sequence's newest token, on the cache's device; running (B,) host
    bools: which sequences take a step (the others get position -1: no write, no
    attention). The outputs are static buffers, overwritten by the next step.
    graph: capture a CUDA graph (default: on CUDA); False runs every step eagerly.
    """

    def __init__(self, model, cache: KVCache, *, end: int | None = None, sampler: Sampler | None = None,
                 graph: bool | None = None):
        why_not = self.unsupported(model, cache)
        if why_not is not None:
            raise ValueError(f"the static decode step cannot run here: {why_not}")
        if end is None and (cache.grow or model.args.sliding_window is None):
            raise ValueError("a full cache needs its final size before the first static step: pass end="
                             "<one past the last position> (generate does)")
        if end is not None:
            cache.reserve(end)  # a full cache grows once, now: its tensors stay put while the graph holds them
        self.model, self.cache = model, cache
        self.backend = _WriteStep(get_backend(model.backend))
        self.sampler = sampler if sampler is not None else Sampler(cache.batch_size, device=cache.k.device)
        B, V = cache.batch_size, model.args.vocab_size
        device = cache.k.device
        self.device = device
        self.pos = torch.zeros(B, dtype=torch.long, device=device)  # next position of each sequence
        self.live = torch.ones(B, dtype=torch.bool, device=device)  # which sequences take this step
        self.token = torch.zeros(B, dtype=torch.long, device=device)  # fed in, overwritten by the pick
        self.logprob = torch.zeros(B, dtype=torch.float32, device=device)
        self.logits = torch.zeros(B, V, dtype=torch.float32, device=device)
        self.noise = None if self.sampler.greedy else torch.ones(B, V, dtype=torch.float32, device=device)
        self.use_graph = device.type == "cuda" if graph is None else graph
        if self.use_graph and device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the cache on a CUDA device, it is on {device.type}: use graph=False")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0  # steps taken (the eager warm-ups included)
        self._running: torch.Tensor | None = None  # the host's copy of `live`; None: positions not read yet

    @staticmethod
    def unsupported(model, cache: KVCache) -> str | None:
        """Why this step cannot run this model and cache, or None when it can: it runs any
        batch, dtype, device and backend, but not inside trace.record() (the readable path
        records every write) nor with autograd on, and the cache must sit beside the model."""
        why_not = inference_only()
        if why_not is not None:
            return why_not
        w = model.tok_embeddings.weight
        if w.device != cache.k.device:
            return f"the model is on {w.device} and the cache on {cache.k.device}"
        return None

    def _body(self) -> None:
        """One decode step, reading and writing only static buffers (what the graph holds)."""
        m, a = self.model, self.model.args
        positions = torch.where(self.live, self.pos, -1)[:, None]  # (B, 1); -1: this sequence waits
        rope = ops.rope_frequencies(positions, a.head_dim, a.rope_theta)  # (B, 1, D/2)
        h = m.tok_embeddings(self.token[:, None])  # (B, 1, dim)
        for i, layer in enumerate(m.layers):
            h = layer(h, positions, rope, self.backend, self.cache.layer(i))
        logits = m.output(m.norm(h))[:, 0].float()  # (B, vocab)
        if self.noise is None:
            pick = logits.argmax(dim=-1)
        else:
            sp = self.sampler
            probs = torch.softmax(filtered_logits(logits, sp.temperature, sp.top_k, sp.top_p), dim=-1)
            pick = (probs / self.noise).argmax(dim=-1)  # the exponential race: a draw from probs
        self.logprob.copy_(F.log_softmax(logits, dim=-1).gather(-1, pick[:, None])[:, 0])
        self.logits.copy_(logits)
        self.token.copy_(pick)
        self.pos.add_(self.live)

    def _run(self) -> None:
        if not self.use_graph:
            self._body()
        elif self.graph is not None:
            self.graph.replay()
        elif self.steps < WARMUP_STEPS:  # real steps, run eagerly on a side stream
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._body()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:  # capture (which runs nothing), then replay for this step
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
            self.graph.replay()

    def __call__(self, token: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._running is None:  # the first step: the positions the pre-fill left
            self.pos.copy_(self.cache.seq_pos)
            self._running = torch.ones_like(running)
        if not torch.equal(running, self._running):  # host tensors: no device sync
            self.live.copy_(running)
            self._running = running.clone()
        if token is not self.token:
            self.token.copy_(token)
        if self.noise is not None:
            self.sampler.exponential_(self.noise)
        self._run()
        self.steps += 1
        self.cache.advance(running.long())  # the host's positions, beside the device's
        return self.token, self.logprob


__all__ = ["StaticDecode", "WARMUP_STEPS"]
