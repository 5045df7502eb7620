"""Retrieval scores by haystack, context length and needle depth.

:func:`haystack_frame` lays out the per-haystack scores of
:func:`workbench.techniques.heads.retrieval_scores` in a long table; :func:`score_summary` averages
them by context length or needle depth. Both are also reachable from
:mod:`workbench.phenomena.retrieval.analysis`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.results import Result
from workbench.techniques.heads import HeadSet

__all__ = ["haystack_frame", "score_summary"]

GroupBy = Literal["length", "depth"]


def _per_haystack(scores: Result, haystacks: list) -> Tensor:
    per = scores.meta.get("per_haystack") if isinstance(scores, Result) else None
    if per is None:
        raise ValueError("scores has no meta['per_haystack']; pass the Result of heads.retrieval_scores.")
    if per.shape[0] != len(haystacks):
        raise ValueError(
            f"scores were computed on {per.shape[0]} haystacks but {len(haystacks)} were given; "
            "pass the same haystacks, in the same order."
        )
    return per


def _head_list(scores: Result, heads) -> list[tuple[int, int]]:
    if heads is None:
        n_layers, n_heads = scores.values.shape
        return [(a, b) for a in range(n_layers) for b in range(n_heads)]
    if isinstance(heads, int) and not isinstance(heads, bool):
        return [(int(a), int(b)) for a, b in scores.top(heads)[["layer", "head"]].values.tolist()]
    return list(heads) if isinstance(heads, HeadSet) else [(int(a), int(b)) for a, b in heads]


def haystack_frame(scores: Result, haystacks: Sequence, heads=None) -> pd.DataFrame:
    """The retrieval scores of each head on each haystack, long form.

    One row per (haystack, head): ``haystack`` (index), ``context_length``, ``depth``,
    ``needle_depth``, ``answered``, ``layer``, ``head``, ``label`` (``"L18H6"``) and ``score``
    (NaN where the model did not answer). ``heads``: None (all), an int ``n`` (the ``n``
    best-scoring heads) or a list / :class:`~workbench.techniques.heads.HeadSet`.
    """
    haystacks = list(haystacks)
    per = _per_haystack(scores, haystacks)
    answered = scores.meta.get("answered", [not torch.isnan(p).all() for p in per])
    rows = []
    for i, h in enumerate(haystacks):
        for layer, head in _head_list(scores, heads):
            rows.append(dict(
                haystack=i, context_length=h.context_length, depth=h.depth,
                needle_depth=getattr(h, "needle_depth", float("nan")), answered=bool(answered[i]),
                layer=layer, head=head, label=f"L{layer}H{head}", score=float(per[i, layer, head]),
            ))
    return pd.DataFrame(rows)


def score_summary(
    scores: Result, haystacks: Sequence, *, by: GroupBy = "length", heads=5, threshold: float = 0.1
) -> pd.DataFrame:
    """Retrieval scores grouped by context length or needle depth.

    One row per group (index ``context_length`` or ``depth``): ``haystacks`` (how many),
    ``accuracy`` (fraction the model answered), ``heads_above`` (how many heads have a mean score
    over the group's answered haystacks above ``threshold``), then one column per head in
    ``heads`` (default: the 5 best overall) with its mean score over the group's answered
    haystacks (NaN if none was answered).
    """
    if by not in ("length", "depth"):
        raise ValueError(f"by must be 'length' or 'depth', got {by!r}.")
    haystacks = list(haystacks)
    per = _per_haystack(scores, haystacks)
    answered = scores.meta.get("answered", [True] * len(haystacks))
    key = "context_length" if by == "length" else "depth"
    values = [getattr(h, key) for h in haystacks]
    chosen = _head_list(scores, heads)
    rows = {}
    for v in sorted(set(values)):
        idx = [i for i, x in enumerate(values) if x == v]
        group = per[idx]
        ok = torch.tensor([bool(answered[i]) for i in idx]) & ~torch.isnan(group).all(dim=(1, 2))
        mean = group[ok].mean(0) if ok.any() else torch.full(group.shape[1:], float("nan"))
        row = dict(haystacks=len(idx), accuracy=float(ok.float().mean()),
                   heads_above=int((mean > threshold).sum()))
        row.update({f"L{a}H{b}": float(mean[a, b]) for a, b in chosen})
        rows[v] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(key)
