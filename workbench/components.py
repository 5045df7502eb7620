"""Choosing sets of heads: the top k by a score with a stated tie rule, and seeded random sets.

One place for the two choices every experiment makes: which heads are "the" heads (the top k of a
``[layer, head]`` score) and which random sets they are compared with (the null). Random sets are
drawn with their own seeded generator, so a draw does not depend on (or change) the global random
state, and ``like=`` draws layer-matched sets: the same number of heads in each layer as the
given set, for roles that sit in a band of layers.

>>> scores = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
>>> top_k_heads(scores, 2)
[(0, 1), (1, 0)]
>>> len(random_head_sets(2, 2, k=2, n_draws=5, seed=0))
5
>>> all(sorted(h[0] for h in s) == [0, 1] for s in random_head_sets(4, 3, like=[(0, 1), (1, 2)], n_draws=10, seed=0))
True
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Head", "head_set_mean", "random_head_sets", "top_k_heads"]

Head = tuple[int, int]


def top_k_heads(scores: Tensor, k: int, *, decimals: int | None = None) -> list[Head]:
    """The ``k`` heads of a ``[layer, head]`` score with the largest values.

    Ties (and, with ``decimals``, values equal after rounding to that many decimals) go to the
    lower ``(layer, head)`` index, so a last-digit difference between CPUs cannot reorder heads
    whose scores agree to ``decimals`` places. NaN scores are never chosen.
    """
    scores = torch.as_tensor(scores).detach().float().cpu()
    if scores.ndim != 2:
        raise ValueError(f"top_k_heads takes a [layer, head] score, got shape {tuple(scores.shape)}")
    if not 0 <= k <= scores.numel():
        raise ValueError(f"k must be between 0 and {scores.numel()} (the number of heads), got {k}")
    flat = scores.flatten().double()
    if decimals is not None:
        flat = torch.round(flat, decimals=decimals)
    flat = torch.where(torch.isnan(flat), torch.tensor(float("-inf"), dtype=flat.dtype), flat)
    # stable sort on the negated values: equal values keep index order (lower index first)
    order = torch.sort(-flat, stable=True).indices[:k].tolist()
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads) for i in order]


def random_head_sets(
    n_layers: int,
    n_heads: int,
    *,
    k: int | None = None,
    like: Iterable[Head] | None = None,
    n_draws: int,
    seed: int,
    layers: Sequence[int] | None = None,
    exclude: Iterable[Head] = (),
) -> list[list[Head]]:
    """``n_draws`` random head sets, each sorted, from a seeded generator of their own.

    Give either ``k`` (sets of ``k`` heads from ``layers``, default every layer) or ``like`` (sets
    with as many heads in each layer as ``like`` has: layer-matched). ``exclude`` heads are never
    drawn (e.g. the heads being tested, for a "random other heads" null).
    """
    if (k is None) == (like is None):
        raise ValueError("random_head_sets takes exactly one of k= (a size) or like= (a set to match by layer)")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    excluded = set(map(tuple, exclude))
    gen = torch.Generator().manual_seed(seed)

    def pool(in_layers: Iterable[int]) -> list[Head]:
        return [(layer, h) for layer in in_layers for h in range(n_heads) if (layer, h) not in excluded]

    if k is not None:
        candidates = pool(range(n_layers) if layers is None else layers)
        if not 0 <= k <= len(candidates):
            raise ValueError(f"k must be between 0 and {len(candidates)} (heads available), got {k}")
        return [sorted(candidates[i] for i in torch.randperm(len(candidates), generator=gen)[:k].tolist())
                for _ in range(n_draws)]

    per_layer: dict[int, int] = {}
    for layer, h in like:
        if not (0 <= layer < n_layers and 0 <= h < n_heads):
            raise ValueError(f"Head L{layer}H{h} is outside a {n_layers} x {n_heads} grid")
        per_layer[layer] = per_layer.get(layer, 0) + 1
    pools = {layer: pool([layer]) for layer in sorted(per_layer)}
    for layer, count in per_layer.items():
        if count > len(pools[layer]):
            raise ValueError(f"Layer {layer} has {len(pools[layer])} heads to draw from, {count} needed")
    draws = []
    for _ in range(n_draws):
        chosen: list[Head] = []
        for layer, candidates in pools.items():
            idx = torch.randperm(len(candidates), generator=gen)[: per_layer[layer]].tolist()
            chosen.extend(candidates[i] for i in idx)
        draws.append(sorted(chosen))
    return draws


def head_set_mean(per_item: Float[Tensor, "batch layer head"], heads) -> Float[Tensor, " batch"]:
    """The mean over ``heads`` of a per-item ``[batch, layer, head]`` score; NaN for an empty set.

    >>> head_set_mean(torch.arange(8.).reshape(2, 2, 2), [(0, 1), (1, 1)]).tolist()
    [2.0, 6.0]
    """
    pairs = [tuple(int(i) for i in h) for h in heads]
    if not pairs:
        return torch.full((per_item.shape[0],), float("nan"))
    layers, hs = zip(*pairs)
    return per_item[:, list(layers), list(hs)].float().mean(1)
