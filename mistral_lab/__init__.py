"""mistral_lab: Mistral 7B's architecture, readable and instrumented, to run and look at.

    import mistral_lab as ml
    model = ml.load()                      # the small model shipped in assets/
    tok = ml.load_tokenizer()
    out = ml.generate(model, tok.encode("ROMEO:"), 100)
    print(tok.decode(out.new_tokens))
"""
# Triton settles between compiling and interpreting when it is first imported (torch may
# import it as a side effect, e.g. while loading weights): decide now. kernels/__init__.py
# is light: it imports neither Triton nor a kernel.
from .kernels import use_interpreter_if_no_gpu as _use_interpreter_if_no_gpu

_use_interpreter_if_no_gpu()

from .cache import KVCache, cache_bytes  # noqa: E402
from .config import PRESETS, ModelArgs, preset
from .generate import Generation, generate, prefill, sample, score
from .masks import receptive_field, visible, visible_pairs, window_mask
from .model import Transformer
from . import trace  # trace.record(): cache writes, attention calls and kernel counters, for plots

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
