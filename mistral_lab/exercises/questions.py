"""'Predict, then run' questions: the question shown, the answer folded.

A notebook names a question by its id, `ex.question("03.slot")`, so the answer is not in
the cell's source. The answers below are stored base64-encoded: a student who opens this
file (or `ex.question??`) does not read them at a glance. The output folds the answer
in a <details> block (click "answer" to unfold). To add a question, encode its answer
with `encode(answer)` and add the pair to QUESTIONS; the tests decode every one.
"""
from __future__ import annotations

import base64
import html

# id -> (question, answer encoded with encode())
QUESTIONS: dict[str, tuple[str, str]] = {
    "01.window": (
        'With W = 4, which key positions does the query at position 10 see? And the query at position 2?',
        "MTAgc2VlcyA3LCA4LCA5LCAxMDogdGhlIFcga2V5cyAocCDiiJIgVywgcF0sIGl0c2VsZiBpbmNsdWRlZCAodGhl"
        "IHBhcGVyJ3MgVyArIDEgcmVhZGluZyBhZGRzIDYpLiAyIHNlZXMgMCwgMSwgMjogb25seSB0aHJlZSBrZXlzIGV4"
        "aXN0IHlldCwgc28gZmV3ZXIgdGhhbiBXLg=="
    ),
    "02.reach": (
        "The shipped model has 6 layers and W = 64. How far back can the last layer's output at position 500 "
        "depend on the input?",
        "NiDDlyAoNjQg4oiSIDEpID0gMzc4IHBvc2l0aW9uczogYmFjayB0byBwb3NpdGlvbiAxMjIuIEVhY2ggbGF5ZXIg"
        "bW92ZXMgaW5mb3JtYXRpb24gVyDiiJIgMSBwb3NpdGlvbnMgKFcga2V5cywgdGhlIHF1ZXJ5IGl0c2VsZiBpbmNs"
        "dWRlZCksIGFuZCB0aGUgZ3JhZGllbnRzIG1lYXN1cmVkIGFib3ZlIGFyZSBleGFjdGx5IHplcm8gYmV5b25kLg=="
    ),
    "03.slot": (
        'In a W = 64 buffer, which slot does position 200 go to, and which position does it evict?',
        "U2xvdCAyMDAgbW9kIDY0ID0gODsgaXQgZXZpY3RzIHBvc2l0aW9uIDIwMCDiiJIgNjQgPSAxMzYsIHdoaWNoIGEg"
        "cXVlcnkgYXQgMjAwIG5vIGxvbmdlciBzZWVzIChpdHMgd2luZG93IGlzIHBvc2l0aW9ucyAxMzcuLjIwMCku"
    ),
    "04.chunk": (
        "A chunk of 32 tokens at positions 96..127 attends over a W = 64 buffer holding 32..95. "
        "How many keys does query 100 see, and which?",
        "NjQ6IGJ1ZmZlcmVkIHBvc2l0aW9ucyAzNy4uOTUgKDU5IG9mIHRoZW0pIGFuZCBjaHVuayBwb3NpdGlvbnMgOTYu"
        "LjEwMCAoNSk6IHRoZSB3aW5kb3cgKDM2LCAxMDBdLiBQb3NpdGlvbiAzNiBhbmQgb2xkZXIgYXJlIG91dCBvZiBp"
        "dHMgd2luZG93LCAxMDEgYW5kIGxhdGVyIGFyZSBpdHMgZnV0dXJlLg=="
    ),
    "05.bytes": (
        'Mistral 7B: 32 layers, 8 K/V heads of 128 dimensions, bf16. How many bytes does one token add to the cache?',
        "MiAoSyBhbmQgVikgw5cgMzIgw5cgOCDDlyAxMjggw5cgMiBieXRlcyA9IDEzMSwwNzIgYnl0ZXMgPSAxMjggS2lC"
        "OiA0IEdpQiBhdCAzMiw3NjggdG9rZW5zIGZvciBhIGZ1bGwgY2FjaGUsIDAuNSBHaUIgZm9yIHRoZSByb2xsaW5n"
        "IGJ1ZmZlcidzIDQsMDk2IHNsb3RzLg=="
    ),
    "06.group": (
        'Mistral 7B has 32 query heads and 8 K/V heads. Which K/V head does query head 13 read?',
        "SGVhZCAzOiB0aGUgcXVlcnkgaGVhZHMgY29tZSBpbiBjb25zZWN1dGl2ZSBncm91cHMgb2YgMzIgLyA4ID0gNCwg"
        "c28gaGVhZHMgMTIuLjE1IHNoYXJlIEsvViBoZWFkIDMgKDEzIC8vIDQpLCBub3QgMTMgbW9kIDggPSA1Lg=="
    ),
}


def encode(answer: str) -> str:
    """How an answer is stored in QUESTIONS (base64 of its UTF-8)."""
    return base64.b64encode(answer.encode("utf-8")).decode("ascii")


def decode(stored: str) -> str:
    return base64.b64decode(stored.encode("ascii")).decode("utf-8")


def question_html(text: str, answer: str | None) -> str:
    """The question, then the answer folded in a <details> block (click to unfold); None: no answer."""
    esc = lambda s: html.escape(s).replace("\n", "<br>")  # noqa: E731
    folded = "" if answer is None else f"<details><summary>answer</summary><p>{esc(answer)}</p></details>"
    return f'<div class="mistral-lab-question"><p><b>Predict, then run:</b> {esc(text)}</p>{folded}</div>'


class _Question:
    def __init__(self, text: str, answer: str | None, qid: str | None = None):
        self.text, self._answer, self.id = text, answer, qid

    @property
    def answer(self) -> str | None:
        return self._answer

    def _repr_html_(self) -> str:
        return question_html(self.text, self._answer)

    def __repr__(self) -> str:  # outside a notebook: the question only, the answer stays folded
        tail = "" if self._answer is None else "\n(answer folded: .answer to read it)"
        return f"Predict, then run: {self.text}{tail}"


def question(qid_or_text: str, answer: str | None = None, *, show_answer: bool = True) -> _Question:
    """A 'predict, then run' question: `question("03.slot")` looks it up in QUESTIONS; in
    JupyterLab the answer shows folded (click 'answer'). `show_answer=False` shows the
    question only (the nbgrader version, where the answer is graded by hand).
    `question(text, answer)` makes a new one (for a teacher's own notebook).
    As the last line of a cell it displays itself, elsewhere use IPython.display.display(q)."""
    if answer is None:
        if qid_or_text not in QUESTIONS:
            raise ValueError(f"no question {qid_or_text!r}: the ids are {', '.join(sorted(QUESTIONS))}")
        text, stored = QUESTIONS[qid_or_text]
        return _Question(text, decode(stored) if show_answer else None, qid_or_text)
    if not isinstance(qid_or_text, str) or not isinstance(answer, str) or not qid_or_text.strip() \
            or not answer.strip():
        raise ValueError("question(text, answer) takes two non-empty strings: the question and its answer")
    return _Question(qid_or_text, answer if show_answer else None)
