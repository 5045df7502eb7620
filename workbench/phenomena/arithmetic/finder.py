"""The arithmetic phenomenon's head-finding step for the atlas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from workbench.core.metrics import normalise
from workbench.core.results import Result
from workbench.phenomena.answers import kept
from workbench.phenomena.arithmetic.dataset import arithmetic_problems
from workbench.phenomena.ioi.finder import path_effect_scores

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["arithmetic_role_scores"]


def arithmetic_role_scores(model: HookedTransformer, *, k: int, n: int = 60, seed: int = 0) -> dict[str, Result]:
    """Direct effect (path patching head -> logits) of other operands plus another operator, on the
    few-shot addition problems the model answers."""
    total: Tensor | None = None
    for corruption in ("operands", "operator"):
        problems = arithmetic_problems(model, ops=("+",), digits=1, template="few_shot", n=n, seed=seed,
                                       corruption=corruption)
        ds = kept(model, problems, criterion="argmax", role="arithmetic")
        metric = normalise(model, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
        effect = path_effect_scores(model, ds.clean_tokens, ds.corrupted_tokens, metric)
        total = effect.values if total is None else total + effect.values
    assert total is not None  # two corruptions, each adds its effect
    return {"arithmetic": Result(total, ("layer", "head"), "direct effect (operands + operator)")}
