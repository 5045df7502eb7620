"""SAE features: which features fire at names, and their causal effect on held-out prompts."""

from workbench.phenomena.registry import Phenomenon, register
from workbench.phenomena.sae_features import analysis, experiment, names
from workbench.phenomena.sae_features.experiment import run

__all__ = ["analysis", "experiment", "names", "run"]

register(Phenomenon("sae_features", "SAE features", notebook="05_sae_features", run=run,
                    claims="workbench.phenomena.sae_features"))
