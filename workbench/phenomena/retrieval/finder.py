"""The retrieval phenomenon's head-finding step for the atlas, with the needle form to use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from workbench.phenomena.retrieval.copying import copy_step_scores
from workbench.phenomena.retrieval.dataset import Needle, needle_haystacks
from workbench.techniques import heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.core.results import Result

__all__ = ["NEEDLES", "NeedleForm", "retrieval_role_scores"]

NeedleForm = Literal["verbatim", "paraphrased", "dashed"]
#: The needle forms: "verbatim" repeats the needle's prefix in the question (an induction task by
#: construction); "paraphrased" asks in other words, so the token before the answer differs from
#: the one before the code in the needle, but only for the first answer step: each later digit
#: follows the same digit in the needle as in the answer, so an induction step still does it;
#: "dashed" writes the code as 4-8-2-1 in the needle and 4821 in the answer, and is scored only at
#: the steps no induction step can do (:func:`~workbench.phenomena.retrieval.copying.copy_step_scores`).
NEEDLES: dict[str, Needle] = {
    "verbatim": Needle(),
    "paraphrased": Needle(sentence=" The code to open the safe is {code}.",
                          question="\n\nTo open the safe, type the number"),
    "dashed": Needle(sentence=" The code to open the safe is {code}.",
                     question="\n\nTo open the safe, type the number", separator="-"),
}


def retrieval_role_scores(
    model: HookedTransformer, *, k: int, lengths: Sequence[int] = (300, 800),
    depths: Sequence[float] = (0.1, 0.5, 0.9), seed: int = 0, needle: NeedleForm = "paraphrased",
) -> dict[str, Result]:
    """The retrieval score of every head on needle-in-a-haystack prompts of the form ``needle``
    (copy steps only for ``"dashed"``)."""
    if needle not in NEEDLES:
        raise ValueError(f"needle must be one of {list(NEEDLES)}, got {needle!r}.")
    haystacks = needle_haystacks(model, context_lengths=lengths, depths=depths, n_per=1, seed=seed,
                                 needle=NEEDLES[needle])
    if needle == "dashed":
        return {"retrieval": copy_step_scores(model, haystacks)}
    return {"retrieval": heads.retrieval_scores(model, haystacks, progress=False)}
