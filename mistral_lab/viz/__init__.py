"""Plot and widget builders for the notebooks: each returns a plotly figure or a widget."""


def notebook_setup(threads: int = 1) -> None:
    """What every notebook does first: store plotly figures in the notebook as JSON (they
    render offline in JupyterLab, no CDN), and use one thread -- the shipped model's
    matrices are small, and one thread is faster than two fighting over a laptop's cores."""
    import plotly.io as pio
    import torch

    pio.renderers.default = "plotly_mimetype"
    torch.set_num_threads(threads)
