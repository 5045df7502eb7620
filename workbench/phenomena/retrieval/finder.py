"""The retrieval phenomenon's head-finding step for the atlas, with the needle form to use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from workbench.phenomena.retrieval.dataset import Needle, needle_haystacks
from workbench.techniques import heads

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from workbench.core.results import Result

__all__ = ["NEEDLES", "NeedleForm", "retrieval_role_scores"]

NeedleForm = Literal["verbatim", "paraphrased"]
#: The needle forms: "verbatim" repeats the needle's prefix in the question (an induction task by
#: construction); "paraphrased" asks in other words (the token before the answer differs).
NEEDLES: dict[str, Needle] = {
    "verbatim": Needle(),
    "paraphrased": Needle(sentence=" The code to open the safe is {code}.",
                          question="\n\nTo open the safe, type the number"),
}


def retrieval_role_scores(
    model: HookedTransformer, *, k: int, lengths: Sequence[int] = (300, 800),
    depths: Sequence[float] = (0.1, 0.5, 0.9), seed: int = 0, needle: NeedleForm = "paraphrased",
) -> dict[str, Result]:
    """The retrieval score of every head on needle-in-a-haystack prompts of the form ``needle``."""
    if needle not in NEEDLES:
        raise ValueError(f"needle must be one of {list(NEEDLES)}, got {needle!r}.")
    haystacks = needle_haystacks(model, context_lengths=lengths, depths=depths, n_per=1, seed=seed,
                                 needle=NEEDLES[needle])
    return {"retrieval": heads.retrieval_scores(model, haystacks, progress=False)}
