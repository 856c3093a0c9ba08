"""The one "controls + redraw" pattern of the notebooks' explorers.

    ui = controls(lambda n, window: masks_figure(n, window),
                  n=widgets.IntSlider(24, 2, 64), window=widgets.IntSlider(6, 1, 32))
    ui            # in a notebook: the sliders over the figure, redrawn when one moves

One output, two faces. An explorer displays a single output whose bundle holds the live
widget (the sliders over an Output widget that holds the figure) *and* the figure's
own plotly JSON *and* one line of text. JupyterLab shows the richest one it may:

- running, or a notebook the user trusts: the widget -- move a slider, the figure is
  redrawn inside the Output widget (a display update from a widget callback is dropped
  by JupyterLab; what the Output widget holds is drawn);
- opened cold (a committed notebook is not trusted yet, and widgets need a kernel):
  the saved figure, drawn by plotly from the JSON -- never `VBox(children=...)` text;
- a plain-text front end: the line saying to run the cell.

So there is one figure per idea, before running and after. continuous_update=False on
the sliders redraws once per release, not once per pixel dragged.

The kernel sets the Output widget's `outputs` itself; it never captures a display with
`with output:`. A headless client (nbclient: nbconvert --execute, papermill) stands in
for the Output widget and sends every output captured in one back to the kernel on the
shell channel, the socket it is awaiting the cell's execute_reply on; the send can swallow
the socket's wake-up, and for a figure of a few hundred kB (the attention view) it did:
the client then waited out its whole per-cell timeout, forever without one.
"""
from __future__ import annotations

import json

import ipywidgets as widgets
import plotly.io as pio
from IPython import get_ipython

COLD_TEXT = "(interactive figure: run this cell to move its controls)"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


class Explorer:
    """Sliders that redraw one figure: `controls` (the sliders), `figure` (now), `widget`
    (the sliders over the Output widget that shows the figure)."""

    def __init__(self, draw, sliders: dict):
        self._draw, self.sliders = draw, sliders
        row = list(sliders.values())
        self.controls = row[0] if len(row) == 1 else widgets.HBox(row)
        self.output = widgets.Output()
        self.widget = widgets.VBox([self.controls, self.output])
        self.figure = None
        self._redraw()
        for s in row:
            s.observe(self._redraw, "value")

    def _redraw(self, _=None) -> None:
        self.figure = self._draw(**{name: s.value for name, s in self.sliders.items()})
        self.output.outputs = (display_data(self.figure),)  # replaces the figure in one update

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        if isinstance(data, tuple):  # (data, metadata)
            data = data[0]
        data = {**data, "text/plain": COLD_TEXT}
        if hasattr(self.figure, "to_plotly_json"):  # the saved face: the figure as drawn now
            data[PLOTLY_MIME] = json.loads(pio.to_json(self.figure, validate=False))
        return data


def display_data(obj) -> dict:
    """obj as one display_data output: the bundle display(obj) would publish. A plotly
    figure's comes from its renderer (display would call _ipython_display_, which
    publishes at once rather than return it), anything else's from IPython's formatters."""
    shell = get_ipython()
    if hasattr(obj, "to_plotly_json"):
        data = obj._repr_mimebundle_()
    elif shell is not None:
        data = shell.display_formatter.format(obj)
    else:  # no IPython (a plain test run): text, as display() would print
        data = {"text/plain": repr(obj)}
    data, metadata = data if isinstance(data, tuple) else (data, {})
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def controls(draw, **sliders) -> Explorer:
    """An Explorer: the sliders (side by side when there are several) over the figure
    draw(**{name: slider.value}), redrawn whenever a slider moves. Observers registered on
    a slider before this call run before the redraw (chunk_explorer relies on it to clamp
    one slider by another)."""
    return Explorer(draw, sliders)
