"""Held-out causal tests of SAE features: many single-feature ablations in one batched pass.

A feature chosen on selection prompts (e.g. the name feature whose ablation moves the IOI logit
difference most) is tested on other prompts against random features: :func:`feature_ablations`
gives the per-prompt metric with each feature ablated, ``[feature, prompt]``, the same values as
running :func:`workbench.techniques.sae.ablate_features` once per feature, at a fraction of the cost: the
model runs up to the SAE's hook once, and only the layers after it run once per feature.

Ablating feature ``f`` (error term kept) subtracts its contribution ``a_f * d_f`` from the
activation, where ``a_f`` is its activation and ``d_f`` = :func:`workbench.techniques.sae.feature_direction`,
at every position but BOS (position 0, which every workbench prompt starts with).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.types import Model
from workbench.techniques.sae import check_sae, encode, feature_direction, word_at
from workbench.techniques.sae.core import (
    check_features,
    corpus_tokens,
    encode_flat,
    flat_acts,
    hook_acts,
    masked,
    str_tokens,
)

__all__ = ["active_features", "feature_ablations", "name_position_features", "top_words"]


def _layer(hook_name: str) -> int:
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", hook_name)
    if m is None:
        raise ValueError(f"feature_ablations needs an SAE on a blocks.<L>.hook_resid_pre hook, got {hook_name!r}.")
    return int(m.group(1))


@torch.no_grad()
def feature_ablations(
    model: Model, sae, tokens: Int[Tensor, "batch pos"], metric: Callable[[Tensor], Tensor], features: Sequence[int],
    *, per_pass: int = 8,
) -> Float[Tensor, "feature batch"]:
    """``metric(logits)`` (one value per prompt, ``[batch]``) with each feature ablated alone.

    A feature of ``-1`` stands for nothing ablated (the clean run through the same path).
    """
    hook_name = check_sae(model, sae)
    layer = _layer(hook_name)
    features = [int(f) for f in features]
    if not features:
        raise ValueError("features is empty.")
    if isinstance(per_pass, bool) or not isinstance(per_pass, int) or per_pass < 1:
        raise ValueError(f"per_pass must be a positive int, got {per_pass!r}.")
    _, cache = model.run_with_cache(tokens, names_filter=hook_name)
    x = cache[hook_name]  # [batch, pos, d_model]
    latents = encode(model, sae, tokens)  # [batch, pos, d_sae]
    b = tokens.shape[0]
    out = []
    for s in range(0, len(features), per_pass):
        chunk = features[s : s + per_pass]
        rows = x.repeat(len(chunk), 1, 1).clone()
        for j, f in enumerate(chunk):
            if f < 0:
                continue
            contribution = latents[:, 1:, f, None] * feature_direction(sae, f).to(x.dtype)
            rows[j * b : (j + 1) * b, 1:] -= contribution
        logits = model(rows, start_at_layer=layer)
        out.append(torch.stack([torch.as_tensor(metric(block)).reshape(b) for block in logits.split(b)]))
    return torch.cat(out)


@torch.no_grad()
def active_features(model: Model, sae, tokens: Int[Tensor, "batch pos"], *, min_share: float = 0.1) -> list[int]:
    """Features that fire (activation > 0) at some non-BOS position of at least ``min_share`` of the prompts."""
    fires = (encode(model, sae, tokens)[:, 1:] > 0).any(1).float().mean(0)  # [d_sae]
    return (fires >= min_share).nonzero().flatten().tolist()


@torch.no_grad()
def top_words(
    model: Model, sae, features: Sequence[int], corpus, *, k: int = 10, window: int = 8, context: int = 64,
    batch_size: int = 16,
) -> dict[int, list[str]]:
    """For each feature, the words at its ``k`` top-activating corpus tokens, in rank order.

    The same words as the ``word`` column of :func:`workbench.techniques.sae.top_contexts` (same
    token rows, same ranking with ties in corpus order, same window for :func:`word_at`), for many
    features from one pass over the corpus. A feature that fires at fewer than ``k`` tokens has
    fewer words.
    """
    hook_name = check_sae(model, sae)
    feats = check_features(sae, features)
    tokens = corpus_tokens(model, corpus, context=context)
    acts = torch.empty(*tokens.shape, len(feats))
    for b in range(0, len(tokens), batch_size):
        x = flat_acts(hook_acts(model, hook_name, tokens[b : b + batch_size]))
        acts[b : b + batch_size] = masked(sae, x, encode_flat(sae, x))[..., feats].float()
    out = {}
    width = tokens.shape[1]
    for j, f in enumerate(feats):
        flat = acts[..., j].flatten()
        words = []
        for i in flat.argsort(descending=True, stable=True)[:k].tolist():
            if flat[i] <= 0:
                break
            r, p = divmod(i, width)
            lo, hi = max(0, p - window), min(width, p + window + 1)
            words.append(word_at(str_tokens(model, tokens[r, lo:hi]), p - lo))
        out[f] = words
    return out


@torch.no_grad()
def name_position_features(
    model: Model, sae, ds, *, min_share: float = 0.1, positions: Sequence[str] = ("IO", "S1", "S2"),
    exclude: Sequence[int] = (),
) -> list[int]:
    """Features that fire at one of the name ``positions`` of at least ``min_share`` of the IOI
    prompts ``ds`` (an :class:`~workbench.phenomena.ioi.dataset.IOIDataset`), ``exclude`` left out."""
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}.")
    latents = encode(model, sae, ds.clean_tokens)  # [batch, pos, feature]
    rows = torch.arange(len(ds))
    fires = torch.stack([latents[rows, ds.pos[p]] > 0 for p in positions]).any(0).float().mean(0)  # [feature]
    skip = {int(f) for f in exclude}
    return [f for f in (fires >= min_share).nonzero().flatten().tolist() if f not in skip]
