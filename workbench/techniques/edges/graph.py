"""The computation graph of a ``HookedTransformer``: nodes, edges, scores and circuits.

**Nodes that write** to the residual stream ("forward" nodes), in residual-stream order:
``input`` (the embeddings: ``blocks.0.hook_resid_pre``), every attention head ``a{L}.h{h}``
and every MLP ``m{L}``.

**Inputs that read** from it ("backward" nodes): for every layer, the query input of each
query head ``a{L}.h{h}<q>``, the key and value inputs of each key/value head ``a{L}.g{j}<k>``,
``a{L}.g{j}<v>``, the MLP's input ``m{L}``, and finally ``logits`` (the final residual stream,
before ``ln_final``). An edge joins every writer to every input that sits after it.

**Grouped-query attention** (SmolLM2: 9 query heads share 3 key/value heads). The key and value
inputs are one node *per key/value head*, because that is what the model computes: a key
input is read once per group and feeds every query head of the group. Patching an edge into
``a{L}.g{j}<k>`` therefore changes the keys of every query head of group ``j``; an edge into a
single query head's keys would be an intervention the model cannot express. Query inputs are
per query head. With ``n_kv_heads == n_heads`` this is the usual graph.

**Node outputs.** A head's output is its share of the attention output: ``z_h @ W_O[h]``. The
attention bias ``b_O`` is not a node (it is the same on every run, so it cancels in every
difference), nor are the MLP-free constant terms. With **post-attention normalisation**
(Gemma-3: ``ln1_post`` after attention, before the residual add) the attention output is
``RMSNorm(sum_h z_h W_O[h] + b_O)``, which is not a sum of per-head terms. A head's output is
then defined with the norm's scale *frozen from the run being measured*:
``(z_h W_O[h] + b_O / n_heads) * w / scale``, where ``scale`` is that run's RMS of the pre-norm
sum. These outputs add up exactly to what the layer writes, on every run (clean, corrupted, or
a patched run, each with its own scale), so "the residual stream is the sum of the node
outputs" holds and edge patching is well defined. MLP outputs are read after ``ln2_post``
(``hook_mlp_out``), so they need nothing special.

>>> from workbench import models
>>> from workbench.techniques.edges.graph import Layout
>>> lay = Layout.from_model(models.tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary"))
>>> lay.n_forward, lay.n_backward, lay.n_edges, lay.n_edges == Layout.edge_count(2, 4, 2, True)
(11, 19, 82, True)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor

from workbench.core.persist import Persistent, register_state_class
from workbench.core.readout import n_kv_heads
from workbench.core.results import render
from workbench.core.types import Model

__all__ = ["Graph", "Layout", "check_model"]

SelectBy = Literal["abs", "value"]
_SELECT_BY = ("abs", "value")


def check_model(model: Model) -> None:
    """Raise unless the model is a ``HookedTransformer`` whose graph this module can describe."""
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"workbench.techniques.edges needs a transformer_lens.HookedTransformer, got {type(model).__name__} "
            "(split q/k/v input hooks are a HookedTransformer feature)."
        )
    cfg = model.cfg
    if cfg.parallel_attn_mlp:
        raise NotImplementedError("Parallel attention/MLP blocks (GPT-J style) are not supported.")
    if cfg.positional_embedding_type == "shortformer":
        raise NotImplementedError("Shortformer positional embeddings are not supported.")
    if getattr(cfg, "original_architecture", None) in ("OLMo2ForCausalLM", "Olmo2ForCausalLM",
                                                        "Olmo3ForCausalLM", "OLMo3ForCausalLM"):
        raise NotImplementedError("OLMo-style post-norm blocks are not supported.")
    if cfg.use_normalization_before_and_after and not str(cfg.normalization_type).startswith("RMS"):
        raise NotImplementedError(
            f"Post-block normalisation is supported with RMSNorm only, got {cfg.normalization_type!r}."
        )
    if getattr(cfg, "ungroup_grouped_query_attention", False):
        raise NotImplementedError("ungroup_grouped_query_attention=True is not supported.")


@register_state_class
@dataclass(frozen=True)
class Layout:
    """Where every node sits: names, layers, and which writers each input can read."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool
    post_norm: bool = False  # attention output normalised as a whole (Gemma-3): a layer's heads share a scale

    @classmethod
    def from_model(cls, model: Model) -> Layout:
        check_model(model)
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, n_kv_heads(model), not cfg.attn_only,
                   bool(cfg.use_normalization_before_and_after))

    @staticmethod
    def edge_count(n_layers: int, n_heads: int, n_kv_heads: int, has_mlp: bool) -> int:
        """The closed form: sum over layers of (inputs x writers before them), plus the logits."""
        m = int(has_mlp)
        total = 0
        for L in range(n_layers):
            before = 1 + L * (n_heads + m)
            total += (n_heads + 2 * n_kv_heads) * before + m * (before + n_heads)
        return total + 1 + n_layers * (n_heads + m)

    # ---------------------------------------------------------------- forward (writers)
    @property
    def per_layer_forward(self) -> int:
        return self.n_heads + int(self.has_mlp)

    @property
    def n_forward(self) -> int:
        return 1 + self.n_layers * self.per_layer_forward

    def head_index(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_forward + head

    def mlp_index(self, layer: int) -> int:
        if not self.has_mlp:
            raise ValueError("This model has no MLP layers.")
        return 1 + layer * self.per_layer_forward + self.n_heads

    # ---------------------------------------------------------------- backward (inputs)
    @property
    def per_layer_backward(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + int(self.has_mlp)

    @property
    def n_backward(self) -> int:
        return self.n_layers * self.per_layer_backward + 1

    def q_columns(self, layer: int) -> slice:
        s = layer * self.per_layer_backward
        return slice(s, s + self.n_heads)

    def k_columns(self, layer: int) -> slice:
        s = layer * self.per_layer_backward + self.n_heads
        return slice(s, s + self.n_kv_heads)

    def v_columns(self, layer: int) -> slice:
        s = layer * self.per_layer_backward + self.n_heads + self.n_kv_heads
        return slice(s, s + self.n_kv_heads)

    def mlp_column(self, layer: int) -> int:
        return (layer + 1) * self.per_layer_backward - 1

    @property
    def logits_column(self) -> int:
        return self.n_backward - 1

    def n_upstream_attn(self, layer: int) -> int:
        """Writers an attention input of ``layer`` reads: the input and every earlier layer."""
        return 1 + layer * self.per_layer_forward

    def n_upstream_mlp(self, layer: int) -> int:
        return 1 + layer * self.per_layer_forward + self.n_heads

    # ---------------------------------------------------------------- tables
    def forward_names(self) -> list[str]:
        names = ["input"]
        for L in range(self.n_layers):
            names += [f"a{L}.h{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                names.append(f"m{L}")
        return names

    def backward_names(self) -> list[str]:
        names = []
        for L in range(self.n_layers):
            names += [f"a{L}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{L}.g{j}<k>" for j in range(self.n_kv_heads)]
            names += [f"a{L}.g{j}<v>" for j in range(self.n_kv_heads)]
            if self.has_mlp:
                names.append(f"m{L}")
        return names + ["logits"]

    def n_upstream(self) -> Tensor:
        """For every input, how many writers (a prefix of the forward order) it reads."""
        out = torch.empty(self.n_backward, dtype=torch.long)
        for L in range(self.n_layers):
            s = L * self.per_layer_backward
            out[s:s + self.n_heads + 2 * self.n_kv_heads] = self.n_upstream_attn(L)
            if self.has_mlp:
                out[self.mlp_column(L)] = self.n_upstream_mlp(L)
        out[-1] = self.n_forward
        return out

    def valid(self) -> Tensor:
        """``[n_forward, n_backward]`` bool: which (writer, input) pairs are edges."""
        return torch.arange(self.n_forward)[:, None] < self.n_upstream()[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.n_upstream().sum())

    def owner(self) -> Tensor:
        """For every input, the forward node it belongs to (the logits: -1). A key/value input
        belongs to every query head of its group; this returns the group's first head."""
        out = torch.full((self.n_backward,), -1, dtype=torch.long)
        g = self.n_heads // self.n_kv_heads
        for L in range(self.n_layers):
            q, k, v = self.q_columns(L), self.k_columns(L), self.v_columns(L)
            out[q] = torch.tensor([self.head_index(L, h) for h in range(self.n_heads)])
            out[k] = out[v] = torch.tensor([self.head_index(L, j * g) for j in range(self.n_kv_heads)])
            if self.has_mlp:
                out[self.mlp_column(L)] = self.mlp_index(L)
        return out

    def readers_of(self) -> list[list[int]]:
        """For every forward node, the input columns it reads from (empty for ``input``)."""
        g = self.n_heads // self.n_kv_heads
        out: list[list[int]] = [[] for _ in range(self.n_forward)]
        for L in range(self.n_layers):
            q, k, v = self.q_columns(L), self.k_columns(L), self.v_columns(L)
            for h in range(self.n_heads):
                out[self.head_index(L, h)] = [q.start + h, k.start + h // g, v.start + h // g]
            if self.has_mlp:
                out[self.mlp_index(L)] = [self.mlp_column(L)]
        return out

    def forward_layer(self) -> Tensor:
        """Row of every writer in a drawing: input -1, heads and MLPs of layer L at L."""
        out = torch.full((self.n_forward,), -1, dtype=torch.long)
        for L in range(self.n_layers):
            s = 1 + L * self.per_layer_forward
            out[s:s + self.per_layer_forward] = L
        return out


@dataclass
class Graph(Persistent):
    """Edge scores of one model's computation graph, and optionally a circuit (a set of edges).

    Attributes:
        layout: the nodes (:class:`Layout`).
        matrix: ``[n_forward, n_backward]`` scores, 0 where there is no edge.
        in_circuit: ``[n_edges]`` bool in the order of :attr:`edges`, or None (no circuit chosen).
        meta: provenance (method, steps, metric values of the clean and corrupted runs, model).

    A score is the first-order estimate of how much the metric *drops* when the edge alone is
    taken from the corrupted run: ``(out_clean - out_corrupted) . d metric / d input``, summed
    over positions and prompts (see :mod:`workbench.techniques.edges.attribution`).
    """

    layout: Layout
    matrix: Tensor
    in_circuit: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (self.layout.n_forward, self.layout.n_backward)
        if tuple(self.matrix.shape) != shape:
            raise ValueError(f"Score matrix of shape {tuple(self.matrix.shape)}; the layout needs {shape}.")
        self.matrix = self.matrix.detach().cpu().float()
        if self.in_circuit is not None:
            self.in_circuit = torch.as_tensor(self.in_circuit, dtype=torch.bool)
            if self.in_circuit.shape != (self.layout.n_edges,):
                raise ValueError(f"in_circuit needs {self.layout.n_edges} entries, got {tuple(self.in_circuit.shape)}.")

    # ---------------------------------------------------------------- views
    @property
    def n_edges(self) -> int:
        return self.layout.n_edges

    @property
    def scores(self) -> Tensor:
        """``[n_edges]``: one score per edge, in the order of :attr:`edges` (row-major: writer, input)."""
        return self.matrix[self.layout.valid()]

    @property
    def edges(self) -> list[tuple[str, str]]:
        src, dst = self.layout.valid().nonzero(as_tuple=True)
        fw, bw = self.layout.forward_names(), self.layout.backward_names()
        return [(fw[i], bw[j]) for i, j in zip(src.tolist(), dst.tolist())]

    def circuit_matrix(self) -> Tensor:
        """``[n_forward, n_backward]`` bool mask of the circuit's edges (all False without one)."""
        out = torch.zeros(self.layout.n_forward, self.layout.n_backward, dtype=torch.bool)
        if self.in_circuit is not None:
            out[self.layout.valid()] = self.in_circuit
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: ``source``, ``target``, ``score`` (and ``in_circuit`` when one is set)."""
        src, dst = zip(*self.edges)
        frame = pd.DataFrame({"source": src, "target": dst, "score": self.scores.double().numpy()})
        if self.in_circuit is not None:
            frame["in_circuit"] = self.in_circuit.numpy()
        return frame

    def __repr__(self) -> str:
        c = "" if self.in_circuit is None else f", circuit of {int(self.in_circuit.sum())} edges"
        return f"Graph({self.meta.get('method', 'scores')}, {self.n_edges} edges{c})"

    def _repr_html_(self) -> str:
        top = self.to_frame().assign(abs=lambda f: f["score"].abs()).nlargest(10, "abs").drop(columns="abs")
        return f"<p>{self!r}; the 10 edges of largest |score|:</p>" + top.to_html(
            index=False, float_format=lambda x: f"{x:.4g}")

    def plot(self, **kwargs):
        """The circuit's edges drawn as a graph, one row per layer (needs a circuit)."""

        return render("draw_circuit", self, **kwargs)

    def view(self, **kwargs):
        """The interactive edge explorer (self-contained HTML; at most 5,000 edges embedded by
        default, see :mod:`workbench.viz.interactive_graph`)."""
        return render("view_graph", self, **kwargs)

    # ---------------------------------------------------------------- circuits
    def _order(self, by: SelectBy) -> Tensor:
        if by not in _SELECT_BY:
            raise ValueError(f"Unknown by={by!r}; choose from {list(_SELECT_BY)}.")
        s = self.scores
        key = s.abs() if by == "abs" else s
        # Stable: ties keep the edge order (writer, then input), so the choice is reproducible.
        return torch.sort(key, descending=True, stable=True).indices

    def _count(self, n: int | None, fraction: float | None) -> int:
        if (n is None) == (fraction is None):
            raise ValueError("Give exactly one of n (an edge count) and fraction (of all edges).")
        if fraction is not None:
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"fraction must lie in [0, 1], got {fraction}.")
            n = int(fraction * self.n_edges)
        if not isinstance(n, int) or not 0 <= n <= self.n_edges:
            raise ValueError(f"n must be an int in [0, {self.n_edges}], got {n!r}.")
        return n

    def with_circuit(self, in_circuit: Tensor) -> Graph:
        return Graph(self.layout, self.matrix, in_circuit, dict(self.meta))

    def top_n(self, n: int | None = None, *, fraction: float | None = None, by: SelectBy = "abs") -> Graph:
        """The circuit of the ``n`` edges with the largest ``|score|`` (or signed score)."""
        n = self._count(n, fraction)
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        mask[self._order(by)[:n]] = True
        return self.with_circuit(mask)

    def greedy(self, n: int | None = None, *, fraction: float | None = None, by: SelectBy = "abs") -> Graph:
        """Grow a circuit from the logits: repeatedly add the best edge into a node already in it.

        Starts with the edges into ``logits``; adding an edge ``u -> v`` puts ``u`` in the circuit,
        which makes every edge into ``u``'s inputs (its q, k, v inputs or its MLP input) a
        candidate. The circuit is connected to the logits by construction. Stops at ``n`` edges or
        when no candidate is left.
        """
        n = self._count(n, fraction)
        if by not in _SELECT_BY:
            raise ValueError(f"Unknown by={by!r}; choose from {list(_SELECT_BY)}.")
        lay = self.layout
        valid = lay.valid()
        index = torch.full(valid.shape, -1, dtype=torch.long)
        index[valid] = torch.arange(self.n_edges)
        key = self.matrix.abs() if by == "abs" else self.matrix
        readers = lay.readers_of()
        heap: list[tuple[float, int, int]] = []

        def push_column(col: int) -> None:
            for u in range(int(lay.n_upstream()[col])):
                e = int(index[u, col])
                heapq.heappush(heap, (-float(key[u, col]), e, u))

        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        reached = torch.zeros(lay.n_forward, dtype=torch.bool)
        push_column(lay.logits_column)
        count = 0
        while heap and count < n:
            _, e, u = heapq.heappop(heap)
            if mask[e]:
                continue
            mask[e] = True
            count += 1
            if not reached[u]:
                reached[u] = True
                for col in readers[u]:
                    push_column(col)
        return self.with_circuit(mask)

    def prune(self) -> Graph:
        """The circuit without its dangling edges (as MIB does before counting a circuit's size).

        A writer is *live* when it is ``input`` or an edge of the circuit from a live writer feeds
        one of its inputs; it is *useful* when it is live and an edge of the circuit takes it to
        an input of a useful node (``logits`` is useful). An edge is kept when its writer is live
        and the node reading it is useful. With a post-norm (Gemma-3) a layer's heads share the
        norm's scale, so they are live, and useful, together. Under ``ablation="patch"`` a dropped
        edge carries the corrupted value either way (a writer whose inputs are all corrupted
        writes its corrupted output), so pruning changes the circuit's size, not its
        faithfulness; under mean ablation it can change both (a writer fed means does not write
        its mean).
        """
        if self.in_circuit is None:
            raise ValueError("The graph has no circuit to prune: choose one with .top_n() or .greedy().")
        lay = self.layout
        m = self.circuit_matrix()
        readers = lay.readers_of()
        heads = [range(lay.head_index(L, 0), lay.head_index(L, 0) + lay.n_heads) for L in range(lay.n_layers)]
        mlps = [lay.mlp_index(L) if lay.has_mlp else None for L in range(lay.n_layers)]

        live = torch.zeros(lay.n_forward, dtype=torch.bool)
        live[0] = True
        for L in range(lay.n_layers):  # writers in residual order: each reads earlier ones only
            for u in heads[L]:
                live[u] = bool(m[live][:, readers[u]].any())
            if lay.post_norm and live[heads[L].start:heads[L].stop].any():
                live[heads[L].start:heads[L].stop] = True
            mlp = mlps[L]
            if mlp is not None:
                live[mlp] = bool(m[live][:, readers[mlp]].any())

        read = torch.zeros(lay.n_backward, dtype=torch.bool)  # the inputs of useful nodes
        read[lay.logits_column] = True
        for L in reversed(range(lay.n_layers)):
            mlp = mlps[L]
            if mlp is not None and live[mlp] and (m[mlp] & read).any():
                read[readers[mlp]] = True
            useful = [u for u in heads[L] if live[u] and (m[u] & read).any()]
            for u in (heads[L] if lay.post_norm and useful else useful):  # post-norm: live heads are the layer
                read[readers[u]] = True
        kept = m & live[:, None] & read[None, :]
        return self.with_circuit(kept[lay.valid()])

    @classmethod
    def from_heads(cls, model_or_layout, heads: Iterable[tuple[int, int]], *, mlps: bool = True) -> Graph:
        """A head-level circuit as edges: every edge between its nodes.

        The nodes are ``input``, the given ``(layer, head)`` heads, every MLP (``mlps=True``; a
        head-level circuit says nothing about MLPs, so by default they are kept) and the logits.
        An edge ``u -> v`` is in the circuit when both ``u`` and the node owning ``v`` are (for a
        key/value input: when any head of its group is). Scores are all zero.
        """
        lay = model_or_layout if isinstance(model_or_layout, Layout) else Layout.from_model(model_or_layout)
        keep = torch.zeros(lay.n_forward, dtype=torch.bool)
        keep[0] = True
        for L, h in heads:
            if not (0 <= L < lay.n_layers and 0 <= h < lay.n_heads):
                raise ValueError(f"Head ({L}, {h}) is outside the model's {lay.n_layers} x {lay.n_heads} grid.")
            keep[lay.head_index(L, h)] = True
        if mlps and lay.has_mlp:
            for L in range(lay.n_layers):
                keep[lay.mlp_index(L)] = True
        reads = torch.zeros(lay.n_backward, dtype=torch.bool)
        reads[lay.logits_column] = True
        for u, cols in enumerate(lay.readers_of()):
            if keep[u]:
                reads[cols] = True
        mask = keep[:, None] & reads[None, :]
        matrix = torch.zeros(lay.n_forward, lay.n_backward)
        return cls(lay, matrix, mask[lay.valid()], {"method": "head-level circuit"})

    def circuit_nodes(self) -> list[str]:
        """Forward nodes with at least one edge in the circuit (as source), plus ``logits``."""
        m = self.circuit_matrix()
        names = self.layout.forward_names()
        return [names[i] for i in m.any(1).nonzero().flatten().tolist()] + ["logits"]
