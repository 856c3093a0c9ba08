"""Session-wide settings, applied before any test module imports Triton or transformers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle (transformers) never reaches a hub

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton reads this when a kernel is decorated: it must be set before the first
    # @triton.jit anywhere in the session, whichever test module happens to import it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
