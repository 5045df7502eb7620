"""Retrieval heads (Wu et al. 2024): needle-in-a-haystack prompts, needle accuracy and head masking;
:mod:`~workbench.phenomena.retrieval.experiment` is the pre-registered experiment of notebook 02."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.retrieval import analysis, copying, dataset, experiment, finder, scores
from workbench.phenomena.retrieval.finder import retrieval_role_scores

__all__ = ["analysis", "copying", "dataset", "experiment", "finder", "scores"]

register(Phenomenon(
    "retrieval", "Retrieval heads", finder=retrieval_role_scores, notebook="02_retrieval_heads",
    roles=(Role("retrieval", "C3", "copies the needle from a long haystack"),), options=("needle",),
    run=experiment.run, claims="workbench.phenomena.retrieval",
))
