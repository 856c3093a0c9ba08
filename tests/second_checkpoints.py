"""The checkpoints the notebooks are also run on (tests/test_notebooks_any_checkpoint.py):
random weights of another shape than the shipped model -- another window, layer count and
K/V-head count -- in the Hugging Face layout, with the shipped tokenizer; and the same
with no window (a v0.2/v0.3-style config, `sliding_window: null`)."""
from __future__ import annotations

from pathlib import Path

import torch

from mistral_lab import checkpoints
from mistral_lab.bench.fixtures import random_model
from mistral_lab.config import ModelArgs
from mistral_lab.data.assets import asset
from mistral_lab.tokenizer import Tokenizer

OTHER = ModelArgs(dim=128, n_layers=3, head_dim=32, hidden_dim=384, n_heads=4, n_kv_heads=1, vocab_size=4096,
                  sliding_window=24, max_seq_len=256)
NO_WINDOW = OTHER.replace(sliding_window=None)


def write(folder: Path, args: ModelArgs = OTHER, seed: int = 7) -> Path:
    """A Hugging Face checkpoint of `args` with random weights and the shipped tokenizer (Mistral's
    v1 tokenizer for a 32,000-piece vocabulary: the 7B's shapes, to time the notebooks on a GPU)."""
    model = random_model(args, dtype=torch.float32, seed=seed)
    v1 = Tokenizer.mistral_v1()
    tokenizer = v1.model_file if args.vocab_size == v1.vocab_size else asset("tokenizer.model")
    return checkpoints.save_hf(model, folder, dtype=torch.float16, tokenizer_file=tokenizer)


if __name__ == "__main__":
    import sys

    root = Path(sys.argv[1])
    print(write(root / "other"), write(root / "no_window", NO_WINDOW))
