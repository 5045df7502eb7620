"""Subsets of a dataset of prompts: one rule for every dataclass that holds one entry per item.

>>> from dataclasses import dataclass
>>> import torch
>>> @dataclass
... class Batch:
...     prompts: list
...     tokens: torch.Tensor
...     pos: dict
...     kind: str
...     def __len__(self):
...         return len(self.prompts)
>>> b = Batch(["a", "b", "c"], torch.arange(6).reshape(3, 2), {"END": torch.tensor([1, 1, 0])}, "toy")
>>> s = subset_items(b, [2, 0])
>>> s.prompts, s.tokens.tolist(), s.pos["END"].tolist(), s.kind
(['c', 'a'], [[4, 5], [0, 1]], [0, 1], 'toy')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["overlaps", "split_pools", "subset_items"]

T = TypeVar("T")


def _per_item(value, n: int) -> bool:
    return isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == n


def subset_items(obj: T, index: Sequence[int] | Tensor) -> T:
    """A new ``type(obj)`` (a dataclass of ``n = len(obj)`` items) holding the items at ``index``.

    ``index`` is flattened to a 1-D list of item indices (repeats and any order allowed). Each
    field of ``obj`` that ``__init__`` takes is, by this rule:

    * a tensor whose first dimension is ``n``: indexed along it;
    * a list of length ``n``: a new list of the entries at ``index``;
    * a dict whose values are all such tensors (positions): a new dict, each value indexed;
    * any other dict (metadata): a shallow copy;
    * anything else (strings, numbers, tensors or lists of another length): kept as it is.

    A field that holds one entry per item must therefore be a tensor or a list; one that does not
    must not have ``n`` entries in its first dimension unless it is a dict of non-tensors.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"subset_items needs a dataclass instance, got {type(obj).__name__}.")
    n = len(obj)  # type: ignore[arg-type]  # every dataset class defines __len__ (checked by the caller's tests)
    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    pick = idx.tolist()
    values = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if _per_item(value, n):
            value = value[idx]
        elif isinstance(value, list) and len(value) == n:
            value = [value[i] for i in pick]
        elif isinstance(value, dict) and value and all(_per_item(v, n) for v in value.values()):
            value = {k: v[idx] for k, v in value.items()}
        elif isinstance(value, dict):
            value = dict(value)
        values[f.name] = value
    return type(obj)(**values)


def split_pools(
    pools: dict[str, Sequence[T]], *, fraction: float = 0.5, seed: int = 0
) -> tuple[dict[str, list[T]], dict[str, list[T]]]:
    """Split every factor's pool (names, templates, subjects, ...) into a selection part and an
    evaluation part that share no value, so that prompts built from each part are disjoint on every
    factor by construction. Each pool is shuffled with its own seeded generator, then cut at
    ``fraction`` (at least one value on each side).

    >>> sel, ev = split_pools({"name": ["Ann", "Bob", "Cid", "Dee"], "template": ["t1", "t2"]})
    >>> sorted(sel["name"] + ev["name"]), set(sel["name"]) & set(ev["name"])
    (['Ann', 'Bob', 'Cid', 'Dee'], set())
    >>> len(sel["template"]), len(ev["template"])
    (1, 1)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}")
    select: dict[str, list[T]] = {}
    evaluate: dict[str, list[T]] = {}
    for i, (factor, pool) in enumerate(pools.items()):
        values = list(dict.fromkeys(pool))  # distinct, in order
        if len(values) < 2:
            raise ValueError(f"Factor {factor!r} has {len(values)} distinct value(s); a disjoint split needs two.")
        order = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed * 1009 + i)).tolist()
        cut = min(len(values) - 1, max(1, round(fraction * len(values))))
        select[factor] = [values[j] for j in order[:cut]]
        evaluate[factor] = [values[j] for j in order[cut:]]
    return select, evaluate


def overlaps(a: dict[str, set], b: dict[str, set]) -> dict[str, set]:
    """The values two splits share, factor by factor (empty sets when disjoint). Both must declare
    the same factors.

    >>> overlaps({"name": {"Ann"}, "template": {"t1"}}, {"name": {"Bob"}, "template": {"t1"}})
    {'name': set(), 'template': {'t1'}}
    """
    if set(a) != set(b):
        raise ValueError(f"The splits declare different factors: {sorted(a)} vs {sorted(b)}")
    return {k: set(a[k]) & set(b[k]) for k in a}
