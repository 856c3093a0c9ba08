"""mistral_lab: Mistral 7B's architecture, readable and instrumented, to run and look at.

    import mistral_lab as ml
    model = ml.load()                      # the small model shipped in assets/
    tok = ml.load_tokenizer()
    out = ml.generate(model, tok.encode("ROMEO:"), 100)
    print(tok.decode(out.new_tokens))
"""
import os as _os
import sys as _sys

import torch as _torch

# Triton settles between compiling and interpreting when it is first imported (its own
# standard library is @jit-decorated then), and torch may import it as a side effect,
# e.g. while loading weights. Without a CUDA GPU the kernels can only run in the
# interpreter, so choose it now, before anything imports Triton.
if "TRITON_INTERPRET" not in _os.environ and "triton" not in _sys.modules and not _torch.cuda.is_available():
    _os.environ["TRITON_INTERPRET"] = "1"

from .cache import KVCache, cache_bytes  # noqa: E402
from .config import PRESETS, ModelArgs, preset
from .generate import Generation, generate, prefill, sample, score
from .masks import receptive_field, visible, window_mask
from .model import Transformer
from . import trace  # trace.record(): cache writes and kernel counters, for plots

__version__ = "0.1.0"


def __getattr__(name):
    # Loading pulls in safetensors and sentencepiece; keep `import mistral_lab` light.
    if name in ("load", "save", "load_tokenizer", "default_model_path"):
        from . import weights

        return getattr(weights, name)
    if name in ("Tokenizer",):
        from . import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module 'mistral_lab' has no attribute {name!r}")
