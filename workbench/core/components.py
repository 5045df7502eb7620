"""Sets of heads: the one head-set type, the top k by a score with a stated tie rule, seeded random sets.

:class:`HeadSet` is the set type every analysis uses for heads (algebra, overlaps, a mask, a
table, a plot). One place, too, for the two choices every experiment makes: which heads are "the" heads (the top k of a
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

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.core import checks
from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.types import Model

__all__ = [
    "top_positive",
    "Circuit",
    "Head",
    "HeadSet",
    "component_label",
    "head_set_mean",
    "overlap_table",
    "random_head_sets",
    "top_k_heads",
]

Head = tuple[int, int]
#: What names a head: ``(layer, head)`` (a tuple, list or 2-element int tensor) or a label ``"L3H2"``.
HeadLike = Head | Sequence[int] | str | Tensor


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


def top_positive(scores: Result, k: int, name: str) -> HeadSet:
    """The ``k`` heads with the largest score, among heads whose score is above 0 (NaN never)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    positive = scores.values.nan_to_num(nan=-math.inf) > 0
    masked = Result(scores.values.where(positive, torch.tensor(float("nan"))), scores.dims, scores.metric)
    return HeadSet.top(masked, k, name=name)


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
    nearest: bool = False,
) -> list[list[Head]]:
    """``n_draws`` random head sets, each sorted, from a seeded generator of their own.

    Give either ``k`` (sets of ``k`` heads from ``layers``, default every layer) or ``like`` (sets
    with as many heads in each layer as ``like`` has: layer-matched). ``exclude`` heads are never
    drawn (e.g. the heads being tested, for a "random other heads" null).

    A layer with fewer heads left to draw than ``like`` has there is an error, unless
    ``nearest=True``: then that layer gives all it has and the rest come from the nearest layers
    (distance 1 first, then 2, ...), drawn at random among the heads left at that distance, so
    the sets stay as close to layer-matched as the grid allows (on small grids, e.g. 4 heads per
    layer, a set that fills a layer). Without a shortfall the draws are the same either way.
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

    assert like is not None  # exactly one of k and like, checked above
    per_layer: dict[int, int] = {}
    for layer, h in like:
        if not (0 <= layer < n_layers and 0 <= h < n_heads):
            raise ValueError(f"Head L{layer}H{h} is outside a {n_layers} x {n_heads} grid")
        per_layer[layer] = per_layer.get(layer, 0) + 1
    pools = {layer: pool([layer]) for layer in sorted(per_layer)}
    short = {layer: count - len(pools[layer]) for layer, count in per_layer.items() if count > len(pools[layer])}
    if short and not nearest:
        layer = min(short)
        raise ValueError(f"Layer {layer} has {len(pools[layer])} heads to draw from, {per_layer[layer]} needed "
                         "(pass nearest=True to take the shortfall from the nearest layers)")
    if sum(per_layer.values()) > len(pool(range(n_layers))):
        raise ValueError(f"{sum(per_layer.values())} heads needed, only {len(pool(range(n_layers)))} can be drawn")
    draws = []
    for _ in range(n_draws):
        chosen: list[Head] = []
        for layer, candidates in pools.items():
            idx = torch.randperm(len(candidates), generator=gen)[: per_layer[layer]].tolist()
            chosen.extend(candidates[i] for i in idx)
        for layer, missing in sorted(short.items()):
            chosen.extend(_from_nearest(layer, missing, pool, set(chosen), n_layers, gen))
        draws.append(sorted(chosen))
    return draws


def _from_nearest(layer: int, missing: int, pool, taken: set, n_layers: int, gen: torch.Generator) -> list[Head]:
    """``missing`` heads not in ``taken``, from the layers nearest ``layer`` (random within a distance)."""
    out: list[Head] = []
    for d in range(1, n_layers):
        if len(out) == missing:
            break
        ring = [h for h in pool([x for x in (layer - d, layer + d) if 0 <= x < n_layers]) if h not in taken]
        idx = torch.randperm(len(ring), generator=gen)[: missing - len(out)].tolist()
        out.extend(ring[i] for i in idx)
        taken.update(ring[i] for i in idx)
    return out


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


@dataclass(frozen=True)
class HeadSet(Persistent):
    """A named set of heads ``(layer, head)``.

    ``A | B``, ``A & B``, ``A - B`` (or :meth:`union` etc. with a name), overlap measures, and
    construction from a ``[layer, head]`` score with :meth:`top` / :meth:`above`.

    >>> a = HeadSet({(0, 1), (1, 2)}, "a"); b = HeadSet([(1, 2), (1, 3)], "b")
    >>> sorted(a & b), a.jaccard(b), a.fraction_in(b)
    ([(1, 2)], 0.3333333333333333, 0.5)
    """

    heads: frozenset[Head]
    name: str = ""

    def __init__(self, heads: Iterable[HeadLike], name: str = "") -> None:
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise TypeError(f"HeadSet takes an iterable of (layer, head) pairs, got {heads!r}.")
        pairs = frozenset(checks.head_pair(x) for x in heads)
        bad = [x for x in pairs if x[0] < 0 or x[1] < 0]
        if bad:
            raise ValueError(f"Layer and head indices must be >= 0, got {sorted(bad)}.")
        object.__setattr__(self, "heads", pairs)
        object.__setattr__(self, "name", name)

    # ---- container
    def __len__(self) -> int:
        return len(self.heads)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(sorted(self.heads))

    def __contains__(self, x) -> bool:
        return checks.head_pair(x) in self.heads

    def __repr__(self) -> str:
        shown = ", ".join(f"L{layer}H{h}" for layer, h in self)
        return f"HeadSet({self.name!r}, {len(self)} heads: {shown})"

    # ---- algebra
    def _other(self, other) -> "HeadSet":
        if not isinstance(other, HeadSet):
            raise TypeError(f"Expected a HeadSet, got {type(other).__name__}.")
        return other

    def union(self, other: "HeadSet", name: str | None = None) -> "HeadSet":
        o = self._other(other)
        return HeadSet(self.heads | o.heads, name if name is not None else f"{self.name} | {o.name}")

    def intersection(self, other: "HeadSet", name: str | None = None) -> "HeadSet":
        o = self._other(other)
        return HeadSet(self.heads & o.heads, name if name is not None else f"{self.name} & {o.name}")

    def difference(self, other: "HeadSet", name: str | None = None) -> "HeadSet":
        o = self._other(other)
        return HeadSet(self.heads - o.heads, name if name is not None else f"{self.name} - {o.name}")

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    # ---- overlap measures (0 when both sets are empty)
    def jaccard(self, other: "HeadSet") -> float:
        """``|A & B| / |A | B|``."""
        o = self._other(other)
        union = len(self.heads | o.heads)
        return len(self.heads & o.heads) / union if union else 0.0

    def overlap_coefficient(self, other: "HeadSet") -> float:
        """``|A & B| / min(|A|, |B|)``."""
        o = self._other(other)
        smaller = min(len(self), len(o))
        return len(self.heads & o.heads) / smaller if smaller else 0.0

    def fraction_in(self, other: "HeadSet") -> float:
        """``|A & B| / |A|``: the fraction of this set's heads that are also in ``other``."""
        o = self._other(other)
        return len(self.heads & o.heads) / len(self) if len(self) else 0.0

    # ---- construction from scores
    @staticmethod
    def _check_result(result: Result) -> None:
        if not isinstance(result, Result) or tuple(result.dims) != ("layer", "head"):
            got = result.dims if isinstance(result, Result) else type(result).__name__
            raise ValueError(f"HeadSet needs a Result with dims ('layer', 'head'), got {got}.")

    @classmethod
    def top(cls, result: Result, k: int, name: str | None = None) -> "HeadSet":
        """The ``k`` heads with the largest score (NaN scores never chosen; ties: lower index first)."""
        cls._check_result(result)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}.")
        frame = result.to_frame().dropna(subset=["value"])
        frame = frame.sort_values("value", ascending=False, kind="stable").head(k)
        return cls(zip(frame["layer"], frame["head"]), name if name is not None else f"top {k}: {result.metric}")

    @classmethod
    def above(cls, result: Result, threshold: float, name: str | None = None) -> "HeadSet":
        """Heads whose score is strictly greater than ``threshold``."""
        cls._check_result(result)
        idx = (result.values > threshold).nonzero().tolist()
        return cls(idx, name if name is not None else f"{result.metric} > {threshold:g}")

    def mask(self, n_layers: int, n_heads: int) -> Bool[Tensor, "layer head"]:
        """Boolean ``[layer, head]`` mask of the set."""
        m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        for layer, h in self.heads:
            if layer >= n_layers or h >= n_heads:
                raise ValueError(f"Head L{layer}H{h} is outside a {n_layers} x {n_heads} grid.")
            m[layer, h] = True
        return m

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer``, ``head``, ``set`` (the name)."""
        rows = list(self)
        return pd.DataFrame(
            {"layer": [r[0] for r in rows], "head": [r[1] for r in rows], "set": [self.name] * len(rows)}
        )

    def plot(self, *others: "HeadSet", shape: tuple[int, int] | None = None, **kwargs):
        """Grid of layers x heads with the heads of this set (and ``others``) coloured."""

        return render("head_sets", [self, *others], shape=shape, **kwargs)


OverlapMeasure = Literal["jaccard", "overlap", "fraction_in", "count"]


def overlap_table(sets: Sequence[HeadSet], measure: OverlapMeasure = "jaccard") -> pd.DataFrame:
    """Pairwise overlap of head sets: rows and columns are set names.

    ``measure``: ``"jaccard"``, ``"overlap"`` (overlap coefficient), ``"fraction_in"`` (fraction of
    the row set that is in the column set) or ``"count"`` (size of the intersection).

    >>> a = HeadSet({(0, 1), (1, 2)}, "a"); b = HeadSet([(1, 2)], "b")
    >>> overlap_table([a, b], "fraction_in").loc["a", "b"]
    np.float64(0.5)
    """
    fns = {
        "jaccard": HeadSet.jaccard,
        "overlap": HeadSet.overlap_coefficient,
        "fraction_in": HeadSet.fraction_in,
        "count": lambda a, b: float(len(a & b)),
    }
    if measure not in fns:
        raise ValueError(f"measure must be one of {sorted(fns)}, got {measure!r}.")
    sets = list(sets)
    for s in sets:
        if not isinstance(s, HeadSet):
            raise TypeError(f"overlap_table takes HeadSets, got {type(s).__name__}.")
    names = [s.name or f"set{i}" for i, s in enumerate(sets)]
    if len(set(names)) != len(names):
        raise ValueError(f"Head sets need distinct names for the table, got {names}.")
    fn = fns[measure]
    data = [[fn(a, b) for b in sets] for a in sets]
    return pd.DataFrame(data, index=pd.Index(names, name=measure), columns=names)


# --------------------------------------------------------------------------------------------
# Circuits: heads and MLPs


def component_label(comp) -> str:
    """``L3H2`` for a head ``(3, 2)``, ``mlp4`` for an MLP layer ``4``."""
    return f"mlp{comp}" if isinstance(comp, int) else f"L{comp[0]}H{comp[1]}"


class Circuit(Persistent):
    """A set of heads ``(layer, head)`` and MLP layers (``int``).

    ``Circuit([(9, 6), (9, 9)], mlps=[0])``; ``Circuit.full(model)`` is every head and MLP.
    Circuits support ``|`` and ``-``, ``len``, ``in`` and iteration (heads, then MLPs).
    """

    def __init__(self, heads: Iterable = (), mlps: Iterable[int] = ()):
        hs, ms = set(), set()
        for h in heads:
            hs.add(checks.head_pair(h))
        for m in mlps:
            if not isinstance(m, int) or isinstance(m, bool):
                raise TypeError(f"An MLP is given by its layer (an int), got {m!r}.")
            ms.add(m)
        self.heads: frozenset[tuple[int, int]] = frozenset(hs)
        self.mlps: frozenset[int] = frozenset(ms)

    @classmethod
    def of(cls, components) -> "Circuit":
        """A circuit from a Circuit or a mixed list of heads ``(layer, head)`` and MLP ``int``s."""
        if isinstance(components, Circuit):
            return components
        if isinstance(components, tuple) and len(components) == 2 and all(
            type(i) is int for i in components
        ):
            raise TypeError(
                f"{components!r} is ambiguous: write [{components!r}] for one head, or "
                f"[{components[0]}, {components[1]}] for two MLPs."
            )
        comps = list(components)
        mlps = [c for c in comps if isinstance(c, int)]
        return cls([c for c in comps if not isinstance(c, int)], mlps)

    @classmethod
    def full(cls, model: Model) -> "Circuit":
        cfg = model.cfg
        heads = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
        return cls(heads, [] if cfg.attn_only else range(cfg.n_layers))

    def with_all_mlps(self, model: Model) -> "Circuit":
        return self | Circuit(mlps=[] if model.cfg.attn_only else range(model.cfg.n_layers))

    def validate(self, model: Model) -> "Circuit":
        cfg = model.cfg
        for layer, h in self.heads:
            if not (0 <= layer < cfg.n_layers and 0 <= h < cfg.n_heads):
                raise ValueError(
                    f"Head {(layer, h)} is out of range: this model has layers "
                    f"0..{cfg.n_layers - 1} and heads 0..{cfg.n_heads - 1}."
                )
        for m in self.mlps:
            if cfg.attn_only:
                raise ValueError(f"MLP {m}: this model is attention-only (no MLPs).")
            if not 0 <= m < cfg.n_layers:
                raise ValueError(f"MLP {m} is out of range: layers are 0..{cfg.n_layers - 1}.")
        return self

    @property
    def layers(self) -> set[int]:
        """Layers that hold a head or an MLP of the circuit."""
        return {layer for layer, _ in self.heads} | set(self.mlps)

    def components(self) -> list:
        return sorted(self.heads) + sorted(self.mlps)

    def labels(self) -> list[str]:
        return [component_label(c) for c in self.components()]

    def __iter__(self) -> Iterator:
        return iter(self.components())

    def __len__(self) -> int:
        return len(self.heads) + len(self.mlps)

    def __contains__(self, comp) -> bool:
        return comp in self.mlps if isinstance(comp, int) else tuple(comp) in self.heads

    def __or__(self, other) -> "Circuit":
        o = Circuit.of(other)
        return Circuit(self.heads | o.heads, self.mlps | o.mlps)

    def __sub__(self, other) -> "Circuit":
        o = Circuit.of(other)
        return Circuit(self.heads - o.heads, self.mlps - o.mlps)

    def __eq__(self, other) -> bool:
        return isinstance(other, Circuit) and (self.heads, self.mlps) == (other.heads, other.mlps)

    def __hash__(self) -> int:
        return hash((self.heads, self.mlps))

    def __repr__(self) -> str:
        return f"Circuit({', '.join(self.labels()) or 'empty'})"

    def to_state(self) -> dict:
        return {"heads": sorted(self.heads), "mlps": sorted(self.mlps)}

    @classmethod
    def from_state(cls, state: dict) -> "Circuit":
        return cls(state["heads"], state["mlps"])

    def to_frame(self) -> pd.DataFrame:
        """One row per component: ``kind`` ("head" or "mlp"), ``layer``, ``head`` (-1 for an MLP), ``label``."""
        rows = [{"kind": "mlp" if isinstance(c, int) else "head", "layer": c if isinstance(c, int) else c[0],
                 "head": -1 if isinstance(c, int) else c[1], "label": component_label(c)} for c in self]
        return pd.DataFrame(rows, columns=["kind", "layer", "head", "label"])

    def plot(self, shape: tuple[int, int] | None = None, **kwargs):
        """The circuit's heads on a layers x heads grid; its MLPs are listed in the title."""
        mlps = ", ".join(f"mlp{m}" for m in sorted(self.mlps)) or "none"
        kwargs.setdefault("title", f"{len(self.heads)} heads; MLPs: {mlps}")
        return render("head_sets", [HeadSet(self.heads, "circuit heads")], shape=shape, **kwargs)
