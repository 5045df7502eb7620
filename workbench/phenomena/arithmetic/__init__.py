"""Arithmetic heads: worked-example problems, the heads that carry the operands, and their ablation."""

from workbench.phenomena.arithmetic import analysis, dataset, experiment, finder
from workbench.phenomena.arithmetic.finder import arithmetic_role_scores
from workbench.phenomena.registry import Phenomenon, Role, register

__all__ = ["analysis", "dataset", "experiment", "finder"]

register(Phenomenon(
    "arithmetic", "Arithmetic heads", finder=arithmetic_role_scores, notebook="04_arithmetic_heads",
    run=experiment.run, claims="workbench.phenomena.arithmetic",
    roles=(Role("arithmetic", "C5", "direct effect of the operands and the operator"),),
))
