"""Figures: static matplotlib figures (:mod:`~workbench.viz.plot`, :mod:`~workbench.viz.edges`) and
interactive views that need no network (:mod:`~workbench.viz.interactive`,
:mod:`~workbench.viz.interactive_graph`). Imported by the package first, so that every result's
``plot()`` and ``view()`` find their figure through :func:`workbench.core.results.render`.
Imports only core."""

from workbench.core.results import register_renderer
from workbench.viz import edges, interactive, interactive_graph, plot

for _module in (plot, edges, interactive, interactive_graph):
    for _name in _module.__all__:
        _function = getattr(_module, _name)
        if callable(_function) and not isinstance(_function, type):
            register_renderer(_name, _function)

__all__ = ["edges", "interactive", "interactive_graph", "plot"]
