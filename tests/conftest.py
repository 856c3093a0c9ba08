"""Session-wide settings, applied before any test module imports Triton or transformers."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracle (transformers) never reaches a hub

# Compiled kernels or Triton's interpreter: decided in one place, before the first
# @triton.jit anywhere in the session, whichever test module happens to import it.
from mistral_lab.kernels import use_interpreter_if_no_gpu  # noqa: E402

use_interpreter_if_no_gpu()
