"""'Predict, then run' questions: the question shown, the answer folded."""
from __future__ import annotations

import html


def question_html(text: str, answer: str) -> str:
    """The question, then the answer folded in a <details> block (click to unfold)."""
    esc = lambda s: html.escape(s).replace("\n", "<br>")  # noqa: E731
    return (f'<div class="mistral-lab-question"><p><b>Predict, then run:</b> {esc(text)}</p>'
            f"<details><summary>answer</summary><p>{esc(answer)}</p></details></div>")


class _Question:
    def __init__(self, text: str, answer: str):
        self.text, self.answer = text, answer

    def _repr_html_(self) -> str:
        return question_html(self.text, self.answer)

    def __repr__(self) -> str:  # outside a notebook: the question only, the answer stays folded
        return f"Predict, then run: {self.text}\n(answer folded: .answer to read it)"


def question(text: str, answer: str) -> _Question:
    """A 'predict, then run' question: in JupyterLab the answer shows folded (click 'answer');
    as the last line of a cell it displays itself, elsewhere use IPython.display.display(q)."""
    if not isinstance(text, str) or not isinstance(answer, str) or not text.strip() or not answer.strip():
        raise ValueError("question(text, answer) takes two non-empty strings: the question and its answer")
    return _Question(text, answer)
