"""The circuit-discovery experiment of notebook 07 as steps: data, selection, measurement, scorecard.

1. :func:`prepare`: IOI prompts split by :func:`workbench.phenomena.ioi.dataset.ioi_split`, so
   the selection and evaluation prompts share no name, template, place or object.
2. :func:`select`: every edge scored with EAP-IG and EAP on the selection prompts only, for each
   setting of the design (the amended 32/64 and the registered 24/32; a setting uses the first
   ``n_select`` selection prompts). Scores are sums over prompts, so the prompts are scored once
   in chunks and each setting's scores are the chunks' exact weighted sum (:func:`combine`).
3. :func:`measure`: on the evaluation prompts, the faithfulness of each method's top edges at
   every size (pruned of dangling edges, as MIB does) and of random connected circuits
   (:mod:`workbench.phenomena.circuit_discovery.nulls`): ``n_null`` at the claim's small size,
   one per other size for the random reference curve. Random circuits do not depend on the
   selection, so they run once on the largest evaluation set and each setting reads its prompts.
4. :func:`scorecard`: the registered claims evaluated with bootstrap intervals and nulls.

:func:`run` composes them. Per-prompt values are kept as raw logit differences, so the rows of
different evaluation runs combine; every faithfulness is ``(m(circuit) - m(empty)) / (m(clean) -
m(empty))`` of means over the prompts resampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.core.metrics import normalise
from workbench.core.types import Model
from workbench.findings import preregistration
from workbench.findings.claims import Claim, Scorecard, evaluate, not_measured, null_percentile
from workbench.models import model_label
from workbench.phenomena.circuit_discovery.nulls import random_connected_circuits
from workbench.phenomena.ioi.dataset import IOIDataset, ioi_split
from workbench.techniques import edges

__all__ = [
    "CLAIMS", "METHODS", "Measurement", "Setting", "absence", "absent", "behaviour_gap", "scorecards", "combine", "design", "measure",
    "prepare", "registration", "run", "run_all", "scorecard", "select", "settings",
]

CLAIMS = "workbench.phenomena.circuit_discovery"
METHODS: tuple[Literal["eap-ig", "eap"], ...] = ("eap-ig", "eap")
NOTEBOOK = "07_circuit_discovery"


@dataclass(frozen=True)
class Setting:
    """One split-size setting: ``name`` ("amended" is the headline, "registered" the design first
    registered), ``n_select`` and ``n_eval`` (the first prompts of each split)."""

    name: str
    n_select: int
    n_eval: int


def registration() -> preregistration.Registration:
    """The registered claims and design (refused if they do not match the lock)."""
    return preregistration.load(CLAIMS)


def design() -> dict[str, Any]:
    return registration().design


def settings(d: dict[str, Any] | None = None) -> list[Setting]:
    """The headline setting (the design's sizes) first, then the registered one it was amended from."""
    d = design() if d is None else d
    out = [Setting("amended", int(d["n_select"]), int(d["n_eval"]))]
    if d.get("registered_sizes"):
        s, e = d["registered_sizes"]
        out.append(Setting("registered", int(s), int(e)))
    return out


def prepare(model: Model, d: dict[str, Any] | None = None, *, seed: int = 0) -> tuple[IOIDataset, IOIDataset]:
    """Selection and evaluation prompts, disjoint on names, templates, places and objects, as many
    as the largest setting uses (a smaller setting takes the first ones)."""
    d = design() if d is None else d
    ss = settings(d)
    return ioi_split(model, max(s.n_select for s in ss), max(s.n_eval for s in ss), seed=seed,
                     corruption=d["corruption"], order=d["order"], fraction=d["fraction"])


def behaviour_gap(model: Model, ds: IOIDataset) -> float:
    """Mean logit difference IO - S on the clean prompts minus on the corrupted ones."""
    metric = ds.logit_diff()
    with torch.no_grad():
        return float(metric(model(ds.clean_tokens)) - metric(model(ds.corrupted_tokens)))


def combine(parts: list[tuple[edges.Graph, float]]) -> edges.Graph:
    """The scores of the union of disjoint prompt chunks from each chunk's graph and weight.

    A chunk of ``n`` prompts scored with a metric normalised by its own clean - corrupted gap
    ``k`` (a mean over its prompts) holds ``sum of per-prompt scores / (n k)``; with weight
    ``n k`` the weighted mean is the union's scores under its own normalisation (tested against
    scoring the union at once).
    """
    total = sum(w for _, w in parts)
    matrix = sum(g.matrix.double() * w for g, w in parts) / total
    g0 = parts[0][0]
    return edges.Graph(g0.layout, torch.as_tensor(matrix).float(), None,
                       {**g0.meta, "chunks": len(parts)})


def select(model: Model, sel: IOIDataset, d: dict[str, Any] | None = None, *,
           progress: bool = False) -> dict[str, dict[str, edges.Graph]]:
    """``{setting: {method: Graph}}``: EAP-IG and EAP scores of every edge on the setting's
    selection prompts (and on nothing else)."""
    d = design() if d is None else d
    ss = settings(d)
    cuts = sorted({0, *(s.n_select for s in ss)})
    chunks: dict[str, list[tuple[edges.Graph, float]]] = {m: [] for m in METHODS}
    for a, b in zip(cuts, cuts[1:]):
        part = sel.subset(range(a, b))
        metric = normalise(model, part.clean_tokens, part.corrupted_tokens, part.logit_diff())
        weight = (b - a) * (metric.clean_value - metric.corrupted_value)
        for method in METHODS:
            g = edges.attribute_edges(model, part.clean_tokens, part.corrupted_tokens, metric, method=method,
                                      steps=int(d["steps"]), progress=progress)
            chunks[method].append((g, weight))
    out: dict[str, dict[str, edges.Graph]] = {}
    for s in ss:
        n_chunks = cuts.index(s.n_select)
        out[s.name] = {m: (chunks[m][0][0] if n_chunks == 1 else combine(chunks[m][:n_chunks])) for m in METHODS}
    return out


@dataclass
class Measurement:
    """One setting's evaluation: per-prompt raw logit differences and the curves built from them.

    ``rows[name]``: ``[n_eval, n_sizes]`` for "eap-ig", "eap" and "random" (the reference curve,
    one random connected circuit per size); ``null``: ``[n_null, n_eval]`` at the small size;
    ``clean``, ``empty``: ``[n_eval]``; ``kept[name]``: edges per circuit after pruning.
    """

    setting: Setting
    fractions: tuple[float, ...]
    f_small: float
    n_edges: int
    rows: dict[str, Tensor]
    kept: dict[str, list[int]]
    null: Tensor
    null_kept: list[int]
    clean: Tensor
    empty: Tensor
    curves: dict[str, edges.FaithfulnessCurve] = field(default_factory=dict)
    extra: dict[str, tuple[int, Tensor]] = field(default_factory=dict)

    def faithfulness(self, rows: Tensor) -> float:
        """Faithfulness of a circuit from its ``[n_eval]`` rows (means over the evaluation prompts)."""
        clean, empty = self.clean.double().mean(), self.empty.double().mean()
        return float((rows.double().mean() - empty) / (clean - empty))

    def null_percentile(self, name: str = "eap-ig") -> float:
        """Percentile of a method's faithfulness at ``f_small`` among the random circuits there."""
        j = self.fractions.index(self.f_small)
        null = [self.faithfulness(row) for row in self.null]
        return null_percentile(self.faithfulness(self.rows[name][:, j]), null)

    def items(self, name: str) -> Tensor:
        """``[n_eval, n_sizes + 2]``: a circuit's rows, then clean and empty (what
        :meth:`edges.FaithfulnessCurve.statistic` resamples)."""
        return torch.cat([self.rows[name], self.clean[:, None], self.empty[:, None]], dim=1)

    def curve(self, name: str) -> edges.FaithfulnessCurve:
        rows = self.items(name)
        m = rows.double().mean(0)
        faith = ((m[:-2] - m[-1]) / (m[-2] - m[-1])).float()
        x = torch.tensor(self.kept[name], dtype=torch.float64) / self.n_edges
        cpr, cmd = edges.areas(x, faith)
        sizes = [int(f * self.n_edges) for f in self.fractions]
        return edges.FaithfulnessCurve(self.fractions, sizes, x, faith, cpr, cmd, name, None, rows,
                                       {"setting": self.setting.name, "ablation": "patch", "pruned": True},
                                       list(self.kept[name]))


class _Runner:
    """Runs circuits on one patcher, in raw logit-difference units, the empty and full circuits once."""

    def __init__(self, model: Model, ds: IOIDataset) -> None:
        self.metric = normalise(model, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
        self.patcher = edges.EdgePatcher(model, ds.clean_tokens, ds.corrupted_tokens, self.metric)
        n = self.patcher.layout.n_edges
        self.empty = self.run(torch.zeros(n, dtype=torch.bool))
        self.clean = self._raw(self.patcher.clean_per_prompt)

    def _raw(self, per: Tensor | None) -> Tensor:
        if per is None:
            raise ValueError("The metric gives no per-prompt values; the bootstrap needs them.")
        m = self.metric
        return per.double() * (m.clean_value - m.corrupted_value) + m.corrupted_value

    def run(self, mask: Tensor) -> Tensor:
        if bool(mask.all()):
            return self.clean
        if not bool(mask.any()) and hasattr(self, "empty"):
            return self.empty
        return self._raw(self.patcher.run(mask)[1])


def _top(graph: edges.Graph, n: int) -> Tensor:
    pruned = graph.top_n(n).prune().in_circuit
    assert pruned is not None  # top_n and prune set a circuit
    return pruned


def measure(model: Model, ev: IOIDataset, graphs: dict[str, dict[str, edges.Graph]],
            d: dict[str, Any] | None = None, *, seed: int = 0,
            circuits: dict[str, edges.Graph] | None = None) -> dict[str, Measurement]:
    """Every setting's circuits and the random circuits, run on its evaluation prompts.
    ``circuits``: more circuits (graphs with a circuit, e.g. ``Graph.from_heads``) to run, pruned,
    on the headline setting's prompts (``Measurement.extra[name] = (edges kept, rows)``)."""
    d = design() if d is None else d
    fractions = tuple(float(f) for f in d["fractions"])
    ss = settings(d)
    layout = next(iter(graphs.values()))["eap-ig"].layout
    total = layout.n_edges
    sizes = [int(f * total) for f in fractions]
    j = fractions.index(float(d["f_small"]))
    draws = random_connected_circuits(layout, sizes, 1, seed=seed)  # the reference curve
    small = random_connected_circuits(layout, [sizes[j]], int(d["n_null"]), seed=seed + 1)[0]  # the null
    big = ev.subset(range(max(s.n_eval for s in ss)))
    runner = _Runner(model, big)
    random_rows = torch.stack([runner.run(m[0]) for m in draws], dim=1)
    null_rows = torch.stack([runner.run(m) for m in small]) if small else torch.zeros(0, len(big))
    out: dict[str, Measurement] = {}
    for s in ss:
        r = runner if s.n_eval == len(big) else _Runner(model, ev.subset(range(s.n_eval)))
        rows: dict[str, Tensor] = {}
        kept: dict[str, list[int]] = {}
        for method in METHODS:
            masks = [_top(graphs[s.name][method], n) for n in sizes]
            rows[method] = torch.stack([r.run(m) for m in masks], dim=1)
            kept[method] = [int(m.sum()) for m in masks]
        rows["random"] = random_rows[: s.n_eval]
        kept["random"] = [int(m[0].sum()) for m in draws]
        meas = Measurement(s, fractions, float(d["f_small"]), total, rows, kept, null_rows[:, : s.n_eval],
                           [int(m.sum()) for m in small], r.clean, r.empty)
        meas.curves = {name: meas.curve(name) for name in (*METHODS, "random")}
        if r is runner:
            for name, g in (circuits or {}).items():
                mask = g.prune().in_circuit
                assert mask is not None  # prune keeps a circuit
                meas.extra[name] = (int(mask.sum()), runner.run(mask))
        out[s.name] = meas
    return out


def _faith_at(j: int):
    def stat(rows: Tensor) -> Tensor:
        m = rows.double().mean(0)
        return (m[j] - m[-1]) / (m[-2] - m[-1])
    return stat


def _statistics(meas: Measurement) -> tuple[Tensor, dict[str, Any], dict[str, Tensor | None]]:
    """The items (``[n_eval, ...]``), each claim's statistic of them and each claim's null."""
    k = len(meas.fractions) + 2
    items = torch.cat([meas.items("eap-ig"), meas.items("random"), meas.items("eap")], dim=1)
    cmd = {name: meas.curves[name].statistic("cmd") for name in ("eap-ig", "random", "eap")}

    def parts(rows: Tensor) -> tuple[Tensor, ...]:
        return rows.split(k, dim=1)

    j = meas.fractions.index(meas.f_small)
    small = _faith_at(j)
    stats = {
        "cmd_ig_vs_random": lambda r: cmd["random"](parts(r)[1]) - cmd["eap-ig"](parts(r)[0]),
        "cmd_ig_vs_eap": lambda r: cmd["eap"](parts(r)[2]) - cmd["eap-ig"](parts(r)[0]),
        "small_ig_circuit": lambda r: small(parts(r)[0]),
    }
    null_small = None
    if meas.null.shape[0]:  # each random circuit's faithfulness on the whole evaluation set
        clean, empty = meas.clean.double().mean(), meas.empty.double().mean()
        null_small = (meas.null.double().mean(1) - empty) / (clean - empty)
    return items, stats, {"cmd_ig_vs_random": None, "cmd_ig_vs_eap": None, "small_ig_circuit": null_small}


def scorecard(meas: Measurement, claims: dict[str, Claim], *, label: str, seed: int = 0) -> Scorecard:
    """The registered claims on one setting's measurement. The registered setting's findings say
    so in their note (their claims' amendment is the change away from it)."""
    card = Scorecard(label, NOTEBOOK)
    items, stats, nulls = _statistics(meas)
    s = meas.setting
    note = "" if s.name == "amended" else f"registered design: {s.n_select} selection / {s.n_eval} evaluation prompts"
    for name, claim in claims.items():
        c = claim if s.name == "amended" else replace(claim, amended="")
        card.add(evaluate(c, items, statistic=stats[name], null=nulls[name], n_select=s.n_select,
                          seed=seed, note=note))
    return card


def absent(claims: dict[str, Claim], s: Setting, note: str, label: str) -> Scorecard:
    """Every claim ``not measured``: the model lacks the behaviour (or cannot be given prompts)."""
    card = Scorecard(label, NOTEBOOK)
    for claim in claims.values():
        card.add(not_measured(claim, n_select=s.n_select, n_eval=s.n_eval, note=note))
    return card


def absence(gaps: list[float], d: dict[str, Any] | None = None) -> str:
    """Why the claims cannot be measured (empty when they can): the clean - corrupted logit
    difference (:func:`behaviour_gap`) of some split is below the design's ``min_gap``."""
    d = design() if d is None else d
    if min(gaps) < float(d["min_gap"]):
        return (f"no IOI behaviour: clean - corrupted logit difference {min(gaps):.2f} < "
                f"{float(d['min_gap']):g} on a split")
    return ""


def scorecards(meas: dict[str, Measurement] | None, claims: dict[str, Claim], sets: list[Setting], *,
               label: str, seed: int = 0, why: str = "") -> dict[str, Scorecard]:
    """Each setting's scorecard: measured, or every claim ``not measured`` with ``why``."""
    if why or meas is None:
        return {s.name: absent(claims, s, why or "not measured", label) for s in sets}
    return {s.name: scorecard(meas[s.name], claims, label=label, seed=seed) for s in sets}


def run_all(model: Model, *, seed: int = 0, label: str | None = None,
            data: tuple[IOIDataset, IOIDataset] | None = None,
            design_override: dict[str, Any] | None = None) -> dict[str, Scorecard]:
    """Both settings' scorecards, ``{"amended": ..., "registered": ...}`` (see :func:`run`).
    ``design_override``: design entries to replace (tests on small synthetic data only; a
    notebook's or ``workbench run``'s findings use the registered design)."""
    reg = registration()
    d = {**reg.design, **(design_override or {})}
    label = label or model_label(model, str(model.cfg.model_name))
    sets = settings(d)
    if data is None and getattr(model, "tokenizer", None) is None:
        return scorecards(None, reg.claims, sets, label=label,
                          why="the model has no tokenizer, so no IOI prompt can be built")
    sel, ev = prepare(model, d, seed=seed) if data is None else data
    why = absence([behaviour_gap(model, sel), behaviour_gap(model, ev)], d)
    if why:
        return scorecards(None, reg.claims, sets, label=label, why=why)
    meas = measure(model, ev, select(model, sel, d), d, seed=seed)
    return scorecards(meas, reg.claims, sets, label=label, seed=seed)


def run(model: Model, *, seed: int = 0, label: str | None = None,
        data: tuple[IOIDataset, IOIDataset] | None = None) -> Scorecard:
    """The headline scorecard (the amended split sizes). ``data``: a (selection, evaluation) pair
    to use instead of :func:`prepare`'s (tests on a model without a tokenizer). A model without
    the behaviour (clean - corrupted logit difference below the design's ``min_gap`` on either
    split) gets every claim ``not measured``, with the reason in its note."""
    return run_all(model, seed=seed, label=label, data=data)["amended"]

