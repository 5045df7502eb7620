"""Retrieval heads (Wu et al. 2024): needle-in-a-haystack prompts, needle accuracy and head masking."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.retrieval.analysis import (
    MaskingResult,
    answer_masking,
    haystack_frame,
    k_sweep,
    masking_experiment,
    needle_accuracy,
    needle_correct,
    score_summary,
)
from workbench.phenomena.retrieval.dataset import (
    FILLER_PATH,
    Haystack,
    Needle,
    load_filler,
    needle_haystacks,
)
from workbench.phenomena.retrieval.finder import NEEDLES, NeedleForm, retrieval_role_scores

__all__ = [
    "FILLER_PATH",
    "Needle",
    "Haystack",
    "load_filler",
    "needle_haystacks",
    "needle_correct",
    "needle_accuracy",
    "masking_experiment",
    "MaskingResult",
    "k_sweep",
    "haystack_frame",
    "score_summary",
    "answer_masking",
]

register(Phenomenon(
    "retrieval", "Retrieval heads", finder=retrieval_role_scores, notebook="02_retrieval_heads",
    roles=(Role("retrieval", "C3", "copies the needle from a long haystack"),), options=("needle",),
))
