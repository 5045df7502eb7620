"""A workbench for mechanistic circuit analysis on TransformerLens.

>>> import workbench as wb
>>> model = wb.load_model()  # SmolLM2-135M, offline  # doctest: +SKIP
>>> tokens = wb.to_tokens(model, "When Mary and John went to the store, John gave a drink to")  # doctest: +SKIP

One module per technique (see README.md for the layout and the direction of imports):

- ``wb.models``: offline models, the tokenization rule; ``wb.results``: :class:`Result`;
  ``wb.metrics``: logit difference and the normalised metric.
- ``wb.patching`` (exact activation patching), ``wb.attribution`` (attribution patching),
  ``wb.path_patching``, ``wb.ablation`` (ablations, circuit evaluation).
- ``wb.lens`` (logit lens, direct logit attribution), ``wb.heads`` (head scores, head sets),
  ``wb.retrieval`` (needle accuracy and head masking), ``wb.sae`` (SAE features on SAELens),
  ``wb.toy`` (the toy arithmetic model).
- ``wb.datasets``: prompt generators; ``wb.plot``: figures; ``wb.widgets``: JupyterLab explorers.

The most used functions are importable from the top level too. Modules with heavy imports
(``sae``, ``toy``, ``widgets``) load on first use.
"""

from importlib import import_module
from pathlib import Path

from . import (
    ablation,
    attention,
    attribution,
    datasets,
    dla,
    heads,
    lens,
    metrics,
    models,
    patching,
    path_patching,
    plot,
    results,
)
from .ablation import Circuit, ablate, completeness, faithfulness, mask_attention, minimality
from .attention import get_patterns
from .attribution import attribute_heads
from .datasets import (
    arithmetic_problems,
    ioi_dataset,
    keep_correct,
    needle_haystacks,
    temporal_facts,
)
from .dla import direct_logit_attribution
from .heads import HeadSet, induction_scores, overlap_table, retrieval_scores
from .lens import logit_lens
from .metrics import LogitDiff, normalise
from .models import (
    DEFAULT_MODEL,
    list_models,
    load_model,
    single_token_id,
    tiny_model,
    to_str_tokens,
    to_tokens,
)
from .patching import patch_attn_out, patch_heads, patch_mlp_out, patch_resid
from .path_patching import path_patch, path_patch_heads
from .results import Result

#: Modules loaded on first use (``wb.sae``, ``wb.atlas``, ...): heavy imports or rarely needed.
_LAZY = (
    "arithmetic",
    "atlas",
    "checks",
    "circuits",
    "cli",
    "components",
    "course",
    "edges",
    "experiment",
    "fast_attention",
    "resources",
    "retrieval",
    "runtime",
    "sae",
    "sae_findings",
    "temporal",
    "toy",
    "widgets",
)
_EAGER = ("ablation", "attention", "attribution", "datasets", "dla", "heads", "lens", "metrics", "models", "patching", "path_patching", "plot", "results")

__all__ = [
    "DEFAULT_MODEL",
    "Circuit",
    "HeadSet",
    "LogitDiff",
    "Result",
    "ablate",
    "arithmetic_problems",
    "attribute_heads",
    "completeness",
    "direct_logit_attribution",
    "faithfulness",
    "get_patterns",
    "induction_scores",
    "ioi_dataset",
    "keep_correct",
    "list_models",
    "load_model",
    "logit_lens",
    "mask_attention",
    "minimality",
    "needle_haystacks",
    "normalise",
    "patch_attn_out",
    "patch_heads",
    "patch_mlp_out",
    "patch_resid",
    "path_patch",
    "path_patch_heads",
    "overlap_table",
    "retrieval_scores",
    "single_token_id",
    "temporal_facts",
    "tiny_model",
    "to_str_tokens",
    "to_tokens",
]


def __getattr__(name: str):
    if name in _LAZY:
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    present = [m for m in _LAZY if (Path(__file__).parent / m).exists() or (Path(__file__).parent / f"{m}.py").exists()]
    return sorted(set(__all__) | set(_EAGER) | set(present))
