"""Indirect object identification (Wang et al. 2023): the IOI prompts and the head-level circuit."""

from workbench.phenomena.ioi.circuits import (
    CircuitChoice,
    IOIClasses,
    Sign,
    ablated_metric,
    attention_by_prompt,
    build_circuit,
    find_ioi_classes,
    head_table,
    ioi_splits,
    kv_receivers,
    path_effect,
    percentile_rank,
    position_mask,
    select_heads,
    split_by_attention,
    threshold_margin,
)
from workbench.phenomena.ioi.dataset import (
    TEMPLATES,
    IOIDataset,
    ioi_dataset,
    single_token_words,
)
from workbench.phenomena.ioi.finder import ioi_scores, path_effect_scores
from workbench.phenomena.registry import Phenomenon, Role, register

__all__ = [
    "TEMPLATES",
    "IOIDataset",
    "ioi_dataset",
    "single_token_words",
    "Sign",
    "path_effect",
    "select_heads",
    "kv_receivers",
    "position_mask",
    "split_by_attention",
    "CircuitChoice",
    "build_circuit",
    "head_table",
    "percentile_rank",
    "ioi_splits",
    "ablated_metric",
    "attention_by_prompt",
    "IOIClasses",
    "find_ioi_classes",
    "threshold_margin",
]

register(Phenomenon(
    "ioi", "Indirect object identification", finder=ioi_scores, notebook="01_ioi_circuit",
    roles=(
        Role("name mover", "C0", "path effect to the logits at the end (ABC corruption)"),
        Role("S-inhibition", "C1", "path effect to the name movers' queries at the end"),
    ),
))
