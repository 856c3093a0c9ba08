"""The one "controls + redraw" pattern of the notebooks' explorers.

    ui = controls(lambda n, window: masks_figure(n, window),
                  n=widgets.IntSlider(24, 2, 64), window=widgets.IntSlider(6, 1, 32))

Plain ipywidgets and an Output (no interact): the figure is drawn once now and again
whenever a control's value changes; with continuous_update=False on the sliders that is
once per release, not once per pixel dragged.
"""
from __future__ import annotations


def controls(draw, **sliders):
    """A VBox: the sliders (side by side when there are several) over an Output showing
    draw(**{name: slider.value}). Observers registered on a slider before this call run
    before the redraw (chunk_explorer relies on it to clamp one slider by another)."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            display(draw(**{name: s.value for name, s in sliders.items()}))

    for s in sliders.values():
        s.observe(redraw, "value")
    redraw()
    row = list(sliders.values())
    return widgets.VBox([row[0] if len(row) == 1 else widgets.HBox(row), out])
