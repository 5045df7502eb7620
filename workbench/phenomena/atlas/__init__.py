"""The head atlas: every role's heads in one map, and the overlaps between roles."""

from workbench.phenomena.atlas.analysis import (
    NEEDLES,
    ROLES,
    HeadAtlas,
    NeedleForm,
    PhenomenonAbsent,
    default_k,
    head_atlas,
    layer_matched_overlap_null,
    top_positive,
    top_share,
)

__all__ = [
    "ROLES",
    "NEEDLES",
    "PhenomenonAbsent",
    "NeedleForm",
    "HeadAtlas",
    "head_atlas",
    "default_k",
    "top_positive",
    "layer_matched_overlap_null",
    "top_share",
]
