"""Attribution patching: a first-order estimate of every activation patch from one backward pass.

Exact patching (:mod:`workbench.techniques.patching`) runs the corrupted input once per patched index.
Attribution patching linearises the metric around the corrupted run instead: patching activation
``a`` from its corrupted value to its clean value changes the metric by about
``grad_a metric · (a_clean - a_corrupted)``. One forward and one backward pass on the corrupted
input (plus one forward on the clean input for ``a_clean``) give that estimate for every head,
layer and position at once.

Every value here is laid out like the exact result for the same site and means the same thing:
an estimate of ``metric(corrupted run with the clean activation patched in)``, i.e. the corrupted
metric value plus the first-order change (``meta["corrupted"]`` holds the baseline). So with a
normalised metric (corrupted 0, clean 1) both read as "fraction of the clean behaviour restored".
The estimate is exact wherever the metric is linear in the activation (e.g. the last layer's
outputs of a model without a final norm); it degrades where attention patterns or norms respond
strongly, so check the heads it ranks first with exact patching.

>>> import torch
>>> from workbench import models, attribution
>>> from workbench.core.metrics import LogitDiff
>>> model = models.tiny_model()
>>> clean = torch.tensor([[1, 5, 7, 9, 3]]); corrupted = torch.tensor([[1, 6, 7, 9, 3]])
>>> a = attribution.attribute(model, clean, corrupted, LogitDiff(answers=[2], wrong=[4]))
>>> a.heads.dims, a.heads_by_pos.shape, a.resid.shape
(('layer', 'head'), (2, 5, 4), (2, 5))
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core import checks
from workbench.core.metrics import Metric, check_scalar, metric_name
from workbench.core.persist import Persistent
from workbench.core.results import Result
from workbench.core.types import HookList, Model
from workbench.models.tokens import position_labels

__all__ = [
    "Attribution",
    "attribute",
    "attribute_heads",
    "attribute_resid",
    "attribute_attn_out",
    "attribute_mlp_out",
]

_HOOKS = {"z": "attn.hook_z", "resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out",
          "mlp_out": "hook_mlp_out"}


@dataclass
class Attribution(Persistent):
    """Attribution-patching estimates for every site, each laid out like exact patching.

    Attributes:
        heads: ``(layer, head)``, head outputs patched at all positions.
        heads_by_pos: ``(layer, pos, head)``, head outputs patched at one position.
        resid: ``(layer, pos)``, the residual stream before each block.
        attn_out, mlp_out: ``(layer, pos)``; ``mlp_out`` is None for an attention-only model.
    """

    heads: Result | None
    heads_by_pos: Result | None
    resid: Result | None
    attn_out: Result | None
    mlp_out: Result | None

    def __iter__(self):
        return iter((f.name, getattr(self, f.name)) for f in fields(self))

    def to_frame(self) -> pd.DataFrame:
        """Every site's :meth:`Result.to_frame`, stacked, with a ``site`` column first."""
        frames = [r.to_frame().assign(site=name) for name, r in self if r is not None]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["site", *[c for c in frame.columns if c != "site"]]]

    def plot(self, site: str | None = None, **kwargs):
        """The figure of one site's Result (by default ``heads``, else the first 2-d site)."""
        if site is None:
            site = next(name for name, r in self if r is not None and r.values.ndim == 2)
        result = getattr(self, site)
        if result is None:
            raise ValueError(f"This attribution has no {site!r} site; it has {[n for n, r in self if r is not None]}.")
        return result.plot(**kwargs)


def _make_leaf(act: Tensor, hook) -> Tensor:
    """Start the autograd graph here: everything downstream gets a gradient."""
    return act.detach().requires_grad_(True)


def _keep(act: Tensor, hook, *, into: dict, name: str) -> Tensor:
    # Keep (and return) a new node of the graph, under the name asked for: a TransformerBridge's
    # hook may carry its own alias, and goes on with what the hook returns.
    into[name] = out = act.view_as(act)
    return out


def _grad_times_delta(model: Model, clean_tokens, corrupted_tokens, metric, sites) -> tuple[dict, tuple]:
    """``{hook name: sum over d of grad * (clean - corrupted)}``, each ``[batch, pos(, head)]``."""
    names = [f"blocks.{L}.{_HOOKS[s]}" for s in sites for L in range(model.cfg.n_layers)]
    names = [n for n in names if n in model.hook_dict]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in set(names))
        clean_value = check_scalar(metric(clean_logits), "metric on the clean run").item()
    names = [n for n in names if n in cache]  # e.g. an attention-only block never runs hook_mlp_out
    if not names:
        return {}, (clean_value, check_scalar(metric(model(corrupted_tokens))).item())
    acts: dict[str, Tensor] = {}
    hooks: HookList = [("blocks.0.hook_resid_pre", _make_leaf)]
    hooks += [(n, partial(_keep, into=acts, name=n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = check_scalar(metric(model(corrupted_tokens)), "metric on the corrupted run")
        grads = torch.autograd.grad(value, [acts[n] for n in names], allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        delta = cache[n] - acts[n].detach()
        out[n] = (torch.zeros(delta.shape[:-1], device=delta.device) if g is None
                  else (g.float() * delta.float()).sum(-1))  # float32 sums, whatever the model's dtype
    return out, (clean_value, value.item())


def _stack(per_name: dict[str, Tensor], site: str, n_layers: int) -> Tensor | None:
    rows = [per_name.get(f"blocks.{L}.{_HOOKS[site]}") for L in range(n_layers)]
    if rows[0] is None:
        return None
    present = [r for r in rows if r is not None]
    if len(present) != n_layers:
        raise ValueError(f"Site {site!r} runs in only {len(present)} of {n_layers} layers.")
    return torch.stack(present).sum(1)  # sum over the batch


@torch.no_grad()
def attribute(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    sites: tuple[str, ...] = ("z", "resid_pre", "attn_out", "mlp_out"),
) -> Attribution:
    """Attribution patching for head outputs (all positions and by position) and resid/attn/mlp.

    One clean forward, one corrupted forward and one backward pass for everything. Values are
    estimates of the metric after patching the clean activation into the corrupted run, laid
    out as :func:`workbench.techniques.patching.patch_heads` / ``patch_resid`` / ... lay theirs out.
    ``sites`` restricts which hooks are kept (fields of other sites are None).
    """
    bad = [s for s in sites if s not in _HOOKS]
    if bad or not sites:
        raise ValueError(f"Unknown site(s) {bad or sites}; choose from {list(_HOOKS)}.")
    checks.token_pair(model, clean_tokens, corrupted_tokens)
    per_name, (clean_value, corrupted_value) = _grad_times_delta(
        model, clean_tokens, corrupted_tokens, metric, sites
    )
    n = model.cfg.n_layers
    layer_labels = list(range(n))
    pos_labels = position_labels(model, clean_tokens[0])
    meta = dict(method="attribution patching (gradient x (clean - corrupted))", clean=clean_value,
                corrupted=corrupted_value, model=getattr(model.cfg, "model_name", None),
                direction="clean activation patched into the corrupted run", forward_passes=2,
                backward_passes=1)
    label = f"{metric_name(metric)} after patching, first-order estimate"

    def result(values, dims, site, **extra):
        labels = {"layer": layer_labels}
        if "pos" in dims:
            labels["pos"] = pos_labels
        return Result(values + corrupted_value, dims, f"{label} ({site})", labels,
                      dict(meta, site=site, **extra))

    z = _stack(per_name, "z", n) if "z" in sites else None  # [layer, pos, head]
    parts = {}
    for site in ("resid_pre", "attn_out", "mlp_out"):
        v = _stack(per_name, site, n) if site in sites else None
        parts[site] = None if v is None else result(v, ("layer", "pos"), site, by_pos=True)
    return Attribution(
        heads=None if z is None else result(z.sum(1), ("layer", "head"), "z", by_pos=False),
        heads_by_pos=None if z is None else result(z, ("layer", "pos", "head"), "z", by_pos=True),
        resid=parts["resid_pre"],
        attn_out=parts["attn_out"],
        mlp_out=parts["mlp_out"],
    )


def attribute_heads(model: Model, clean_tokens, corrupted_tokens, metric, *, by_pos: bool = False) -> Result:
    """Attribution patching of head outputs: ``(layer, head)``, or ``(layer, pos, head)`` by position."""
    a = attribute(model, clean_tokens, corrupted_tokens, metric, sites=("z",))
    out = a.heads_by_pos if by_pos else a.heads
    assert out is not None  # the site asked for is filled
    return out


def attribute_resid(model: Model, clean_tokens, corrupted_tokens, metric) -> Result:
    """Attribution patching of the residual stream before each block: ``(layer, pos)``."""
    out = attribute(model, clean_tokens, corrupted_tokens, metric, sites=("resid_pre",)).resid
    assert out is not None  # the site asked for is filled
    return out


def attribute_attn_out(model: Model, clean_tokens, corrupted_tokens, metric) -> Result:
    """Attribution patching of each attention layer's output: ``(layer, pos)``."""
    out = attribute(model, clean_tokens, corrupted_tokens, metric, sites=("attn_out",)).attn_out
    assert out is not None  # the site asked for is filled
    return out


def attribute_mlp_out(model: Model, clean_tokens, corrupted_tokens, metric) -> Result:
    """Attribution patching of each MLP layer's output: ``(layer, pos)``."""
    r = attribute(model, clean_tokens, corrupted_tokens, metric, sites=("mlp_out",)).mlp_out
    if r is None:
        raise ValueError("This model has no MLP layers (attention-only): nothing to attribute.")
    return r
