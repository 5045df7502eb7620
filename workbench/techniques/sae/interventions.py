"""Interventions on latents (error term kept): ablation, attribution patching, exact patching, steering."""


from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench import models
from workbench.core import checks
from workbench.core.metrics import Metric, check_scalar, metric_name
from workbench.core.results import Result
from workbench.core.types import Model
from workbench.techniques.sae.core import (
    check_feature,
    check_features,
    check_sae,
    decode_flat,
    encode_flat,
    feature_direction,
    flat_acts,
    hook_acts,
    masked,
    skip_bos,
    token_mask,
)

# ============================================================================================
# Interventions on latents (error term kept)


def _edit_hook(act: Tensor, hook, *, sae, edit: Callable[[Tensor], Tensor]) -> Tensor:
    """Change the latents with ``edit`` and add the decoded difference to the activation."""
    x = flat_acts(act)
    latents = encode_flat(sae, x)
    new = edit(latents)
    delta = decode_flat(sae, new) - decode_flat(sae, latents)
    delta = delta * token_mask(sae, x)[..., None].to(delta.dtype)
    return (x + delta.to(act.dtype)).reshape(act.shape)


def _position_mask(sae, batch: int, seq: int, positions) -> Tensor:
    """``[batch, pos]``: :func:`workbench.core.checks.position_mask` (ints or a list: the same
    positions in every prompt; a 1-d tensor: one per prompt; a boolean mask), BOS left out when the
    SAE skips it."""
    mask = checks.position_mask(positions, batch, seq).clone()
    if skip_bos(sae):
        mask[:, 0] = False
    return mask


def _set_latents(latents: Tensor, *, features: list[int], values: Tensor | float, positions) -> Tensor:
    out = latents.clone()
    mask = positions(*latents.shape[:2]) if callable(positions) else positions  # [batch, pos]
    idx = torch.tensor(features)
    src = values if isinstance(values, Tensor) else torch.full_like(latents, float(values))
    chosen = out[:, :, idx]
    chosen[mask] = src[:, :, idx][mask].to(out.dtype)
    out[:, :, idx] = chosen
    return out


@contextlib.contextmanager
def ablate_features(model: Model, sae, features, *, positions=None, value: float = 0.0):
    """Inside this block the given features are set to ``value`` (default 0), error term kept.

    The activation becomes ``x + decode(edited latents) - decode(latents)``: only the ablated
    features' contributions change. ``positions``: an int or list (default: every position but
    BOS).

    >>> # with ablate_features(model, sae, [12, 40]): logits = model(tokens)
    """
    hook_name = check_sae(model, sae)
    features = check_features(sae, features)
    masker = partial(_position_mask, sae, positions=positions)
    edit = partial(_set_latents, features=features, values=value, positions=masker)
    with model.hooks(fwd_hooks=[(hook_name, partial(_edit_hook, sae=sae, edit=edit))]):
        yield model


def attribute_features(model: Model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                       metric: Metric, *, sae, by_pos: bool = False) -> Result:
    """Attribution patching on SAE latents: one forward/backward on the corrupted run.

    Estimates, for every feature, ``metric(corrupted run with that feature set to its clean
    value)`` as ``metric(corrupted) + grad · (clean latents - corrupted latents)``, the gradient
    taken at the corrupted run with the SAE spliced in *with* its error term (so the forward pass
    is the corrupted model's exactly). Laid out like :func:`patch_features` (its exact reference)
    and like :mod:`workbench.techniques.attribution`: ``meta["corrupted"]`` holds the baseline.

    Returns ``Result`` with dims ``("feature",)`` (feature patched at every position but BOS) or
    ``("pos", "feature")`` with ``by_pos=True``.
    """
    hook_name = check_sae(model, sae)
    checks.token_pair(model, clean, corrupted)
    with torch.no_grad():
        x_clean = flat_acts(hook_acts(model, hook_name, clean))
        clean_latents = masked(sae, x_clean, encode_flat(sae, x_clean))
    store: dict = {}

    def leaf_hook(act, hook):
        x = flat_acts(act)
        latents = encode_flat(sae, x.detach()).detach().requires_grad_(True)
        store["latents"], store["x"] = latents, x.detach()
        recon = decode_flat(sae, latents)
        return (x + (recon - recon.detach()).to(act.dtype)).reshape(act.shape)

    with torch.enable_grad(), model.hooks(fwd_hooks=[(hook_name, leaf_hook)]):
        value = check_scalar(metric(model(corrupted)), "metric on the corrupted run")
        (grad,) = torch.autograd.grad(value, store["latents"])
    corrupted_latents = masked(sae, store["x"], store["latents"].detach())
    delta = (grad * (clean_latents - corrupted_latents)).sum(0)  # [pos, feature]
    values = value.detach() + (delta if by_pos else delta.sum(0))
    dims = ("pos", "feature") if by_pos else ("feature",)
    return Result(values.float(), dims, f"{metric_name(metric)} (attribution estimate)", {},
                  {"corrupted": value.item(), "hook_name": hook_name, "method": "attribution"})


@torch.no_grad()
def patch_features(
    model: Model,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    sae,
    features: Sequence[int],
    by_pos: bool = False,
    progress: bool = False,
) -> Result:
    """Exact patching of SAE latents: the corrupted run with one feature set to its clean value.

    One forward pass per feature (and per position with ``by_pos=True``); error term kept. The
    reference for :func:`attribute_features`. Returns ``Result`` with dims ``("feature",)`` or
    ``("pos", "feature")`` over the given ``features`` (labelled by their indices).
    """
    hook_name = check_sae(model, sae)
    checks.token_pair(model, clean, corrupted)
    features = check_features(sae, features)
    clean_latents = encode_flat(sae, flat_acts(hook_acts(model, hook_name, clean)))
    baseline = float(check_scalar(metric(model(corrupted)), "metric on the corrupted run"))
    seq = clean.shape[1]
    pos_sets = [[p] for p in range(seq)] if by_pos else [None]
    values = torch.full((len(pos_sets), len(features)), float("nan"))
    jobs = [(i, j) for i in range(len(pos_sets)) for j in range(len(features))]
    for i, j in tqdm(jobs, desc="patching features", disable=not progress):
        mask = _position_mask(sae, clean.shape[0], seq, pos_sets[i])
        if not mask.any():  # BOS alone, left untouched: the patch is a no-op
            values[i, j] = baseline
            continue
        edit = partial(_set_latents, features=[features[j]], values=clean_latents, positions=mask)
        with model.hooks(fwd_hooks=[(hook_name, partial(_edit_hook, sae=sae, edit=edit))]):
            values[i, j] = float(check_scalar(metric(model(corrupted))))
    if not by_pos:
        values = values[0]
    dims = ("pos", "feature") if by_pos else ("feature",)
    return Result(values, dims, f"{metric_name(metric)} (exact patching)", {"feature": features},
                  {"corrupted": baseline, "hook_name": hook_name, "method": "exact"})


# ============================================================================================
# Steering


def _add_hook(act: Tensor, hook, *, direction: Tensor, mask: Tensor) -> Tensor:
    x = flat_acts(act)
    x = x + mask[:, :, None].to(x.dtype) * direction.to(x.dtype)
    return x.reshape(act.shape)


@torch.no_grad()
def steer(
    model: Model,
    sae,
    feature: int,
    prompts,
    scales: Sequence[float],
    metric: Metric,
    *,
    positions=None,
    progress: bool = False,
) -> Result:
    """Dose-response of adding ``scale`` units of a feature's direction at the SAE's hook.

    ``scale`` is in units of the feature's own activation (compare with :func:`top_contexts`);
    the direction is :func:`feature_direction`. It is added at ``positions`` (default: every
    position but BOS). ``prompts``: strings of equal token length, or tokens ``[batch, pos]``.

    Returns ``Result`` with dims ``("scale",)``: ``metric`` of the steered logits at each scale.
    """
    hook_name = check_sae(model, sae)
    feature = check_feature(sae, feature)
    tokens = prompts if isinstance(prompts, Tensor) else models.to_tokens(model, prompts)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(f"prompts must give tokens [batch, pos], got shape {tuple(tokens.shape)}.")
    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("No scales given.")
    direction = feature_direction(sae, feature)
    mask = _position_mask(sae, tokens.shape[0], tokens.shape[1], positions)
    values = []
    for s in tqdm(scales, desc="steering", disable=not progress):
        fn = partial(_add_hook, direction=s * direction, mask=mask)
        with model.hooks(fwd_hooks=[(hook_name, fn)]):
            values.append(float(check_scalar(metric(model(tokens)))))
    return Result(torch.tensor(values), ("scale",), metric_name(metric), {"scale": scales},
                  {"feature": feature, "hook_name": hook_name, "method": "steering"})
