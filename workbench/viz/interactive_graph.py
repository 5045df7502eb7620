"""The edge-graph explorer of a :class:`workbench.techniques.edges.graph.Graph` (``graph.view()``).

Writers are drawn by layer (input at the bottom, logits on top; heads left to right, then the
MLP); each edge goes from its writer to the node that owns its input, its width and colour (red
positive, blue negative) by score. A slider sets how many edges (largest ``|score|`` first) are
drawn; hovering an edge shows its score; clicking a node keeps only its edges (click again, or
"show all nodes", to undo). At most ``max_edges`` edges are embedded in the page (default 5,000;
a SmolLM2 graph has 70,651), each about 20 bytes of JSON.

>>> import torch
>>> from workbench.techniques.edges.graph import Graph, Layout
>>> lay = Layout(2, 2, 2, True)
>>> g = Graph(lay, torch.randn(lay.n_forward, lay.n_backward) * lay.valid())
>>> v = graph_view(g, max_edges=10)
>>> len(v.data["edges"]), v.data["n_total"]
(10, 46)
"""

from __future__ import annotations

import torch

from workbench.core.results import render
from workbench.viz.interactive import View, fallback, number

__all__ = ["DEFAULT_MAX_EDGES", "graph_view", "view_graph"]

#: Edges embedded in a page unless asked otherwise (largest ``|score|`` first).
DEFAULT_MAX_EDGES = 5_000
#: Edges drawn when the view opens (the slider goes up to every embedded edge).
INITIAL_EDGES = 200


def graph_view(graph, *, max_edges: int | None = DEFAULT_MAX_EDGES, circuit: bool | None = None,
               title: str | None = None) -> View:
    """The explorer of ``graph``'s edges.

    Args:
        max_edges: how many edges to embed (largest ``|score|`` first); ``None``: every edge.
        circuit: draw only the circuit's edges (default: when the graph has a circuit).

    Raises ``ValueError`` when there is no edge to draw (:func:`view_graph` falls back instead).
    """
    lay = graph.layout
    valid = lay.valid()
    circuit = graph.in_circuit is not None if circuit is None else circuit
    mask = graph.circuit_matrix() if circuit else valid
    src, dst = mask.nonzero(as_tuple=True)
    scores = graph.matrix[src, dst]
    if len(scores) == 0 or not bool((scores != 0).any()):
        raise ValueError(f"The graph has no edges to draw ({'circuit' if circuit else 'all'} edges: "
                         f"{len(scores)}, none with a nonzero score).")
    order = torch.sort(scores.abs(), descending=True, stable=True).indices
    if max_edges is not None:
        order = order[:max_edges]
    layer = lay.forward_layer().tolist()
    names = lay.forward_names()
    cols = [(lay.per_layer_forward - 1) / 2] + [(i - 1) % lay.per_layer_forward for i in range(1, lay.n_forward)]
    nodes = [[n, c, r] for n, c, r in zip(names, cols, layer)] + [["logits", cols[0], lay.n_layers]]
    owner = [lay.n_forward if o < 0 else o for o in lay.owner().tolist()]
    edges = [[u, v, number(s)] for u, v, s in zip(src[order].tolist(), dst[order].tolist(), scores[order].tolist())]
    default = f"{graph.meta.get('method', 'edge scores')}: {int(mask.sum())} {'circuit ' if circuit else ''}edges"
    return View("graph", {
        "title": title or default, "nodes": nodes, "owner": owner, "inputs": lay.backward_names(),
        "edges": edges, "n_total": int(mask.sum()), "n_layers": lay.n_layers, "n_cols": lay.per_layer_forward,
        "initial": min(INITIAL_EDGES, len(edges)),
    })


def view_graph(graph, *, max_edges: int | None = DEFAULT_MAX_EDGES, circuit: bool | None = None,
               title: str | None = None):
    """``Graph.view()``: the explorer, or (no edge to draw) the static figure with a one-line warning."""
    try:
        return graph_view(graph, max_edges=max_edges, circuit=circuit, title=title)
    except ValueError as e:
        has_circuit = graph.in_circuit is not None and bool(graph.in_circuit.any())
        if has_circuit:
            figure = render("draw_circuit", graph, title=title)
        else:
            import matplotlib.pyplot as plt

            figure, ax = plt.subplots(figsize=(4, 1.5))
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no edges to draw", ha="center", va="center")
        return fallback(f"view(): {e} Showing the static figure instead.", figure)
