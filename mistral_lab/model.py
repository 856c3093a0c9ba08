"""The Mistral 7B transformer, top to bottom. Parameter names are those of Mistral's
own checkpoints (consolidated.safetensors), so weights load without renaming.

forward(tokens, cache) runs a whole sequence (no cache), a pre-fill chunk, or a decode
step; the cache carries all state between calls, and no module keeps any. A batch may
hold sequences of different lengths: `lengths` says how many of each row's tokens are
real (rows are padded on the right), and each sequence continues at its own position.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import ops, trace
from .backends import for_layer, get_backend
from .cache import KVCache, LayerCache
from .config import ModelArgs
from .tokens import check_batch, lengths_of


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, positions, rope, backend, cache: LayerCache | None):
        B, T, _ = x.shape
        a = self.args
        q = self.wq(x).view(B, T, a.n_heads, a.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(B, T, a.n_kv_heads, a.head_dim)  # (B, T, K, D)
        v = self.wv(x).view(B, T, a.n_kv_heads, a.head_dim)
        q, k = ops.apply_rope(q, rope), ops.apply_rope(k, rope)
        W = a.sliding_window
        if cache is None:
            out = backend.prefill(q, k, v, positions, W)
        elif T == 1:  # decode: write, then attend over the buffer in place
            backend.write(cache, k, v, positions)
            out = backend.decode(q, positions, cache, W)
        else:  # pre-fill chunk: attend over [cache + chunk], then write
            out = backend.chunk(q, k, v, positions, cache, W)
            backend.write(cache, k, v, positions)
        return self.wo(out.reshape(B, T, a.n_heads * a.head_dim))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up

    def forward(self, x):
        return ops.swiglu(x, self.w1.weight, self.w2.weight, self.w3.weight)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, positions, rope, backend, cache):
        h = x + self.attention(self.attention_norm(x), positions, rope, backend, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, backend: str = "torch"):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend.name

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = get_backend(name)

    def new_cache(self, batch_size: int = 1, *, full: bool = False, **kw) -> KVCache:
        """A rolling buffer matching this model, or a growing full cache (with full=True,
        and always for a model without a window: there is no W to size a buffer by)."""
        p = next(self.parameters())
        kw = {"dtype": p.dtype, "device": p.device, **kw}
        if full or self.args.sliding_window is None:
            return KVCache.full(self.args, batch_size, **kw)
        return KVCache.rolling(self.args, batch_size, **kw)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, *, lengths=None,
                last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab) in fp32 (or (B, 1, vocab) with last_only:
        each row's last real token).

        Without a cache the tokens are positions 0..T-1; with one, sequence b continues at
        cache.seq_pos[b], and the cache advances by its number of tokens. lengths (B,):
        how many tokens of each row are real (default: all T); the rest is padding, given
        position -1, never written to the cache, never attended.
        """
        B, T = tokens.shape
        check_batch(tokens, self.args.vocab_size)
        n = lengths_of(lengths, B, T)
        recording = trace.active()
        if recording is not None:  # layers and heads asked for that this model has not: one line
            recording.check_model(self.args.n_layers, self.args.n_heads)
        if cache is None:
            t = torch.arange(T)
            positions = (t.expand(B, T) if lengths is None else torch.where(t < n[:, None], t, -1)).to(tokens.device)
        else:
            if cache.batch_size != B:
                raise ValueError(f"the cache holds {cache.batch_size} sequences but the tokens have {B} rows: "
                                 f"use model.new_cache({B})")
            positions = cache.begin(n, T, tokens.device)  # (B, T), -1 = padding; grows a full cache
        h = self.hidden_states(self.tok_embeddings(tokens), positions, cache)
        if cache is not None:
            cache.advance(n)
        if last_only:
            h = h[torch.arange(B), (n - 1).clamp(min=0).to(h.device)][:, None]  # (B, 1, dim)
        return self.output(self.norm(h)).float()

    def hidden_states(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                      *, n_layers: int | None = None) -> torch.Tensor:
        """The residual stream after the first n_layers blocks (default: all, before the
        final norm), from input embeddings x (B, T, dim) at positions (B, T)."""
        rope = ops.rope_frequencies(positions, self.args.head_dim, self.args.rope_theta)  # (B, T, D/2) complex
        h = x
        for i, layer in enumerate(self.layers[:n_layers]):
            # for_layer: the backend itself, or inside trace.record() a wrapper that records this layer's calls
            h = layer(h, positions, rope, for_layer(self._backend, i), None if cache is None else cache.layer(i))
        return h  # (B, T, dim)

