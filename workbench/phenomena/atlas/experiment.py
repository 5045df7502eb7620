"""The head atlas's cross-phenomenon claims as a pre-registered experiment (notebook ``06_head_atlas``).

Do induction heads retrieve, and are retrieval heads induction heads? Both questions are empty if
retrieval can be done by an induction step. With the code written in the needle as the answer
writes it (``" 4821"``: ``' ', '4', '8', '2', '1'`` for SmolLM2), every digit after the first
follows, in the needle, the same token it follows in the answer, so a head that attends to the
token after an earlier copy of the current token lands on the answer digit whatever the
question's wording. Here the needle writes the code with dashes (``4-8-2-1``) and the answer
without (`` 4821``), and a head is scored only at the steps no induction step can do
(:func:`~workbench.phenomena.retrieval.copying.copy_step_scores`; scoring the first step alone would
measure copying a bare space).

1. :func:`prepare`: held-out haystacks with that needle; induction sequences from the induction
   phenomenon's selection seeds (a different input: random tokens, not text).
2. :func:`select_heads`: the K induction heads, chosen on those sequences only
   (:func:`workbench.phenomena.induction.experiment.select_heads`).
3. :func:`measure`: copy-step retrieval scores per held-out haystack the model answers, and
   layer-matched nulls for both claims.
4. :func:`scorecard`: the two registered claims; ``not measured`` when the model answers fewer
   than two held-out haystacks (there is then no retrieval to attribute to heads).

>>> from workbench.models import tiny_model
>>> sorted({f.verdict for f in run(tiny_model()).findings})
['not measured']
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.core import checks
from workbench.core.components import head_set_mean, random_head_sets, top_k_heads
from workbench.core.types import Model
from workbench.findings import Scorecard, evaluate, not_measured, preregistration
from workbench.models import model_label
from workbench.phenomena.induction import experiment as induction
from workbench.phenomena.retrieval.copying import copy_step_scores
from workbench.phenomena.retrieval.dataset import Haystack, Needle, needle_haystacks

__all__ = ["DASHED", "CrossMeasurement", "measure", "prepare", "run", "scorecard", "select_heads"]

NOTEBOOK = "06_head_atlas"
PACKAGE = "workbench.phenomena.atlas"

#: The held-out needle: the code with dashes in the needle, without them in the answer.
DASHED = Needle(" The code to open the safe is {code}.", "\n\nTo open the safe, type the number", separator="-")


@dataclass
class CrossMeasurement:
    """Step 3's record: per answered held-out haystack, each head's copy-step score
    (``per [haystack, layer, head]``), the induction heads, the nulls, and the counts."""

    per: Tensor
    induction: list[tuple[int, int]]
    null_score: Tensor
    null_share: Tensor
    n_answered: int
    n_total: int
    k: int

    def share(self, per: Tensor) -> Tensor:
        """The share of the top-K heads of ``per``'s mean (positive scores only) among the induction heads."""
        mean = torch.as_tensor(per).float().mean(0).nan_to_num(nan=-math.inf)
        chosen = [h for h in top_k_heads(mean, self.k, decimals=3) if mean[h] > 0]
        return torch.tensor(sum(h in set(self.induction) for h in chosen) / self.k)


def registration() -> preregistration.Registration:
    return preregistration.load(PACKAGE)


def prepare(model: Model, design: dict, *, seed: int = 0) -> tuple[induction.RepeatedSequences, list[Haystack]]:
    """Induction selection sequences (random tokens) and held-out dashed-needle haystacks (text)."""
    select, _ = induction.prepare(model, induction.registration().design, seed=seed)
    if getattr(model, "tokenizer", None) is None:
        return select, []
    hs = needle_haystacks(model, context_lengths=(design["eval_length"],), depths=design["eval_depths"],
                          n_per=design["eval_per_depth"], seed=seed + design["eval_seed_offset"], needle=DASHED)
    return select, hs


def select_heads(model: Model, sequences: induction.RepeatedSequences) -> induction.InductionSelection:
    """The K induction heads, chosen on the induction selection sequences only."""
    return induction.select_heads(model, sequences)


def measure(model: Model, haystacks: list[Haystack], selection: induction.InductionSelection, design: dict, *,
            seed: int = 0) -> CrossMeasurement:
    """Copy-step scores on the held-out haystacks the model answers, and both layer-matched nulls."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a model that answers nothing warns; the scorecard says so
        scores = copy_step_scores(model, haystacks)
    per = scores.meta["per_haystack"]
    per = per[~torch.isnan(per[:, 0, 0])]
    n_null, k, chosen = int(design["n_null"]), selection.k, selection.chosen
    like_induction = random_head_sets(n_layers, n_heads, like=chosen, n_draws=n_null, seed=seed, nearest=True)
    m = CrossMeasurement(per, chosen, torch.zeros(0), torch.zeros(0), len(per), len(haystacks), k)
    if len(per) < 2:
        return m
    m.null_score = torch.stack([head_set_mean(per, s).mean() for s in like_induction])
    mean = per.mean(0)
    retrieval_set = [h for h in top_k_heads(mean, k, decimals=3) if mean[h] > 0]
    like_retrieval = random_head_sets(n_layers, n_heads, like=retrieval_set or chosen, n_draws=n_null, seed=seed,
                                      nearest=True)
    m.null_share = torch.tensor([len(set(s) & set(chosen)) / k for s in like_retrieval])
    return m


def scorecard(reg: preregistration.Registration, label: str, m: CrossMeasurement, *, n_select: int,
              note: str = "") -> Scorecard:
    """Both registered claims; ``not measured`` with ``note`` when fewer than two haystacks are answered."""
    c = reg.claims
    card = Scorecard(label, NOTEBOOK)
    if m.n_answered < 2:
        why = note or (f"the model answers {m.n_answered}/{m.n_total} held-out haystacks (2 needed) with the code "
                       "written as the needle does not hold it: no retrieval to attribute to heads")
        for claim in c.values():
            card.add(not_measured(claim, n_select=n_select, n_eval=m.n_answered, note=why))
        return card
    card.add(evaluate(c["induction-heads-retrieve"], head_set_mean(m.per, m.induction), null=m.null_score,
                      n_select=n_select, note="scored at the copy steps only"))
    card.add(evaluate(c["retrieval-heads-are-induction"], m.per, statistic=m.share, null=m.null_share,
                      n_select=n_select, note="retrieval heads: top K by copy-step score on the held-out haystacks"))
    return card


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """:func:`prepare`, :func:`select_heads`, :func:`measure`, :func:`scorecard` on ``model``."""
    reg = registration()
    label = label or model_label(model, str(model.cfg.model_name))
    sequences, haystacks = prepare(model, reg.design, seed=seed)
    selection = select_heads(model, sequences)
    if not haystacks:
        empty = CrossMeasurement(torch.zeros(0), selection.chosen, torch.zeros(0), torch.zeros(0), 0, 0, selection.k)
        return scorecard(reg, label, empty, n_select=len(sequences),
                         note="the model has no tokenizer: needle prompts are text")
    try:
        m = measure(model, haystacks, selection, reg.design, seed=seed)
    except checks.ContextTooLong as e:  # the model cannot take the haystacks: nothing to measure
        empty = CrossMeasurement(torch.zeros(0), selection.chosen, torch.zeros(0), torch.zeros(0), 0, 0, selection.k)
        return scorecard(reg, label, empty, n_select=len(sequences), note=str(e))
    return scorecard(reg, label, m, n_select=len(sequences))
