"""Attention patterns of chosen heads, as a labelled result.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core import checks
from workbench.core.types import HookList, Model

__all__ = [
    "get_patterns",
]

# --------------------------------------------------------------------------------------------
# Attention patterns


@torch.no_grad()
def get_patterns(
    model: Model, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]] | None = None
) -> dict[tuple[int, int], Float[Tensor, "batch pos pos"]]:
    """Attention patterns of the chosen heads only, ``{(layer, head): [batch, query, key]}``.

    Hooks just the layers that hold a chosen head, keeps just those heads, and stops the forward
    pass after the last of them, so a long context never caches every layer's full pattern.
    ``heads=None`` records every head (small prompts only: ``n_layers * n_heads * pos^2``).

    >>> from workbench import models
    >>> import torch
    >>> p = get_patterns(models.tiny_model(), torch.arange(5)[None], [(1, 2)])
    >>> list(p), tuple(p[(1, 2)].shape)
    ([(1, 2)], (1, 5, 5))
    """
    tokens = checks.tokens(model, tokens)
    heads = checks.heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    out: dict[tuple[int, int], Tensor] = {}

    def make_hook(layer: int, wanted: list[int]):
        def keep_heads(pattern, hook):
            for h in wanted:
                out[(layer, h)] = pattern[:, h].clone()

        return keep_heads

    hooks: HookList = [(f"blocks.{l}.attn.hook_pattern", make_hook(l, hs)) for l, hs in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=max(by_layer) + 1)
    return {k: out[k] for k in heads}
