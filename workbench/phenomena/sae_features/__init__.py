"""SAE features: which features fire at names, and their causal effect on held-out prompts."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.sae_features import analysis

__all__ = ["analysis"]

register(Phenomenon("sae_features", "SAE features", notebook="05_sae_features"))
