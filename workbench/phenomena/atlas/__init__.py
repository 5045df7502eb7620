"""The head atlas: every registered phenomenon's head roles on one map, and the overlaps between roles."""

from workbench.phenomena.atlas import analysis
from workbench.phenomena.registry import Phenomenon, register

__all__ = ["analysis"]

register(Phenomenon("atlas", "The head atlas", notebook="06_head_atlas"))
