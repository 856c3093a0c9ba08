"""Checkpoints: three layouts read and written, and the tokenizer that goes with each.

    load(path)                     any layout -> Transformer (loading.py)
    share(path, folder)            one file of its fp32 weights that every process maps (shared.py)
    save / save_hf / save_mistral  write one, all or nothing (saving.py)
    load_tokenizer(path)           the checkpoint's own tokenizer, its size checked (tokenizers.py)
    layouts.py                     one record per layout: how it is recognised, its config, its names
    tensorfiles.py                 safetensors and .pth readers, the streaming safetensors writer
"""
from ..data.assets import default_model_path
from .layouts import BY_NAME, HF, LAYOUTS, MISTRAL, OWN, Layout, detect
from .loading import TRAINED_WINDOW, default_dtype, load, locate, read_config, share
from .saving import save, save_hf, save_layout, save_mistral
from .tensorfiles import CheckpointError
from .tokenizers import MISTRAL_V1, check_vocab, load_tokenizer

__all__ = ["BY_NAME", "CheckpointError", "HF", "LAYOUTS", "MISTRAL", "MISTRAL_V1", "OWN", "Layout", "TRAINED_WINDOW",
           "check_vocab", "default_dtype", "default_model_path", "detect", "load", "load_tokenizer", "locate",
           "read_config", "save", "save_hf", "save_layout", "save_mistral", "share"]
