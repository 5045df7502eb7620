"""K variants of one forward pass, stacked on the batch axis, each with its own row-masked edits.

A *variant* is a tuple of :class:`Edit` objects, each one intervention at one hook: where its
boolean ``mask`` is set, the activation becomes ``value`` (or ``activation + value``). The small
constructors name the usual kinds: :func:`patch_from` (the value from another run), :func:`zero`,
:func:`mean`, :func:`resample`, :func:`add` (a vector), :func:`zero_query`.

:func:`run_variants` runs many variants of one batch of prompts, ``variants_per_pass`` of them per
forward pass (variant ``i`` sees batch rows ``i * batch .. i * batch + batch - 1``), and returns
one metric value per variant. Where that is exact it starts late:

- **at a later layer**: a variant whose first edit is at layer ``l`` starts from the base run's
  cached residual stream before block ``l`` (``model(resid, start_at_layer=l)``);
- **at a later position**: under causal attention an edit at position ``p`` changes nothing before
  ``p``, so the keys and values of positions before the variant's first edited position come from
  the base run's key/value cache and those positions are not recomputed (never later than the
  first position the metric reads);
- **reading few logits**: a metric that names the logits it reads (``readout`` and
  ``from_readout``, see :mod:`workbench.core.metrics`) gets only those, through
  :meth:`workbench.core.readout.ModelReadout.read`; any other callable gets full logits.

A model without that fast path (see :func:`workbench.core.runtime.supports_fast_path`, e.g. a
``TransformerBridge``) runs each pass over every layer and position, still batched.
:func:`run_variants_reference` is the plain loop (one hooked forward per variant) the tests hold
the engine to.

>>> import torch
>>> from workbench import models
>>> from workbench.core import engine
>>> from workbench.core.metrics import LogitDiff
>>> model = models.tiny_model()
>>> tokens = torch.tensor([[1, 5, 7, 9, 3]])
>>> mask = torch.zeros(1, 5, model.cfg.n_heads, 1, dtype=torch.bool); mask[:, 2:, 1] = True
>>> variants = [(engine.zero("blocks.0.attn.hook_z", mask),), (engine.zero("blocks.1.attn.hook_z", mask),)]
>>> metric = LogitDiff(answers=[2], wrong=[4])
>>> fast = engine.run_variants(model, tokens, variants, metric)
>>> slow = engine.run_variants_reference(model, tokens, variants, metric)
>>> fast.shape, bool(torch.allclose(fast, slow, atol=1e-5))
(torch.Size([2]), True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Sequence, cast

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core.metrics import Readout, check_scalar
from workbench.core.readout import readout_of
from workbench.core.runtime import cache_prefix, supports_fast_path
from workbench.core.types import Model

__all__ = [
    "Edit",
    "Variant",
    "VARIANTS_PER_PASS",
    "add",
    "base_run",
    "final_residuals",
    "mean",
    "patch_from",
    "resample",
    "run_variants",
    "run_variants_reference",
    "zero",
    "zero_query",
]

#: The default number of variants per forward pass.
VARIANTS_PER_PASS = 64

_LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True, eq=False)
class Edit:
    """One intervention at one hook, for the whole batch of prompts.

    ``mask`` (bool) and ``value`` broadcast against the hook's activation ``[batch, ...]`` (a
    leading axis of 1 means every prompt alike). Where ``mask`` is set the activation becomes
    ``value``, or ``activation + value`` when ``add``; elsewhere it is left alone. The position
    axis is 1, or 2 for ``hook_pattern`` / ``hook_attn_scores`` (``[batch, head, query, key]``).
    """

    hook: str
    mask: Tensor
    value: Tensor
    add: bool = False

    def __post_init__(self) -> None:
        if _LAYER.match(self.hook) is None:
            raise ValueError(f"An edit needs a hook inside a block ('blocks.{{layer}}. ...'), got {self.hook!r}.")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"An edit's mask must be a bool tensor, got {self.mask.dtype}.")
        if self.mask.ndim < 2:
            raise ValueError(f"An edit's mask must be [batch or 1, pos, ...], got shape {tuple(self.mask.shape)}.")

    @property
    def layer(self) -> int:
        m = _LAYER.match(self.hook)
        assert m is not None  # checked in __post_init__
        return int(m.group(1))

    @property
    def pos_axis(self) -> int:
        return 2 if self.hook.endswith(("hook_pattern", "hook_attn_scores")) else 1

    def first_pos(self) -> int:
        """The earliest position the edit touches (its mask's length when it touches none)."""
        axis = self.pos_axis
        other = [d for d in range(self.mask.ndim) if d != axis]
        hit = self.mask.any(dim=other) if other else self.mask
        idx = hit.nonzero()
        return int(idx[0]) if len(idx) else self.mask.shape[axis]



Variant = Sequence[Edit]


# ------------------------------------------------------------------------------ the kinds


def patch_from(hook: str, mask: Tensor, source: Tensor) -> Edit:
    """Write ``source`` (the same hook's activation on another run, ``[batch, ...]``) where ``mask``."""
    return Edit(hook, mask, source)


def zero(hook: str, mask: Tensor) -> Edit:
    """Set the activation to zero where ``mask``."""
    return Edit(hook, mask, torch.zeros((), dtype=torch.float32))


def mean(hook: str, mask: Tensor, activations: Tensor) -> Edit:
    """Write the mean over prompts of ``activations`` (``[batch, ...]``, e.g. a reference set) where ``mask``."""
    return Edit(hook, mask, activations.mean(dim=0, keepdim=True))


def resample(hook: str, mask: Tensor, activations: Tensor, order: Int[Tensor, " batch"]) -> Edit:
    """Write prompt ``order[b]``'s activation into prompt ``b`` where ``mask``."""
    return Edit(hook, mask, activations[torch.as_tensor(order, dtype=torch.long)])


def add(hook: str, mask: Tensor, vector: Tensor) -> Edit:
    """Add ``vector`` (broadcast against the activation, e.g. ``[d_model]``) where ``mask``."""
    return Edit(hook, mask, vector, add=True)


def zero_query(layer: int, head: int, positions: Sequence[int] | None, *, n_heads: int, seq: int) -> Edit:
    """Zero head ``head``'s query at ``positions`` (default all) of layer ``layer``: its attention
    scores become 0 there, so it attends uniformly over the positions it can see."""
    mask = torch.zeros(1, seq, n_heads, 1, dtype=torch.bool)
    mask[0, slice(None) if positions is None else list(positions), head] = True
    return zero(f"blocks.{layer}.attn.hook_q", mask)


# ------------------------------------------------------------------------------ hooks


def _stack(ts: list[Tensor]) -> Tensor:
    """One tensor ``[k, ...]`` from ``k`` tensors, shared (``[1, ...]``) when they are one object."""
    if all(t is ts[0] for t in ts):
        return ts[0][None]
    shape = torch.broadcast_shapes(*(t.shape for t in ts))
    return torch.stack([t.expand(shape) for t in ts])


def _narrow(t: Tensor, axis: int, start: int) -> Tensor:
    return t if start == 0 or t.shape[axis] == 1 else t.narrow(axis, start, t.shape[axis] - start)


def _edit_hook(act: Tensor, hook, *, k: int, mask: Tensor, value: Tensor, add: bool) -> Tensor:
    """Batch row ``i * batch + b`` is variant ``i``, prompt ``b``; ``mask``/``value`` are ``[k or 1, ...]``."""
    rows = act.unflatten(0, (k, act.shape[0] // k))
    if mask.ndim != rows.ndim:
        raise ValueError(f"An edit's mask at {hook.name!r} has {mask.ndim - 1} dims; the activation "
                         f"there has {act.ndim} ({tuple(act.shape[1:])} after the batch).")
    value = value.to(device=act.device, dtype=act.dtype)
    mask = mask.to(act.device)
    out = rows + torch.where(mask, value, 0) if add else torch.where(mask, value, rows)
    return out.flatten(0, 1)


def _as_full(e: Edit) -> Tensor:
    """The edit's value with as many dims as its mask (a scalar or a vector broadcasts from the right)."""
    v = e.value
    return v.reshape((1,) * (e.mask.ndim - v.ndim) + tuple(v.shape)) if v.ndim < e.mask.ndim else v


def _hooks(chunk: Sequence[Variant], start: int) -> list:
    """One hook per hook name and kind (set, add): every variant's edits there, stacked."""
    k = len(chunk)
    out = []
    for name in dict.fromkeys(e.hook for v in chunk for e in v):
        for add_kind in (False, True):
            per = [[e for e in v if e.hook == name and e.add == add_kind] for v in chunk]
            if not any(per):
                continue
            if any(len(p) > 1 for p in per):
                kind = "add" if add_kind else "set"
                raise ValueError(f"A variant has more than one {kind} edit at {name!r}; merge their masks.")
            ref = next(p[0] for p in per if p)
            off = torch.zeros((1,) * ref.mask.ndim, dtype=torch.bool)
            mask = _stack([p[0].mask if p else off for p in per])
            value = _stack([_as_full(p[0]) if p else _as_full(ref) for p in per])
            axis = ref.pos_axis + 1  # in [k, batch, ...]
            mask, value = _narrow(mask, axis, start), _narrow(value, axis, start)
            out.append((name, partial(_edit_hook, k=k, mask=mask, value=value, add=add_kind)))
    return out


# ------------------------------------------------------------------------------ the base run


def has_readout(metric) -> bool:
    """Whether ``metric`` names the logits it reads (``readout`` and ``from_readout``)."""
    return callable(getattr(metric, "readout", None)) and callable(getattr(metric, "from_readout", None))


@dataclass
class Base:
    """The run every variant modifies: its metric, and what variants start from (fast path only)."""

    tokens: Tensor
    value: float  # the metric on the unedited run
    logits: Tensor | None  # its full logits (when the metric has no readout)
    resid: dict[int, Tensor]  # layer -> resid_pre [batch, pos, d_model]
    final: Tensor | None  # final residual [batch, pos, d_model]
    kv: object | None  # its key/value cache
    readout: Readout | None
    max_start: int  # a pass starts no later than this (the earliest position the metric reads)

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq(self) -> int:
        return self.tokens.shape[1]


def from_readout(metric, x: Tensor, k: int) -> Tensor:
    """``metric.from_readout(x)``, checked to be one finite value per variant ``[k]``."""
    out = metric.from_readout(x)
    if not isinstance(out, Tensor) or out.shape != (k,):
        raise ValueError(
            f"The metric must return a scalar per patched run; from_readout gave shape "
            f"{tuple(getattr(out, 'shape', ()))} for {k} runs. Reduce over the batch (e.g. .mean())."
        )
    if not torch.isfinite(out).all():
        raise ValueError(f"The metric returned a non-finite value ({out.tolist()}).")
    return out


def _check_readout(model: Model, metric, readout: Readout, final: Tensor, value: float) -> None:
    batch = final.shape[0]
    check = from_readout(metric, readout_of(model).read(final[None, torch.arange(batch), readout.pos],
                                                        readout.tokens), 1)
    # A float32 model's two paths agree to 1e-4; a half-precision one's full logits carry its
    # own rounding (16 steps of its machine epsilon: 0.125 for bfloat16, 0.016 for float16).
    tol = max(1e-4, 16 * torch.finfo(final.dtype).eps)
    if abs(check.item() - value) > tol * (1 + abs(value)):
        raise ValueError(
            f"metric.from_readout gives {check.item():.6g} on the corrupted run but metric(logits) "
            f"gives {value:.6g}: its readout does not describe what it computes."
        )


@torch.no_grad()
def base_run(model: Model, tokens: Tensor, metric, layers: Sequence[int], *, fast: bool | None = None,
             max_start: int | None = None) -> Base:
    """Run ``tokens`` once, keeping what variants starting at ``layers`` need; check the metric.

    ``metric=None`` (for :func:`final_residuals`): no metric; then ``max_start`` (default the
    last position) is the latest position a pass may start at."""
    fast = supports_fast_path(model) if fast is None else fast
    batch, seq = tokens.shape
    if not fast:
        logits = cast(Tensor, model(tokens))
        value = float("nan") if metric is None else check_scalar(metric(logits), "metric on the corrupted run").item()
        return Base(tokens, value, logits, {}, None, None, None, 0)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    n = model.cfg.n_layers
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
    keep = {f"blocks.{L}.hook_resid_pre" for L in layers} | {f"blocks.{n - 1}.hook_resid_post"}
    out, cache = model.run_with_cache(
        tokens, names_filter=lambda x: x in keep, past_kv_cache=kv,
        attention_mask=torch.ones_like(tokens),  # TransformerLens moves it with the tokens
    )
    logits = cast(Tensor, out)
    value = float("nan") if metric is None else check_scalar(metric(logits), "metric on the corrupted run").item()
    resid = {L: cache[f"blocks.{L}.hook_resid_pre"] for L in layers}
    final = cache[f"blocks.{n - 1}.hook_resid_post"]
    readout, max_start = None, seq - 1 if max_start is None else max_start
    if metric is not None and has_readout(metric):
        readout = metric.readout(batch, seq)
        assert readout.pos is not None and readout.tokens is not None  # a readout names both
        max_start = int(readout.pos.min())
        _check_readout(model, metric, readout, final, value)
    return Base(tokens, value, logits, resid, final, kv, readout, max_start)


# ------------------------------------------------------------------------------ passes


def run_pass(model: Model, base: Base, layer: int, chunk: Sequence[Variant], start: int, metric) -> Tensor:
    """Metric values of the variants in ``chunk`` (one forward pass), from ``layer`` and position
    ``start`` on (both 0 without the fast path)."""
    k, n = len(chunk), model.cfg.n_layers
    with model.hooks(fwd_hooks=_hooks(chunk, start)):
        if base.kv is None:  # any model with hooks: full forward of the repeated batch
            logits = model(base.tokens.repeat(k, 1))
            final = None
        else:
            resid = base.resid[layer][:, start:].repeat(k, 1, 1)
            kv = cache_prefix(base.kv, end=start, times=k, from_layer=layer) if start > 0 else None
            final = model(resid, start_at_layer=layer, stop_at_layer=n, past_kv_cache=kv)
    if base.readout is not None:
        assert final is not None  # a readout is set on the fast path only
        rows = final.unflatten(0, (k, base.batch))[:, torch.arange(base.batch), base.readout.pos - start]
        return from_readout(metric, readout_of(model).read(rows, base.readout.tokens), k)
    if final is not None:
        assert base.final is not None  # kept on the fast path
        prefix = base.final[:, :start].repeat(k, 1, 1)
        logits = readout_of(model).logits(torch.cat([prefix, final], dim=1))
    return torch.stack([check_scalar(metric(x)) for x in logits.split(base.batch)])


def plan_passes(starts: Sequence[int], todo: Sequence[int], variants_per_pass: int, seq: int) -> list[tuple[list[int], int]]:
    """Split the variants numbered in ``todo`` into forward passes: ``(variants, start)`` each.

    ``starts[i]`` is variant ``i``'s first position to recompute; positions before a pass's
    ``start`` (its earliest variant's) are not recomputed. Variants are taken in position order; a
    pass holds at most ``variants_per_pass`` variants at full length (more when it starts later,
    as its sequences are shorter), and spans few positions, since every position between its
    first and a variant's own is recomputed for nothing.
    """
    out: list[tuple[list[int], int]] = []
    rows: list[int] = []
    start = 0
    for i in sorted(todo, key=lambda j: starts[j]):
        s = starts[i]
        if rows:
            length = seq - start
            full = len(rows) >= max(variants_per_pass, variants_per_pass * seq // length)
            far = 4 * (s - start) > length  # this row would recompute > 1/4 of its length for nothing
            if not (full or far):
                rows.append(i)
                continue
            out.append((rows, start))
        rows, start = [i], s
    if rows:
        out.append((rows, start))
    return out


def check_variants_per_pass(variants_per_pass) -> int:
    """``variants_per_pass`` if it is a positive int, else a ``ValueError``."""
    if isinstance(variants_per_pass, bool) or not isinstance(variants_per_pass, int) or variants_per_pass < 1:
        raise ValueError(f"variants_per_pass must be a positive int (variants per forward pass), "
                         f"got {variants_per_pass!r}.")
    return variants_per_pass


@torch.no_grad()
def run_variants(model: Model, tokens: Int[Tensor, "batch pos"], variants: Sequence[Variant], metric, *,
                 variants_per_pass: int = VARIANTS_PER_PASS, base: Base | None = None) -> Tensor:
    """``metric`` of each variant of the run on ``tokens``, ``[len(variants)]``, batched and started
    late where exact (see the module's docstring). ``base``: a :func:`base_run` to reuse."""
    check_variants_per_pass(variants_per_pass)
    variants = [tuple(v) for v in variants]
    if any(not v for v in variants):
        raise ValueError("Every variant needs at least one edit (the unedited run is base_run(...).value).")
    layers = [min(e.layer for e in v) for v in variants]
    if base is None:
        base = base_run(model, tokens, metric, sorted(set(layers)))
    fast = base.kv is not None
    starts = [min(min(e.first_pos() for e in v), base.max_start) if fast else 0 for v in variants]
    out = torch.full((len(variants),), float("nan"))
    for layer in sorted(set(layers)):
        mine = [i for i, L in enumerate(layers) if L == layer]
        for rows, start in plan_passes(starts, mine, variants_per_pass, base.seq):
            out[rows] = run_pass(model, base, layer if fast else 0, [variants[i] for i in rows], start, metric)
    return out


@torch.no_grad()
def run_variants_reference(model: Model, tokens: Int[Tensor, "batch pos"], variants: Sequence[Variant],
                           metric) -> Tensor:
    """The slow, obviously correct loop: one full hooked forward of ``tokens`` per variant."""
    out = []
    for v in variants:
        with model.hooks(fwd_hooks=_hooks([tuple(v)], 0)):
            out.append(check_scalar(metric(model(tokens))))
    return torch.stack(out).float()


def _keep_final(act: Tensor, hook, *, into: list) -> None:
    into.append(act)


@torch.no_grad()
def final_residuals(model: Model, tokens: Int[Tensor, "batch pos"], variants: Sequence[Variant],
                    positions: Sequence[int], *, variants_per_pass: int = VARIANTS_PER_PASS,
                    base: Base | None = None) -> Tensor:
    """The final residual stream (before the final norm) of each variant at ``positions``,
    ``[len(variants), batch, len(positions), d_model]``: for callers that read more than one
    scalar (e.g. the argmax at several answer positions, through
    :meth:`workbench.core.readout.ModelReadout.logits`). Passes start late as in
    :func:`run_variants`, never after ``min(positions)``."""
    check_variants_per_pass(variants_per_pass)
    variants = [tuple(v) for v in variants]
    if any(not v for v in variants):
        raise ValueError("Every variant needs at least one edit.")
    seq, n = tokens.shape[1], model.cfg.n_layers
    pos = [p % seq for p in positions]
    layers = [min(e.layer for e in v) for v in variants]
    if base is None:
        base = base_run(model, tokens, None, sorted(set(layers)), max_start=min(pos))
    fast = base.kv is not None
    starts = [min(min(e.first_pos() for e in v), base.max_start, min(pos)) if fast else 0 for v in variants]
    out = torch.empty(len(variants), tokens.shape[0], len(pos), model.cfg.d_model)
    for layer in sorted(set(layers)):
        mine = [i for i, L in enumerate(layers) if L == layer]
        for rows, start in plan_passes(starts, mine, variants_per_pass, seq):
            chunk, k = [variants[i] for i in rows], len(rows)
            kept: list[Tensor] = []
            hooks = _hooks(chunk, start) + [(f"blocks.{n - 1}.hook_resid_post", partial(_keep_final, into=kept))]
            with model.hooks(fwd_hooks=hooks):
                if fast:
                    resid = base.resid[layer][:, start:].repeat(k, 1, 1)
                    kv = cache_prefix(base.kv, end=start, times=k, from_layer=layer) if start > 0 else None
                    model(resid, start_at_layer=layer, stop_at_layer=n, past_kv_cache=kv)
                else:
                    model(tokens.repeat(k, 1), return_type=None)
            final = kept[-1].unflatten(0, (k, tokens.shape[0]))
            out[rows] = final[:, :, [p - start for p in pos]].float().to(out.device)
    return out
