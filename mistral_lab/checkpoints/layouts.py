"""Checkpoint layouts: one record per layout, and the tensor readers they share.

| layout           | config                            | weights                                      | names | wq, wk rows |
|------------------|-----------------------------------|----------------------------------------------|-------|-------------|
| Mistral original | params.json                       | consolidated.safetensors or .00.pth          | ours  | ours        |
| Hugging Face     | config.json (model_type mistral)  | model.safetensors, or shards + .index.json   | HF's  | permuted    |
| mistral_lab      | mistral_lab.json {format, args}   | model.safetensors (+ tokenizer.model)        | ours  | ours        |

A `Layout` says how a folder is recognised (`claims`), how its config becomes ModelArgs
(`parse`), how our tensor names map to the file's (`to_file`), which files hold the
weights (`weight_files`), how a tensor changes on the way in and out (`load_tensor`,
`save_tensor`) and what config the writer puts beside the weights (`config_for`).
Adding a layout is one new record appended to LAYOUTS (and its test); loading.py and saving.py
need no change.

Ours: tok_embeddings, layers.{i}.attention.{wq,wk,wv,wo}, layers.{i}.feed_forward.{w1,w2,w3},
layers.{i}.attention_norm, layers.{i}.ffn_norm, norm, output (each ".weight").
HF's: model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.mlp.
{gate,down,up}_proj (= w1, w2, w3), input_layernorm, post_attention_layernorm, model.norm,
lm_head (absent when tie_word_embeddings: the embedding is used).

Why the permutation: Mistral's RoPE rotates pairs (x[2i], x[2i+1]); Hugging Face's
rotates (x[i], x[i + D/2]). Its conversion script reorders the rows of wq and wk within
each head so that the same weights give the same attention: pair i -> rows i and i + D/2.

No window in a config (`sliding_window` absent or null) means full attention, never a
default of 4096 (Mistral 7B v0.2/v0.3 were trained without one).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ModelArgs
from .tensorfiles import CheckpointError

MISTRAL, HF, OWN = "Mistral original", "Hugging Face", "mistral_lab"
OWN_FORMAT_VERSION = 2  # 1: {format, args} only (the shipped model); 2: adds the manifest of its files
OWN_KEYS = {1: {"format", "version", "args"}, 2: {"format", "version", "args", "files"}}  # top-level keys read
# Where a save keeps the old model while it switches the files (saving.py): read instead of
# a folder that has no config beside it (layouts.previous).
PREVIOUS = ".mistral_lab-previous"


@dataclass(frozen=True)
class Layout:
    name: str
    config_file: str
    weights_file: str  # what the writer writes (the reader may accept more: shards, .pth)
    claims: Callable[[Path], int | None]  # priority when several layouts' files share a folder
    parse: Callable[[Path, dict], tuple[ModelArgs, bool]]  # -> (args, lm_head tied to the embedding)
    weight_files: Callable[[Path], list[Path]]
    config_for: Callable[[ModelArgs, torch.dtype], dict]
    to_file: Callable[[str], str] = lambda name: name
    load_tensor: Callable[[str, torch.Tensor, ModelArgs], torch.Tensor] = lambda name, t, args: t
    save_tensor: Callable[[str, torch.Tensor, ModelArgs], torch.Tensor] = lambda name, t, args: t
    # Tensors a file may hold beyond the model's (RoPE tables saved by old transformers).
    tolerated: Callable[[str], bool] = lambda raw: False
    file_names: tuple[str, ...] = field(default=())  # a path naming one of these selects this layout


# ---------------------------------------------------------------- config parsing helpers

def _require(file: Path, d: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}: not a complete model config")


def _div(a, b):
    ok = type(a) is int and type(b) is int and b > 0
    return a // b if ok else None  # ModelArgs reports the bad value itself


def _args(file: Path, **kw) -> ModelArgs:
    try:
        return ModelArgs(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None


# ---------------------------------------------------------------- mistral_lab (ours)

def _own_parse(file: Path, d: dict) -> tuple[ModelArgs, bool]:
    if d.get("format") != "mistral_lab":
        raise CheckpointError(f"{file} has format {d.get('format')!r}, expected 'mistral_lab': "
                              f"not a checkpoint written by mistral_lab.save")
    version = d.get("version", 1)
    if type(version) is not int or not 1 <= version <= OWN_FORMAT_VERSION:
        raise CheckpointError(f"{file} has format version {version!r}; this mistral_lab reads versions 1 to "
                              f"{OWN_FORMAT_VERSION}: upgrade mistral_lab, or re-save the model with this one")
    ignored = sorted(set(d) - OWN_KEYS[version])
    if ignored:
        where = " (a ModelArgs field: it belongs inside 'args')" if set(ignored) & set(ModelArgs.__dataclass_fields__) else ""
        raise CheckpointError(f"{file}: top-level key(s) {ignored} are not read by format version {version}{where}: "
                              f"move them into 'args' or remove them")
    if not isinstance(d.get("args"), dict):
        raise CheckpointError(f"{file} lacks an 'args' object (ModelArgs fields): re-save with mistral_lab.save")
    unknown = set(d["args"]) - set(ModelArgs.__dataclass_fields__)
    if unknown:
        raise CheckpointError(f"{file}: unknown ModelArgs field(s) {sorted(unknown)}: written by another version?")
    return _args(file, **d["args"]), False


def _own_config(args: ModelArgs, dtype: torch.dtype) -> dict:
    return {"format": "mistral_lab", "version": OWN_FORMAT_VERSION, "args": args.to_dict()}


# ---------------------------------------------------------------- Mistral original

def _mistral_parse(file: Path, p: dict) -> tuple[ModelArgs, bool]:
    _require(file, p, "dim", "n_layers", "hidden_dim", "n_heads", "vocab_size")
    for key in ("rope_scaling", "rope_parameters"):
        if p.get(key) is not None:
            raise CheckpointError(f"{file} sets {key} {json.dumps(p[key])[:60]}: only plain RoPE is supported "
                                  f"(remove the key only if the model was trained without scaling)")
    if p.get("moe"):
        raise CheckpointError(f"{file} describes a mixture-of-experts model ('moe'): only dense Mistral models are supported")
    return _args(
        file, dim=p["dim"], n_layers=p["n_layers"], hidden_dim=p["hidden_dim"], n_heads=p["n_heads"],
        head_dim=p["head_dim"] if p.get("head_dim") is not None else _div(p["dim"], p["n_heads"]),
        n_kv_heads=p.get("n_kv_heads", p["n_heads"]), vocab_size=p["vocab_size"],
        sliding_window=p.get("sliding_window"),  # absent or null: full attention
        norm_eps=p.get("norm_eps", 1e-5), rope_theta=p.get("rope_theta", 10000.0)), False


def _mistral_config(a: ModelArgs, dtype: torch.dtype) -> dict:
    params = {"dim": a.dim, "n_layers": a.n_layers, "head_dim": a.head_dim, "hidden_dim": a.hidden_dim,
              "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "norm_eps": a.norm_eps,
              "vocab_size": a.vocab_size, "rope_theta": a.rope_theta}
    if a.sliding_window is not None:  # no key = full attention
        params["sliding_window"] = a.sliding_window
    return params


def _mistral_files(folder: Path) -> list[Path]:
    if (folder / "consolidated.01.pth").exists():
        raise CheckpointError(f"{folder} holds model-parallel shards (consolidated.01.pth): merge them first")
    for name in ("consolidated.safetensors", "consolidated.00.pth"):
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"no consolidated.safetensors or consolidated.00.pth beside {folder / 'params.json'}: "
                            f"the weights are missing (incomplete download?)")


def _mistral_claims(folder: Path) -> int | None:
    if not (folder / "params.json").is_file():
        return None
    # Repositories that ship both layouts: the original needs no permutation.
    original = any((folder / n).is_file() for n in ("consolidated.safetensors", "consolidated.00.pth"))
    return 2 if original or not (folder / "config.json").is_file() else 0


# ---------------------------------------------------------------- Hugging Face

HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}
HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight", "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def _to_hf(name: str) -> str:
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        return f"model.layers.{i}.{HF_LAYER[rest]}"
    return HF_TOP[name]


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk, Mistral (interleaved pairs) -> Hugging Face (halves), as HF's conversion script."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.view(n_heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols)  # (H, 2, D/2, dim) -> rows


def unpermute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of permute_for_hf."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.view(n_heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)  # (H, D/2, 2, dim) -> rows


def _rope_heads(name: str, args: ModelArgs) -> int | None:
    return {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}.get(name.split(".", 2)[-1])


def _hf_in(name, t, args):
    n = _rope_heads(name, args)
    return unpermute_from_hf(t, n) if n else t


def _hf_out(name, t, args):
    n = _rope_heads(name, args)
    return permute_for_hf(t, n).contiguous() if n else t


def _hf_parse(file: Path, c: dict) -> tuple[ModelArgs, bool]:
    if c.get("model_type") != "mistral":
        raise CheckpointError(f"{file} has model_type {c.get('model_type')!r}: only 'mistral' "
                              f"(MistralForCausalLM) Hugging Face checkpoints are supported")
    _require(file, c, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if c.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{file} has hidden_act {c['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    # transformers 5 writes {"rope_parameters": {"rope_theta", "rope_type"}}; 4.x wrote a
    # top-level rope_theta and rope_scaling (null for Mistral).
    key = "rope_parameters" if c.get("rope_parameters") is not None else "rope_scaling"
    rope = c.get(key) or {}
    if not isinstance(rope, dict):
        raise CheckpointError(f"{file}: {key} must be an object such as {{\"rope_type\": \"default\", "
                              f"\"rope_theta\": 10000.0}}, got {type(rope).__name__} {rope!r:.60}")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"{file} uses RoPE scaling {kind!r}: only plain RoPE is supported")
    tied = c.get("tie_word_embeddings", False)
    if type(tied) is not bool:
        raise CheckpointError(f"{file}: tie_word_embeddings must be true or false, got {tied!r}")
    heads = c["num_attention_heads"]
    return _args(
        file, dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=heads,
        head_dim=c["head_dim"] if c.get("head_dim") is not None else _div(c["hidden_size"], heads),
        n_kv_heads=c.get("num_key_value_heads") or heads, hidden_dim=c["intermediate_size"],
        vocab_size=c["vocab_size"], sliding_window=c.get("sliding_window"),  # absent or null: full attention
        norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", c.get("rope_theta", 10000.0)),
        max_seq_len=c.get("max_position_embeddings", 8192)), tied


def hf_config(a: ModelArgs, dtype: torch.dtype) -> dict:
    """config.json of a MistralForCausalLM with these sizes: the one ModelArgs -> Hugging Face mapping."""
    return {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim, "intermediate_size": a.hidden_dim, "hidden_act": "silu",
        "rms_norm_eps": a.norm_eps, "vocab_size": a.vocab_size, "max_position_embeddings": a.max_seq_len,
        "sliding_window": a.sliding_window, "tie_word_embeddings": False,
        "rope_parameters": {"rope_theta": a.rope_theta, "rope_type": "default"},  # transformers 5
        "rope_theta": a.rope_theta,  # transformers 4.x
        "dtype": str(dtype).removeprefix("torch."),
    }


def _hf_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map' object): {e!r}") from None
        for shard in shards:
            if not isinstance(shard, str) or not (folder / shard).is_file():
                raise FileNotFoundError(f"{folder / str(shard)} is missing (listed in {index.name}): incomplete download?")
        return [folder / s for s in shards]
    return _missing(folder, "model.safetensors or model.safetensors.index.json")


def _own_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    return _missing(folder, "model.safetensors")


def _missing(folder: Path, what: str):
    extra = " (pytorch_model.bin is not supported: re-save with safetensors)" if (folder / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"no {what} in {folder}: the weights are missing{extra}")


LAYOUTS: tuple[Layout, ...] = (
    Layout(MISTRAL, "params.json", "consolidated.safetensors", _mistral_claims, _mistral_parse, _mistral_files,
           _mistral_config, file_names=("consolidated.safetensors", "consolidated.00.pth")),
    Layout(HF, "config.json", "model.safetensors", lambda f: 1 if (f / "config.json").is_file() else None,
           _hf_parse, _hf_files, hf_config, to_file=_to_hf, load_tensor=_hf_in, save_tensor=_hf_out,
           tolerated=lambda raw: raw.endswith("rotary_emb.inv_freq"), file_names=("model.safetensors",)),
    Layout(OWN, "mistral_lab.json", "model.safetensors", lambda f: 3 if (f / "mistral_lab.json").is_file() else None,
           _own_parse, _own_files, _own_config, file_names=("model.safetensors",)),
)
BY_NAME = {layout.name: layout for layout in LAYOUTS}


def has_config(folder: Path) -> bool:
    """Whether `folder` holds the config file of any layout."""
    return any((Path(folder) / x.config_file).is_file() for x in LAYOUTS)


def previous(folder: Path) -> Path:
    """The folder to read for `folder`: itself, or, when a save was cut while switching
    files (no config, a complete PREVIOUS beside them), the old model kept in PREVIOUS."""
    folder = Path(folder)
    prev = folder / PREVIOUS
    return prev if not has_config(folder) and has_config(prev) else folder


def detect(folder: Path, named: Path | None = None) -> Layout:
    """The layout of `folder`; `named` is a file inside it the user pointed at."""
    if named is not None:
        for layout in LAYOUTS:
            if named.name == layout.config_file:
                return layout
    candidates = [(p, layout) for layout in LAYOUTS if (p := layout.claims(folder)) is not None]
    if named is not None:  # a weights file names its layout when its config is beside it
        by_file = [c for c in candidates if named.name in c[1].file_names]
        candidates = by_file or candidates
    if not candidates:
        raise CheckpointError(f"no {_or([x.config_file for x in LAYOUTS])} in {folder}: not a "
                              f"{_or([x.name for x in LAYOUTS])} checkpoint directory")
    return max(candidates, key=lambda c: c[0])[1]


def _or(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]
