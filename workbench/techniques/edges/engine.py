"""What attribution and evaluation share: the model settings, node-output hooks, input sites and
the metric read from the final residual stream.

Node outputs are computed from ``attn.hook_z`` (``z_h @ W_O[h]``, one einsum per layer) rather
than by switching on ``use_attn_result``, whose broadcast product is several times slower and
larger; the values are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.engine import has_readout
from workbench.core.metrics import check_scalar
from workbench.core.readout import readout_of
from workbench.core.types import HookList, Model
from workbench.techniques.edges.graph import Layout

__all__ = ["InputSite", "input_sites", "node_outputs", "output_hooks", "run_metric", "split_inputs"]


@contextmanager
def split_inputs(model: Model) -> Iterator[None]:
    """Turn on split q/k/v input hooks and ``hook_mlp_in``; restore both settings afterwards,
    even when the body raises."""
    cfg = model.cfg
    saved = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    try:
        model.set_use_split_qkv_input(True)
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_split_qkv_input(saved[0])
        if not cfg.attn_only:
            model.set_use_hook_mlp_in(saved[1])


Sink = Callable[[slice, Tensor], None]  # (forward-node slice, value [batch, pos, n, d_model])


def output_hooks(model: Model, layout: Layout, sink: Sink) -> HookList:
    """Forward hooks that hand every node's output to ``sink`` (see :mod:`.graph` for the
    definition of a head's output, including the post-norm case)."""
    hooks: HookList = []

    def embed_hook(act, hook):
        sink(slice(0, 1), act[:, :, None])

    hooks.append(("blocks.0.hook_resid_pre", embed_hook))
    post = model.cfg.use_normalization_before_and_after
    for L in range(layout.n_layers):
        s = layout.head_index(L, 0)
        heads = slice(s, s + layout.n_heads)
        attn = model.blocks[L].attn
        stash: dict[str, Tensor] = {}

        def z_hook(z, hook, *, attn=attn, heads=heads, stash=stash):
            result = torch.einsum("bphe,hed->bphd", z, attn.W_O)
            if post:
                stash["result"] = result
            else:
                sink(heads, result)

        hooks.append((f"blocks.{L}.attn.hook_z", z_hook))
        if post:
            block = model.blocks[L]

            def scale_hook(scale, hook, *, block=block, heads=heads, stash=stash):
                share = stash.pop("result") + block.attn.b_O / layout.n_heads
                sink(heads, share / scale[:, :, None, :] * block.ln1_post.w)

            hooks.append((f"blocks.{L}.ln1_post.hook_scale", scale_hook))
        if layout.has_mlp:
            m = layout.mlp_index(L)

            def mlp_hook(act, hook, *, m=m):
                sink(slice(m, m + 1), act[:, :, None])

            hooks.append((f"blocks.{L}.hook_mlp_out", mlp_hook))
    return hooks


@dataclass(frozen=True)
class InputSite:
    """One hook that carries inputs: its name, the input columns, how many writers it reads,
    and whether it has a head axis (``[batch, pos, n, d_model]``) or not (``[batch, pos, d_model]``)."""

    name: str
    columns: slice
    n_upstream: int
    per_head: bool


def input_sites(layout: Layout) -> list[InputSite]:
    """Every input hook in forward order: q, k, v of each layer, its MLP input, then the logits."""
    sites = []
    last = layout.n_layers - 1
    for L in range(layout.n_layers):
        up = layout.n_upstream_attn(L)
        sites.append(InputSite(f"blocks.{L}.hook_q_input", layout.q_columns(L), up, True))
        sites.append(InputSite(f"blocks.{L}.hook_k_input", layout.k_columns(L), up, True))
        sites.append(InputSite(f"blocks.{L}.hook_v_input", layout.v_columns(L), up, True))
        if layout.has_mlp:
            c = layout.mlp_column(L)
            sites.append(InputSite(f"blocks.{L}.hook_mlp_in", slice(c, c + 1), layout.n_upstream_mlp(L), False))
    c = layout.logits_column
    sites.append(InputSite(f"blocks.{last}.hook_resid_post", slice(c, c + 1), layout.n_forward, False))
    return sites


def run_metric(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    metric,
    hooks: HookList,
    *,
    what: str = "metric",
    start: tuple[int, Tensor] | None = None,
    prefix: tuple[object, int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run the model with ``hooks``; return the metric (a scalar, differentiable) and, when the
    metric reads a few logits per prompt (``readout``), its value on every prompt alone ``[batch]``.

    With a readout metric the forward stops before the unembedding and only the logits the
    metric reads are computed (the same numbers, see :meth:`workbench.core.readout.ModelReadout.read`).
    ``start=(layer, resid_pre)`` starts the run at that layer from the given residual stream.
    ``prefix=(kv, p)``: the first ``p`` positions are not run; their keys and values come from the
    frozen key/value cache ``kv`` (:func:`workbench.core.runtime.cache_prefix`), so hooks see
    positions ``p`` on only. It needs a readout metric that reads no position before ``p``.
    """
    batch, seq = tokens.shape
    kwargs: dict[str, Any] = {} if start is None else {"start_at_layer": start[0]}
    inputs = tokens if start is None else start[1]
    p = 0
    if prefix is not None:
        if start is not None or not has_readout(metric):
            raise ValueError("prefix= needs a run from the tokens (no start=) and a metric with a readout.")
        kv, p = prefix
        # attention_mask: every position attends as in a run without the cache (no padding mask).
        inputs, kwargs = tokens[:, p:], {"past_kv_cache": kv, "attention_mask": torch.ones_like(tokens[:, p:])}
    with model.hooks(fwd_hooks=hooks):
        if has_readout(metric):
            resid = model(inputs, stop_at_layer=model.cfg.n_layers, **kwargs)
            r = metric.readout(batch, seq)
            if int(r.pos.min()) < p:
                raise ValueError(f"The metric reads position {int(r.pos.min())}, inside the {p} cached positions.")
            rows = torch.arange(batch)
            x = readout_of(model).read(resid[rows, r.pos - p][None], r.tokens)[0]  # [batch, n]
            value = check_scalar(metric.from_readout(x), what)
            per = metric.from_readout(x[:, None, :])
            per = per.detach() if per.shape == (batch,) else None
        else:
            value = check_scalar(metric(model(inputs, **kwargs)), what)
            per = None
    return value, per


@torch.no_grad()
def node_outputs(model: Model, layout: Layout, tokens: Int[Tensor, "batch pos"], metric
                 ) -> tuple[Float[Tensor, "node batch pos d_model"], Tensor, Tensor | None]:
    """Every node's output on one run ``[n_forward, batch, pos, d_model]``, with the metric."""
    batch, seq = tokens.shape
    buf = torch.empty(layout.n_forward, batch, seq, model.cfg.d_model)

    def sink(s, value):
        buf[s] = value.permute(2, 0, 1, 3)

    value, per = run_metric(model, tokens, metric, output_hooks(model, layout, sink))
    return buf, value.detach(), per
