"""Figures: static matplotlib figures, imported by the package first so that every result's
``plot()`` finds its figure through :func:`workbench.core.results.render`. Imports only core."""

from workbench.core.results import register_renderer
from workbench.viz import edges, plot

for _module in (plot, edges):
    for _name in _module.__all__:
        register_renderer(_name, getattr(_module, _name))

__all__ = ["edges", "plot"]
