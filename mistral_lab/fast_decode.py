"""A lean decode step for one sequence on the CPU: the same function as
Transformer.forward on one token with a cache, in far fewer operations.

Why it is faster. At batch 1 a decode step of a small model costs (1) streaming every
weight once from memory and (2) PyTorch's per-operation overhead, a few microseconds
per op, about 250 ops in the readable model. This step:

- packs each layer's weights once: Wq|Wk|Wv as one matrix and W1|W3 as another, so a
  layer does 4 matrix products instead of 7. In fp32 they are stored transposed,
  (in, out): a row vector times an (in, out) matrix streamed the weights about twice
  as fast as F.linear's (out, in) product on the 2-core CPU we measured
  (benchmarks/cpu_decode.json);
- reads the cache with no mask: in a W-slot rolling buffer every filled slot is inside
  the window, and in a full cache slot = position, so the visible keys are one slice;
- rotates q and k together with one complex multiply, and folds the residual adds
  into addmm.

weights="fp16" keeps the matrices in fp16 (the shipped checkpoint's own dtype, so
the same numbers): half the bytes to stream; inputs are rounded to fp16 before each
product and outputs come back in fp16 (fp32 accumulation inside; SwiGLU's gate runs on
those fp16 outputs), while the residual stream, norms, RoPE and attention stay fp32.
It is close to, not equal to, fp32.

The readable model stays the reference: tests/test_fast_decode.py checks this step
against it at every position through several wraps of the buffer.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

from . import ops, trace
from .cache import KVCache

WEIGHTS = ("fp32", "fp16")


class DecodeStep:
    """step(token, cache) -> logits (1, vocab) fp32, advancing the cache by one position."""

    def __init__(self, model, weights: str = "fp32"):
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        a = model.args
        self.args, self.weights = a, weights
        self.fp16 = weights == "fp16"
        self.scale = 1.0 / math.sqrt(a.head_dim)
        self.n_qk = (a.n_heads + a.n_kv_heads) * a.head_dim  # q and k, rotated together
        self.layers = []
        for layer in model.layers:
            at, ff = layer.attention, layer.feed_forward
            self.layers.append((
                layer.attention_norm.weight.detach().float(), layer.attention_norm.eps,
                self._pack(at.wq.weight, at.wk.weight, at.wv.weight), self._pack(at.wo.weight),
                layer.ffn_norm.weight.detach().float(), layer.ffn_norm.eps,
                self._pack(ff.w1.weight, ff.w3.weight), self._pack(ff.w2.weight),
            ))
        self.embedding = model.tok_embeddings.weight.detach().float()
        self.norm = (model.norm.weight.detach().float(), model.norm.eps)
        self.output = self._pack(model.output.weight)

    def _pack(self, *weights: torch.Tensor) -> torch.Tensor:
        w = torch.cat([x.detach() for x in weights], dim=0)  # (out, in)
        return w.half().contiguous() if self.fp16 else w.float().t().contiguous()

    def _matmul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x W, in the matrices' dtype (fp16 products come back in fp16)."""
        return F.linear(x.half(), w) if self.fp16 else x @ w

    def _add_matmul(self, h: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """h + x W into the fp32 residual stream (fp32: folded into one addmm)."""
        return h + F.linear(x.half(), w) if self.fp16 else torch.addmm(h, x, w)

    @staticmethod
    def supports(model, cache: KVCache) -> bool:
        """One sequence on the CPU, torch backend, an fp32 model and cache (the step's
        attention and residual stream are fp32), a rolling buffer of exactly W slots or a
        full cache; no trace recording (the readable path records every write)."""
        W = model.args.sliding_window
        layout_ok = cache.grow or (W is not None and cache.capacity == W)
        fp32 = cache.k.dtype == torch.float32 and model.tok_embeddings.weight.dtype == torch.float32
        return (cache.batch_size == 1 and cache.k.device.type == "cpu" and model.backend == "torch" and fp32
                and layout_ok and trace.active() is None and not torch.is_grad_enabled())

    def __call__(self, token: int, cache: KVCache) -> torch.Tensor:
        a = self.args
        H, K, D = a.n_heads, a.n_kv_heads, a.head_dim
        G, W = H // K, a.sliding_window
        pos = cache.next_pos
        cache.reserve(pos + 1)
        S = cache.capacity
        if cache.grow:  # a full cache: slot = position; the window is the last W of them
            slot, lo, hi = pos, (0 if W is None else max(0, pos + 1 - W)), pos + 1
        else:  # the rolling buffer: every filled slot is inside the window
            slot, lo, hi = pos % S, 0, min(pos + 1, S)
        rope = ops.rope_frequencies(torch.tensor([pos]), D, a.rope_theta)[0]  # (D/2,) complex
        # one factor per rotated row: q rows also carry the softmax scale 1/sqrt(D)
        rope = torch.cat(((rope * self.scale).expand(H, -1), rope.expand(K, -1)))  # (H + K, D/2)
        cache.slot_pos[:, slot] = pos
        h = self.embedding[token:token + 1]  # (1, dim)
        for i, (an, ae, wqkv, wo, fn, fe, w13, w2) in enumerate(self.layers):
            qkv = self._matmul(F.rms_norm(h, an.shape, an, ae), wqkv)[0].float()  # ((H + 2K) D,)
            qk = torch.view_as_complex(qkv[:self.n_qk].view(H + K, D // 2, 2)) * rope
            qk = torch.view_as_real(qk).view(H + K, D)
            ck, cv = cache.k[i, 0], cache.v[i, 0]  # (S, K, D)
            ck[slot] = qk[H:]
            cv[slot] = qkv[self.n_qk:].view(K, D)
            scores = torch.matmul(qk[:H].view(K, G, D), ck[lo:hi].permute(1, 2, 0))  # (K, G, n), scaled
            out = torch.matmul(torch.softmax(scores, dim=-1), cv[lo:hi].transpose(0, 1))  # (K, G, D)
            h = self._add_matmul(h, out.view(1, H * D), wo)
            gu = self._matmul(F.rms_norm(h, fn.shape, fn, fe), w13)  # [gate | up]
            h = self._add_matmul(h, F.silu(gu[:, :a.hidden_dim]) * gu[:, a.hidden_dim:], w2)
        cache.advance(1)
        return self._matmul(F.rms_norm(h, self.norm[0].shape, *self.norm), self.output).float()  # (1, vocab)


_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def decode_step(model, weights: str = "fp32") -> DecodeStep:
    """The packed step for `model`, built once and rebuilt when its weights change."""
    stamp = tuple((p.data_ptr(), p._version) for p in model.parameters())
    held = _STEPS.get(model, {})
    if weights not in held or held[weights][0] != stamp:
        held[weights] = (stamp, DecodeStep(model, weights))
        _STEPS[model] = held
    return held[weights][1]


__all__ = ["DecodeStep", "WEIGHTS", "decode_step"]
