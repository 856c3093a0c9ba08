"""Plot and widget builders for the notebooks: each returns a plotly figure or a widget.

Token pieces shown in a figure go through escape_label: plotly reads label text as HTML,
so the pieces <s>, </s> and <0x0A> would vanish and & would start an entity.
"""
import html


def escape_label(text: str) -> str:
    """A token piece (or any text from data) made safe for plotly's labels, ticks,
    titles and hover text: html.escape, nothing else."""
    return html.escape(text)


def notebook_setup(threads: int = 1) -> None:
    """What every notebook does first: store plotly figures in the notebook as JSON (they
    render offline in JupyterLab, no CDN), and use one thread -- the shipped model's
    matrices are small, and one thread is faster than two fighting over a laptop's cores."""
    import plotly.io as pio
    import torch

    pio.renderers.default = "plotly_mimetype"
    torch.set_num_threads(threads)


def progress(iterable=None, **kw):
    """A progress bar with counts, rate and time left, as text (tqdm's plain bar on stderr).

    Why not tqdm's widget bar: a widget exists only while the kernel runs, so a notebook
    opened cold showed `HBox(children=...)` frozen at 0%; the text bar is saved with the
    notebook as its last state ("100% 6/6 [00:02<00:00]")."""
    import sys

    from tqdm.std import tqdm

    return tqdm(iterable, file=sys.stderr, ncols=100, **kw)
