"""Exercises 9-13: a normalised metric, activation patching by hand (one site, then sweeps), and
attribution patching.

Notebook ``course/03_patching``. Direction as in :mod:`workbench.techniques.patching`: the model runs on the
corrupted prompts and one activation is overwritten with its value from the clean run.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.metrics import LogitDiff
from workbench.course.base import call, check_scalar_out, compare, register, tiny, tiny_gqa

NOTEBOOK = "course/03_patching"


def patching_case(seed: int = 0):
    """Clean and corrupted prompts ``[3, 6]`` that differ at positions 1, 2 and 4, and a metric."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, 100, (3, 6), generator=gen)
    corrupted = clean.clone()
    for p in (1, 2, 4):
        corrupted[:, p] = torch.randint(1, 100, (3,), generator=gen)
    answers, wrong = torch.randint(0, 100, (2, 3), generator=gen)
    return clean, corrupted, LogitDiff(answers, wrong)


def models_for_patching():
    return ((tiny, "tiny model"), (tiny_gqa, "grouped-query model"))


# --------------------------------------------------------------------------------------------
# 9. A normalised metric


def _check_normalise(fn, solution):
    name = "normalise_metric"
    for value, clean, corrupted in ((0.5, 2.0, -1.0), (3.0, 1.0, 4.0), (-1.0, -1.0, 2.5)):
        case = f"value {value}, clean {clean}, corrupted {corrupted}"
        expected = solution(value, clean, corrupted)
        got = check_scalar_out(name, call(name, fn, value, clean, corrupted, case=case), case)
        compare(name, got, expected, what="the normalised value", case=case)


@register(notebook=NOTEBOOK, minutes=4, difficulty="intro", checker=_check_normalise,
          objective="Rescale a metric so the corrupted run scores 0 and the clean run 1.",
          catches=("clean and corrupted swapped", "divided by the clean value alone"))
def normalise_metric(value: float, clean: float, corrupted: float) -> float:
    """Rescale a metric's value so that the corrupted run scores 0 and the clean run 1.

    Args:
        value: the metric on the run to score (e.g. a patched run).
        clean: the metric on the clean run.
        corrupted: the metric on the corrupted run.

    Returns:
        ``float``: the normalised value (0 at ``corrupted``, 1 at ``clean``, linear in between and
        beyond).

    Example: ``normalise_metric(0.5, 2.0, -1.0)`` is ``0.5``.
    """
    return (value - corrupted) / (clean - corrupted)


# --------------------------------------------------------------------------------------------
# 10. Patching one site


def _check_one_site(fn, solution):
    name = "patch_one_site"
    clean, corrupted, metric = patching_case(1)
    for make, label in models_for_patching():
        for layer, pos in ((1, 2), (0, 4)):
            model = make()
            case = f"{label}, resid_pre of layer {layer} at position {pos}"
            expected = solution(model, clean, corrupted, metric, layer, pos)
            got = call(name, fn, model, clean, corrupted, metric, layer, pos, case=case)
            got = check_scalar_out(name, got, case)
            compare(name, got, expected, what="the metric of the patched run", case=case)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_one_site,
          objective="Patch the clean residual stream at one layer and position into the corrupted "
                    "run and measure the metric.",
          catches=("clean and corrupted swapped", "off-by-one position", "every position patched",
                   "hook left attached"))
def patch_one_site(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                   metric, layer: int, pos: int) -> float:
    """The metric of the corrupted run with one residual-stream site patched from the clean run.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``, prompts of the same shape.
        metric: a callable ``logits [batch, pos, d_vocab] -> 0-d tensor`` (e.g. a logit difference);
            raw, you do not normalise it here.
        layer: the block whose input (``blocks.{layer}.hook_resid_pre``) is patched.
        pos: the position patched (every prompt of the batch at that position; only there).

    Returns:
        ``float``: ``metric`` of the corrupted run whose stream entering ``layer`` at ``pos`` holds
        the clean run's value. No hook may stay attached.

    Example: patching a site that carries all of the difference gives the clean metric
    (e.g. ``2.31``); a site that carries none gives the corrupted one.
    """
    name = f"blocks.{layer}.hook_resid_pre"
    _, clean_cache = model.run_with_cache(clean, names_filter=[name])

    def put_clean(resid, hook):
        resid[:, pos] = clean_cache[name][:, pos]
        return resid

    with model.hooks(fwd_hooks=[(name, put_clean)]):
        return metric(model(corrupted)).item()


# --------------------------------------------------------------------------------------------
# 11. A sweep over layers and positions


def _check_sweep(fn, solution):
    name = "patch_resid_sweep"
    clean, corrupted, metric = patching_case(2)
    for make, label in models_for_patching():
        model = make()
        expected = solution(model, clean, corrupted, metric)
        got = call(name, fn, model, clean, corrupted, metric, case=label)
        compare(name, got, expected, dims=("layer", "pos"),
                what="the patched metric of every (layer, position)", case=label)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_sweep,
          objective="Sweep the one-site patch over every layer and position into a [layer, pos] map.",
          catches=("clean and corrupted swapped", "[pos, layer] instead of [layer, pos]",
                   "off-by-one layer (resid_post)"))
def patch_resid_sweep(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                      metric) -> Float[Tensor, "layer pos"]:
    """The one-site patch at every layer and position: a ``[layer, pos]`` map.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.

    Returns:
        ``Float[Tensor, "layer pos"]``: entry ``[l, p]`` is the metric of the corrupted run with the
        clean ``blocks.{l}.hook_resid_pre`` patched in at position ``p`` (raw, not normalised).

    Example: on the tiny model with prompts ``[3, 6]``: shape ``[2, 6]``; columns where clean and
    corrupted prompts agree score the corrupted metric at layer 0.
    """
    out = torch.zeros(model.cfg.n_layers, clean.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean.shape[1]):
            out[layer, pos] = patch_one_site(model, clean, corrupted, metric, layer, pos)
    return out


# --------------------------------------------------------------------------------------------
# 12. Patching each head's output


def _check_heads(fn, solution):
    name = "patch_head_outputs"
    clean, corrupted, metric = patching_case(3)
    for make, label in models_for_patching():
        model = make()
        expected = solution(model, clean, corrupted, metric)
        got = call(name, fn, model, clean, corrupted, metric, case=label)
        compare(name, got, expected, dims=("layer", "head"),
                what="the patched metric of every head", case=label)


@register(notebook=NOTEBOOK, minutes=12, difficulty="core", checker=_check_heads,
          objective="Patch each head's output (hook_z, every position) from the clean run into "
                    "the corrupted run.",
          catches=("clean and corrupted swapped", "head index on the position axis",
                   "only the last position patched"))
def patch_head_outputs(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                       metric) -> Float[Tensor, "layer head"]:
    """The metric after patching each head's output from the clean into the corrupted run.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.

    Returns:
        ``Float[Tensor, "layer head"]``: entry ``[l, h]`` is the metric of the corrupted run with head
        ``h`` of layer ``l``'s ``hook_z`` (shape ``[batch, pos, head, d_head]``) replaced by its clean
        value at every position, one head at a time. Raw, heads in ``range(n_heads)`` order.

    Example: on the tiny model (2 layers, 4 heads): shape ``[2, 4]``.
    """
    _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.cfg.n_heads):
            def put_clean(z, hook, head=head):  # z: [batch, pos, head, d_head]
                z[:, :, head] = clean_cache[hook.name][:, :, head]
                return z

            with model.hooks(fwd_hooks=[(name, put_clean)]):
                out[layer, head] = metric(model(corrupted)).item()
    return out


# --------------------------------------------------------------------------------------------
# 13. Attribution patching


def _check_attribution(fn, solution):
    name = "attribution_heads"
    clean, corrupted, metric = patching_case(4)
    for make, label in models_for_patching():
        model = make()
        expected = solution(model, clean, corrupted, metric)
        got = call(name, fn, model, clean, corrupted, metric, case=label)
        compare(name, got, expected, dims=("layer", "head"),
                what="the first-order estimate of every head's patch", case=label)


@register(notebook=NOTEBOOK, minutes=15, difficulty="advanced", checker=_check_attribution,
          objective="Estimate every head's patch at once from one backward pass: the corrupted "
                    "metric plus gradient times (clean - corrupted).",
          catches=("sign flipped (corrupted - clean)", "gradient taken on the clean run",
                   "baseline left out (the change only)"))
def attribution_heads(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                      metric) -> Float[Tensor, "layer head"]:
    """Attribution patching: a first-order estimate of every head's patch from one backward pass.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.

    Returns:
        ``Float[Tensor, "layer head"]``: entry ``[l, h]`` estimates what ``patch_head_outputs`` gives:
        the corrupted metric plus the sum over batch, positions and ``d_head`` of the metric's
        gradient with respect to the corrupted run's ``hook_z`` times ``clean z - corrupted z``.
        Raw, heads in ``range(n_heads)`` order.

    Example: on the tiny model: shape ``[2, 4]``, close to ``patch_head_outputs`` where the model is
    nearly linear.
    """
    _, clean_cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    z_corrupted = {}

    def start_graph(resid, hook):  # the weights need no gradient: start the graph at the input
        return resid.detach().requires_grad_(True)

    def keep_z(z, hook):
        z_corrupted[hook.name] = z
        return z

    hooks = [("blocks.0.hook_resid_pre", start_graph), (lambda n: n.endswith("hook_z"), keep_z)]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric(model(corrupted))
        names = list(z_corrupted)  # the gradient of each z counts every path after it
        grads = torch.autograd.grad(value, [z_corrupted[n] for n in names])
    out = torch.stack([
        (g * (clean_cache[n] - z_corrupted[n].detach())).sum(dim=(0, 1, 3))  # [head]
        for n, g in zip(names, grads)
    ])
    return value.detach() + out
