"""The one "controls + redraw" pattern of the notebooks' explorers.

    ui = controls(lambda n, window: masks_figure(n, window),
                  n=widgets.IntSlider(24, 2, 64), window=widgets.IntSlider(6, 1, 32))
    ui            # in a notebook: the sliders, then the figure

Why not an Output widget holding the figure: a figure inside a widget exists only while
the kernel runs, so a notebook opened cold (a student's first look, a class handout)
showed `VBox(children=...)` as text where the figure should be. Here the figure is an
ordinary plotly output with a display id -- saved with the notebook, drawn before
anything runs -- and a change of a control replaces it in place (one figure per idea,
never a static copy above a live one). The sliders are ipywidgets; before the kernel
runs, where the saved widget state cannot be drawn, they read as one line of text that
says to run the cell. continuous_update=False on the sliders redraws once per release.
"""
from __future__ import annotations

COLD_TEXT = "(interactive controls: run this cell to use them)"


class Explorer:
    """Sliders that redraw one figure in place: `controls` (the widget), `figure` (now)."""

    def __init__(self, draw, sliders: dict):
        import ipywidgets as widgets

        self._draw, self.sliders = draw, sliders
        row = list(sliders.values())
        self.controls = row[0] if len(row) == 1 else widgets.HBox(row)
        self._handles = []
        self.figure = self._current()
        for s in row:
            s.observe(self._redraw, "value")

    def _current(self):
        return self._draw(**{name: s.value for name, s in self.sliders.items()})

    def _redraw(self, _=None) -> None:
        self.figure = self._current()
        for handle in self._handles:
            handle.update(self.figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(_Labelled(self.controls))
        self._handles.append(display(self.figure, display_id=True))


class _Labelled:
    """A widget whose plain-text stand-in says what it is, instead of its repr."""

    def __init__(self, widget):
        self.widget = widget

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        if isinstance(data, tuple):  # (data, metadata)
            data = data[0]
        return {**data, "text/plain": COLD_TEXT}


def controls(draw, **sliders) -> Explorer:
    """An Explorer: the sliders (side by side when there are several) and the figure
    draw(**{name: slider.value}), redrawn whenever a slider moves. Observers registered on
    a slider before this call run before the redraw (chunk_explorer relies on it to clamp
    one slider by another)."""
    return Explorer(draw, sliders)
