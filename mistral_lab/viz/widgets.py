"""The one "controls + redraw" pattern of the notebooks' explorers.

    ui = controls(lambda n, window: masks_figure(n, window),
                  n=widgets.IntSlider(24, 2, 64), window=widgets.IntSlider(6, 1, 32))
    ui            # in a notebook: the sliders over the figure, redrawn when one moves

One output, two faces. An explorer displays a single output whose bundle holds the live
widget (the sliders over an Output widget that holds the figure) *and* the figure's
own plotly JSON *and* one line of text. JupyterLab shows the richest one it may:

- running, or a notebook the user trusts: the widget -- move a slider, the figure is
  redrawn inside the Output widget (JupyterLab only shows what a widget callback draws
  when an Output widget captures it; a display update from a callback is dropped);
- opened cold (a committed notebook is not trusted yet, and widgets need a kernel):
  the saved figure, drawn by plotly from the JSON -- never `VBox(children=...)` text;
- a plain-text front end: the line saying to run the cell.

So there is one figure per idea, before running and after. continuous_update=False on
the sliders redraws once per release, not once per pixel dragged.
"""
from __future__ import annotations

COLD_TEXT = "(interactive figure: run this cell to move its controls)"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


class Explorer:
    """Sliders that redraw one figure: `controls` (the sliders), `figure` (now), `widget`
    (the sliders over the Output widget that shows the figure)."""

    def __init__(self, draw, sliders: dict):
        import ipywidgets as widgets

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
        from IPython.display import display

        self.figure = self._draw(**{name: s.value for name, s in self.sliders.items()})
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure)

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        if isinstance(data, tuple):  # (data, metadata)
            data = data[0]
        data = {**data, "text/plain": COLD_TEXT}
        if hasattr(self.figure, "to_plotly_json"):  # the saved face: the figure as drawn now
            import plotly.io as pio
            import json

            data[PLOTLY_MIME] = json.loads(pio.to_json(self.figure, validate=False))
        return data


def controls(draw, **sliders) -> Explorer:
    """An Explorer: the sliders (side by side when there are several) over the figure
    draw(**{name: slider.value}), redrawn whenever a slider moves. Observers registered on
    a slider before this call run before the redraw (chunk_explorer relies on it to clamp
    one slider by another)."""
    return Explorer(draw, sliders)
