"""Temporal heads as a pre-registered experiment: split, select, measure, score.

The claims and the design live in ``claims.toml`` beside this module (registered in
``claims.lock.json``). :func:`run` composes the steps, and the notebook
``notebooks/03_temporal_heads.ipynb`` narrates the same steps by calling them:

1. :func:`prepare`: the temporal relations are split into a selection part and an evaluation part
   (:func:`~workbench.phenomena.temporal.dataset.split_relations`; one subject per relation, so the
   halves share neither a relation nor a subject); the facts the model answers are kept in each;
   the invariant facts (the control) and the alias facts of the evaluation relations only.
2. :func:`select_heads`: on the selection facts alone, attribution patching ranks every head, the
   best candidates get exact activation patching, the ``top_k`` best are chosen (scores rounded to
   3 decimals, ties to the lower layer and head).
3. :func:`measure`: on the evaluation facts, the chosen heads' ablation against layer-matched
   random head sets; temporal against invariant facts with each set's drop divided by its own clean
   logit difference; the alias facts.
4. :func:`scorecard`: the findings in a :class:`~workbench.findings.claims.Scorecard`.

A model without a tokenizer, or one that answers too few facts, gets ``not measured`` findings
with a note (the claims presuppose facts the model knows).

>>> from workbench.models import tiny_model
>>> card = run(tiny_model())            # no tokenizer: nothing to measure, and it says so
>>> sorted({f.verdict for f in card.findings})
['not measured']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench.core.components import random_head_sets, top_k_heads
from workbench.core.metrics import Normalised
from workbench.core.results import Result
from workbench.core.types import Model
from workbench.findings.claims import Claim, Finding, Scorecard, evaluate, not_measured
from workbench.findings.preregistration import Registration, load
from workbench.models import model_label
from workbench.phenomena.answers import NothingCorrect, keep_correct
from workbench.phenomena.temporal.analysis import ablated_diffs, patch_each_head, score
from workbench.phenomena.temporal.dataset import TemporalFacts, split_relations, temporal_facts
from workbench.techniques.attribution import attribute_heads

__all__ = ["NOTEBOOK", "TemporalData", "TemporalSelection", "TemporalMeasures", "registration", "prepare",
           "select_heads", "measure", "scorecard", "run", "relative_drop_difference"]

NOTEBOOK = "03_temporal_heads"
Head = tuple[int, int]


def registration() -> Registration:
    """The registered claims and design of this phenomenon (``claims.toml`` + lock)."""
    return load("workbench.phenomena.temporal")


@dataclass
class TemporalData:
    """The kept facts of each part (``None``: none kept, or none could be built; see ``notes``).

    ``select`` and ``evaluation``: temporal facts of the selection and evaluation relations;
    ``invariant``: the time-invariant control facts; ``alias``: temporal facts of the evaluation
    relations with the time named in words. ``relations``: the split, ``{"select": [...],
    "evaluation": [...]}``; ``built``: how many prompts each part had before keeping.
    """

    select: TemporalFacts | None
    evaluation: TemporalFacts | None
    invariant: TemporalFacts | None
    alias: TemporalFacts | None
    relations: dict[str, list[str]]
    built: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def n(self, part: str) -> int:
        """How many kept facts ``part`` holds (0 when none)."""
        ds = getattr(self, part)
        return 0 if ds is None else len(ds)


@dataclass
class TemporalSelection:
    """What the selection facts chose: attribution, exact patching of the candidates, the heads.

    ``clean`` and ``corrupted``: the selection facts' mean logit difference at their own year and
    at the other year.
    """

    attribution: Result
    candidates: list[Head]
    exact: Result
    chosen: list[Head]
    clean: float
    corrupted: float


@dataclass
class TemporalMeasures:
    """The evaluation step's findings, and the numbers the notebook's prose quotes.

    ``numbers``: ``zero_temporal`` / ``zero_invariant`` (mean drop under zero ablation, raw),
    ``clean_temporal`` / ``clean_invariant`` (their sets' clean logit differences),
    ``mean_invariant`` (the year's mean ablation on invariant facts: near 0 by construction, not
    counted), ``n_null``.
    """

    findings: list[Finding]
    numbers: dict[str, float]
    null_sets: list[list[Head]]


def _keep(model: Model, ds: TemporalFacts, criterion: str, verbose: bool) -> TemporalFacts | None:
    try:
        return keep_correct(model, ds, criterion=criterion, verbose=verbose)  # type: ignore[arg-type]
    except NothingCorrect:
        return None


def prepare(model: Model, *, seed: int = 0, design: dict[str, Any] | None = None,
            verbose: bool = False) -> TemporalData:
    """Step 1: split the relations, build each part's prompts, keep the facts the model answers."""
    design = registration().design if design is None else design
    sel_rel, ev_rel = split_relations(fraction=design["split_fraction"], seed=seed)
    data = TemporalData(None, None, None, None, {"select": sel_rel, "evaluation": ev_rel})
    parts = {
        "select": dict(kind="temporal", relations=sel_rel),
        "evaluation": dict(kind="temporal", relations=ev_rel),
        "invariant": dict(kind="invariant"),
        "alias": dict(kind="temporal", relations=ev_rel, time_format="alias"),
    }
    for part, options in parts.items():
        try:
            built = temporal_facts(model, seed=seed, **options)  # type: ignore[arg-type]
        except ValueError as e:  # no tokenizer, or no usable fact of this kind
            data.notes[part] = str(e)
            continue
        data.built[part] = len(built)
        kept = _keep(model, built, design["keep"], verbose)
        if kept is None:
            data.notes[part] = f"the model answers none of the {len(built)} {part} prompts"
        setattr(data, part, kept)
    return data


def select_heads(model: Model, select: TemporalFacts, *, n_candidates: int, top_k: int) -> TemporalSelection:
    """Step 2, on the selection facts only: attribution patching of every head (other year as the
    corruption), exact patching of the ``n_candidates`` best, the ``top_k`` best by exact patching.

    Both rankings round to 3 decimals, ties to the lower (layer, head). ``n_candidates`` is capped at
    the model's head count and ``top_k`` at half of it (so that random sets of other heads exist).
    """
    total = model.cfg.n_layers * model.cfg.n_heads
    n_candidates, top_k = min(n_candidates, total), min(top_k, total // 2)
    clean = score(model, select)["logit_diff"]
    corrupted = score(model, select, select.corrupted_tokens)["logit_diff"]
    metric = Normalised(select.logit_diff(), clean, corrupted)
    with torch.enable_grad():
        attribution = attribute_heads(model, select.clean_tokens, select.corrupted_tokens, metric)
    candidates = top_k_heads(attribution.values, n_candidates, decimals=3)
    exact = patch_each_head(model, select, candidates, progress=False)
    chosen = top_k_heads(torch.nan_to_num(exact.values, nan=-1e9), top_k, decimals=3)
    return TemporalSelection(attribution, candidates, exact, chosen, clean, corrupted)


def relative_drop_difference(pair: Tensor) -> Tensor:
    """``[item, 4]`` (clean and ablated logit difference of a temporal and an invariant fact) ->
    the temporal set's drop over its clean value minus the invariant set's."""
    t = (pair[:, 0] - pair[:, 1]).sum() / pair[:, 0].sum()
    i = (pair[:, 2] - pair[:, 3]).sum() / pair[:, 2].sum()
    return t - i


def _specific(model: Model, data: TemporalData, chosen: list[Head], claim: Claim, n_sel: int,
              seed: int) -> tuple[Finding, dict[str, float]]:
    """Zero ablation, temporal against invariant, each drop normalised by its set's clean value."""
    assert data.evaluation is not None and data.invariant is not None
    zt = ablated_diffs(model, data.evaluation, [[], chosen], ablation="zero")
    zi = ablated_diffs(model, data.invariant, [[], chosen], ablation="zero")
    mi = ablated_diffs(model, data.invariant, [[], chosen])
    n = min(zt.shape[1], zi.shape[1])
    gen = torch.Generator().manual_seed(seed)
    ti = torch.randperm(zt.shape[1], generator=gen)[:n]
    ii = torch.randperm(zi.shape[1], generator=gen)[:n]
    pair = torch.stack([zt[0, ti], zt[1, ti], zi[0, ii], zi[1, ii]], 1)
    finding = evaluate(claim, pair, statistic=relative_drop_difference, n_select=n_sel, seed=seed,
                       note=f"{n} temporal and {n} invariant facts (seeded samples) paired for the "
                            "bootstrap; each drop divided by its set's clean logit difference")
    numbers = dict(zero_temporal=float((zt[0] - zt[1]).mean()), zero_invariant=float((zi[0] - zi[1]).mean()),
                   clean_temporal=float(zt[0].mean()), clean_invariant=float(zi[0].mean()),
                   mean_invariant=float((mi[0] - mi[1]).mean()))
    return finding, numbers


def measure(model: Model, data: TemporalData, chosen: list[Head], claims: dict[str, Claim], *,
            n_null: int, min_facts: int, seed: int = 0) -> TemporalMeasures:
    """Step 3, on the evaluation facts: the chosen heads against ``n_null`` layer-matched random
    head sets (the chosen heads excluded; nearest layers where a layer runs short)."""
    n_sel = data.n("select")
    null_sets = (random_head_sets(model.cfg.n_layers, model.cfg.n_heads, like=chosen, n_draws=n_null, seed=seed,
                                  exclude=chosen, nearest=True) if chosen else [])
    findings, numbers = [], dict(n_null=float(n_null))
    why = "no heads chosen: " + (data.notes.get("select") or f"fewer than {min_facts} selection facts kept")

    def missing(name: str, part: str, n_eval: int) -> Finding:
        note = why if not chosen else (data.notes.get(part) or f"fewer than {min_facts} {part} facts kept")
        return not_measured(claims[name], n_select=n_sel, n_eval=n_eval, note=note)

    ev = data.evaluation
    if chosen and ev is not None and len(ev) >= min_facts:
        d = ablated_diffs(model, ev, [[], chosen, *null_sets])  # [set, fact], the year's mean ablation
        findings.append(evaluate(claims["year heads"], d[0] - d[1], null=(d[0] - d[2:]).mean(1),
                                 n_select=n_sel, seed=seed))
        numbers["clean_evaluation"] = float(d[0].mean())
    else:
        findings.append(missing("year heads", "evaluation", data.n("evaluation")))
    if chosen and ev is not None and len(ev) >= min_facts and data.n("invariant") >= min_facts:
        finding, more = _specific(model, data, chosen, claims["specific"], n_sel, seed)
        findings.append(finding)
        numbers.update(more)
    else:
        part = "invariant" if ev is not None and len(ev) >= min_facts else "evaluation"
        findings.append(missing("specific", part, data.n("evaluation")))
    if chosen and data.alias is not None and len(data.alias) >= min_facts:
        a = ablated_diffs(model, data.alias, [[], chosen, *null_sets])
        findings.append(evaluate(claims["alias"], a[0] - a[1], null=(a[0] - a[2:]).mean(1), n_select=n_sel,
                                 seed=seed, note="alias facts of the evaluation relations only"))
    else:
        findings.append(missing("alias", "alias", data.n("alias")))
    return TemporalMeasures(findings, numbers, null_sets)


def scorecard(model: Model, findings: list[Finding], *, label: str | None = None) -> Scorecard:
    """Step 4: the findings as the notebook's scorecard (labelled ``-random-init`` for the control)."""
    name = label if label is not None else model_label(model, str(model.cfg.model_name))
    card = Scorecard(name, NOTEBOOK)
    for f in findings:
        card.add(f)
    return card


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """The whole experiment on ``model``: every registered claim, measured or ``not measured``."""
    reg = registration()
    design = reg.design
    data = prepare(model, seed=seed, design=design)
    chosen: list[Head] = []
    if data.select is not None and len(data.select) >= design["min_facts"]:
        chosen = select_heads(model, data.select, n_candidates=design["n_candidates"],
                              top_k=design["top_k"]).chosen
    measures = measure(model, data, chosen, reg.claims, n_null=design["n_null"], min_facts=design["min_facts"],
                       seed=seed)
    return scorecard(model, measures.findings, label=label)
