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

__all__ = ["subset_items"]

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
