"""The head atlas: every registered phenomenon's head roles on one map, the overlaps between roles,
and the cross-phenomenon claims (:mod:`~workbench.phenomena.atlas.experiment`)."""

from workbench.phenomena.atlas import analysis, experiment
from workbench.phenomena.registry import Phenomenon, register

__all__ = ["analysis", "experiment"]

register(Phenomenon("atlas", "The head atlas", notebook="06_head_atlas", run=experiment.run,
                    claims="workbench.phenomena.atlas"))
