"""Induction heads (Olsson et al. 2022), found on repeated random tokens: attention from a repeated
token to the token after its first copy (:func:`workbench.techniques.heads.induction_scores`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.phenomena.induction import experiment
from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.techniques import heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.core.results import Result

__all__ = ["experiment", "induction_role_scores"]


def induction_role_scores(model: HookedTransformer, *, k: int, seed: int = 0) -> dict[str, Result]:
    """The induction score of every head on repeated random tokens (``k`` is the atlas's; unused)."""
    seq_len = min(50, (model.cfg.n_ctx - 1) // 2)  # two copies and a BOS must fit the context
    return {"induction": heads.induction_scores(model, seq_len=seq_len, seed=seed)}


register(Phenomenon(
    "induction", "Induction heads", finder=induction_role_scores,
    roles=(Role("induction", "C2", "attends to the token after an earlier copy of the current token"),),
    run=experiment.run, claims="workbench.phenomena.induction",
))
