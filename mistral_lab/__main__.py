"""Command line: python -m mistral_lab {generate, memory, info, train, perplexity, bench}.

Errors in what the user gave (a path, a setting, a prompt) print one line and exit 2;
MISTRAL_LAB_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """A problem with the user's input: reported in one line, no traceback."""


def _model_and_tokenizer(args):
    from . import weights

    model = weights.load(args.model, device=args.device, backend=args.backend)
    return model, weights.load_tokenizer(args.model)


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

    from . import threads

    with threads.limited(args.threads):  # one thread for a small model's decode unless told otherwise
        result = generate(
            model, prompt_ids, args.max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            eos_id=tok.eos_id, chunk_size=args.chunk_size, engine=args.engine, on_token=on_token,
        )
    s = result.stats
    print(f"\n[{s.prompt_tokens} prompt tokens, pre-fill {s.prefill_tokens_per_s:.0f} tok/s; "
          f"{s.new_tokens} new tokens, decode {s.decode_tokens_per_s:.0f} tok/s; stop: {result.stop_reason}]",
          file=sys.stderr)


def cmd_memory(args) -> None:
    from .cache import cache_bytes
    from .config import preset

    a = preset(args.preset)
    bpe = {"bf16": 2, "fp16": 2, "fp32": 4}[args.dtype]
    full = cache_bytes(a, args.tokens, rolling=False, batch_size=args.batch_size, bytes_per_element=bpe)
    roll = cache_bytes(a, args.tokens, rolling=True, batch_size=args.batch_size, bytes_per_element=bpe)
    gib = 2**30
    print(f"{args.preset}: KV cache at {args.tokens} tokens, batch {args.batch_size}, {args.dtype}")
    print(f"  full cache     {full / gib:8.3f} GiB  ({full} bytes)")
    print(f"  rolling buffer {roll / gib:8.3f} GiB  ({roll} bytes, W = {a.sliding_window})")
    print(f"  saving         {full / roll:8.2f}x")


def cmd_info(args) -> None:
    from .config import preset

    if args.model is not None:
        from . import weights

        a = weights.load(args.model).args
        title = str(args.model)
    else:
        a = preset(args.preset)
        title = args.preset
    print(title)
    for k, v in a.to_dict().items():
        print(f"  {k:<16}{v}")
    print(f"  {'parameters':<16}{a.n_params():,}")
    print(f"  {'receptive field':<16}{'unbounded (full attention)' if a.sliding_window is None else a.n_layers * (a.sliding_window - 1)}")


def cmd_train(args) -> None:
    import numpy as np
    import torch

    from . import corpus
    from .config import preset
    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    stats = corpus.prepare(data_dir, vocab_size=preset(args.preset).vocab_size)
    train_tokens = np.fromfile(data_dir / "train.bin", dtype=np.uint16)
    heldout_tokens = np.fromfile(data_dir / "heldout.bin", dtype=np.uint16)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup=min(args.warmup, max(1, args.steps // 10)), seed=args.seed,
                      eval_every=args.eval_every, device=args.device, autocast=not args.no_autocast)
    model_args = preset(args.preset)
    t0 = time.time()
    model = train(model_args, train_tokens, heldout_tokens, cfg, out, progress=not args.quiet)
    from . import weights

    weights.save(model, out, dtype=getattr(torch, args.save_dtype), tokenizer_file=data_dir / "tokenizer.model")
    info = {"preset": args.preset, "args": model_args.to_dict(), "train": cfg.__dict__, "data": stats,
            "wall_s": round(time.time() - t0, 1), "torch": torch.__version__, "device": _device_name(args.device),
            "date": time.strftime("%Y-%m-%d")}
    (out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {out} ({info['wall_s']} s)", file=sys.stderr)


def cmd_perplexity(args) -> None:
    import math

    from .generate import score

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file: give a text file to score")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UsageError(f"{path} is empty: give a text file with some text to score")
    model, tok = _model_and_tokenizer(args)
    ids = tok.encode(text)
    n = len(ids) - 1
    if args.max_tokens:
        ids = ids[: args.max_tokens + 1]
        n = len(ids) - 1
    from . import threads

    with threads.limited(args.threads, kind="compute"):  # scoring is pre-fill: every usable CPU by default
        logp = score(model, ids, args.chunk_size)
    nll = -float(logp.sum()) / n
    print(json.dumps({"file": str(path), "tokens": n, "nll": round(nll, 5), "perplexity": round(math.exp(nll), 3)}))


def cmd_bench(args) -> None:
    if args.what == "classroom":
        from . import classroom

        return classroom.main(args)
    from . import bench

    bench.main(args)


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mistral_lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp):
        sp.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model in assets/model)")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--backend", default="torch", choices=["torch", "triton"])
        sp.add_argument("--chunk-size", type=_positive, default=None, help="pre-fill chunk size (default: the window W)")
        sp.add_argument("--threads", type=_positive, default=None,
                        help="CPU threads (default: mistral_lab.threads' policy; OMP_NUM_THREADS is honoured)")

    g = sub.add_parser("generate", help="prompt -> streamed text")
    model_opts(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_positive, default=200)
    g.add_argument("--engine", default="auto", choices=["auto", "model", "fast", "fast-fp16"],
                   help="what runs each decode step (default: the lean CPU step where it applies)")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=_positive, default=None)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("memory", help="KV cache bytes: full vs rolling buffer")
    m.add_argument("--preset", default="mistral-7b-v0.1")
    m.add_argument("--tokens", type=_positive, default=32768)
    m.add_argument("--batch-size", type=_positive, default=1)
    m.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    m.set_defaults(func=cmd_memory)

    i = sub.add_parser("info", help="the configuration table of a preset or a checkpoint")
    i.add_argument("--preset", default="mistral-7b-v0.1")
    i.add_argument("--model", default=None)
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a small Mistral-architecture model on Shakespeare")
    t.add_argument("--out", required=True, help="output directory for the model, tokenizer and loss log")
    t.add_argument("--preset", default="shakespeare")
    t.add_argument("--steps", type=_positive, default=1000, help="optimizer steps (the shipped model: 1000)")
    t.add_argument("--batch-size", type=_positive, default=8)
    t.add_argument("--seq-len", type=_positive, default=512)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=_positive, default=100)
    t.add_argument("--eval-every", type=_positive, default=200)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=_positive, default=None)
    t.add_argument("--data-dir", default=None, help="where to build the corpus (default: OUT/data)")
    t.add_argument("--save-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    t.add_argument("--no-autocast", action="store_true", help="train in fp32 throughout")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("perplexity", help="mean negative log-likelihood and perplexity of a text file")
    model_opts(q)
    q.add_argument("file")
    q.add_argument("--max-tokens", type=_positive, default=None)
    q.set_defaults(func=cmd_perplexity)

    b = sub.add_parser("bench", help="benchmarks: attention / decode kernels (GPU), cpu-decode vs Hugging Face")
    b.add_argument("what", choices=["attention", "decode", "cpu-decode", "classroom"])
    b.add_argument("--model", default=None)
    b.add_argument("--out", default=None, help="write results as JSON here")
    b.add_argument("--tokens", type=_positive, default=200)
    b.add_argument("--repeats", type=_positive, default=5)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, ValueError, OSError, RuntimeError) as e:  # bad input, no GPU, no Triton
        if os.environ.get("MISTRAL_LAB_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
