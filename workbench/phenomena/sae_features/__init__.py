"""SAE features: which features fire at names, and their causal effect on held-out prompts."""

from workbench.phenomena.sae_features.analysis import (
    active_features,
    feature_ablations,
)

__all__ = [
    "active_features",
    "feature_ablations",
]
