"""The head atlas: every registered phenomenon's head roles on one map, and the overlaps between roles."""

from workbench.phenomena.atlas.analysis import (
    NEEDLES,
    HeadAtlas,
    default_k,
    finders,
    head_atlas,
    layer_matched_overlap_null,
    top_share,
)
from workbench.phenomena.registry import Phenomenon, register

__all__ = [
    "NEEDLES",
    "HeadAtlas",
    "default_k",
    "finders",
    "head_atlas",
    "layer_matched_overlap_null",
    "top_share",
]

register(Phenomenon("atlas", "The head atlas", notebook="06_head_atlas"))
