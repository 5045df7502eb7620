"""A workbench for mechanistic circuit analysis on TransformerLens.

>>> import workbench as wb
>>> model = wb.load_model()  # SmolLM2-135M, offline  # doctest: +SKIP
>>> tokens = wb.to_tokens(model, "When Mary and John went to the store, John gave a drink to")  # doctest: +SKIP

The package is built in layers, each a folder that imports only the layers below it (README.md,
"Architecture"):

- ``workbench.core``: validation, :class:`Result`, metrics, component sets, the read-out;
- ``workbench.models``: sources, the cache, devices and dtypes, tokenization, fast attention;
- ``workbench.techniques``: one module per technique (patching, attribution, path patching,
  ablation, lens, DLA, attention, head scores, edges, SAE features);
- ``workbench.findings``: claims, verdicts, statistics, scorecards (no model code);
- ``workbench.phenomena``: one folder per phenomenon (dataset and analysis);
- ``workbench.viz``: figures (imports only core); ``workbench.course``, ``workbench.cli``,
  ``workbench.widgets`` at the top.

Every technique and phenomenon module is reachable as ``wb.<name>`` (``wb.patching``,
``wb.lens``, ``wb.retrieval``, ...), and the most used functions from the top level. Modules with
heavy imports (``sae``, ``toy``, ``widgets``, ...) load on first use.
"""

from importlib import import_module

from workbench import viz  # registers the figures that results draw
from workbench.core import metrics, results
from workbench.core.metrics import LogitDiff, normalise
from workbench.core.results import Result
from workbench.models import (
    DEFAULT_MODEL,
    list_models,
    load_model,
    single_token_id,
    tiny_model,
    to_str_tokens,
    to_tokens,
)
from workbench.phenomena import (
    arithmetic_problems,
    ioi_dataset,
    keep_correct,
    needle_haystacks,
    temporal_facts,
)
from workbench.replicate import replicate
from workbench.techniques import (
    ablation,
    attention,
    attribution,
    dla,
    heads,
    lens,
    patching,
    path_patching,
)
from workbench.techniques.ablation import (
    Circuit,
    ablate,
    completeness,
    faithfulness,
    mask_attention,
    minimality,
)
from workbench.techniques.attention import get_patterns
from workbench.techniques.attribution import attribute_heads
from workbench.techniques.dla import direct_logit_attribution
from workbench.techniques.heads import HeadSet, induction_scores, overlap_table, retrieval_scores
from workbench.techniques.lens import logit_lens
from workbench.techniques.patching import patch_attn_out, patch_heads, patch_mlp_out, patch_resid
from workbench.techniques.path_patching import path_patch, path_patch_heads
from workbench.viz import plot

#: ``wb.<name>`` -> the module it names, loaded on first use.
MODULES = {
    "ablation": "workbench.techniques.ablation",
    "arithmetic": "workbench.phenomena.arithmetic.analysis",
    "atlas": "workbench.phenomena.atlas.analysis",
    "attention": "workbench.techniques.attention",
    "attribution": "workbench.techniques.attribution",
    "checks": "workbench.core.checks",
    "circuits": "workbench.phenomena.ioi.circuits",
    "cli": "workbench.cli",
    "components": "workbench.core.components",
    "core": "workbench.core",
    "course": "workbench.course",
    "datasets": "workbench.phenomena",
    "dla": "workbench.techniques.dla",
    "edges": "workbench.techniques.edges",
    "fast_attention": "workbench.models.fast_attention",
    "findings": "workbench.findings",
    "heads": "workbench.techniques.heads",
    "interactive": "workbench.viz.interactive",
    "lens": "workbench.techniques.lens",
    "metrics": "workbench.core.metrics",
    "models": "workbench.models",
    "patching": "workbench.techniques.patching",
    "path_patching": "workbench.techniques.path_patching",
    "replication": "workbench.replicate",
    "phenomena": "workbench.phenomena",
    "plot": "workbench.viz.plot",
    "resources": "workbench.core.resources",
    "results": "workbench.core.results",
    "retrieval": "workbench.phenomena.retrieval.analysis",
    "runtime": "workbench.core.runtime",
    "sae": "workbench.techniques.sae",
    "sae_features": "workbench.phenomena.sae_features.analysis",
    "techniques": "workbench.techniques",
    "tuned_lens": "workbench.techniques.tuned_lens",
    "temporal": "workbench.phenomena.temporal.analysis",
    "toy": "workbench.models.toy",
    "viz": "workbench.viz",
    "widgets": "workbench.widgets",
}

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
    "replicate",
    "overlap_table",
    "retrieval_scores",
    "single_token_id",
    "temporal_facts",
    "tiny_model",
    "to_str_tokens",
    "to_tokens",
]


def __getattr__(name: str):
    if name in MODULES:
        module = import_module(MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(MODULES))
