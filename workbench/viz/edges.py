"""Figures of :mod:`workbench.techniques.edges`: a circuit's edges (layers as rows) and faithfulness curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["draw_circuit", "plot_curves"]

_INPUT_COLOURS = {"q": "tab:blue", "k": "tab:green", "v": "tab:red", "mlp": "tab:purple", "logits": "black"}


def _kind(name: str) -> str:
    if name == "logits":
        return "logits"
    return name[-2] if name.endswith(">") else "mlp"


def draw_circuit(graph, *, ax=None, max_edges: int = 300, title: str | None = None):
    """Draw the circuit's edges: writers by layer (rows, input at the bottom, logits on top),
    heads left to right then the MLP; each edge goes to the node owning its input, coloured by
    the input (q, k, v, MLP, logits), width by ``|score|``. At most ``max_edges`` (largest
    ``|score|`` first) are drawn."""
    if graph.in_circuit is None:
        raise ValueError("The graph has no circuit: choose one with .top_n(), .greedy() or Graph.from_heads().")
    lay = graph.layout
    m = graph.circuit_matrix()
    src, dst = m.nonzero(as_tuple=True)
    w = graph.matrix[src, dst].abs()
    keep = torch.sort(w, descending=True, stable=True).indices[:max_edges]
    src, dst, w = src[keep], dst[keep], w[keep]
    layer = lay.forward_layer()
    col = torch.zeros(lay.n_forward)
    col[0] = (lay.per_layer_forward - 1) / 2
    for i in range(1, lay.n_forward):
        col[i] = (i - 1) % lay.per_layer_forward
    owner = lay.owner()
    bnames = lay.backward_names()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(
        figsize=(max(4.0, 0.5 * lay.per_layer_forward + 2), max(4.0, 0.2 * lay.n_layers + 2)))
    top = float(lay.n_layers)
    wmax = float(w.max()) if len(w) and float(w.max()) > 0 else 1.0
    used = set()
    for u, v, s in zip(src.tolist(), dst.tolist(), w.tolist()):
        o = int(owner[v])
        x1, y1 = (col[0].item(), top) if o < 0 else (col[o].item(), layer[o].item())
        kind = _kind(bnames[v])
        used.update({u} | ({o} if o >= 0 else set()))
        ax.plot([col[u].item(), x1], [layer[u].item(), y1], color=_INPUT_COLOURS[kind],
                lw=0.4 + 2.6 * s / wmax, alpha=0.6, zorder=1)
    used_l = sorted(used)
    ax.scatter(col[used_l], layer[used_l], s=30, c="white", edgecolors="black", zorder=2)
    ax.scatter([col[0].item()], [top], s=60, marker="s", c="black", zorder=2)
    for k, c in _INPUT_COLOURS.items():
        ax.plot([], [], color=c, label=k)
    ax.legend(loc="upper right", fontsize=7, title="into", title_fontsize=7)
    ax.set_yticks(range(-1, lay.n_layers + 1), ["input"] + [str(L) for L in range(lay.n_layers)] + ["logits"],
                  fontsize=6)
    ax.set_xticks(range(lay.per_layer_forward),
                  [f"h{h}" for h in range(lay.n_heads)] + (["mlp"] if lay.has_mlp else []), fontsize=6)
    ax.set_ylabel("layer")
    n = int(graph.in_circuit.sum())
    ax.set_title(title or f"{graph.meta.get('method', 'circuit')}: {n} edges ({min(n, max_edges)} drawn)")
    fig.tight_layout()
    return fig


def plot_curves(curves: Sequence, *, ax=None, points: dict[str, tuple[float, float]] | None = None,
                random: bool = True, title: str = "Faithfulness of circuits by size"):
    """Faithfulness against the fraction of edges (log axis) for several curves, each curve's
    random baseline dashed (``random=True``), and single circuits as labelled ``points``
    ``{label: (fraction, faithfulness)}``."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    for c in curves:
        line, = ax.plot(c.x.numpy(), c.faithfulness.numpy(), marker="o", ms=3,
                        label=f"{c.label} (CPR {c.cpr:.2f}, CMD {c.cmd:.2f})")
        if random and c.random is not None:
            ax.plot(c.random.x.numpy(), c.random.faithfulness.numpy(), ls="--", color=line.get_color(), alpha=0.6,
                    label=f"random (CPR {c.random.cpr:.2f}, CMD {c.random.cmd:.2f})")
    for label, (x, y) in (points or {}).items():
        ax.scatter([x], [y], marker="*", s=120, zorder=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of edges in the circuit")
    ax.set_ylabel("faithfulness")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
