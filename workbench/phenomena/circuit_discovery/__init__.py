"""Edge-level circuit discovery (EAP, EAP-IG; Hanna et al. 2024) on IOI, scored with MIB's
faithfulness curves. The techniques live in :mod:`workbench.techniques.edges`; the experiment's
steps in :mod:`.experiment`, its fair random circuits in :mod:`.nulls`, its pre-registered claims
in ``claims.toml`` (+ ``claims.lock.json``)."""

from workbench.phenomena.circuit_discovery.experiment import run
from workbench.phenomena.registry import Phenomenon, register

__all__ = ["run"]

register(Phenomenon("circuit_discovery", "Edge-level circuit discovery", notebook="07_circuit_discovery",
                    run=run, claims="workbench.phenomena.circuit_discovery"))
