"""Models: the offline zoo, local checkpoints and GGUF files of any architecture TransformerLens
maps, hub names, devices and dtypes, the converted-weight cache and the tokenization rule.

===================  =================================================================
module               what it does
===================  =================================================================
``zoo``              the offline models, :func:`tiny_model`, Hugging Face reference models
``sources``          checkpoint folders, GGUF files, the hub; architecture -> TransformerLens
``cache``            the converted-weight cache, keyed by the checkpoint's content
``load``             :func:`load_model` (devices, dtypes, several GPUs), :func:`list_models`
``tokens``           the tokenization rule: :func:`to_tokens` (one BOS first)
===================  =================================================================

Weight processing
-----------------
None for local sources. They load like ``HookedTransformer.from_pretrained_no_processing``: no
folded norms, no centred weights, no centred unembedding, so the logits, and every hook value,
equal the Hugging Face model's. Many models (SmolLM2, Gemma) use RMSNorm, for which centring
the writing weights is not an identity; Gemma-3 normalises each block's output again after
attention and after the MLP, which folding does not cover; a centred unembedding shifts every
logit. Helpers that need the final norm (logit lens, direct logit attribution) read
``model.ln_final`` explicitly, so they are right on processed models (``from_pretrained``,
which hub names go through) as well.

The runtime helpers (``resid_to_logits``, ``logits_at``, ``prefill``, ...) live in
:mod:`workbench.core.runtime` and are re-exported here.
"""

from __future__ import annotations

import importlib  # noqa: F401  (tests patch models.importlib.util.find_spec)

from workbench.core.runtime import (
    PREFILL_CHUNK,
    cache_prefix,
    logits_at,
    prefill,
    resid_to_logits,
    run_cached,
)
from workbench.models.cache import cache_dir, cached_entries
from workbench.models.devices import DTYPES, resolve_device, resolve_dtype
from workbench.models.errors import (
    CacheCorruptedError,
    CheckpointError,
    ModelNotAvailableError,
    UnsupportedArchitectureError,
)
from workbench.models.load import (
    build_model,
    list_models,
    load_model,
    model_label,
    prepare_cache,
    random_init_model,
)
from workbench.models.sources import supported_architectures
from workbench.models.tokens import (
    bos_id,
    bos_token_id,
    position_labels,
    single_token_id,
    to_str_tokens,
    to_tokens,
)
from workbench.models.zoo import (
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    OfflineModel,
    load_bridge,
    load_hf_model,
    tiny_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "ModelNotAvailableError",
    "CacheCorruptedError",
    "CheckpointError",
    "UnsupportedArchitectureError",
    "OFFLINE_MODELS",
    "OfflineModel",
    "cache_dir",
    "cached_entries",
    "list_models",
    "load_model",
    "prepare_cache",
    "build_model",
    "resolve_device",
    "DTYPES",
    "model_label",
    "random_init_model",
    "resolve_dtype",
    "supported_architectures",
    "load_hf_model",
    "load_bridge",
    "tiny_model",
    "to_tokens",
    "to_str_tokens",
    "position_labels",
    "single_token_id",
    "bos_id",
    "bos_token_id",
    "resid_to_logits",
    "logits_at",
    "PREFILL_CHUNK",
    "prefill",
    "run_cached",
    "cache_prefix",
]
