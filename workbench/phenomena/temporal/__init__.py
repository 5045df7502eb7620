"""Temporal heads (Park et al. 2025): time-specific facts and the heads that read the year."""

from workbench.phenomena.registry import Phenomenon, Role, register
from workbench.phenomena.temporal.analysis import (
    ablated_diffs,
    ablation_table,
    edit_heads,
    edit_table,
    final_logits,
    group_ids,
    patch_each_head,
    random_head_sets,
    score,
    time_attention,
)
from workbench.phenomena.temporal.dataset import (
    FACTS_PATH,
    Fact,
    TemporalFacts,
    facts_frame,
    load_facts,
    temporal_facts,
)
from workbench.phenomena.temporal.finder import temporal_role_scores

__all__ = [
    "FACTS_PATH",
    "Fact",
    "TemporalFacts",
    "load_facts",
    "facts_frame",
    "temporal_facts",
    "final_logits",
    "score",
    "time_attention",
    "group_ids",
    "patch_each_head",
    "edit_heads",
    "random_head_sets",
    "ablation_table",
    "edit_table",
    "ablated_diffs",
]

register(Phenomenon(
    "temporal", "Temporal heads", finder=temporal_role_scores, notebook="03_temporal_heads",
    roles=(Role("temporal", "C4", "carries the year of a time-specific fact"),),
))
