"""Plot and widget builders for the notebooks: each returns a plotly figure or an ipywidget."""
