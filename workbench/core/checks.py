"""Validation of what users pass in: tokens, positions, heads, layers, options.

One exception policy for the whole package: a value of the wrong *type* raises ``TypeError``, a
value of the right type that is out of range or inconsistent raises ``ValueError``; every message
names the argument, shows what was given, and says how to fix it. Techniques call these checks at
the top of each public function, before any forward pass or hook.

>>> import torch
>>> from workbench.models import tiny_model
>>> model = tiny_model()
>>> tokens(model, torch.tensor([1, 2, 3])).shape
torch.Size([1, 3])
>>> head(model, "L1H2"), head(model, (0, 3))
((1, 2), (0, 3))
>>> position_mask([0, -1], batch=2, seq=4).int().tolist()
[[1, 0, 0, 1], [1, 0, 0, 1]]
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from workbench.core.types import Model

__all__ = ["Ablation", "ContextTooLong", "context", "head", "head_pair", "heads", "indices", "layer", "option", "position_mask", "positions", "token_pair", "tokens"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


#: The one ablation vocabulary: what replaces a component's output when it is ablated. ``"zero"``
#: zeros; ``"mean"``: its mean over reference prompts; ``"resample"``: its value on another
#: (reference) prompt; ``"patch"``: its value on the corrupted prompt of the same pair. Each
#: technique takes the subset it runs, under the argument name ``ablation``.
Ablation = Literal["zero", "mean", "resample", "patch"]


def tokens(model: Model, toks, *, name: str = "tokens") -> Int[Tensor, "batch pos"]:
    """``toks`` as a ``[batch, pos]`` long tensor on its own device; one prompt may be 1-d.

    Checks: an integer tensor, 1-d or 2-d, not empty, ids inside the vocabulary, no longer than the
    model's context.
    """
    if not isinstance(toks, Tensor) or toks.dtype not in _INT_DTYPES:
        got = type(toks).__name__ + (f" of dtype {toks.dtype}" if isinstance(toks, Tensor) else "")
        raise TypeError(
            f"{name} must be an integer tensor of token ids [batch, pos], got {got}. "
            "Turn text into tokens with workbench.to_tokens(model, text)."
        )
    if toks.ndim == 1:
        toks = toks[None]
    if toks.ndim != 2:
        raise ValueError(f"{name} must have shape [batch, pos] (or [pos] for one prompt), got {tuple(toks.shape)}.")
    if toks.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(toks.shape)}); give at least one token.")
    vocab = model.cfg.d_vocab
    lo, hi = int(toks.min()), int(toks.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"{name}: token ids must lie in [0, {vocab}) (this model's vocabulary), got ids from {lo} to {hi}.")
    n_ctx = model.cfg.n_ctx
    if toks.shape[1] > n_ctx:
        raise ValueError(f"{name} has {toks.shape[1]} positions; this model takes at most {n_ctx} (cfg.n_ctx).")
    return toks.long()


def token_pair(model: Model, clean_tokens, corrupted_tokens) -> tuple[int, int]:
    """Check a clean/corrupted pair (each as :func:`tokens`, both 2-d and of one shape); ``(batch, pos)``."""
    for nm, t in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        tokens(model, t, name=nm)
        if t.ndim != 2:
            raise ValueError(f"{nm} must be 2-d [batch, pos], got shape {tuple(t.shape)} (for one prompt use tokens[None]).")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean_tokens has shape {tuple(clean_tokens.shape)} but corrupted_tokens has shape "
            f"{tuple(corrupted_tokens.shape)}: activations are matched position by position, so both need "
            "the same batch size and the same token length (build them from one template)."
        )
    return tuple(clean_tokens.shape)


def position_mask(positions, batch: int, seq: int, *, name: str = "positions") -> Bool[Tensor, "batch pos"]:
    """Positions as a boolean ``[batch, pos]`` mask (on the CPU).

    ``None``: every position. An int, a list or a range of ints: those positions in every prompt
    (negative counts from the end). A 1-d integer tensor of length ``batch``: one position per prompt
    (e.g. ``ds.pos["END"]``). A boolean tensor ``[batch, pos]`` (or ``[pos]``, for every prompt): the mask.
    Every prompt must keep at least one position.
    """
    if positions is None:
        return torch.ones(batch, seq, dtype=torch.bool)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        mask = positions.detach().cpu()
        if mask.ndim == 1:
            mask = mask[None].expand(batch, -1)
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"{name} as a boolean mask must have shape [batch, pos] = {(batch, seq)}, got {tuple(positions.shape)}.")
        mask = mask.clone()
    elif isinstance(positions, Tensor):
        if positions.dtype not in _INT_DTYPES or positions.shape != (batch,):
            raise ValueError(
                f"{name} as a tensor gives one position per prompt (integer, shape [{batch}]), got "
                f"{positions.dtype} of shape {tuple(positions.shape)}. For the same positions in every "
                "prompt pass a list of ints."
            )
        pos = positions.detach().long().cpu()
        _in_range(pos.tolist(), seq, name)
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[torch.arange(batch), pos % seq] = True
    else:
        items = [positions] if isinstance(positions, int) else positions
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"{name} must be None, ints, a per-prompt tensor or a boolean mask, got {positions!r}.")
        items = list(items)
        if not items:
            raise ValueError(f"{name} is empty; give at least one position (or None for all).")
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in items):
            raise TypeError(f"{name} must be ints, got {items!r}.")
        _in_range(items, seq, name)
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        mask[:, [p % seq for p in items]] = True
    if not mask.any(dim=1).all():
        raise ValueError(f"{name} selects no position in some prompt.")
    return mask


def positions(given, seq: int, *, name: str = "positions") -> list[int]:
    """Positions read or swept in every prompt alike, as distinct indices in ``0..seq - 1``.

    ``None``: every position; an int, a list or a range of ints (negative counts from the end).
    This is the ``int``/``list`` form of :func:`position_mask`, for techniques that go over
    positions one by one (patching, the lens): a tensor, which everywhere means one position per
    prompt, is refused here with that explanation.
    """
    if isinstance(given, Tensor) and given.ndim > 0:
        raise TypeError(
            f"{name} as a tensor means one position per prompt (e.g. ds.pos['END']); this goes over "
            "positions one by one, the same in every prompt: pass an int or a list of ints."
        )
    return indices(int(given) if isinstance(given, Tensor) else given, seq, "position")


def _in_range(pos: Sequence[int], seq: int, name: str) -> None:
    bad = [p for p in pos if not -seq <= p < seq]
    if bad:
        raise ValueError(f"{name} {bad} out of range for {seq} positions (0..{seq - 1}, or -{seq}..-1 from the end).")


def head_pair(x, *, name: str = "head") -> tuple[int, int]:
    """A head as ``(layer, head)`` from a pair of ints or a label ``"L3H2"``, with no model to check against."""
    if isinstance(x, str):
        m = re.fullmatch(r"L(\d+)H(\d+)", x.strip())
        if not m:
            raise ValueError(f"{name} {x!r} is not a head label; write it as 'L3H2' or (3, 2).")
        pair = (int(m[1]), int(m[2]))
    elif (
        isinstance(x, (tuple, list))
        and len(x) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
    ):
        pair = (int(x[0]), int(x[1]))
    elif isinstance(x, Tensor) and x.numel() == 2 and x.dtype in _INT_DTYPES:
        layer, head = (int(i) for i in x.flatten().tolist())
        pair = (layer, head)
    else:
        raise TypeError(f"{name} must be a pair (layer, head) of ints or a label like 'L3H2', got {x!r}.")
    if pair[0] < 0 or pair[1] < 0:
        raise ValueError(f"{name} {pair}: layer and head indices must be >= 0.")
    return pair


def head(model: Model, x, *, name: str = "head", n_heads: int | None = None) -> tuple[int, int]:
    """A head as ``(layer, head)`` (see :func:`head_pair`) that exists in ``model``.

    ``n_heads`` overrides the number of heads per layer (key/value heads of a grouped-query model).
    """
    pair = head_pair(x, name=name)
    n_layers, n_heads = model.cfg.n_layers, n_heads or model.cfg.n_heads
    if not (0 <= pair[0] < n_layers and 0 <= pair[1] < n_heads):
        raise ValueError(
            f"{name} L{pair[0]}H{pair[1]} does not exist: out of range for this model's {n_layers} layers x {n_heads} heads."
        )
    return pair


def heads(model: Model, xs, *, name: str = "heads", n_heads: int | None = None) -> list[tuple[int, int]]:
    """Heads as a list of distinct ``(layer, head)`` in the order given; any iterable of heads (a HeadSet too).

    ``None`` is every head of the model; a single pair ``(layer, head)`` is one head. ``n_heads``
    overrides the number of heads per layer (key/value heads of a grouped-query model).
    """
    if xs is None:
        n = n_heads or model.cfg.n_heads
        return [(lay, h) for lay in range(model.cfg.n_layers) for h in range(n)]
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Iterable):
        raise TypeError(f"{name} must be an iterable of heads ((layer, head) pairs or 'L3H2' labels), got {xs!r}.")
    if isinstance(xs, tuple) and len(xs) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in xs):
        xs = [xs]
    out = list(dict.fromkeys(head(model, x, name=name, n_heads=n_heads) for x in xs))
    if not out:
        raise ValueError(f"{name} is empty; pass None for every head.")
    return out


def layer(model: Model, x, *, name: str = "layer") -> int:
    """A layer index in ``0..n_layers - 1`` (negative counts from the end)."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{name} must be an int, got {x!r}.")
    n = model.cfg.n_layers
    if not -n <= x < n:
        raise ValueError(f"{name} {x} is outside this model's {n} layers (0..{n - 1}).")
    return x % n


def indices(given: Sequence[int] | int | None, size: int, what: str) -> list[int]:
    """An optional selection of layers/heads/positions as a list of distinct indices in ``0..size - 1``.

    ``None`` is every index; negative indices count from the end; a repeated index is an error.
    """
    if given is None:
        return list(range(size))
    items = [given] if isinstance(given, int) else list(given)
    if not items:
        raise ValueError(f"The selection of {what}s is empty; pass None for all {size}.")
    out: list[int] = []
    for i in items:
        if isinstance(i, Tensor) and i.numel() == 1:
            i = int(i)
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"{what}s must be ints, got {i!r}.")
        if not -size <= i < size:
            raise ValueError(f"{what} {i} is out of range: there are {size} {what}s (0..{size - 1}).")
        out.append(i % size)
    if len(set(out)) != len(out):
        raise ValueError(f"Repeated {what}s in {items}.")
    return out


def option(value: Any, allowed: Sequence[Any], name: str) -> Any:
    """``value`` if it is one of ``allowed`` (a ``Literal``'s values), else a ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")
    return value


class ContextTooLong(ValueError):
    """Tokens that do not fit the model's context (``n_ctx``): for an experiment, a model that
    cannot take its prompts (its claims are then not measured)."""


def context(model, n_tokens: int, what: str = "The prompt") -> None:
    """Raise :class:`ContextTooLong` when ``n_tokens`` exceed the model's context."""
    if n_tokens > model.cfg.n_ctx:
        raise ContextTooLong(f"{what} has {n_tokens} tokens; the model takes at most {model.cfg.n_ctx}.")
