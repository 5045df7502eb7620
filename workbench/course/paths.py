"""Exercises 14-18: path patching (sender -> logits, sender -> a receiver's query), zero and mean
ablation of a head, and the faithfulness of a circuit.

Notebook ``course/04_paths_and_ablation``. Path patching as in :mod:`workbench.techniques.path_patching`:
the corrupted sender is patched into the clean run, every other head and MLP frozen.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.course.base import call, check_scalar_out, compare, register
from workbench.course.patching import models_for_patching, patching_case

NOTEBOOK = "course/04_paths_and_ablation"


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _mlp(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


# --------------------------------------------------------------------------------------------
# 14-15. Path patching


def frozen_run_hooks(model, clean_cache, corrupted_cache, sender: tuple[int, int]):
    """Hooks that set the sender's z to corrupted and every other head's z and MLP output to clean."""
    def set_z(z, hook):
        layer = hook.layer()
        z = clean_cache[hook.name].clone()
        if layer == sender[0]:
            z[:, :, sender[1]] = corrupted_cache[hook.name][:, :, sender[1]]
        return z

    def set_mlp(out, hook):
        return clean_cache[hook.name]

    n = model.cfg.n_layers
    return [(_z(layer), set_z) for layer in range(n)] + [(_mlp(layer), set_mlp) for layer in range(n)]


def clean_and_corrupted_caches(model, clean, corrupted):
    """Cached ``hook_z`` and ``hook_mlp_out`` of the clean and of the corrupted run."""
    def keep(name: str) -> bool:
        return name.endswith(("hook_z", "hook_mlp_out"))

    _, clean_cache = model.run_with_cache(clean, names_filter=keep)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=keep)
    return clean_cache, corrupted_cache


def _check_path_logits(fn, solution):
    name = "path_patch_logits"
    clean, corrupted, metric = patching_case(5)
    for make, label in models_for_patching():
        for sender in ((0, 1), (1, 3)):
            model = make()
            case = f"{label}, sender L{sender[0]}H{sender[1]}"
            expected = solution(model, clean, corrupted, metric, sender)
            got = check_scalar_out(name, call(name, fn, model, clean, corrupted, metric, sender,
                                              case=case), case)
            compare(name, got, expected,
                    what="the metric of the path-patched clean run", case=case)


@register(notebook=NOTEBOOK, minutes=15, difficulty="advanced", checker=_check_path_logits,
          objective="Measure the direct path from one sender head to the logits: its corrupted "
                    "output in the clean run with every other head and MLP frozen.",
          catches=("nothing frozen (plain activation patching)", "clean and corrupted swapped",
                   "MLPs left unfrozen"))
def path_patch_logits(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                      metric, sender: tuple[int, int]) -> float:
    """Path patching from one sender head straight to the logits.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.
        sender: ``(layer, head)``.

    Returns:
        ``float``: ``metric`` of the *clean* run in which the sender's ``hook_z`` takes its corrupted
        value (every position) while every other head's ``hook_z`` and every ``hook_mlp_out`` are
        frozen at their clean values, so that the sender's change reaches the logits only directly.

    Example: a sender with no direct effect gives the clean metric back (e.g. ``1.87``).
    """
    def frozen_sites(name: str) -> bool:
        return name.endswith(("hook_z", "hook_mlp_out"))

    _, clean_cache = model.run_with_cache(clean, names_filter=frozen_sites)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=frozen_sites)
    sender_site = f"blocks.{sender[0]}.attn.hook_z"

    def freeze(act, hook):  # every head and MLP output at its clean value, the sender corrupted
        act = clean_cache[hook.name].clone()
        if hook.name == sender_site:
            act[:, :, sender[1]] = corrupted_cache[hook.name][:, :, sender[1]]
        return act

    with model.hooks(fwd_hooks=[(frozen_sites, freeze)]):
        return metric(model(clean)).item()


def _check_path_query(fn, solution):
    name = "path_patch_query"
    clean, corrupted, metric = patching_case(6)
    for make, label in models_for_patching():
        for sender, receiver in (((0, 1), (1, 2)), ((0, 3), (1, 0))):
            model = make()
            case = f"{label}, L{sender[0]}H{sender[1]} -> query of L{receiver[0]}H{receiver[1]}"
            expected = solution(model, clean, corrupted, metric, sender, receiver)
            got = check_scalar_out(name, call(name, fn, model, clean, corrupted, metric, sender,
                                              receiver, case=case), case)
            compare(name, got, expected,
                    what="the metric after patching the receiver's query", case=case)


@register(notebook=NOTEBOOK, minutes=20, difficulty="advanced", checker=_check_path_query,
          objective="Path-patch sender -> receiver query in two runs: record the receiver's query "
                    "in the frozen run, then patch only that query into the clean run.",
          catches=("nothing frozen in the first run", "the key recorded instead of the query",
                   "clean and corrupted swapped"))
def path_patch_query(model, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
                     metric, sender: tuple[int, int], receiver: tuple[int, int]) -> float:
    """Path patching from one sender head to one receiver head's query, in two runs.

    Args:
        model: a ``HookedTransformer``.
        clean, corrupted: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.
        sender, receiver: ``(layer, head)``, the sender in an earlier layer than the receiver.

    Returns:
        ``float``: run 1 is the clean run with the sender corrupted and every other head and MLP
        frozen at clean (as in ``path_patch_logits``), and records the receiver's query
        (``hook_q``, its head only, every position); run 2 is the clean run with only that query
        replaced. The result is ``metric`` of run 2.

    Example: a receiver whose query ignores the sender gives the clean metric back.
    """
    def frozen_sites(name: str) -> bool:
        return name.endswith(("hook_z", "hook_mlp_out"))

    _, clean_cache = model.run_with_cache(clean, names_filter=frozen_sites)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=frozen_sites)
    sender_site, q_name = f"blocks.{sender[0]}.attn.hook_z", f"blocks.{receiver[0]}.attn.hook_q"
    recorded = {}

    def freeze(act, hook):  # as in path_patch_logits
        act = clean_cache[hook.name].clone()
        if hook.name == sender_site:
            act[:, :, sender[1]] = corrupted_cache[hook.name][:, :, sender[1]]
        return act

    def record_q(q, hook):
        recorded["q"] = q[:, :, receiver[1]].clone()

    with model.hooks(fwd_hooks=[(frozen_sites, freeze), (q_name, record_q)]):  # run 1
        model(clean, stop_at_layer=receiver[0] + 1)

    def patch_q(q, hook):
        q[:, :, receiver[1]] = recorded["q"]
        return q

    with model.hooks(fwd_hooks=[(q_name, patch_q)]):  # run 2: only that query changes
        return metric(model(clean)).item()


# --------------------------------------------------------------------------------------------
# 16-17. Ablating a head


def ablation_case(seed: int = 7):
    """Prompts ``[3, 6]``, a reference batch ``[5, 6]`` for means, and a metric."""
    clean, _, metric = patching_case(seed)
    reference = torch.randint(1, 100, (5, 6), generator=torch.Generator().manual_seed(seed + 100))
    return clean, reference, metric


def _check_zero(fn, solution):
    name = "zero_ablate_head"
    tokens, _, metric = ablation_case()
    for make, label in models_for_patching():
        for layer, head in ((0, 2), (1, 1)):
            model = make()
            case = f"{label}, head L{layer}H{head}"
            expected = solution(model, tokens, metric, layer, head)
            got = check_scalar_out(name, call(name, fn, model, tokens, metric, layer, head,
                                              case=case), case)
            compare(name, got, expected,
                    what="the metric with the head zero-ablated", case=case)


@register(notebook=NOTEBOOK, minutes=6, difficulty="intro", checker=_check_zero,
          objective="Zero-ablate one head (its hook_z at every position) and measure the metric.",
          catches=("head index on the position axis", "the whole attention layer zeroed",
                   "hook left attached", "W_O zeroed in place (never restored)"))
def zero_ablate_head(model, tokens: Int[Tensor, "batch pos"], metric, layer: int, head: int) -> float:
    """The metric with one head's output set to zero.

    Args:
        model: a ``HookedTransformer``.
        tokens: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.
        layer, head: the head to ablate.

    Returns:
        ``float``: ``metric`` of the run where ``blocks.{layer}.attn.hook_z[:, :, head]`` is zero at
        every position (the layer's output bias ``b_O`` stays). Change activations with a hook,
        never the weights.

    Example: ablating a head that does not matter gives the unablated metric (e.g. ``0.42``).
    """
    def zero(z, hook):  # z: [batch, pos, head, d_head]
        z[:, :, head] = 0.0
        return z

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)]):
        return metric(model(tokens)).item()


def _check_mean(fn, solution):
    name = "mean_ablate_head"
    tokens, reference, metric = ablation_case(8)
    for make, label in models_for_patching():
        for layer, head in ((0, 2), (1, 1)):
            model = make()
            case = f"{label}, head L{layer}H{head}"
            expected = solution(model, tokens, metric, layer, head, reference)
            got = check_scalar_out(name, call(name, fn, model, tokens, metric, layer, head,
                                              reference, case=case), case)
            compare(name, got, expected,
                    what="the metric with the head mean-ablated", case=case)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_mean,
          objective="Mean-ablate one head: replace its output by its mean over a reference batch, "
                    "position by position.",
          catches=("mean over positions too", "mean over the input batch, not the reference",
                   "zeros instead of the mean"))
def mean_ablate_head(model, tokens: Int[Tensor, "batch pos"], metric, layer: int, head: int,
                     reference: Int[Tensor, "batch pos"]) -> float:
    """The metric with one head's output replaced by its mean over a reference batch.

    Args:
        model: a ``HookedTransformer``.
        tokens: ``Int[Tensor, "batch pos"]``, the prompts scored.
        metric: a callable ``logits -> 0-d tensor``; raw.
        layer, head: the head to ablate.
        reference: ``Int[Tensor, "ref_batch pos"]``, the prompts whose mean replaces the output.

    Returns:
        ``float``: ``metric`` of the run on ``tokens`` where the head's ``hook_z`` is, at each
        position ``p``, its mean over the reference batch at ``p`` (one mean per position).

    Example: a head whose output is the same on every prompt gives the unablated metric back.
    """
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(reference, names_filter=[name])
    mean = cache[name][:, :, head].mean(0)  # [pos, d_head]: one mean per position

    def replace(z, hook):
        z[:, :, head] = mean
        return z

    with model.hooks(fwd_hooks=[(name, replace)]):
        return metric(model(tokens)).item()


# --------------------------------------------------------------------------------------------
# 18. Faithfulness


def _check_faithfulness(fn, solution):
    name = "faithfulness"
    tokens, reference, metric = ablation_case(9)
    for make, label in models_for_patching():
        for circuit in ([(0, 1), (1, 2)], [(1, 0), (1, 3), (0, 0)]):
            model = make()
            case = f"{label}, circuit {circuit}"
            expected = solution(model, tokens, metric, circuit, reference)
            got = check_scalar_out(name, call(name, fn, model, tokens, metric, circuit, reference,
                                              case=case), case)
            compare(name, got, expected,
                    what="F(circuit) / F(model)", case=case)


@register(notebook=NOTEBOOK, minutes=12, difficulty="core", checker=_check_faithfulness,
          objective="Score a circuit's faithfulness: the metric with every head outside it "
                    "mean-ablated, over the full model's metric.",
          catches=("the circuit ablated instead of its complement", "ratio inverted",
                   "zero instead of mean ablation"))
def faithfulness(model, tokens: Int[Tensor, "batch pos"], metric, circuit: list[tuple[int, int]],
                 reference: Int[Tensor, "batch pos"]) -> float:
    """A circuit's faithfulness: its metric alone over the full model's metric.

    Args:
        model: a ``HookedTransformer``.
        tokens: ``Int[Tensor, "batch pos"]``.
        metric: a callable ``logits -> 0-d tensor``; raw.
        circuit: the heads kept, a list of ``(layer, head)``.
        reference: ``Int[Tensor, "ref_batch pos"]``, the prompts for the means.

    Returns:
        ``float``: ``metric`` with every head *outside* the circuit mean-ablated (per position, over
        the reference batch; MLPs untouched), divided by ``metric`` of the unablated model.

    Example: the circuit of every head scores ``1.0``; a circuit that keeps nothing of the
    behaviour scores near 0.
    """
    _, cache = model.run_with_cache(reference, names_filter=lambda n: n.endswith("hook_z"))
    keep = set(circuit)

    def ablate_outside(z, hook):
        layer = hook.layer()
        for head in range(model.cfg.n_heads):
            if (layer, head) not in keep:
                z[:, :, head] = cache[hook.name][:, :, head].mean(0)
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate_outside) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        circuit_value = metric(model(tokens)).item()
    return circuit_value / metric(model(tokens)).item()
