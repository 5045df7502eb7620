"""Indirect object identification (Wang et al. 2023): the IOI prompts and the head-level circuit."""

from workbench.phenomena.ioi import circuits, dataset, experiment, finder
from workbench.phenomena.ioi.experiment import run
from workbench.phenomena.ioi.finder import ioi_scores
from workbench.phenomena.registry import Phenomenon, Role, register

__all__ = ["circuits", "dataset", "experiment", "finder", "run"]

register(Phenomenon(
    "ioi", "Indirect object identification", finder=ioi_scores, notebook="01_ioi_circuit",
    roles=(
        Role("name mover", "C0", "path effect to the logits at the end (ABC corruption)"),
        Role("S-inhibition", "C1", "path effect to the name movers' queries at the end"),
    ),
    run=run, claims="workbench.phenomena.ioi",
))
