"""Edge patching of a circuit, faithfulness curves, and MIB's CPR and CMD.

**Running a circuit** (the interventional graph of Hanna et al. 2024 and MIB): the clean prompts
run, and every input ``v`` receives

    input_v = (its value in this run) - sum over writers u with (u -> v) outside the circuit of
              (out_u(this run) - out_u(ablated)),

so an edge in the circuit carries the writer's output of the *current* run (which may itself
be changed by ablations upstream) and an edge outside it carries the ablated value: the
corrupted run's output (``ablation="patch"``) or its mean over the corrupted prompts at each
position (``ablation="mean"``). With every edge in, this is the clean run; with none, every
input reads the ablated residual stream (for ``"patch"``: the corrupted run).

**Faithfulness** of a circuit (MIB): ``(m(circuit) - m(empty)) / (m(clean) - m(empty))``, with
``m(empty)`` the empty circuit under the same ablation. A curve evaluates the circuits of
``int(f * n_edges)`` edges for every fraction ``f``.

**CPR and CMD** (Mueller et al. 2025): CPR is the area under the faithfulness curve and CMD the
area between the curve and 1 (``|1 - faithfulness|``), both by the trapezoid rule over the
fraction of edges in the circuit (``n / n_edges``, linear axis), from the smallest to the largest
fraction, as MIB's evaluation code does with ``log_scale=False``. With the default fractions
(0.1% to 100%) a circuit as good as the model everywhere has CPR 0.999 and CMD 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.core import checks
from workbench.core.engine import has_readout
from workbench.core.metrics import metric_name
from workbench.core.persist import Persistent
from workbench.core.results import render
from workbench.core.runtime import cache_prefix, supports_fast_path
from workbench.core.types import Model
from workbench.techniques.edges.engine import (
    input_sites,
    node_outputs,
    output_hooks,
    run_metric,
    split_inputs,
)
from workbench.techniques.edges.graph import Graph, Layout, SelectBy
from workbench.techniques.patching import shared_prefix

__all__ = [
    "ABLATIONS",
    "MIB_FRACTIONS",
    "EdgePatcher",
    "FaithfulnessCurve",
    "areas",
    "evaluate_circuit",
    "faithfulness_curve",
]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: The ablations edge patching runs (a subset of :data:`workbench.core.checks.Ablation`): the
#: corrupted run's activation, or its mean over the corrupted prompts.
EdgeAblation = Literal["patch", "mean"]
ABLATIONS: tuple[str, ...] = ("patch", "mean")
Selection = Literal["top-n", "greedy"]
SELECTIONS: tuple[str, ...] = ("top-n", "greedy")


class EdgePatcher:
    """Runs circuits of one model on one clean/corrupted pair (the ablated outputs are computed once).

    >>> import torch
    >>> from workbench import models
    >>> from workbench.core.metrics import LogitDiff
    >>> model = models.tiny_model()
    >>> clean, corrupted = torch.tensor([[1, 5, 7, 9, 3]]), torch.tensor([[1, 6, 7, 9, 3]])
    >>> p = EdgePatcher(model, clean, corrupted, LogitDiff([2], [4]))
    >>> full = p.run(torch.ones(p.layout.n_edges, dtype=torch.bool))[0]
    >>> abs(full - p.clean_value) < 1e-5, abs(p.run(torch.zeros(p.layout.n_edges, dtype=torch.bool))[0] - p.corrupted_value) < 1e-5
    (True, True)
    """

    def __init__(self, model: Model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
                 metric, *, ablation: EdgeAblation = "patch", fast: bool | None = None) -> None:
        if ablation not in ABLATIONS:
            raise ValueError(f"Unknown ablation {ablation!r}; choose from {list(ABLATIONS)}.")
        checks.token_pair(model, clean_tokens, corrupted_tokens)
        self.model, self.metric, self.ablation = model, metric, ablation
        self.clean_tokens = clean_tokens
        self.layout = Layout.from_model(model)
        self.sites = input_sites(self.layout)
        with split_inputs(model):
            corr, corr_value, _ = node_outputs(model, self.layout, corrupted_tokens, metric)
        # With patching, positions before the first one where the prompts differ hold the same
        # outputs in every run (the model is causal): nothing to patch there.
        self.pos0 = shared_prefix(clean_tokens, corrupted_tokens) if ablation == "patch" else 0
        corr = corr[:, :, self.pos0:]
        self.ablated = corr if ablation == "patch" else corr.mean(1, keepdim=True).expand_as(corr).contiguous()
        self.corrupted_value = float(corr_value)
        with torch.no_grad():
            v, per = run_metric(model, clean_tokens, metric, [], what="metric on the clean run")
        self.clean_value, self.clean_per_prompt = float(v), per
        self._valid = self.layout.valid()
        # Those shared positions hold the same keys and values in every circuit run too: on a
        # HookedTransformer with a readout metric that reads none of them, they are computed once
        # here and each run starts at pos0 (``fast=False``: every run computes every position).
        self._prefix = None
        if fast is None:
            fast = supports_fast_path(model)
        if (fast and self.pos0 > 0 and has_readout(metric)
                and int(metric.readout(*clean_tokens.shape).pos.min()) >= self.pos0):
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            head = clean_tokens[:, : self.pos0]
            kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, head.shape[0])
            with torch.no_grad(), split_inputs(model):
                model(head, past_kv_cache=kv, attention_mask=torch.ones_like(head), stop_at_layer=model.cfg.n_layers)
            self._prefix = kv

    @torch.no_grad()
    def run(self, in_circuit: Bool[Tensor, " edge"]) -> tuple[float, Tensor | None]:
        """The metric with only ``in_circuit``'s edges clean: its value and per-prompt values.

        Each input's correction is the sum of its ablated writers' differences, computed from
        whichever side is smaller: the ablated writers directly, or the running sum of every
        writer's difference minus the circuit's writers.
        """
        in_circuit = torch.as_tensor(in_circuit, dtype=torch.bool)
        if in_circuit.shape != (self.layout.n_edges,):
            raise ValueError(f"in_circuit needs {self.layout.n_edges} entries, got {tuple(in_circuit.shape)}.")
        keep = torch.zeros(self.layout.n_forward, self.layout.n_backward, dtype=torch.bool)
        keep[self._valid] = in_circuit
        diff = torch.empty_like(self.ablated)
        total = torch.zeros(self.ablated.shape[1:])
        written = [0]
        ablated = self.ablated
        # where pos0 sits in the activations the hooks see: 0 when the run starts at pos0
        pos0 = 0 if self._prefix is not None else self.pos0

        def sink(s, value):
            diff[s] = value[:, pos0:].permute(2, 0, 1, 3) - ablated[s]
            total.add_(diff[s].sum(0))
            written[0] = s.stop

        hooks = output_hooks(self.model, self.layout, sink)
        for site in self.sites:
            kept = keep[: site.n_upstream, site.columns]  # [writers, inputs]
            if kept.all():
                continue
            rows_in, rows_out = kept.any(1).nonzero().flatten(), (~kept).any(1).nonzero().flatten()
            from_total = len(rows_in) < len(rows_out)
            rows = rows_in if from_total else rows_out
            weights = (kept if from_total else ~kept)[rows].float()  # [rows, inputs]

            def patch(act, hook, *, site=site, rows=rows, weights=weights, from_total=from_total):
                if written[0] != site.n_upstream:
                    raise RuntimeError(f"{site.name}: {written[0]} writers ran, expected {site.n_upstream}.")
                if len(rows):
                    d = diff[rows].reshape(len(rows), total.numel())
                    fix = (weights.T @ d).reshape(weights.shape[1], *total.shape)  # [inputs, batch, pos, d]
                    if from_total:
                        fix = total[None] - fix
                else:  # every writer kept (handled above) or none: the whole running sum
                    fix = total[None].expand(weights.shape[1], *total.shape)
                act = act.clone()
                act[:, pos0:] -= fix.permute(1, 2, 0, 3) if site.per_head else fix[0]
                return act

            hooks.append((site.name, patch))
        prefix = None if self._prefix is None else (cache_prefix(self._prefix, end=self.pos0), self.pos0)
        with split_inputs(self.model):
            value, per = run_metric(self.model, self.clean_tokens, self.metric, hooks,
                                    what="metric on a circuit", prefix=prefix)
        return float(value), per


def areas(fractions: Sequence[float] | Tensor, faithfulness: Sequence[float] | Tensor, *,
          log_x: bool = False) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoid areas under the curve and between it and 1, over ``fractions``.

    ``log_x=True`` integrates over ``log(fraction)`` instead and divides by the log range, so a
    curve at 1 everywhere still has CPR 1: every decade of circuit sizes weighs the same (MIB's
    code offers a log axis too, without the division). The default is the linear axis.
    """
    x = torch.as_tensor(fractions, dtype=torch.float64)
    y = torch.as_tensor(faithfulness, dtype=torch.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"Need matching 1-d fractions and faithfulness (at least 2), got {tuple(x.shape)}, {tuple(y.shape)}.")
    if log_x:
        if not (x > 0).all():
            raise ValueError("A log axis needs positive fractions.")
        x = x.log()
        span = float(x[-1] - x[0])
        return float(torch.trapezoid(y, x)) / span, float(torch.trapezoid((1 - y).abs(), x)) / span
    return float(torch.trapezoid(y, x)), float(torch.trapezoid((1 - y).abs(), x))


@dataclass
class FaithfulnessCurve(Persistent):
    """Faithfulness of circuits of growing size, with CPR and CMD.

    Attributes:
        fractions: the requested fractions of edges; ``n_edges``: the circuit sizes they give
            (the top ``int(f * total)`` edges).
        n_kept: the sizes after pruning dangling edges (:meth:`Graph.prune`; as ``n_edges``
            when the curve was not pruned).
        x: the fraction of edges the circuits actually hold (``n_kept / total``), the
            integration axis, as MIB integrates over its pruned circuits' edge counts.
        faithfulness: one value per size.
        cpr, cmd: the areas (see :func:`areas`).
        random: the same for seeded random circuits of the same sizes (None inside it).
        per_prompt: ``[batch, size + 2]`` metric values of every prompt on each circuit, then
            on the clean run and the empty circuit (None for a metric without ``readout``): what
            a bootstrap over prompts resamples (see :meth:`statistic`).
    """

    fractions: tuple[float, ...]
    n_edges: list[int]
    x: Tensor
    faithfulness: Tensor
    cpr: float
    cmd: float
    label: str = "circuit"
    random: FaithfulnessCurve | None = None
    per_prompt: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    n_kept: list[int] | None = None

    def __post_init__(self) -> None:
        if self.n_kept is None:
            self.n_kept = list(self.n_edges)

    def log_areas(self) -> tuple[float, float]:
        """``(CPR, CMD)`` over the log of the fraction of edges (see :func:`areas`).

        Raises ValueError when a circuit was pruned to no edges at all (random circuits of
        0.1% of the edges often are): a log axis has no place for it.
        """
        if not (self.x > 0).all():
            raise ValueError(f"The {self.label} curve has a circuit pruned to no edges; it has no log-axis area.")
        return areas(self.x, self.faithfulness, log_x=True)

    def to_frame(self) -> pd.DataFrame:
        rows = [pd.DataFrame({"circuit": self.label, "fraction": list(self.fractions), "n_edges": self.n_edges,
                              "n_kept": self.n_kept, "faithfulness": self.faithfulness.double().numpy()})]
        if self.random is not None:
            rows.append(self.random.to_frame())
        return pd.concat(rows, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        out = [{"circuit": self.label, "CPR": self.cpr, "CMD": self.cmd}]
        if self.random is not None:
            out.append({"circuit": self.random.label, "CPR": self.random.cpr, "CMD": self.random.cmd})
        return pd.DataFrame(out)

    def __repr__(self) -> str:
        r = "" if self.random is None else f"; random CPR {self.random.cpr:.3f}, CMD {self.random.cmd:.3f}"
        return f"FaithfulnessCurve({self.label}: CPR {self.cpr:.3f}, CMD {self.cmd:.3f}{r})"

    def _repr_html_(self) -> str:
        return f"<p>{self!r}</p>" + self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.3g}")

    def plot(self, ax=None, **kwargs):

        return render("plot_curves", [self], ax=ax, **kwargs)

    def statistic(self, which: Literal["cpr", "cmd"]) -> Callable[[Tensor], Tensor]:
        """A function of resampled :attr:`per_prompt` rows giving CPR or CMD (for a bootstrap).

        It assumes the metric is a mean over prompts (as the logit difference is), so a
        resample's metric is the mean of its rows.
        """
        if which not in ("cpr", "cmd"):
            raise ValueError(f"Unknown statistic {which!r}; choose from ['cpr', 'cmd'].")
        x = self.x

        def stat(rows: Tensor) -> Tensor:
            m = rows.double().mean(0)
            faith = (m[:-2] - m[-1]) / (m[-2] - m[-1])
            cpr, cmd = areas(x, faith)
            return torch.tensor(cpr if which == "cpr" else cmd)

        return stat


def _faith(value: float, clean: float, empty: float) -> float:
    return (value - empty) / (clean - empty)


def _circuit(graph: Graph, n: int, selection: str, by: SelectBy, prune: bool) -> Tensor:
    g = graph.top_n(n, by=by) if selection == "top-n" else graph.greedy(n, by=by)
    return _in_circuit(g.prune() if prune else g)


def _in_circuit(graph: Graph) -> Tensor:
    """The edge mask of a graph that has a circuit chosen."""
    assert graph.in_circuit is not None  # top_n, greedy, with_circuit and prune all set it
    return graph.in_circuit


def _check_fractions(fractions) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) < 2 or any(not 0 < f <= 1 for f in fr) or any(a >= b for a, b in itertools.pairwise(fr)):
        raise ValueError(f"fractions must be at least 2 increasing values in (0, 1], got {fractions!r}.")
    return fr


def _check_curve_options(graph, fractions, ablation, selection, by, n_draws) -> tuple[float, ...]:
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown selection {selection!r}; choose from {list(SELECTIONS)}.")
    if ablation not in ABLATIONS:
        raise ValueError(f"Unknown ablation {ablation!r}; choose from {list(ABLATIONS)}.")
    if by not in ("abs", "value"):
        raise ValueError(f"Unknown by={by!r}; choose from ['abs', 'value'].")
    if not isinstance(n_draws, int) or n_draws < 0:
        raise ValueError(f"n_draws must be a non-negative int, got {n_draws!r}.")
    fr = _check_fractions(fractions)
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a workbench.techniques.edges.Graph, got {type(graph).__name__}.")
    return fr


def _curve_patcher(model: Model, graph: Graph, clean_tokens, corrupted_tokens, metric, ablation,
                   patcher: EdgePatcher | None) -> EdgePatcher:
    """``patcher``, checked against the graph and the prompts, or a new one."""
    p = patcher or EdgePatcher(model, clean_tokens, corrupted_tokens, metric, ablation=ablation)
    if p.layout != graph.layout:
        raise ValueError(f"The graph's layout {graph.layout} is not the model's {p.layout}.")
    if patcher is not None and (patcher.ablation != ablation or patcher.clean_tokens is not clean_tokens):
        raise ValueError("The patcher was built for other prompts or another ablation.")
    return p


def _curve(p: EdgePatcher, fr: tuple[float, ...], sizes: list[int], total: int,
           masks_for: Callable[[int], list[Tensor]], label: str, empty_per, meta: dict,
           bar) -> FaithfulnessCurve:
    """Run every circuit size's masks (averaged over them) into one :class:`FaithfulnessCurve`."""
    empty = meta["empty"]
    faith, rows, kept = [], [], []
    for n in sizes:
        vals, pers, counts = [], [], []
        for mask in masks_for(n):
            v, per = p.run(mask)
            vals.append(v)
            pers.append(per)
            counts.append(int(mask.sum()))
            bar.update()
        kept.append(sum(counts) / len(counts))
        faith.append(sum(_faith(v, p.clean_value, empty) for v in vals) / len(vals))
        known = [q for q in pers if q is not None]
        rows.append(torch.stack(known).mean(0) if len(known) == len(pers) else None)
    per_prompt = None
    full = [r for r in rows if r is not None]
    if len(full) == len(rows) and p.clean_per_prompt is not None and empty_per is not None:
        per_prompt = torch.stack(full + [p.clean_per_prompt, empty_per], dim=1)
    faith_t = torch.tensor(faith)
    x = torch.tensor(kept, dtype=torch.float64) / total
    cpr, cmd = areas(x, faith_t)
    return FaithfulnessCurve(fr, sizes, x, faith_t, cpr, cmd, label, None, per_prompt, meta,
                             [round(k) for k in kept])


def _random_masks(graph: Graph, n_draws: int, gen: torch.Generator,
                  prune: bool) -> Callable[[int], list[Tensor]]:
    """``n_draws`` uniformly random edge sets of a given size (pruned if ``prune``), from ``gen``."""
    total = graph.n_edges

    def random_masks(n: int) -> list[Tensor]:
        out: list[Tensor] = []
        for _ in range(n_draws):
            m = torch.zeros(total, dtype=torch.bool)
            m[torch.randperm(total, generator=gen)[:n]] = True
            kept = graph.with_circuit(m).prune().in_circuit if prune else m
            assert kept is not None  # a graph given a circuit has one
            out.append(kept)
        return out

    return random_masks


def faithfulness_curve(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric,
    *,
    graph: Graph,
    fractions: Sequence[float] = MIB_FRACTIONS,
    ablation: EdgeAblation = "patch",
    selection: Selection = "top-n",
    by: SelectBy = "abs",
    n_draws: int = 1,
    seed: int = 0,
    prune: bool = True,
    progress: bool = False,
    patcher: EdgePatcher | None = None,
) -> FaithfulnessCurve:
    """Faithfulness of ``graph``'s best circuits at every fraction of edges, and of random ones.

    Circuits are the top ``int(f * n_edges)`` edges by ``|score|`` (``selection="top-n"``, MIB's
    default) or grown greedily from the logits (``"greedy"``). With ``prune=True`` (MIB's
    protocol) each circuit loses its dangling edges (:meth:`Graph.prune`) before it is run and
    counted, so the curve's x axis is the size of the circuit that does the work. ``random``
    holds the mean over ``n_draws`` seeded draws of uniformly random edge sets of the same
    sizes (pruned alike; x is then their mean kept fraction). Pass a ``patcher`` built on the
    same prompts to reuse its ablated outputs across calls.
    """
    fr = _check_curve_options(graph, fractions, ablation, selection, by, n_draws)
    p = _curve_patcher(model, graph, clean_tokens, corrupted_tokens, metric, ablation, patcher)
    total = graph.n_edges
    sizes = [int(f * total) for f in fr]
    empty, empty_per = p.run(torch.zeros(total, dtype=torch.bool))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sizes) * (1 + n_draws), desc="faithfulness curve", disable=not progress, leave=False)
    meta = {"ablation": ablation, "selection": selection, "clean": p.clean_value, "empty": empty,
            "metric": metric_name(metric), "n_prompts": int(clean_tokens.shape[0]), "pruned": prune}

    def curve(masks_for: Callable[[int], list[Tensor]], label: str) -> FaithfulnessCurve:
        return _curve(p, fr, sizes, total, masks_for, label, empty_per, dict(meta), bar)

    result = curve(lambda n: [_circuit(graph, n, selection, by, prune)], graph.meta.get("method", "circuit"))
    if n_draws:
        result.random = curve(_random_masks(graph, n_draws, torch.Generator().manual_seed(seed), prune), "random")
        result.random.meta["seed"] = seed
    bar.close()
    return result


def evaluate_circuit(model: Model, clean_tokens, corrupted_tokens, metric, *, graph: Graph,
                     ablation: EdgeAblation = "patch", prune: bool = True,
                     patcher: EdgePatcher | None = None) -> dict[str, float]:
    """Faithfulness of ``graph``'s circuit (``graph.in_circuit``): ``{"n_edges", "fraction",
    "value", "faithfulness"}`` under the same normalisation as :func:`faithfulness_curve`
    (and, with ``prune=True``, its dangling edges dropped first, as there)."""
    if graph.in_circuit is None:
        raise ValueError("The graph has no circuit: choose one with .top_n(), .greedy() or Graph.from_heads().")
    circuit = _in_circuit(graph.prune()) if prune else graph.in_circuit
    p = patcher or EdgePatcher(model, clean_tokens, corrupted_tokens, metric, ablation=ablation)
    empty, _ = p.run(torch.zeros(graph.n_edges, dtype=torch.bool))
    value, _ = p.run(circuit)
    n = int(circuit.sum())
    return {"n_edges": n, "fraction": n / graph.n_edges, "value": value,
            "faithfulness": _faith(value, p.clean_value, empty)}
