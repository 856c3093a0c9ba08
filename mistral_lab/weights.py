"""Checkpoints: load any of three layouts into a Transformer, and write each of them.

The layout is detected from the files in the directory (a path may also name a file
inside it):

| layout           | config                            | weights                                      | names | wq, wk rows |
|------------------|-----------------------------------|----------------------------------------------|-------|-------------|
| Mistral original | params.json                       | consolidated.safetensors or .00.pth          | ours  | ours        |
| Hugging Face     | config.json (model_type mistral)  | model.safetensors, or shards + .index.json   | HF's  | permuted    |
| mistral_lab      | mistral_lab.json {format, args}   | model.safetensors (+ tokenizer.model)        | ours  | ours        |

Ours: tok_embeddings, layers.{i}.attention.{wq,wk,wv,wo}, layers.{i}.feed_forward.{w1,w2,w3},
layers.{i}.attention_norm, layers.{i}.ffn_norm, norm, output (each ".weight").
HF's: model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.mlp.
{gate,down,up}_proj (= w1, w2, w3), input_layernorm, post_attention_layernorm, model.norm,
lm_head (absent when tie_word_embeddings: the embedding is used). Shards are named
model-0000k-of-0000n.safetensors, listed in model.safetensors.index.json.

Why the permutation: Mistral's RoPE rotates pairs (x[2i], x[2i+1]); Hugging Face's
rotates (x[i], x[i + D/2]). Its conversion script reorders the rows of wq and wk within
each head so that the same weights give the same attention: pair i -> rows i and i + D/2.

No window in the config (`sliding_window` absent or null) means full attention, never a
default of 4096 (Mistral 7B v0.2/v0.3 were trained without one). Note that Hugging
Face's MistralConfig itself defaults to 4096 when the key is absent.

dtype: an explicit `dtype` wins. Otherwise the checkpoint's own dtype, except on a CPU,
where bf16/fp16 checkpoints load as float32 (half-precision matmuls on CPUs are slow).

Tensors are read straight into a model built on the "meta" device (no random
initialization, no second copy), so the 7B loads in bf16 on a GPU in ~14.5 GB.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .config import ModelArgs
from .model import Transformer

MISTRAL, HF, OWN = "Mistral original", "Hugging Face", "mistral_lab"
CONFIG_FILES = {"mistral_lab.json": OWN, "params.json": MISTRAL, "config.json": HF}

# Our parameter names -> Hugging Face's (per layer: the part after "layers.{i}.").
HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
          "output.weight": "lm_head.weight"}
HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight", "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


def default_model_path() -> Path:
    """Where the project's shipped small model lives: <repo>/assets/model."""
    return Path(__file__).resolve().parent.parent / "assets" / "model"


# ---------------------------------------------------------------- loading

def load(path=None, *, dtype: torch.dtype | None = None, device="cpu", backend: str = "torch") -> Transformer:
    """A Transformer with the weights of the checkpoint at `path` (default: the shipped
    model), in eval mode with requires_grad off. See the module docstring for layouts."""
    folder, layout = locate(path)
    config_file, args, tied = read_config(folder, layout)
    files = weight_files(folder, layout)
    with torch.device("meta"):  # shapes only: the real tensors are assigned below
        model = Transformer(args, backend=backend)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = {k: _to_hf(k) if layout == HF else k for k in expected if not (tied and k == "output.weight")}
    index = _index(files)
    _check(index, names, expected, files[0] if len(files) == 1 else folder, config_file.name, tied)
    device = torch.device(device)
    dtype = dtype or default_dtype(index[names["tok_embeddings.weight"]][1], device)
    heads = _rope_heads(args) if layout == HF else {}
    state = {}
    for name, raw in names.items():  # one tensor at a time: a cast never holds two copies of the model
        t = index[raw][2]().to(device=device, dtype=dtype)
        n = heads.get(name.split(".", 2)[-1])
        state[name] = unpermute_from_hf(t, n) if n else t
    if tied:  # lm_head shares the embedding matrix
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    model.load_state_dict(state, assign=True)
    model.requires_grad_(False)
    return model.eval()


def locate(path) -> tuple[Path, str]:
    """(checkpoint directory, layout) for a directory or a file inside one."""
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise FileNotFoundError(
                f"the shipped model is missing: {path} does not exist; build it with "
                f"`python -m mistral_lab train --out assets/model`, or pass the path of a checkpoint")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} does not exist (give a checkpoint directory)")
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.name in CONFIG_FILES:
        return folder, CONFIG_FILES[path.name]
    present = [name for name in CONFIG_FILES if (folder / name).is_file()]
    if not present:
        raise CheckpointError(f"no params.json, config.json or mistral_lab.json in {folder}: "
                              f"not a Mistral original, Hugging Face or mistral_lab checkpoint directory")
    if path.name.startswith("consolidated.") and "params.json" in present:
        return folder, MISTRAL
    if "mistral_lab.json" in present:
        return folder, OWN
    original = any((folder / n).is_file() for n in ("consolidated.safetensors", "consolidated.00.pth"))
    if "params.json" in present and ("config.json" not in present or original):
        return folder, MISTRAL  # repositories that ship both: the original needs no permutation
    return folder, HF


def read_config(folder: Path, layout: str) -> tuple[Path, ModelArgs, bool]:
    """(config file, ModelArgs, lm_head tied to the embeddings)."""
    name = next(n for n, lay in CONFIG_FILES.items() if lay == layout)
    file = folder / name
    try:
        d = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}): re-download or re-save the checkpoint") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file} should hold a JSON object, found {type(d).__name__}")
    if layout == OWN:
        return file, _own_args(file, d), False
    if layout == MISTRAL:
        return file, _mistral_args(file, d), False
    return file, _hf_args(file, d), bool(d.get("tie_word_embeddings", False))


def _own_args(file: Path, d: dict) -> ModelArgs:
    if d.get("format") != "mistral_lab":
        raise CheckpointError(f"{file} has format {d.get('format')!r}, expected 'mistral_lab': "
                              f"not a checkpoint written by mistral_lab.save")
    if not isinstance(d.get("args"), dict):
        raise CheckpointError(f"{file} lacks an 'args' object (ModelArgs fields): re-save with mistral_lab.save")
    return _args(file, lambda: ModelArgs.from_dict(d["args"]))


def _mistral_args(file: Path, p: dict) -> ModelArgs:
    _require(file, p, "dim", "n_layers", "hidden_dim", "n_heads", "vocab_size")
    if p.get("moe"):
        raise CheckpointError(f"{file} describes a mixture-of-experts model ('moe'): only dense Mistral models are supported")
    return _args(file, lambda: ModelArgs(
        dim=p["dim"], n_layers=p["n_layers"], hidden_dim=p["hidden_dim"], n_heads=p["n_heads"],
        head_dim=p["head_dim"] if p.get("head_dim") is not None else _div(p["dim"], p["n_heads"]),
        n_kv_heads=p.get("n_kv_heads", p["n_heads"]), vocab_size=p["vocab_size"],
        sliding_window=p.get("sliding_window"),  # absent or null: full attention
        norm_eps=float(p.get("norm_eps", 1e-5)), rope_theta=float(p.get("rope_theta", 10000.0))))


def _hf_args(file: Path, c: dict) -> ModelArgs:
    if c.get("model_type") != "mistral":
        raise CheckpointError(f"{file} has model_type {c.get('model_type')!r}: only 'mistral' "
                              f"(MistralForCausalLM) Hugging Face checkpoints are supported")
    _require(file, c, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if c.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{file} has hidden_act {c['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    # transformers 5 writes {"rope_parameters": {"rope_theta", "rope_type"}}; 4.x wrote a
    # top-level rope_theta and rope_scaling (null for Mistral).
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"{file} uses RoPE scaling {kind!r}: only plain RoPE is supported")
    heads = c["num_attention_heads"]
    return _args(file, lambda: ModelArgs(
        dim=c["hidden_size"], n_layers=c["num_hidden_layers"], n_heads=heads,
        head_dim=c["head_dim"] if c.get("head_dim") is not None else _div(c["hidden_size"], heads),
        n_kv_heads=c.get("num_key_value_heads") or heads, hidden_dim=c["intermediate_size"],
        vocab_size=c["vocab_size"], sliding_window=c.get("sliding_window"),  # absent or null: full attention
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        max_seq_len=c.get("max_position_embeddings", 8192)))


def _args(file: Path, build) -> ModelArgs:
    try:
        return build()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def _require(file: Path, d: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}: not a complete model config")


def _div(a, b):
    return a // b if isinstance(a, int) and isinstance(b, int) and b > 0 else None  # ModelArgs reports bad values


def weight_files(folder: Path, layout: str) -> list[Path]:
    if layout == MISTRAL:
        if (folder / "consolidated.01.pth").exists():
            raise CheckpointError(f"{folder} holds model-parallel shards (consolidated.01.pth): merge them first")
        for name in ("consolidated.safetensors", "consolidated.00.pth"):
            if (folder / name).is_file():
                return [folder / name]
        raise FileNotFoundError(f"no consolidated.safetensors or consolidated.00.pth beside {folder / 'params.json'}: "
                                f"the weights are missing (incomplete download?)")
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if layout == HF and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid shard index (needs a 'weight_map' object): {e!r}") from None
        for shard in shards:
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{folder / shard} is missing (listed in {index.name}): incomplete download?")
        return [folder / s for s in shards]
    extra = " (pytorch_model.bin is not supported: re-save with safetensors)" if (folder / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"no model.safetensors{' or model.safetensors.index.json' if layout == HF else ''} "
                            f"in {folder}: the weights are missing{extra}")


def _check(index: dict, names: dict, expected: dict, where: Path, config: str, tied: bool) -> None:
    """Every tensor the model needs is there, nothing else, each of the right shape."""
    missing = [raw for raw in names.values() if raw not in index]
    if missing:
        raise CheckpointError(f"{where}: {_some(missing)} missing: the weights do not match {config} "
                              f"(incomplete download, or another model's config?)")
    # Tolerated extras: RoPE tables saved by old transformers, an lm_head tied to the embedding.
    extra = [raw for raw in index if raw not in names.values() and not raw.endswith("rotary_emb.inv_freq")
             and not (tied and raw == "lm_head.weight")]
    if extra:
        raise CheckpointError(f"{where}: {_some(extra)} unexpected: the weights hold more than {config} "
                              f"describes (another model's config?)")
    for ours, raw in names.items():
        if index[raw][0] != expected[ours]:
            raise CheckpointError(f"{where}: tensor {raw} has shape {list(index[raw][0])}, expected "
                                  f"{list(expected[ours])} from {config}: the config and the weights disagree")


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} tensor{'s' if len(names) > 1 else ''} ({shown})"


def default_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    if device.type == "cpu" and stored in (torch.bfloat16, torch.float16):
        return torch.float32  # half-precision matmuls are slow on CPUs
    return stored


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _index(files: list[Path]) -> dict:
    """name -> (shape, dtype, read) for every tensor; read() returns it on the CPU.

    Only headers are read here (safetensors; a .pth is memory-mapped), so names and
    shapes are checked before any tensor data is touched."""
    out = {}
    for file in files:
        if file.suffix == ".pth":
            out.update({k: (tuple(t.shape), t.dtype, lambda t=t: t) for k, t in _load_pth(file).items()})
            continue
        f = _safe_open(file)  # stays open while the index lives
        for k in f.keys():
            s = f.get_slice(k)
            out[k] = (tuple(s.get_shape()), _ST_DTYPES.get(s.get_dtype()), lambda f=f, k=k: f.get_tensor(k))
    return out


def _safe_open(file: Path):
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{file} is truncated or not a safetensors file ({e}): re-download or re-save it") from None


def _load_pth(file: Path) -> dict:
    try:
        try:  # mmap: pages are read only when a tensor is used
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            sd = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # zip, pickle and EOF errors all mean the same thing here
        raise CheckpointError(f"{file} is truncated or not a PyTorch checkpoint ({type(e).__name__}): "
                              f"re-download or re-save it") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file} holds a {type(sd).__name__}, not a dict of tensors")
    return sd


# ---------------------------------------------------------------- permutation

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


def _rope_heads(args: ModelArgs) -> dict[str, int]:
    return {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}


def _to_hf(name: str) -> str:
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        return f"model.layers.{i}.{HF_LAYER[rest]}"
    return HF_TOP[name]


# ---------------------------------------------------------------- saving

def save(model: Transformer, path, *, dtype: torch.dtype | None = None, tokenizer_file=None) -> Path:
    """Write the mistral_lab layout: mistral_lab.json + model.safetensors (+ tokenizer.model)."""
    config = {"format": "mistral_lab", "args": _model(model).args.to_dict()}
    folder = _write(path, "model.safetensors", _state(model, dtype), "mistral_lab.json", config)
    if tokenizer_file is not None:
        target = folder / "tokenizer.model"
        if Path(tokenizer_file).resolve() != target.resolve():
            shutil.copyfile(tokenizer_file, target)
    return folder


def save_mistral(model: Transformer, path, *, dtype: torch.dtype | None = None) -> Path:
    """Write Mistral's original layout: params.json + consolidated.safetensors."""
    a = _model(model).args
    params = {"dim": a.dim, "n_layers": a.n_layers, "head_dim": a.head_dim, "hidden_dim": a.hidden_dim,
              "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "norm_eps": a.norm_eps,
              "vocab_size": a.vocab_size, "rope_theta": a.rope_theta}
    if a.sliding_window is not None:  # no key = full attention
        params["sliding_window"] = a.sliding_window
    return _write(path, "consolidated.safetensors", _state(model, dtype), "params.json", params)


def save_hf(model: Transformer, path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the Hugging Face layout (config.json + model.safetensors, wq/wk permuted):
    MistralForCausalLM.from_pretrained(path) runs it."""
    a = _model(model).args
    heads, hf = _rope_heads(a), {}
    for name, t in _state(model, dtype).items():
        n = heads.get(name.split(".", 2)[-1])
        hf[_to_hf(name)] = permute_for_hf(t, n).contiguous() if n else t
    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim, "intermediate_size": a.hidden_dim, "hidden_act": "silu",
        "rms_norm_eps": a.norm_eps, "vocab_size": a.vocab_size, "max_position_embeddings": a.max_seq_len,
        "sliding_window": a.sliding_window, "tie_word_embeddings": False,
        "rope_parameters": {"rope_theta": a.rope_theta, "rope_type": "default"},  # transformers 5
        "rope_theta": a.rope_theta,  # transformers 4.x
        "dtype": str(next(iter(hf.values())).dtype).removeprefix("torch."),
    }
    return _write(path, "model.safetensors", hf, "config.json", config)


def _model(model) -> Transformer:
    return getattr(model, "_orig_mod", model)  # a torch.compile'd model wraps the real one


def _state(model, dtype) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for name, t in _model(model).state_dict().items():
        t = t.detach().to(device="cpu", dtype=dtype or t.dtype).contiguous()
        if t.data_ptr() in seen:  # safetensors refuses shared storage (e.g. tied weights)
            t = t.clone()
        seen.add(t.data_ptr())
        out[name] = t
    return out


def _write(path, weights_name: str, tensors: dict, config_name: str, config: dict) -> Path:
    from safetensors.torch import save_file

    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / weights_name), metadata={"format": "pt"})  # "pt": what transformers expects
    (folder / config_name).write_text(json.dumps(config, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- tokenizer

def load_tokenizer(path=None):
    """The tokenizer.model beside the checkpoint at `path` (default: the shipped model),
    or a tokenizer.model file itself; Mistral's v1 tokenizer when a checkpoint has none."""
    from .tokenizer import Tokenizer

    if path is None:
        locate(None)  # the shipped model's own tokenizer (4096 pieces), not v1: fail if missing
        path = default_model_path()
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path} does not exist (give a checkpoint directory)")
    if path.is_file() and path.name.startswith("tokenizer.model"):
        return Tokenizer(str(path))
    folder = path if path.is_dir() else path.parent
    found = [folder / "tokenizer.model"] + sorted(folder.glob("tokenizer.model.v*"))
    for file in found:
        if file.is_file():
            return Tokenizer(str(file))
    return Tokenizer.mistral_v1()
