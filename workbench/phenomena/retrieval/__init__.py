"""Retrieval heads (Wu et al. 2024): needle-in-a-haystack prompts, needle accuracy and head masking."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.retrieval import analysis, dataset, finder, scores
from workbench.phenomena.retrieval.finder import retrieval_role_scores

__all__ = ["analysis", "dataset", "finder", "scores"]

register(Phenomenon(
    "retrieval", "Retrieval heads", finder=retrieval_role_scores, notebook="02_retrieval_heads",
    roles=(Role("retrieval", "C3", "copies the needle from a long haystack"),), options=("needle",),
))
