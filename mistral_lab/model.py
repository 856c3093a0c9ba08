"""The Mistral 7B transformer, top to bottom. Parameter names are those of Mistral's
own checkpoints (consolidated.safetensors), so weights load without renaming.

forward(tokens, cache) runs a whole sequence (no cache), a pre-fill chunk, or a decode
step; the cache carries all state between calls, and no module keeps any.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .backends import get_backend
from .cache import KVCache
from .config import ModelArgs


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

    def forward(self, x, positions, rope, backend, cache: KVCache | None, layer: int):
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
            cache.write(layer, k, v, cache.next_pos)
            out = backend.decode(q, cache.k[layer], cache.v[layer], cache.slot_pos[layer], positions, W)
        else:  # pre-fill chunk: attend over [cache + chunk], then write
            out = backend.chunk(q, k, v, positions, cache.k[layer], cache.v[layer], cache.slot_pos[layer], W)
            cache.write(layer, k, v, cache.next_pos)
        return self.wo(out.reshape(B, T, a.n_heads * a.head_dim))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, positions, rope, backend, cache, layer):
        h = x + self.attention(self.attention_norm(x), positions, rope, backend, cache, layer)
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

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab) in fp32 (or (B, 1, vocab) with last_only).

        Without a cache the tokens are positions 0..T-1; with one they continue at
        cache.next_pos, and the cache advances by T.
        """
        B, T = tokens.shape
        check_tokens(tokens, self.args.vocab_size)
        start = 0 if cache is None else cache.next_pos
        if cache is not None:
            cache.reserve(start + T)  # grows a full cache; a rolling buffer simply wraps
        positions = torch.arange(start, start + T, device=tokens.device)
        rope = ops.rope_frequencies(positions, self.args.head_dim, self.args.rope_theta)  # (T, D/2) complex
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, positions, rope, self._backend, cache, i)
        if cache is not None:
            cache.advance(T)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()


def check_tokens(tokens: torch.Tensor, vocab_size: int) -> None:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be a (batch, length) tensor, got shape {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError("the input is empty: give at least one token (e.g. the BOS token)")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}): check the tokenizer matches the model")
