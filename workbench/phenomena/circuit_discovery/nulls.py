"""Random circuits that are a fair null for a discovered circuit: connected, so pruning keeps them.

A uniformly random set of edges is no null for a circuit of 0.1-1% of the edges: almost none of
its edges lies on a path from the embeddings to the logits, so pruning its dangling edges
(:meth:`workbench.techniques.edges.Graph.prune`, as MIB does) leaves nothing (on SmolLM2's 70,651
edges, random circuits of 0.1%, 0.2% and 0.5% pruned to 0 edges, and of 1% to 19). A circuit
found by EAP-IG is mostly connected, so comparing it with an empty circuit holds by construction.

:func:`random_connected_circuit` draws a circuit whose every edge lies on a path from the
embeddings to the logits: it takes the edges in a seeded random order, and each edge not yet in
the circuit comes in with a path that connects it. Backwards, a writer that no circuit edge from
a connected writer feeds gets an edge from a random writer into a random one of its inputs, and so
on until a connected writer (the embeddings at the latest); forwards, a node whose output reaches
the logits through no circuit edge sends an edge into a random input of a later node (or the
logits), until a node that does. It stops once it holds ``n`` edges or more (at most one path
more). Pruning removes none of its edges (tested).

>>> from workbench.techniques.edges import Layout
>>> lay = Layout(2, 4, 4, True)
>>> mask = random_connected_circuit(lay, 10, torch.Generator().manual_seed(0))
>>> int(mask.sum()) >= 10, mask.shape[0] == lay.n_edges
(True, True)
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from torch import Tensor

from workbench.techniques.edges import Layout

__all__ = ["random_connected_circuit", "random_connected_circuits"]


class _Tables:
    """Plain-Python lookups of a layout (fast in the loop of :func:`random_connected_circuit`)."""

    def __init__(self, layout: Layout) -> None:
        valid = layout.valid()
        index = torch.full(valid.shape, -1, dtype=torch.long)
        index[valid] = torch.arange(layout.n_edges)
        self.index: list[list[int]] = index.tolist()
        src, dst = valid.nonzero(as_tuple=True)
        self.src, self.dst = src.tolist(), dst.tolist()  # edge e = (writer src[e], input dst[e])
        self.readers = layout.readers_of()  # writer -> its own input columns
        self.upstream = layout.n_upstream().tolist()  # input column -> writers 0..upstream-1 feed it
        owner = layout.owner().tolist()
        # A key/value column is read by every query head of its group: any of them is its node.
        self.owners: list[list[int]] = [[] if o < 0 else [o] for o in owner]
        for u, cols in enumerate(self.readers):
            for c in cols:
                if u not in self.owners[c]:
                    self.owners[c].append(u)
        self.fed = [[c for c in range(layout.n_backward) if self.upstream[c] > u] for u in range(layout.n_forward)]
        self.logits = layout.logits_column


def random_connected_circuit(layout: Layout, n: int, generator: torch.Generator) -> Bool[Tensor, " edge"]:
    """A random circuit of at least ``n`` edges (at most one path more), every edge on a path from
    the embeddings to the logits; ``[n_edges]`` bool in the layout's edge order."""
    if not isinstance(n, int) or not 0 <= n <= layout.n_edges:
        raise ValueError(f"n must be an int in [0, {layout.n_edges}], got {n!r}.")
    t = _Tables(layout)
    return _draw(t, n, generator)


def _draw(t: _Tables, n: int, generator: torch.Generator) -> Tensor:
    n_edges = len(t.src)
    rand = torch.rand(2 * n + 64, generator=generator).tolist()  # uniform draws, used in order
    pos = 0

    def pick(k: int) -> int:
        nonlocal pos, rand
        if pos >= len(rand):
            rand = torch.rand(n + 64, generator=generator).tolist()
            pos = 0
        pos += 1
        return min(int(rand[pos - 1] * k), k - 1)

    chosen = bytearray(n_edges)
    live = bytearray(len(t.readers))  # writers fed from the embeddings by circuit edges
    live[0] = 1
    useful = bytearray(len(t.readers))  # writers whose output reaches the logits by circuit edges
    count = 0
    for e in torch.randperm(n_edges, generator=generator).tolist():
        if count >= n:
            break
        if chosen[e]:
            continue
        path = [e]
        u = t.src[e]
        while not live[u]:  # backwards: feed u from a random writer, until a live one
            live[u] = 1
            col = t.readers[u][pick(len(t.readers[u]))]
            u = pick(t.upstream[col])
            path.append(t.index[u][col])
        c = t.dst[e]
        while c != t.logits and not any(useful[v] for v in t.owners[c]):  # forwards, until a useful node
            v = t.owners[c][pick(len(t.owners[c]))]  # live: a live writer feeds its input c
            live[v] = useful[v] = 1
            c = t.fed[v][pick(len(t.fed[v]))]
            path.append(t.index[v][c])
        for p in path:  # every writer on the path now reaches the logits
            useful[t.src[p]] = 1
            if not chosen[p]:
                chosen[p] = 1
                count += 1
    return torch.frombuffer(chosen, dtype=torch.uint8).bool() if n_edges else torch.zeros(0, dtype=torch.bool)


def random_connected_circuits(layout: Layout, sizes: list[int], n_draws: int, *,
                              seed: int = 0) -> list[list[Tensor]]:
    """``n_draws`` random connected circuits of each size (``[size][draw]`` masks), from one
    seeded generator (so the draws do not depend on anything else the caller does)."""
    if not isinstance(n_draws, int) or n_draws < 0:
        raise ValueError(f"n_draws must be a non-negative int, got {n_draws!r}.")
    t = _Tables(layout)
    gen = torch.Generator().manual_seed(seed)
    return [[_draw(t, n, gen) for _ in range(n_draws)] for n in sizes]
