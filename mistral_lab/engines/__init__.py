"""What runs each decode step of generate(): four engines behind one call.

    step = engines.choose(model, cache, "auto", sampler, end=...)
    token, logprob = step(token, running)     # token (B,) on the cache's device,
                                              # running (B,) host bools -> next (B,), (B,)

    "model"      Transformer.forward on one token per sequence: the readable path, the one
                 trace.record() sees (readable.ModelStep)
    "fast"       fast.DecodeStep: the same function in far fewer operations, for one
                 sequence on the CPU
    "fast-fp16"  the same with fp16 weight matrices
    "static"     static.StaticDecode: static buffers, positions and sampling on the
                 device, one CUDA graph on a GPU (eager on the CPU)
    "auto"       "fast" where it applies, else "static" on a GPU, else "model"

Every engine computes the same function as the readable model (tests pin each one to it
through many wraps of the buffer); they differ in how many operations and host
round-trips a token costs. A sequence whose `running` flag is False gets no token: its
position is -1, nothing is written for it and it attends to nothing.
"""
from __future__ import annotations

from ..cache import KVCache
from ..sampling import Sampler
from .fast import DecodeStep, FastStep, decode_step
from .readable import ModelStep
from .static import StaticDecode

ENGINES = ("auto", "model", "fast", "fast-fp16", "static")


def choose(model, cache: KVCache, engine: str, sampler: Sampler, *, end: int):
    """The step for `engine` (ENGINES). end: one past the last position the generation will
    decode (the static step sizes a full cache by it before its graph holds the tensors)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "model":
        return ModelStep(model, cache, sampler)
    if engine == "static":
        why_not = StaticDecode.unsupported(model, cache)
        if why_not is not None:
            raise ValueError(f"engine='static' cannot run here: {why_not}; use engine='model'")
        return StaticDecode(model, cache, end=end, sampler=sampler)
    why_not = DecodeStep.unsupported(model, cache)
    if engine == "auto":
        if why_not is None:
            return FastStep(decode_step(model), cache, sampler)
        if cache.k.device.type == "cuda" and StaticDecode.unsupported(model, cache) is None:
            return StaticDecode(model, cache, end=end, sampler=sampler)  # any batch, in a CUDA graph
        return ModelStep(model, cache, sampler)
    if why_not is not None:
        raise ValueError(f"engine={engine!r} cannot run here: {why_not}; use engine='model'")
    return FastStep(decode_step(model, "fp16" if engine == "fast-fp16" else "fp32"), cache, sampler)


__all__ = ["ENGINES", "DecodeStep", "FastStep", "ModelStep", "StaticDecode", "choose", "decode_step"]
