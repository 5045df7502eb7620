"""Retrieval heads as a pre-registered experiment (notebook ``02_retrieval_heads``).

The steps, each a function the notebook calls in turn, and :func:`run` composing them:

1. :func:`prepare`: needle-in-a-haystack prompts in two halves that share no needle sentence and no
   filler paragraph (:func:`~workbench.core.subsets.split_pools` over the factors ``needle`` and
   ``filler``): selection haystacks of several lengths, evaluation haystacks of one length.
2. :func:`select_heads`: retrieval scores (Wu et al. 2024) on the selection haystacks only; K (the
   number of heads above 0.1, at most 5% of heads, at least one) and the top-K heads, ranked at 3
   decimals with ties to the lower head.
3. :func:`measure`: on the evaluation haystacks, needle accuracy with the K heads masked (a) at the
   queries that write the answer and (b) at every position, each against layer-matched random head
   sets drawn from every head of those layers (no head is excluded for its score).
4. :func:`scorecard`: the registered claims (``claims.toml``) measured, with intervals, null
   percentiles and verdicts; ``not measured`` where the model does not answer the needles.

>>> from workbench.models import tiny_model
>>> card = run(tiny_model())          # no tokenizer: nothing to write needles with
>>> sorted({f.verdict for f in card.findings})
['not measured']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from workbench.core import checks
from workbench.core.components import random_head_sets, top_k_heads
from workbench.core.subsets import split_pools
from workbench.core.types import Model
from workbench.findings import Scorecard, evaluate, not_measured, preregistration
from workbench.findings.claims import Finding
from workbench.models import model_label
from workbench.phenomena.retrieval.analysis import answer_masking, needle_correct
from workbench.phenomena.retrieval.dataset import (
    Haystack,
    Needle,
    filler_paragraphs,
    needle_haystacks,
)
from workbench.techniques.heads import retrieval_scores

__all__ = ["NEEDLE_POOL", "NeedleSplit", "RetrievalMasking", "RetrievalSelection", "best_score", "everywhere_subset",
           "accuracy_kept", "measure", "prepare", "registration", "run", "scorecard", "select_heads", "split_factors"]

NOTEBOOK = "02_retrieval_heads"
PACKAGE = "workbench.phenomena.retrieval"

#: Needle sentences and their questions, the ``needle`` factor. Every question asks in other words
#: than its needle (the token before the answer differs from the one before the code); the answer
#: is the code as the needle writes it (Wu et al.'s copy-paste setting).
NEEDLE_POOL: dict[str, Needle] = {
    "safe": Needle(" The code to open the safe is {code}.", "\n\nTo open the safe, type the number"),
    "locker": Needle(" The blue locker at the gym opens with the combination {code}.",
                     "\n\nWhich combination opens the blue locker at the gym? It is"),
    "hotel": Needle(" Our room at the seaside hotel is number {code}.", "\n\nAt the seaside hotel we sleep in room"),
    "bus": Needle(" The night bus to the airport is line {code}.", "\n\nTo reach the airport at night, take the bus"),
    "library": Needle(" The library's new phone extension is {code}.", "\n\nTo call the library, dial extension"),
    "raffle": Needle(" The winning raffle ticket carries the number {code}.", "\n\nThe raffle was won by ticket"),
    "parcel": Needle(" The parcel can be collected with the pickup number {code}.",
                     "\n\nTo collect the parcel, give the pickup code"),
    "gate": Needle(" The padlock on the garden gate has the code {code}.", "\n\nThe garden gate's padlock opens with"),
}


@dataclass
class NeedleSplit:
    """One half of the split: its haystacks and the factor values they are built from."""

    haystacks: list[Haystack]
    needles: list[str]
    paragraphs: list[int]

    def __len__(self) -> int:
        return len(self.haystacks)

    @property
    def factors(self) -> dict[str, set[str]]:
        """``{"needle": names, "filler": paragraph indices}`` (as strings)."""
        return {"needle": set(self.needles), "filler": {str(p) for p in self.paragraphs}}


@dataclass
class RetrievalSelection:
    """Step 2's record: scores on the selection haystacks, K, and the chosen heads."""

    scores: Any  # Result [layer, head]
    per_haystack: Tensor
    n_above: int
    k: int
    chosen: list[tuple[int, int]]


@dataclass
class RetrievalMasking:
    """Step 3's record: exact correctness per evaluation haystack, ``[set, haystack]`` (set 0 unmasked,
    set 1 the chosen heads, then the random sets), at the answer queries and at every position."""

    at_answer: Tensor
    everywhere: Tensor
    null_sets: list[list[tuple[int, int]]]
    n_everywhere: int
    meta: dict = field(default_factory=dict)


def registration() -> preregistration.Registration:
    return preregistration.load(PACKAGE)


def split_factors(seed: int = 0) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The needle sentences and filler paragraphs of each half, disjoint by construction."""
    pools: dict[str, Sequence[str]] = {"needle": list(NEEDLE_POOL),
                                       "filler": [str(i) for i in range(len(filler_paragraphs()))]}
    return split_pools(pools, fraction=0.5, seed=seed)


def _half(model: Model, pools: dict[str, list[str]], lengths, depths, n_per: int, seed: int) -> NeedleSplit:
    paragraphs = sorted(int(p) for p in pools["filler"])
    hs = needle_haystacks(model, context_lengths=lengths, depths=depths, n_per=n_per, seed=seed,
                          needle=[NEEDLE_POOL[n] for n in pools["needle"]], paragraphs=paragraphs)
    return NeedleSplit(hs, list(pools["needle"]), paragraphs)


def prepare(model: Model, design: dict, *, seed: int = 0) -> tuple[NeedleSplit, NeedleSplit]:
    """Selection and evaluation haystacks, disjoint in needle sentence and filler paragraph."""
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("Needle prompts are text: the model needs a tokenizer.")
    sel, ev = split_factors(seed)
    select = _half(model, sel, design["score_lengths"], design["score_depths"], design["score_per"], seed)
    evaluate_ = _half(model, ev, (design["eval_length"],), design["eval_depths"], design["eval_per"],
                      seed + design["eval_seed_offset"])
    return select, evaluate_


def select_heads(model: Model, select: NeedleSplit, design: dict) -> RetrievalSelection:
    """Retrieval scores on the selection haystacks; K by the registered rule; the top-K heads."""
    scores = retrieval_scores(model, select.haystacks, progress=False)
    mean = torch.nan_to_num(scores.values, nan=0.0).round(decimals=3)
    n_heads = mean.numel()
    n_above = int((mean > design["threshold"]).sum())
    k = max(1, min(n_above, round(0.05 * n_heads)))
    return RetrievalSelection(scores, scores.meta["per_haystack"], n_above, k, top_k_heads(mean, k, decimals=3))


def measure(model: Model, evaluate_: NeedleSplit, selection: RetrievalSelection, design: dict, *,
            seed: int = 0) -> RetrievalMasking:
    """Needle accuracy on the evaluation haystacks with the chosen heads and layer-matched random
    sets masked, at the answer queries (``n_null`` sets) and at every position (the first
    ``n_null_everywhere`` of them)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    null_sets = random_head_sets(n_layers, n_heads, like=selection.chosen, n_draws=design["n_null"], seed=seed)
    hs = evaluate_.haystacks
    at_answer = answer_masking(model, hs, [[], selection.chosen, *null_sets])
    n_all = design["n_null_everywhere"]
    some = everywhere_subset(hs, design)
    everywhere = torch.stack([needle_correct(model, some, heads=s).values
                              for s in [[], selection.chosen, *null_sets[:n_all]]])
    return RetrievalMasking(at_answer, everywhere, null_sets, n_all)


def everywhere_subset(haystacks: list[Haystack], design: dict) -> list[Haystack]:
    """The evaluation haystacks masked at every position too: the first ``eval_everywhere_per`` of
    each depth (a full pass per head set costs far more than the answer queries)."""
    return [h for j, h in enumerate(haystacks) if j % design["eval_per"] < design["eval_everywhere_per"]]


def _share_above(threshold: float):
    def share_above(per: Tensor) -> Tensor:
        """Share of heads whose mean score (answered haystacks) is above the bar; 1 if none is."""
        mean = torch.nan_to_num(torch.nanmean(per, 0), nan=0.0).round(decimals=6)
        share = (mean > threshold).float().mean()
        return torch.where(share > 0, share, torch.ones(()))
    return share_above


def best_score(per: Tensor) -> Tensor:
    """The best head's mean score over answered haystacks."""
    return torch.nan_to_num(torch.nanmean(per, 0), nan=0.0).max()


def accuracy_kept(x: Tensor) -> Tensor:
    """Accuracy with random sets masked over unmasked accuracy; ``x``: ``[haystack, (unmasked, random)]``."""
    b = x[:, 0].mean()
    return torch.where(b > 0, x[:, 1].mean() / b.clamp_min(1e-9), torch.zeros(()))


def _masking(claim, correct: Tensor, n_sel: int, k: int, where: str) -> Finding:
    """Drop per haystack with the chosen heads masked; the null: each random set's mean drop."""
    base, top, rand = correct[0], correct[1], correct[2:]
    return evaluate(claim, base - top, null=(base - rand).mean(1), n_select=n_sel,
                    note=f"K={k} chosen on the selection split; masked {where}")


def scorecard(reg: preregistration.Registration, label: str, selection: RetrievalSelection | None,
              masking: RetrievalMasking | None, *, n_select: int = 0, n_eval: int = 0, note: str = "") -> Scorecard:
    """The registered claims as findings; every claim ``not measured`` (with ``note``) when the
    model answers no selection or no evaluation haystack."""
    c, design = reg.claims, reg.design
    card = Scorecard(label, NOTEBOOK)
    answered = selection is not None and not torch.isnan(selection.per_haystack).all()
    if answered and selection is not None:
        per = selection.per_haystack
        card.add(evaluate(c["exist"], per, statistic=best_score, n_select=0,
                          note="measured on the selection haystacks (nothing selected)"))
        card.add(evaluate(c["sparse"], per, statistic=_share_above(design["threshold"]), n_select=0,
                          note="measured on the selection haystacks (nothing selected)"))
    base_ok = masking is not None and masking.at_answer[0].sum() >= 2
    if base_ok and selection is not None and masking is not None:
        n_sel, k = n_select, selection.k
        card.add(_masking(c["masking"], masking.at_answer, n_sel, k, "at the answer queries"))
        if masking.everywhere[0].sum() >= 2:
            card.add(_masking(c["masking-everywhere"], masking.everywhere, n_sel, k, "at every position"))
        rand = masking.at_answer[2:].mean(0)
        card.add(evaluate(c["random"], torch.stack([masking.at_answer[0], rand], 1), statistic=accuracy_kept, n_select=n_sel,
                          note=f"mean over {len(masking.null_sets)} layer-matched random sets, at the answer queries"))
    for name, claim in c.items():
        if all(f.claim.name != name for f in card.findings):
            card.add(not_measured(claim, n_select=n_select, n_eval=n_eval, note=note or "the model answers too few needles"))
    order = list(c)
    card.findings.sort(key=lambda f: order.index(f.claim.name))
    return card


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """The whole experiment on ``model``: :func:`prepare`, :func:`select_heads`, :func:`measure`,
    :func:`scorecard`. A model without a tokenizer, or one that answers no needle, gets ``not measured``."""
    reg = registration()
    design = reg.design
    label = label or model_label(model, str(model.cfg.model_name))
    if getattr(model, "tokenizer", None) is None:
        return scorecard(reg, label, None, None, note="the model has no tokenizer: needle prompts are text")
    select, evaluate_ = prepare(model, design, seed=seed)
    try:
        selection = select_heads(model, select, design)
    except checks.ContextTooLong as e:  # the model cannot take the haystacks: nothing to measure
        return scorecard(reg, label, None, None, note=str(e))
    n_sel, n_eval = len(select), len(evaluate_)
    if torch.isnan(selection.per_haystack).all():
        return scorecard(reg, label, selection, None, n_select=n_sel, n_eval=n_eval,
                         note=f"the model answers none of the {n_sel} selection haystacks")
    masking = measure(model, evaluate_, selection, design, seed=seed)
    n_base = int(masking.at_answer[0].sum())
    return scorecard(reg, label, selection, masking, n_select=n_sel, n_eval=n_eval,
                     note=f"the model answers {n_base} of {n_eval} evaluation haystacks (2 needed)")
