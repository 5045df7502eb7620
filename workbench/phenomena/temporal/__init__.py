"""Temporal heads (Park et al. 2025): time-specific facts and the heads that read the year."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.temporal import analysis, dataset, experiment, finder
from workbench.phenomena.temporal.finder import temporal_role_scores

__all__ = ["analysis", "dataset", "experiment", "finder"]

register(Phenomenon(
    "temporal", "Temporal heads", finder=temporal_role_scores, notebook="03_temporal_heads",
    run=experiment.run, claims="workbench.phenomena.temporal",
    roles=(Role("temporal", "C4", "carries the year of a time-specific fact"),),
))
