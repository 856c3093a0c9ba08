"""Plot and widget builders for the notebooks: each returns a plotly figure or a widget.
viz only draws: what it draws is measured by the package (experiments/, bench/) or read
from a committed result.

Token pieces shown in a figure go through escape_label: plotly reads label text as HTML,
so the pieces <s>, </s> and <0x0A> would vanish and & would start an entity.
"""
import html

import plotly.io as pio

from .. import threads
from ..experiments import progress  # noqa: F401  (re-exported: notebooks draw their progress bars with it)


def escape_label(text: str) -> str:
    """A token piece (or any text from data) made safe for plotly's labels, ticks,
    titles and hover text: html.escape, nothing else."""
    return html.escape(text)


def notebook_setup(n_threads: int | None = None) -> None:
    """What every notebook does first: store plotly figures in the notebook as JSON (they
    render offline in JupyterLab, no CDN), and set the kernel's torch threads by the
    thread policy (mistral_lab.threads: an explicit number, else OMP_NUM_THREADS, else its
    default) for the rest of the session."""
    pio.renderers.default = "plotly_mimetype"
    threads.apply(n_threads)
