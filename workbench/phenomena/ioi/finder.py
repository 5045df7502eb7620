"""The IOI phenomenon's head-finding step for the atlas: name movers and S-inhibition heads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.core.components import top_positive
from workbench.core.metrics import normalise
from workbench.core.results import Result
from workbench.phenomena.ioi.circuits import path_effect
from workbench.phenomena.ioi.dataset import ioi_dataset
from workbench.techniques.path_patching import path_patch_heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["ioi_scores", "path_effect_scores"]


def path_effect_scores(model: HookedTransformer, clean, corrupted, metric, **kw) -> Result:
    """Each sender head's path effect on the logits (:func:`workbench.phenomena.ioi.circuits.path_effect`)."""
    return path_effect(path_patch_heads(model, clean, corrupted, metric, progress=False, **kw))


def ioi_scores(model: HookedTransformer, *, k: int, n_prompts: int = 16, seed: int = 0) -> dict[str, Result]:
    """Name movers (path effect to the logits at END) and S-inhibition heads (path effect to the
    queries of the top-``k`` name movers at END), with the ABC corruption."""
    ds = ioi_dataset(model, n=n_prompts, seed=seed, templates=range(4))
    metric = normalise(model, ds.clean_tokens, ds.abc_tokens, ds.logit_diff())
    movers = path_effect_scores(model, ds.clean_tokens, ds.abc_tokens, metric, receiver_pos=ds.pos["END"])
    receivers = list(top_positive(movers, k, "name mover"))
    inhibition = path_effect_scores(
        model, ds.clean_tokens, ds.abc_tokens, metric,
        receivers=receivers, receiver_input="q", receiver_pos=ds.pos["END"],
    )
    return {"name mover": movers, "S-inhibition": inhibition}
