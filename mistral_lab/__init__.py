"""mistral_lab: Mistral 7B's architecture, readable and instrumented, to run and look at.

    import mistral_lab as ml
    model = ml.load()                      # the small model shipped in assets/
    tok = ml.load_tokenizer()
    out = ml.generate(model, tok.encode("ROMEO:"), 100)
    print(tok.decode(out.new_tokens))

The top level is the paper (config, masks, ops, cache, backends, model, generate,
sampling, trace, tokenizer); the lab is in subpackages (engines, checkpoints, data,
experiments, training, bench, viz, exercises). docs/ARCHITECTURE.md draws the layers.
"""
# Ctrl-C during the imports below ends `python -m mistral_lab` in one line (interrupt.py).
from .interrupt import quiet_while_importing as _quiet_while_importing

_quiet_while_importing()

# Triton settles between compiling and interpreting when it is first imported (torch may
# import it as a side effect, e.g. while loading weights): decide now. kernels/__init__.py
# is light: it imports neither Triton nor a kernel.
from .kernels import use_interpreter_if_no_gpu as _use_interpreter_if_no_gpu  # noqa: E402

_use_interpreter_if_no_gpu()

from . import trace  # noqa: E402  (trace.record(): cache writes, attention calls and kernel counters)
from .cache import KVCache, cache_bytes  # noqa: E402
from .checkpoints import default_model_path, load, load_tokenizer, save  # noqa: E402
from .config import PRESETS, ModelArgs, preset  # noqa: E402
from .generate import Generation, generate, prefill, score  # noqa: E402
from .masks import keys_per_query, receptive_field, visible, visible_pairs, window_mask  # noqa: E402
from .model import Transformer  # noqa: E402
from .sampling import sample  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Generation", "KVCache", "ModelArgs", "PRESETS", "Tokenizer", "Transformer", "cache_bytes",
           "default_model_path", "generate", "keys_per_query", "load", "load_tokenizer", "prefill", "preset",
           "receptive_field", "sample", "save", "score", "trace", "visible", "visible_pairs", "window_mask"]
