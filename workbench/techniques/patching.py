"""Exact activation patching: one batched engine, thin named variants.

Direction (the same as ``transformer_lens.patching``): the model runs on ``corrupted_tokens`` and
one activation at a time is overwritten with its value from the run on ``clean_tokens``. Each
value is ``metric(patched logits)``; with a normalised metric (corrupted 0, clean 1) it says how
much of the clean behaviour that one activation restores.

Sites (``site=``): the residual stream before a block (``"resid_pre"``), the attention and MLP
outputs (``"attn_out"``, ``"mlp_out"``), all by layer and position; and per attention head its
output ``"z"``, query ``"q"``, key ``"k"``, value ``"v"`` and ``"pattern"``, over all positions
at once or by position (``by_pos=True``; for ``"pattern"`` the position is the query position).
On a grouped-query model keys and values exist per key/value head: those results have the axis
``"kv_head"`` and ``meta["query_heads"]`` lists the query heads each KV head feeds.

How it is fast. TransformerLens runs one full forward pass per patched index. Here the clean
activations and the corrupted residual stream are cached once; then for each layer L a batch of
many patched indices (``variants_per_pass`` of them, each a copy of the corrupted batch) starts at
layer L from the cached corrupted residual (``model(resid, start_at_layer=L)``), so layers
before L are never recomputed. A patch at position p cannot change positions before p, so those
positions are not recomputed either: their keys and values come from the corrupted run through
TransformerLens's key/value cache. And where every clean prompt starts with the same tokens as
its corrupted prompt (IOI's ``BOS Then ,``), an activation at one of those shared positions is
the same in both runs, so patching it is a no-op: its value is the corrupted metric, with no
forward pass. When the metric says which logits it reads (``readout`` and
``from_readout``, as :class:`~workbench.core.metrics.LogitDiff` and
:class:`~workbench.core.metrics.Normalised` do), only those positions go through ``ln_final`` and only
those tokens' columns of ``W_U``; any other callable gets full logits, one call per index.
A model that is not a ``HookedTransformer`` (e.g. a ``TransformerBridge``) takes a slower,
still batched, full-forward path. :func:`patch_reference` is the plain one-forward-per-index loop
that the tests hold the engine to.

>>> import torch
>>> from workbench import models, patching
>>> from workbench.core.metrics import LogitDiff
>>> model = models.tiny_model()
>>> clean = torch.tensor([[1, 5, 7, 9, 3]]); corrupted = torch.tensor([[1, 6, 7, 9, 3]])
>>> metric = LogitDiff(answers=[2], wrong=[4])
>>> r = patching.patch_heads(model, clean, corrupted, metric, progress=False)
>>> r.dims, r.shape
(('layer', 'head'), (2, 4))
>>> patching.patch_resid(model, clean, corrupted, metric, progress=False).shape
(2, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Sequence, cast, get_args

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core import checks, engine
from workbench.core.engine import VARIANTS_PER_PASS
from workbench.core.metrics import Metric, check_scalar, metric_name
from workbench.core.readout import n_kv_heads
from workbench.core.results import Result
from workbench.core.types import Model
from workbench.models.tokens import position_labels

__all__ = [
    "Site",
    "patch",
    "patch_heads",
    "patch_resid",
    "patch_attn_out",
    "patch_mlp_out",
    "patch_reference",
]

Site = Literal["resid_pre", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"]
HeadSite = Literal["z", "q", "k", "v", "pattern"]


@dataclass(frozen=True)
class _Spec:
    """Where a site's hook is and which axes of one prompt's activation are position and head."""

    hook: str  # the hook name after "blocks.{layer}."
    pos_axis: int
    head_axis: int | None = None
    kv: bool = False  # one head per key/value head on a grouped-query model


_SITES: dict[str, _Spec] = {
    "resid_pre": _Spec("hook_resid_pre", 0),
    "attn_out": _Spec("hook_attn_out", 0),
    "mlp_out": _Spec("hook_mlp_out", 0),
    "z": _Spec("attn.hook_z", 0, 1),  # [pos, head, d_head]
    "q": _Spec("attn.hook_q", 0, 1),
    "k": _Spec("attn.hook_k", 0, 1, kv=True),
    "v": _Spec("attn.hook_v", 0, 1, kv=True),
    "pattern": _Spec("attn.hook_pattern", 1, 0),  # [head, query_pos, key_pos]
}


# ------------------------------------------------------------------------------ input checks


def shared_prefix(clean_tokens: Tensor, corrupted_tokens: Tensor) -> int:
    """How many leading positions hold the same token in every clean and corrupted prompt."""
    same = (clean_tokens == corrupted_tokens).all(dim=0).long()
    return int(same.cumprod(dim=0).sum())


def _check_options(site: str, variants_per_pass: int) -> _Spec:
    if site not in _SITES:
        raise ValueError(f"Unknown site {site!r}; choose one of {list(get_args(Site))}.")
    engine.check_variants_per_pass(variants_per_pass)
    return _SITES[site]


def n_heads_at(model: Model, site: str) -> int:
    """Heads at a site: query heads, or key/value heads for ``k``/``v`` on a grouped-query model."""
    return n_kv_heads(model) if _SITES[site].kv else model.cfg.n_heads


def _hook_name(site: str, layer: int) -> str:
    return f"blocks.{layer}.{_SITES[site].hook}"


# ------------------------------------------------------------------------------ the plan


@dataclass
class _Plan:
    """Which indices are patched, in the order of the result's values."""

    site: str
    spec: _Spec
    layers: list[int]
    positions: list[int] | None  # None: all positions at once
    heads: list[int] | None  # None: no head axis
    seq: int
    wanted: frozenset[tuple[int, int]] | None = None  # the (layer, head) pairs asked for; None: all

    def asked(self, layer: int, index: tuple[int | None, int | None]) -> bool:
        """Whether the index ``(pos, head)`` of ``layer`` is to be patched."""
        return self.wanted is None or (layer, index[1]) in self.wanted

    @property
    def indices(self) -> list[tuple[int | None, int | None]]:
        """(pos, head) per patched index within one layer, position-major like TransformerLens."""
        ps = self.positions if self.positions is not None else [None]
        hs = self.heads if self.heads is not None else [None]
        return [(p, h) for p in ps for h in hs]

    @property
    def shape(self) -> tuple[int, ...]:
        s = [len(self.layers)]
        s += [] if self.positions is None else [len(self.positions)]
        return tuple(s + ([] if self.heads is None else [len(self.heads)]))

    def selector(self, pos: int | None, head: int | None, ndim: int) -> tuple:
        """Index into one prompt's activation (``ndim`` dims) that selects a patched index."""
        sel: list = [slice(None)] * ndim
        if pos is not None:
            sel[self.spec.pos_axis] = pos
        if head is not None:
            assert self.spec.head_axis is not None  # a head index only at a head site
            sel[self.spec.head_axis] = head
        return tuple(sel)


def _make_plan(model: Model, site, by_pos, layers, heads, positions, seq) -> _Plan:
    spec = _SITES[site]
    is_head_site = spec.head_axis is not None
    if not is_head_site and heads is not None:
        raise ValueError(f"Site {site!r} has no heads; drop heads= or use patch_heads.")
    if is_head_site and not by_pos and positions is not None:
        raise ValueError("positions= needs by_pos=True (all-position patching has no position axis).")
    wanted = None
    if heads is not None:  # (layer, head) pairs or "L3H2" labels, as everywhere
        if layers is not None:
            raise ValueError("Give heads= as (layer, head) pairs or layers= to sweep whole layers, not both.")
        pairs = checks.heads(model, heads, name="heads", n_heads=n_heads_at(model, site))
        wanted = frozenset(pairs)
        layers = list(dict.fromkeys(lay for lay, _ in pairs))
    head_axis = list(dict.fromkeys(h for _, h in pairs)) if heads is not None else None
    plan = _Plan(
        site=site,
        spec=spec,
        layers=checks.indices(layers, model.cfg.n_layers, "layer"),
        positions=checks.positions(positions, seq) if (by_pos or not is_head_site) else None,
        heads=(head_axis or checks.indices(None, n_heads_at(model, site), "head")) if is_head_site else None,
        seq=seq,
        wanted=wanted,
    )
    missing = [n for n in (_hook_name(site, L) for L in plan.layers) if n not in model.hook_dict]
    if site == "mlp_out" and getattr(model.cfg, "attn_only", False):
        missing = [_hook_name(site, plan.layers[0])]
    if missing:
        raise ValueError(f"This model has no hook {missing[0]!r} (e.g. mlp_out on an attention-only model).")
    return plan


def _head_labels(model: Model, site: str, heads: list[int]) -> tuple[str, list]:
    n_q, n_site = model.cfg.n_heads, n_heads_at(model, site)
    if n_site == n_q:
        return "head", list(heads)
    g = n_q // n_site  # TransformerLens repeats KV head j for query heads j*g .. j*g+g-1
    return "kv_head", [f"kv{j}:q{j * g}-q{j * g + g - 1}" for j in heads]


def _result(model: Model, plan: _Plan, values: Tensor, metric, clean_tokens, baselines, method) -> Result:
    dims, labels = ["layer"], {"layer": list(plan.layers)}
    if plan.positions is not None:
        dims.append("pos")
        labels["pos"] = position_labels(model, clean_tokens[0], plan.positions)
    meta = dict(site=plan.site, hook=_SITES[plan.site].hook, by_pos=plan.positions is not None,
                method=method, model=getattr(model.cfg, "model_name", None),
                clean=baselines[0], corrupted=baselines[1],
                direction="clean activation patched into the corrupted run")
    if plan.heads is not None:
        head_dim, labels_h = _head_labels(model, plan.site, plan.heads)
        dims.append(head_dim)
        labels[head_dim] = labels_h
        if head_dim == "kv_head":
            g = model.cfg.n_heads // n_heads_at(model, plan.site)
            meta["query_heads"] = {j: list(range(j * g, j * g + g)) for j in plan.heads}
    return Result(values, tuple(dims), f"{metric_name(metric)} after patching {plan.site}", labels, meta)


# ------------------------------------------------------------------------------ the engine


def _set_index_hook(act: Tensor, hook, *, clean: Tensor, index: tuple) -> Tensor:
    """The reference setter: one index, whole batch."""
    act = act.clone()
    act[(slice(None), *index)] = clean[(slice(None), *index)]
    return act


def _masks(plan: _Plan, shape: tuple[int, ...], shared: int) -> Tensor:
    """``[index, *shape]``: which entries of one prompt's activation each patched index writes.

    An activation at a position p depends on tokens 0..p only (causal attention), so before
    ``shared`` (where every clean and corrupted prompt agree) the clean value is the corrupted
    one: those entries are left out, and an index made only of them is a no-op.
    """
    indices = plan.indices
    mask = torch.zeros(len(indices), *shape, dtype=torch.bool)
    for i, (p, h) in enumerate(indices):
        mask[(i, *plan.selector(p, h, len(shape)))] = True
    mask.narrow(plan.spec.pos_axis + 1, 0, min(shared, shape[plan.spec.pos_axis]))[:] = False
    return mask


@torch.no_grad()
def patch(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    site: Site,
    by_pos: bool = True,
    layers: Sequence[int] | None = None,
    heads=None,
    positions: Sequence[int] | None = None,
    variants_per_pass: int = VARIANTS_PER_PASS,
    progress: bool = False,
) -> Result:
    """Patch each clean activation at ``site`` into the corrupted run; the metric of each.

    Args:
        clean_tokens, corrupted_tokens: ``[batch, pos]``, same shape. The model runs on
            ``corrupted_tokens``; the patched value comes from ``clean_tokens``.
        metric: ``logits [batch, pos, d_vocab] -> scalar`` (see :mod:`workbench.core.metrics`).
        site: see :data:`Site`. ``by_pos`` only matters for head sites.
        layers: sweep only these layers (default all).
        heads: patch only these heads, as ``(layer, head)`` pairs or ``"L3H2"`` labels (not with
            ``layers``); the result keeps its ``layer x head`` grid over the layers and heads
            named, with NaN where a pair was not asked for. For ``k``/``v`` on a grouped-query
            model they are key/value heads.
        positions: sweep only these positions, the same in every prompt (default all).
        variants_per_pass: patched indices per forward pass, counted at full length (a pass that
            starts at a later position holds proportionally more); peak memory grows with it.
        progress: a tqdm bar over layers.

    Returns:
        Result with dims ``(layer, pos)`` for resid/attn_out/mlp_out, ``(layer, head)`` for heads
        over all positions and ``(layer, pos, head)`` by position (``kv_head`` for k/v on a
        grouped-query model). ``meta`` holds the clean and corrupted metric values.
    """
    _check_options(site, variants_per_pass)
    _, seq = checks.token_pair(model, clean_tokens, corrupted_tokens)
    plan = _make_plan(model, site, by_pos, layers, heads, positions, seq)
    names = {_hook_name(site, L) for L in plan.layers}
    clean_logits, cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    clean_value = check_scalar(metric(cast(Tensor, clean_logits)), "metric on the clean run").item()
    base = engine.base_run(model, corrupted_tokens, metric, plan.layers)
    indices = plan.indices
    mask = _masks(plan, tuple(cache[_hook_name(site, plan.layers[0])].shape[1:]),
                  shared_prefix(clean_tokens, corrupted_tokens))
    noop = ~mask.flatten(1).any(dim=1)
    values = torch.full((len(plan.layers), len(indices)), float("nan"))
    for li, layer in enumerate(tqdm(plan.layers, desc=f"patching {site}", disable=not progress)):
        name = _hook_name(site, layer)
        asked = torch.tensor([plan.asked(layer, ix) for ix in indices], dtype=torch.bool)
        values[li, noop & asked] = base.value
        todo = (asked & ~noop).nonzero().flatten().tolist()
        variants = [(engine.patch_from(name, mask[i][None], cache[name]),) for i in todo]
        if variants:
            values[li, todo] = engine.run_variants(model, corrupted_tokens, variants, metric,
                                                   variants_per_pass=variants_per_pass, base=base)
    return _result(model, plan, values.reshape(plan.shape), metric, clean_tokens,
                   (clean_value, base.value), "batched")


@torch.no_grad()
def patch_reference(model: Model, clean_tokens, corrupted_tokens, metric, *, site: Site, by_pos: bool = True,
                    layers=None, heads=None, positions=None, progress: bool = False) -> Result:
    """The slow, obviously correct loop: one hooked forward of the corrupted batch per index."""
    _check_options(site, 1)
    _, seq = checks.token_pair(model, clean_tokens, corrupted_tokens)
    plan = _make_plan(model, site, by_pos, layers, heads, positions, seq)
    names = {_hook_name(site, L) for L in plan.layers}
    clean_logits, cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    baselines = (check_scalar(metric(clean_logits)).item(), check_scalar(metric(model(corrupted_tokens))).item())
    values = torch.full((len(plan.layers), len(plan.indices)), float("nan"))
    for li, layer in enumerate(tqdm(plan.layers, desc=f"reference {site}", disable=not progress)):
        name = _hook_name(site, layer)
        clean = cache[name]
        for i, (p, h) in enumerate(plan.indices):
            if not plan.asked(layer, (p, h)):
                continue
            hook = partial(_set_index_hook, clean=clean, index=plan.selector(p, h, clean.ndim - 1))
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])
            values[li, i] = check_scalar(metric(logits))
    return _result(model, plan, values.reshape(plan.shape), metric, clean_tokens, baselines, "reference")


# ------------------------------------------------------------------------------ named variants


def patch_heads(model: Model, clean_tokens, corrupted_tokens, metric, *, by_pos: bool = False,
                site: HeadSite = "z", layers=None, heads=None, positions=None,
                variants_per_pass: int = VARIANTS_PER_PASS, progress: bool = False) -> Result:
    """Patch attention heads: output ``z`` (default), ``q``, ``k``, ``v`` or ``pattern``.

    Same layout and values as ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos``
    (``(layer, head)``) and ``..._by_pos`` (``(layer, pos, head)``) called as
    ``f(model, corrupted_tokens, clean_cache, metric)``: note the clean activation goes into the
    corrupted run. For ``site="pattern", by_pos=True`` TransformerLens orders the axes
    ``(layer, head, dest_pos)``; here they are ``(layer, pos, head)`` like every other site.
    See :func:`patch` for the arguments.
    """
    if site not in get_args(HeadSite):
        raise ValueError(f"patch_heads site must be one of {list(get_args(HeadSite))}, got {site!r}.")
    return patch(model, clean_tokens, corrupted_tokens, metric, site=site, by_pos=by_pos, layers=layers,
                 heads=heads, positions=positions, variants_per_pass=variants_per_pass, progress=progress)


def _layer_pos_variant(site: Site, what: str):
    def variant(model: Model, clean_tokens, corrupted_tokens, metric, *, layers=None, positions=None,
                variants_per_pass: int = VARIANTS_PER_PASS, progress: bool = False) -> Result:
        return patch(model, clean_tokens, corrupted_tokens, metric, site=site, layers=layers,
                     positions=positions, variants_per_pass=variants_per_pass, progress=progress)

    variant.__name__ = variant.__qualname__ = f"patch_{site.removesuffix('_pre')}"
    variant.__doc__ = (
        f"Patch {what} by layer and position: a Result with dims ``(layer, pos)``, the same as "
        f"``transformer_lens.patching.get_act_patch_{site}``. See :func:`patch` for the arguments."
    )
    return variant


patch_resid = _layer_pos_variant("resid_pre", "the residual stream before each block")
patch_attn_out = _layer_pos_variant("attn_out", "each attention layer's output")
patch_mlp_out = _layer_pos_variant("mlp_out", "each MLP layer's output")
