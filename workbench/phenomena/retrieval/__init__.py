"""Retrieval heads (Wu et al. 2024): needle-in-a-haystack prompts, needle accuracy and head masking."""

from workbench.phenomena.retrieval.analysis import (
    MaskingResult,
    answer_masking,
    k_sweep,
    masking_experiment,
    needle_accuracy,
    needle_correct,
)
from workbench.phenomena.retrieval.dataset import (
    FILLER_PATH,
    Haystack,
    Needle,
    load_filler,
    needle_haystacks,
)
from workbench.phenomena.retrieval.scores import haystack_frame, score_summary

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
