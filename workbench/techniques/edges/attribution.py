"""Edge attribution patching: EAP, EAP-IG (inputs) and EAP-IG (activations).

The score of an edge ``u -> v`` (writer ``u``, input ``v``) estimates how much the metric drops
when that edge alone carries the corrupted run's value of ``u`` into ``v`` (everything else
clean): patching the edge moves ``v``'s input by ``out_u(corrupted) - out_u(clean)``, so

    score(u -> v) = (out_u(clean) - out_u(corrupted)) . g_v,

summed over positions, prompts and ``d_model``, where ``g_v`` is a gradient of the metric with
respect to ``v``'s input:

- ``"eap"`` (Syed et al. 2023): the gradient on the clean run. Exactly the derivative of the
  metric along the patch at the clean point, so it equals the metric's linearised drop.
- ``"eap-ig"`` (Hanna et al. 2024): integrated gradients on the input embeddings: the mean of
  the gradients over ``steps`` runs whose embeddings are ``corrupted + a (clean - corrupted)``
  for ``a = k / steps``, ``k = 1..steps`` (a right Riemann sum; ``steps=1`` is EAP).
- ``"eap-ig-activations"`` (MIB, Mueller et al. 2025): integrated gradients on each layer's
  inputs: for the inputs of one attention layer (its q, k and v inputs together), of one MLP
  and of the logits in turn, those inputs alone are interpolated from corrupted to clean
  (same ``a`` grid), the rest of the run is clean, and the gradients are averaged. It costs
  ``steps`` forward and backward passes per layer input, started at that layer.

All three cost one forward pass on the corrupted prompts and one on the clean prompts for the
activation differences, plus the gradient runs (1, ``steps``, ``steps x (2 n_layers + 1)``). The
gradients are never stored: a tensor hook multiplies each input's gradient by the differences
of its writers as it arrives, so memory is one ``[n_writers, batch, pos, d_model]`` buffer.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core import checks
from workbench.core.metrics import metric_name
from workbench.core.types import HookList, Model
from workbench.techniques.edges.engine import (
    InputSite,
    input_sites,
    node_outputs,
    run_metric,
    split_inputs,
)
from workbench.techniques.edges.graph import Graph, Layout
from workbench.techniques.patching import shared_prefix

__all__ = ["METHODS", "attribute_edges"]

Method = Literal["eap", "eap-ig", "eap-ig-activations"]
METHODS: tuple[str, ...] = ("eap", "eap-ig", "eap-ig-activations")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _accumulate(grad: Tensor, *, site: InputSite, delta: Tensor, matrix: Tensor, weight: float,
                pos0: int) -> None:
    """The tensor hook: ``matrix[writers, inputs] += delta[writers] @ grad[inputs]`` (positions
    from ``pos0`` on: before it the two runs agree and the differences are zero)."""
    g = grad.detach()[:, pos0:].float()
    g = g.permute(2, 0, 1, 3).reshape(g.shape[2], -1) if site.per_head else g.reshape(1, -1)
    matrix[: site.n_upstream, site.columns] += weight * (delta[: site.n_upstream] @ g.T)


def _grad_hooks(sites: list[InputSite], delta: Tensor, matrix: Tensor, weight: float, pos0: int, *,
                replace=None):
    """Forward hooks that register the accumulating tensor hook on each input site's value.
    ``replace`` maps a site name to a function giving the value to use instead (a leaf)."""
    hooks = []
    for site in sites:
        def hook(act, hook, *, site=site):
            if replace is not None and site.name in replace:
                act = replace[site.name](act)
            act.register_hook(partial(_accumulate, site=site, delta=delta, matrix=matrix, weight=weight,
                                             pos0=pos0))
            return act

        hooks.append((site.name, hook))
    return hooks


def _leaf(value: Tensor) -> Tensor:
    return value.detach().clone().requires_grad_(True)


def _check(method: str, steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {list(METHODS)}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")


def attribute_edges(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric,
    *,
    method: Method = "eap-ig",
    steps: int = 5,
    progress: bool = False,
) -> Graph:
    """Score every edge of the model's computation graph (see the module docstring).

    Args:
        model: a ``HookedTransformer`` (its q/k/v-input and MLP-input settings are switched on
            for the call and restored afterwards, even on error).
        clean_tokens, corrupted_tokens: ``[batch, pos]`` token ids of the same shape.
        metric: ``logits -> scalar``; one with a ``readout`` (e.g. a normalised logit
            difference) skips the full unembedding.
        method: ``"eap"``, ``"eap-ig"`` or ``"eap-ig-activations"``.
        steps: integration steps of the IG methods (ignored by ``"eap"``).
        progress: show tqdm progress bars over the gradient runs.

    Returns:
        A :class:`Graph` whose ``meta`` holds the method, steps, and the metric on the clean and
        corrupted runs.
    """
    _check(method, steps)
    checks.token_pair(model, clean_tokens, corrupted_tokens)
    layout = Layout.from_model(model)
    sites = input_sites(layout)
    with split_inputs(model):
        corr, corr_value, _ = node_outputs(model, layout, corrupted_tokens, metric)
        delta, clean_value, _ = node_outputs(model, layout, clean_tokens, metric)
        emb_clean, emb_corr = delta[0].clone(), corr[0].clone()
        # Positions before the first one where the prompts differ give equal outputs in both runs.
        pos0 = shared_prefix(clean_tokens, corrupted_tokens)
        flat = (delta[:, :, pos0:] - corr[:, :, pos0:]).reshape(layout.n_forward, -1)
        del corr, delta
        matrix = torch.zeros(layout.n_forward, layout.n_backward)
        if method == "eap-ig-activations":
            _ig_activations(model, layout, sites, clean_tokens, corrupted_tokens, metric, flat, matrix,
                            steps, progress, pos0)
        else:
            n = 1 if method == "eap" else steps
            bar = _progress(n, f"{method} gradients", progress)
            for k in range(1, n + 1):
                alpha = k / n
                start = _leaf(emb_corr + alpha * (emb_clean - emb_corr))
                hooks: HookList = [("blocks.0.hook_resid_pre", lambda act, hook, start=start: start)]
                hooks += _grad_hooks(sites, flat, matrix, 1.0 / n, pos0)
                with torch.enable_grad():
                    value, _ = run_metric(model, clean_tokens, metric, hooks)
                    torch.autograd.grad(value, start)
                bar.update()
            bar.close()
    meta = {"method": method, "steps": 1 if method == "eap" else steps, "clean": float(clean_value),
                "corrupted": float(corr_value), "metric": metric_name(metric),
                "model": getattr(model.cfg, "model_name", None), "n_prompts": int(clean_tokens.shape[0]),
                "score": "(out_clean - out_corrupted) . d metric / d input, summed over batch and positions"}
    return Graph(layout, matrix, None, meta)


@torch.no_grad()
def _layer_inputs(model: Model, tokens: Tensor) -> dict[str, Tensor]:
    """The residual stream each input site reads: ``resid_pre``, ``resid_mid`` and the final one."""
    n = model.cfg.n_layers
    names = {f"blocks.{L}.hook_resid_pre" for L in range(n)} | {f"blocks.{n - 1}.hook_resid_post"}
    if not model.cfg.attn_only:
        names |= {f"blocks.{L}.hook_resid_mid" for L in range(n)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names,
                                    stop_at_layer=n)
    return {k: v for k, v in cache.items()}


def _ig_activations(model: Model, layout, sites, clean_tokens, corrupted_tokens, metric, flat, matrix,
                    steps, progress, pos0) -> None:
    clean = _layer_inputs(model, clean_tokens)
    corr = _layer_inputs(model, corrupted_tokens)
    last = layout.n_layers - 1
    groups: list[tuple[int, list[InputSite], str]] = []  # (start layer, sites, resid hook)
    for L in range(layout.n_layers):
        groups.append((L, [s for s in sites if s.name.startswith(f"blocks.{L}.hook_") and s.per_head],
                       f"blocks.{L}.hook_resid_pre"))
        if layout.has_mlp:
            groups.append((L, [s for s in sites if s.name == f"blocks.{L}.hook_mlp_in"],
                           f"blocks.{L}.hook_resid_mid"))
    groups.append((last, [sites[-1]], f"blocks.{last}.hook_resid_post"))
    bar = _progress(len(groups) * steps, "eap-ig-activations gradients", progress)
    for start, group, resid in groups:
        a, b = corr[resid], clean[resid]
        for k in range(1, steps + 1):
            alpha = k / steps
            leaves: list[Tensor] = []

            def interpolate(act, *, a=a, b=b, alpha=alpha, leaves=leaves):
                shape = act.shape
                x = a + alpha * (b - a)
                leaf = _leaf(x[:, :, None].expand(shape) if act.ndim == 4 else x)
                leaves.append(leaf)
                return leaf

            replace = {s.name: interpolate for s in group}
            hooks = _grad_hooks(group, flat, matrix, 1.0 / steps, pos0, replace=replace)
            with torch.enable_grad():
                value, _ = run_metric(model, clean_tokens, metric, hooks, start=(start, clean[
                    f"blocks.{start}.hook_resid_pre"]))
                torch.autograd.grad(value, leaves)
            bar.update()
    bar.close()
