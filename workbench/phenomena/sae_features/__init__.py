"""SAE features: which features fire at names, and their causal effect on held-out prompts."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.sae_features.analysis import (
    active_features,
    feature_ablations,
)

__all__ = [
    "active_features",
    "feature_ablations",
]

register(Phenomenon("sae_features", "SAE features", notebook="05_sae_features"))
