"""Arithmetic heads as a pre-registered experiment: split, select, measure, score.

The claims and the design live in ``claims.toml`` beside this module (registered in
``claims.lock.json``). :func:`run` composes the steps, and the notebook
``notebooks/04_arithmetic_heads.ipynb`` narrates the same steps by calling them:

1. :func:`prepare`: selection and evaluation problems from disjoint operand pairs
   (:func:`~workbench.phenomena.arithmetic.dataset.sum_split`; every worked example is a
   selection pair, so no evaluation sum appears answered in any prompt); the evaluation problems
   the model solves (both digits).
2. :func:`select_heads`: on the selection problems alone, attribution patching ranks every head;
   :func:`stable_top_k` takes the K best with a stated tie rule, so that the choice does not move
   with a CPU's last digit.
3. :func:`measure`: on the evaluation problems, accuracy with the chosen heads mean-ablated
   against layer-matched random head sets; the chosen heads' attention to the operands against
   random sets from the same layers.
4. :func:`scorecard`: the findings in a :class:`~workbench.findings.claims.Scorecard`.

A model without a tokenizer gets ``not measured`` findings with a note; a model that solves too few
evaluation problems gets ``not measured`` ablation claims, and its attention claim is still measured.

>>> from workbench.models import tiny_model
>>> card = run(tiny_model())            # no tokenizer: nothing to measure, and it says so
>>> sorted({f.verdict for f in card.findings})
['not measured']
>>> stable_top_k(torch.tensor([[0.5, 0.3], [0.30001, 0.1]]), 2, tolerance=1e-3)[0]  # a near tie: lower head
[(0, 0), (0, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from workbench.core.components import random_head_sets
from workbench.core.results import Result
from workbench.core.types import Model
from workbench.findings.claims import Claim, Finding, Scorecard, evaluate, not_measured
from workbench.findings.preregistration import Registration, load
from workbench.models import model_label
from workbench.phenomena.arithmetic.analysis import (
    head_means,
    operand_attention_per_problem,
    sum_correct,
)
from workbench.phenomena.arithmetic.dataset import SumProblems, sum_split
from workbench.techniques.attribution import attribute_heads

__all__ = ["NOTEBOOK", "ArithmeticData", "ArithmeticSelection", "ArithmeticMeasures", "registration",
           "prepare", "stable_top_k", "select_heads", "n_chosen", "measure", "scorecard", "run"]

NOTEBOOK = "04_arithmetic_heads"
Head = tuple[int, int]


def registration() -> Registration:
    """The registered claims and design of this phenomenon (``claims.toml`` + lock)."""
    return load("workbench.phenomena.arithmetic")


@dataclass
class ArithmeticData:
    """Selection problems, evaluation candidates and the candidates the model solves.

    ``solved``: ``[candidate]`` 1.0 where both digits are the model's top prediction; ``evaluation``:
    the solved candidates. ``None`` fields and ``note``: the problems could not be built.
    """

    select: SumProblems | None
    candidates: SumProblems | None
    solved: Tensor | None
    evaluation: SumProblems | None
    note: str = ""


@dataclass
class ArithmeticSelection:
    """The selection step: ``attribution`` of every head, ``score`` (its absolute value), the
    ``chosen`` heads, and how far the choice is from changing (``gap``: K-th minus (K+1)-th score;
    ``edge``: the smallest distance of any head's score to the edge of the tie band)."""

    attribution: Result
    score: Tensor
    chosen: list[Head]
    gap: float
    edge: float


@dataclass
class ArithmeticMeasures:
    """The evaluation step's findings, and the numbers the notebook's prose quotes."""

    findings: list[Finding]
    numbers: dict[str, float] = field(default_factory=dict)
    attention: Tensor | None = None


def prepare(model: Model, *, seed: int = 0, design: dict[str, Any] | None = None) -> ArithmeticData:
    """Step 1: disjoint selection and evaluation problems; the evaluation problems the model solves."""
    d = registration().design if design is None else design
    try:
        select, candidates = sum_split(model, n_select=d["n_select"], n_eval=d["n_eval"], seed=seed,
                                       lo=d["lo"], hi=d["hi"], fraction=d["split_fraction"])
    except ValueError as e:  # no tokenizer, or one that does not write digits singly
        return ArithmeticData(None, None, None, None, note=str(e))
    means = torch.zeros(model.cfg.n_layers, candidates.full_tokens.shape[1], model.cfg.n_heads, model.cfg.d_head)
    solved = sum_correct(model, candidates, [[]], means=means)[0]
    return ArithmeticData(select, candidates, solved, candidates.subset(solved.nonzero().flatten()))


def stable_top_k(score: Tensor, k: int, *, tolerance: float) -> tuple[list[Head], float, float]:
    """The ``k`` heads with the largest ``score`` ``[layer, head]``, with a stated tie rule.

    Heads whose score lies within ``tolerance`` of the k-th largest score are tied with it: they
    fill the places left after the heads above that band, lower (layer, head) first. So two
    computations whose scores differ by less than ``tolerance / 2`` (a CPU's last digits) choose
    the same heads, unless a score lies within that difference of the band's edge. Returns the heads
    (best first, the band's heads in index order), the gap between the k-th and (k+1)-th scores, and
    ``edge``: the smallest distance of any other score to the band's edges (the margin the choice
    has; the k-th score is the band's centre).
    NaN scores are never chosen.
    """
    flat = torch.as_tensor(score).detach().double().cpu().flatten()
    if not 1 <= k < flat.numel():
        raise ValueError(f"k must be between 1 and {flat.numel() - 1} (fewer than the heads), got {k}.")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    flat = torch.where(torch.isnan(flat), torch.tensor(float("-inf"), dtype=flat.dtype), flat)
    order = torch.sort(-flat, stable=True).indices
    kth = flat[order[k - 1]]
    above = [int(i) for i in order if flat[i] > kth + tolerance]
    band = [int(i) for i in range(len(flat)) if abs(flat[i] - kth) <= tolerance]
    picked = above + band[: k - len(above)]
    n_heads = score.shape[1]
    gap = float(kth - flat[order[k]])
    others = torch.cat([flat[order[: k - 1]], flat[order[k:]]])  # the k-th score is the band's centre
    others = others[torch.isfinite(others)]
    edge = float(((others - kth).abs() - tolerance).abs().min()) if len(others) else float("inf")
    return [(i // n_heads, i % n_heads) for i in picked], gap, edge


def select_heads(model: Model, select: SumProblems, *, k: int, tolerance: float) -> ArithmeticSelection:
    """Step 2, on the selection problems only: attribution patching of every head (metric: mean
    log-probability of both answer digits; corruption: other operands), the ``k`` heads with the
    largest absolute attribution by :func:`stable_top_k` (``tolerance`` relative to the largest score)."""
    end = select.clean_tokens.shape[1] - 1

    def answer_logprob(logits: Tensor) -> Tensor:
        lp = logits[:, end : end + 2].log_softmax(-1)
        return lp.gather(-1, select.answer_ids[..., None]).mean()

    with torch.enable_grad():
        attribution = attribute_heads(model, select.full_tokens, select.corrupted_full, answer_logprob)
    score = attribution.values.detach().abs()
    chosen, gap, edge = stable_top_k(score, k, tolerance=tolerance * float(score.max()))
    return ArithmeticSelection(attribution, score, chosen, gap, edge)


def n_chosen(model: Model, fraction: float) -> int:
    """K: ``max(1, int(fraction * heads))`` (the paper's "under 5% of heads")."""
    return max(1, int(fraction * model.cfg.n_layers * model.cfg.n_heads))


def _ablation(model: Model, data: ArithmeticData, chosen: list[Head], claims: dict[str, Claim],
              n_null: int, seed: int) -> tuple[list[Finding], dict[str, float]]:
    assert data.evaluation is not None and data.candidates is not None
    n_sel = 0 if data.select is None else len(data.select)
    null_sets = random_head_sets(model.cfg.n_layers, model.cfg.n_heads, like=chosen, n_draws=n_null, seed=seed,
                                 exclude=chosen, nearest=True)
    means = head_means(model, data.evaluation.full_tokens)
    correct = sum_correct(model, data.evaluation, [chosen, *null_sets], means=means)  # [set, problem]
    top, rand = correct[0], correct[1:]
    note = f"K={len(chosen)} by attribution on the selection problems; {len(data.candidates)} candidates"
    findings = [evaluate(claims["crucial"], top, null=rand.mean(1), n_select=n_sel, seed=seed, note=note),
                evaluate(claims["random"], rand.mean(0), n_select=n_sel, seed=seed, note=f"mean over {n_null} sets")]
    numbers = dict(top=float(top.mean()), random=float(rand.mean()), lowest_set=float(rand.mean(1).min()))
    return findings, numbers


def measure(model: Model, data: ArithmeticData, chosen: list[Head], claims: dict[str, Claim], *,
            n_null: int, n_null_attention: int, min_solved: int, seed: int = 0) -> ArithmeticMeasures:
    """Step 3, on the evaluation problems: ablation against ``n_null`` layer-matched random head
    sets (the chosen heads excluded; nearest layers where a layer runs short), and attention to the
    operands against ``n_null_attention`` such sets."""
    n_sel = 0 if data.select is None else len(data.select)
    if data.candidates is None or not chosen:
        note = data.note or "no heads chosen"
        return ArithmeticMeasures([not_measured(claims[n], n_select=n_sel, n_eval=0, note=note)
                                   for n in ("crucial", "random", "movers")])
    solved = 0 if data.evaluation is None else len(data.evaluation)
    if solved >= min_solved:
        findings, numbers = _ablation(model, data, chosen, claims, n_null, seed)
    else:
        note = f"the model solves {solved} of {len(data.candidates)} evaluation problems (fewer than {min_solved})"
        findings = [not_measured(claims[n], n_select=n_sel, n_eval=solved, note=note) for n in ("crucial", "random")]
        numbers = {}
    attention = operand_attention_per_problem(model, data.candidates)  # [problem, layer, head]
    rows, cols = zip(*chosen)
    sets = random_head_sets(model.cfg.n_layers, model.cfg.n_heads, like=chosen, n_draws=n_null_attention,
                            seed=seed + 1, exclude=chosen, nearest=True)
    null = torch.stack([attention[:, [a for a, _ in s], [b for _, b in s]].mean() for s in sets])
    findings.append(evaluate(claims["movers"], attention[:, list(rows), list(cols)].mean(-1), null=null,
                             n_select=n_sel, seed=seed, note="attention on every evaluation candidate"))
    numbers["solved"] = float(data.solved.mean()) if data.solved is not None else float("nan")
    return ArithmeticMeasures(findings, numbers, attention)


def scorecard(model: Model, findings: list[Finding], *, label: str | None = None) -> Scorecard:
    """Step 4: the findings as the notebook's scorecard (labelled ``-random-init`` for the control)."""
    card = Scorecard(label if label is not None else model_label(model, str(model.cfg.model_name)), NOTEBOOK)
    for f in findings:
        card.add(f)
    return card


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """The whole experiment on ``model``: every registered claim, measured or ``not measured``."""
    reg = registration()
    d = reg.design
    data = prepare(model, seed=seed, design=d)
    chosen: list[Head] = []
    if data.select is not None:
        chosen = select_heads(model, data.select, k=n_chosen(model, d["k_fraction"]), tolerance=d["tolerance"]).chosen
    measures = measure(model, data, chosen, reg.claims, n_null=d["n_null"], n_null_attention=d["n_null_attention"],
                       min_solved=d["min_solved"], seed=seed)
    return scorecard(model, measures.findings, label=label)
