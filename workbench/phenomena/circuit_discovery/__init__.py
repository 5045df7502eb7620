"""Edge-level circuit discovery (EAP, EAP-IG; Hanna et al. 2024) on IOI, scored with MIB's
faithfulness curves. The techniques live in :mod:`workbench.techniques.edges`."""

from workbench.phenomena.registry import Phenomenon, register

register(Phenomenon("circuit_discovery", "Edge-level circuit discovery", notebook="07_circuit_discovery"))
