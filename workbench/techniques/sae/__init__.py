"""SAE features on SAELens: train, load, read activations, attribute, ablate and steer.

SAELens is the engine: every SAE here is a ``sae_lens.SAE`` (saved with ``save_inference_model``,
loaded with ``SAE.load_from_disk``), and encoding / decoding always goes through its ``encode`` and
``decode``. This module adds what a circuit analysis needs around it: a corpus, a training loop
fed from a ``HookedTransformer``, feature tables, splicing with and without the error term,
attribution patching on latents with its exact reference, and steering.

Conventions
-----------
* An SAE reads one hook point, named in ``sae.cfg.metadata.hook_name``. Residual-stream hooks
  (``blocks.L.hook_resid_pre``), ``hook_attn_out``, ``hook_mlp_out`` and ``attn.hook_z`` are
  supported; ``hook_z`` activations ``[batch, pos, head, d_head]`` are flattened to
  ``head * d_head`` (SAELens's ``reshape_activations="hook_z"``).
* Position 0 is the BOS token (``workbench.models.to_tokens`` puts exactly one there). Its
  residual stream is an attention-sink outlier, so by default SAEs are trained without it and
  every intervention leaves position 0 untouched (``sae.cfg.metadata.skip_bos``). The same holds
  for the rare other "massive activation" tokens (SmolLM2 turns an occasional token right after
  BOS into a second sink, norm ~100x the median): tokens whose activation norm exceeds
  ``sae.cfg.metadata.max_norm`` (10x the median training norm) are neither trained on, nor
  counted in the metrics, nor spliced or edited.
* Interventions keep the SAE's **error term**: editing latents changes the activation by
  ``decode(new) - decode(old)``, and the rest (what the SAE fails to reconstruct) stays. Hooks are
  attached only inside ``with model.hooks(...)`` (the context managers :func:`spliced` and
  :func:`ablate_features` wrap it), so none survives a call, even one that raises.

Shipped SAE
-----------
``load_sae()`` loads ``data/sae/smollm2-135m-blocks.15.hook_resid_pre``: a TopK SAE (k=16) on
SmolLM2-135M's residual stream before block 15 (the middle of 30), trained by
``scripts/train_sae.py`` on the model's own generations (``data/corpus``); its held-out metrics
are in ``metrics.json`` next to it.

Example (tiny model, a few seconds)
-----------------------------------
>>> import torch
>>> from workbench import models, sae as wsae
>>> model = models.tiny_model()
>>> corpus = torch.randint(1, 100, (32, 16), generator=torch.Generator().manual_seed(0))
>>> sae = wsae.train_sae(model, "blocks.1.hook_resid_pre", corpus, d_sae=128, k=8,
...                      n_tokens=4096, batch_size=256, progress=False)
>>> sae.cfg.d_in, sae.cfg.d_sae
(64, 128)
>>> wsae.feature_activations(model, sae, corpus[:1], top_k=2).columns.tolist()
['prompt', 'pos', 'token', 'rank', 'feature', 'activation']
"""

from __future__ import annotations

from workbench.techniques.sae.core import (
    CORPUS_FILE,
    SHIPPED_SAES,
    check_sae,
    collect_activations,
    corpus_tokens,
    encode,
    feature_direction,
    load_corpus,
    load_sae,
    save_sae,
)
from workbench.techniques.sae.features import (
    LogitEffects,
    contexts_html,
    feature_activations,
    feature_logit_effects,
    top_contexts,
    word_at,
)
from workbench.techniques.sae.interventions import (
    ablate_features,
    attribute_features,
    patch_features,
    steer,
)
from workbench.techniques.sae.splicing import Splice, evaluate_sae, splice, spliced, spliced_logits
from workbench.techniques.sae.training import train_sae

__all__ = [
    "SHIPPED_SAES",
    "CORPUS_FILE",
    "load_corpus",
    "corpus_tokens",
    "collect_activations",
    "train_sae",
    "load_sae",
    "save_sae",
    "check_sae",
    "encode",
    "feature_direction",
    "feature_activations",
    "top_contexts",
    "word_at",
    "contexts_html",
    "LogitEffects",
    "feature_logit_effects",
    "Splice",
    "spliced",
    "spliced_logits",
    "splice",
    "evaluate_sae",
    "ablate_features",
    "attribute_features",
    "patch_features",
    "steer",
]
