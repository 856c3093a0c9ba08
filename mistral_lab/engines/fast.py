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
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ops
from ..cache import KVCache
from ..sampling import Sampler
from .readable import inference_only

WEIGHTS = ("fp32", "fp16")


class LayerWeights(NamedTuple):
    """One block's weights, packed for the step."""

    attention_norm: torch.Tensor  # (dim,) fp32
    attention_eps: float
    wqkv: torch.Tensor  # Wq | Wk | Wv
    wo: torch.Tensor
    ffn_norm: torch.Tensor  # (dim,) fp32
    ffn_eps: float
    w13: torch.Tensor  # W1 (gate) | W3 (up)
    w2: torch.Tensor


def _packed(state: Mapping[str, torch.Tensor], n_layers: int, pack) -> dict[str, torch.Tensor]:
    out = {"output": pack(state["output.weight"])}
    for i in range(n_layers):
        def w(name: str, i: int = i) -> torch.Tensor:
            return state[f"layers.{i}.{name}.weight"]
        out.update({f"layers.{i}.wqkv": pack(w("attention.wq"), w("attention.wk"), w("attention.wv")),
                    f"layers.{i}.wo": pack(w("attention.wo")),
                    f"layers.{i}.w13": pack(w("feed_forward.w1"), w("feed_forward.w3")),
                    f"layers.{i}.w2": pack(w("feed_forward.w2"))})
    return out


def packed_fp32(state: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The fp32 step's matrices by name, from a model's state dict: each layer's Wq|Wk|Wv and
    W1|W3 concatenated, every matrix transposed to (in, out) and contiguous. A function of
    the weights alone, so a shared-weights file can hold its result for every process."""
    return _packed(state, n_layers, lambda *ws: torch.cat(ws, dim=0).float().t().contiguous())


def packed_fp16(state: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The fp16 step's matrices: the same concatenations, kept (out, in) for F.linear."""
    return _packed(state, n_layers, lambda *ws: torch.cat(ws, dim=0).half().contiguous())


class DecodeStep:
    """step(token, cache) -> logits (1, vocab) fp32, advancing the cache by one position."""

    def __init__(self, model, weights: str = "fp32", packed: Mapping[str, torch.Tensor] | None = None):
        """packed: the fp32 matrices as packed_fp32() makes them (a shared-weights file maps
        them, so every process reads one copy); packed here when not given."""
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
        if packed is not None and weights != "fp32":
            raise ValueError("packed matrices are the fp32 step's: give weights='fp32' with them")
        a = model.args
        self.args, self.weights = a, weights
        self.fp16 = weights == "fp16"
        self.scale = 1.0 / math.sqrt(a.head_dim)
        self.inv_freq = ops.rope_inv_freq(a.head_dim, a.rope_theta)
        self.n_qk = (a.n_heads + a.n_kv_heads) * a.head_dim  # q and k, rotated together
        state = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False)}
        if packed is None:
            packed = (packed_fp16 if self.fp16 else packed_fp32)(state, a.n_layers)
        self.layers = [LayerWeights(
            state[f"layers.{i}.attention_norm.weight"].float(), layer.attention_norm.eps, packed[f"layers.{i}.wqkv"],
            packed[f"layers.{i}.wo"], state[f"layers.{i}.ffn_norm.weight"].float(), layer.ffn_norm.eps,
            packed[f"layers.{i}.w13"], packed[f"layers.{i}.w2"]) for i, layer in enumerate(model.layers)]
        self.embedding = state["tok_embeddings.weight"].float()  # fp32 already: the same tensor, no copy
        self.norm = (state["norm.weight"].float(), model.norm.eps)
        self.output = packed["output"]

    def _matmul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x W, in the matrices' dtype (fp16 products come back in fp16)."""
        return F.linear(x.half(), w) if self.fp16 else x @ w

    def _add_matmul(self, h: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """h + x W into the fp32 residual stream (fp32: folded into one addmm)."""
        return h + F.linear(x.half(), w) if self.fp16 else torch.addmm(h, x, w)

    @staticmethod
    def unsupported(model, cache: KVCache) -> str | None:
        """Why this step cannot run this model and cache, or None when it can. It runs one
        sequence on the CPU with the torch backend, an fp32 model and cache (its attention
        and residual stream are fp32), over a rolling buffer of exactly W slots or a full
        cache, and not inside trace.record() (the readable path records every write)."""
        W = model.args.sliding_window
        if cache.batch_size != 1:
            return f"it decodes one sequence, the cache holds {cache.batch_size}"
        if cache.k.device.type != "cpu":
            return f"it runs on the CPU, the cache is on {cache.k.device.type}"
        if model.backend != "torch":
            return f"it is the torch backend's step, the model uses backend={model.backend!r}"
        if cache.k.dtype != torch.float32 or model.tok_embeddings.weight.dtype != torch.float32:
            return (f"it needs an fp32 model and cache, got {model.tok_embeddings.weight.dtype} weights and "
                    f"a {cache.k.dtype} cache (load with dtype=torch.float32)")
        if not (cache.grow or (W is not None and cache.capacity == W)):
            return f"it reads a rolling buffer of exactly W = {W} slots or a full cache, this one has {cache.capacity} slots"
        return inference_only()

    def __call__(self, token: int, cache: KVCache) -> torch.Tensor:
        a = self.args
        H, K, D = a.n_heads, a.n_kv_heads, a.head_dim
        G, W = H // K, a.sliding_window
        pos = int(cache.seq_pos[0])
        cache.reserve(pos + 1)
        rope = ops.rope_frequencies(torch.tensor(pos), D, a.rope_theta, self.inv_freq)  # (D/2,) complex
        # one factor per rotated row: q rows also carry the softmax scale 1/sqrt(D)
        rope = torch.cat(((rope * self.scale).expand(H, -1), rope.expand(K, -1)))  # (H + K, D/2)
        h = self.embedding[token:token + 1]  # (1, dim)
        views = [cache.layer(i) for i in range(len(self.layers))]
        for i, w in enumerate(self.layers):
            qkv = self._matmul(F.rms_norm(h, w.attention_norm.shape, w.attention_norm, w.attention_eps), w.wqkv)
            qkv = qkv[0].float()  # ((H + 2K) D,)
            qk = torch.view_as_complex(qkv[:self.n_qk].view(H + K, D // 2, 2)) * rope
            qk = torch.view_as_real(qk).view(H + K, D)
            keys, values = views[i].append(pos, qk[H:], qkv[self.n_qk:].view(K, D), W)  # (n, K, D)
            scores = torch.matmul(qk[:H].view(K, G, D), keys.permute(1, 2, 0))  # (K, G, n), scaled
            out = torch.matmul(torch.softmax(scores, dim=-1), values.transpose(0, 1))  # (K, G, D)
            h = self._add_matmul(h, out.view(1, H * D), w.wo)
            gu = self._matmul(F.rms_norm(h, w.ffn_norm.shape, w.ffn_norm, w.ffn_eps), w.w13)  # [gate | up]
            h = self._add_matmul(h, ops.swiglu_gate(gu[:, :a.hidden_dim], gu[:, a.hidden_dim:]), w.w2)
        cache.advance(1)
        return self._matmul(F.rms_norm(h, self.norm[0].shape, *self.norm), self.output).float()  # (1, vocab)


class FastStep:
    """The engine's call: step(token (B,), running) -> (next token, log-probability), one
    sequence: the packed DecodeStep's logits, then the sampler."""

    def __init__(self, step: DecodeStep, cache: KVCache, sampler: Sampler):
        self.step, self.cache, self.sampler = step, cache, sampler

    def __call__(self, token: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler(self.step(int(token[0]), self.cache))


_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ADOPTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _stamp(model) -> tuple:
    """Changes when a weight is replaced or written in place (its version counter)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def adopt(model, packed: Mapping[str, torch.Tensor], unchanged: Callable[[object], bool]) -> None:
    """Give `model` fp32 packed matrices made elsewhere (a shared-weights file maps them):
    its fp32 step uses them as long as the model's weights are the ones they came from --
    the same tensors, not written (their version counters), and unchanged(model) when the
    step is built (an edit through .data leaves no version behind) -- and packs its own
    once a weight is replaced or edited."""
    _ADOPTED[model] = (_stamp(model), packed, unchanged)


def decode_step(model, weights: str = "fp32") -> DecodeStep:
    """The packed step for `model`, built once and rebuilt when its weights change."""
    stamp = _stamp(model)
    held = _STEPS.get(model, {})
    if weights not in held or held[weights][0] != stamp:
        adopted = _ADOPTED.pop(model, None) if weights == "fp32" else None  # checked once, then packed here
        packed = adopted[1] if adopted is not None and adopted[0] == stamp and adopted[2](model) else None
        held[weights] = (stamp, DecodeStep(model, weights, packed))
        _STEPS[model] = held
    return held[weights][1]


__all__ = ["DecodeStep", "FastStep", "LayerWeights", "WEIGHTS", "adopt", "decode_step", "packed_fp16", "packed_fp32"]
