"""The temporal phenomenon's head-finding step for the atlas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.core.components import HeadSet
from workbench.core.metrics import Normalised
from workbench.phenomena.answers import kept
from workbench.phenomena.temporal.analysis import patch_each_head, score
from workbench.phenomena.temporal.dataset import temporal_facts
from workbench.techniques.attribution import attribute_heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.core.results import Result

__all__ = ["temporal_role_scores"]


def temporal_role_scores(model: HookedTransformer, *, k: int, seed: int = 0) -> dict[str, Result]:
    """Exact patching of each of the best ``3 k`` heads by attribution, between prompts that differ
    only in the year, on the facts the model knows."""
    facts = kept(model, temporal_facts(model, kind="temporal", seed=seed), criterion="candidates", role="temporal")
    clean = score(model, facts)["logit_diff"]
    corrupted = score(model, facts, facts.corrupted_tokens)["logit_diff"]
    metric = Normalised(facts.logit_diff(), clean, corrupted)
    attribution = attribute_heads(model, facts.clean_tokens, facts.corrupted_tokens, metric)
    candidates = list(HeadSet.top(attribution, 3 * k))
    exact = patch_each_head(model, facts, candidates, progress=False)
    exact.meta["n_facts"] = len(facts)
    return {"temporal": exact}
