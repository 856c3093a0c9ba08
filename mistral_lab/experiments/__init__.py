"""Experiments: what the notebooks measure on a model, as data (viz/ draws it).

    influence.py    how far back information reaches through the layers (the receptive field)
    attention.py    real attention probabilities as bands, N x W per head; sinks and reach
    gqa.py          one layer's q, k, v; heads that share a K/V head; GQA = MHA with K/V copied
    prefill.py      what the cache holds before a chunk; memory of one chunk's attention
    memory.py       cache.nbytes measured during a long pre-fill
    copying.py      a span's loss at its first and second occurrence (in-context copying)
    passkey.py      the retrieval probe's accuracy against the distance d
    context_use.py  loss against the context given and against position; notebook 09's sweep
    perplexity.py   a text file of any length scored as one stream
    kernels.py      one instrumented Triton launch and the counts it must report
    chat.py         the chat format against mistral-common; a guarded 7B answer
"""
import sys

from tqdm.std import tqdm


def progress(iterable=None, **kw):
    """A progress bar with counts, rate and time left, as plain text on stdout.

    Why not tqdm's widget bar: a widget exists only while the kernel runs, so a notebook
    opened cold showed `HBox(children=...)` frozen at 0%; the text bar is saved with the
    notebook as its last state ("100% 6/6 [00:02<00:00]"). Why stdout: a notebook shows
    stderr in a red box, which reads as an error. Redrawn at most once a second."""
    return tqdm(iterable, file=sys.stdout, ncols=90, mininterval=1.0, **kw)
