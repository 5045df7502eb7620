"""Path patching (Wang et al. 2022, "Interpretability in the Wild"): sender -> receiver paths.

Activation patching asks how much a component matters; path patching asks how much it matters
*through one route*. Senders are attention heads ``(layer, head)`` or MLPs (an ``int`` layer).
Receivers are either the logits (the final residual stream, ``receiver_input="resid"``) or the
query, key or value input of chosen receiver heads (``receiver_input="q" | "k" | "v"``).

Direction and sign
------------------
As in the IOI paper, the **corrupted** activations of the senders are patched **into the clean
run**, and the value returned is the metric of that run. The effect of the path is the drop
``clean_metric - value``: a path that matters lowers the metric (with a metric normalised to
clean 1 / corrupted 0, a value near 0 means the path carries the whole effect). This is the
opposite direction from :mod:`workbench.techniques.patching`'s activation patching, which, like
TransformerLens, patches clean activations into the corrupted run.

Algorithm, for one set of senders:

1. run the clean and the corrupted input and cache them;
2. run the clean input with the senders' outputs set to their corrupted values and every other
   head's output (its ``hook_z``) and every MLP output (``hook_mlp_out``) frozen to its clean
   value, so the change reaches each receiver only directly; record what the receivers read:
   the final residual stream, or the receiver heads' ``hook_q`` / ``hook_k`` / ``hook_v`` (which
   are computed from a residual stream that does contain the senders' change);
3. run the clean input with only the receivers' inputs patched to the recorded values (at
   ``receiver_pos``) and measure the metric.

Freezing a head means fixing its ``hook_z``, so a head's output is never computed from weights
here; this is exact also for models that normalise the attention output again (Gemma-3).

Grouped-query attention: keys and values belong to key/value heads (SmolLM2: 3 of them, each
shared by 3 of its 9 query heads). Receivers at ``"k"`` / ``"v"`` are therefore given as
``(layer, kv_head)``; :func:`kv_head_of` maps a query head to its key/value head.

Efficiency: every layer below the lowest sender is clean, so the frozen run starts there
(``start_at_layer``) from the cached clean residual; for ``"resid"`` receivers with frozen MLPs
it stops after the highest sender, because the frozen layers above only add their clean outputs.
:func:`path_patch_heads` runs many sender sets at once, stacked along the batch axis.

>>> import torch
>>> from workbench.models import tiny_model
>>> from workbench.core.metrics import LogitDiff
>>> model = tiny_model()
>>> clean, corrupted = torch.randint(0, 100, (2, 3, 8)).unbind(0)
>>> metric = LogitDiff(answers=[1, 2, 3], wrong=[4, 5, 6])
>>> value = path_patch(model, clean, corrupted, metric, senders=[(0, 1)])
>>> r = path_patch_heads(model, clean, corrupted, metric, receivers=[(1, 0)], receiver_input="q",
...                      progress=False)
>>> r.dims, r.shape
(('layer', 'head'), (2, 4))
"""

from __future__ import annotations

from typing import Iterable, Literal, Sequence, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from workbench.core import checks, engine
from workbench.core.components import Circuit
from workbench.core.metrics import Metric, check_scalar, metric_name
from workbench.core.readout import n_kv_heads, readout_of
from workbench.core.results import Result
from workbench.core.runtime import cache_prefix
from workbench.core.types import Model

__all__ = ["ReceiverInput", "kv_head_of", "path_patch", "path_patch_heads"]

ReceiverInput = Literal["q", "k", "v", "resid"]


# --------------------------------------------------------------------------------------------
# Checking the arguments


def kv_head_of(model: Model, head: int) -> int:
    """The key/value head that query ``head`` reads (itself unless the model is grouped-query)."""
    return head // (model.cfg.n_heads // n_kv_heads(model))


def _parse_senders(model: Model, senders) -> Circuit:
    if isinstance(senders, tuple) and len(senders) == 2 and all(type(i) is int for i in senders):
        raise TypeError(
            f"senders={senders!r} is ambiguous: write [{senders!r}] for one head, or "
            f"[{senders[0]}, {senders[1]}] for two MLPs."
        )
    heads, mlps = set(), set()
    for comp in senders:
        if isinstance(comp, int) and not isinstance(comp, bool):
            if model.cfg.attn_only:
                raise ValueError(f"MLP sender {comp}: this model is attention-only (no MLPs).")
            if not 0 <= comp < model.cfg.n_layers:
                raise ValueError(
                    f"MLP sender {comp} is out of range: layers are 0..{model.cfg.n_layers - 1}."
                )
            mlps.add(comp)
        else:
            heads.add(checks.head(model, comp, name="sender head"))
    if not heads and not mlps:
        raise ValueError("senders is empty: give at least one head (layer, head) or MLP layer.")
    return Circuit(heads, mlps)


def _parse_receivers(model: Model, receivers, receiver_input) -> dict[int, list[int]]:
    """``{layer: [receiver head indices]}``; empty for ``"resid"``."""
    if receiver_input not in get_args(ReceiverInput):
        raise ValueError(
            f"receiver_input={receiver_input!r}; choose one of {get_args(ReceiverInput)}."
        )
    if receiver_input == "resid":
        if receivers not in (None, "logits"):
            raise ValueError(
                "receiver_input='resid' patches the final residual stream (the logits) and takes "
                f"no receiver heads, got receivers={receivers!r}. Pass receiver_input='q', 'k' or "
                "'v' to patch the inputs of heads."
            )
        return {}
    if not receivers:
        raise ValueError(f"receiver_input={receiver_input!r} needs receiver heads [(layer, head)].")
    if receiver_input == "q":
        n, what = model.cfg.n_heads, "receiver (query)"
    else:
        n, what = n_kv_heads(model), "receiver (key/value)"
    by_layer: dict[int, list[int]] = {}
    for comp in receivers:
        layer, head = checks.head(model, comp, name=f"{what} head", n_heads=n)
        if head not in by_layer.setdefault(layer, []):
            by_layer[layer].append(head)
    return by_layer


# --------------------------------------------------------------------------------------------
# The engine: P sender sets at once, stacked along the batch axis as [P * batch, ...]


def _metric_per_set(model: Model, resid: Tensor, metric: Metric, n_sets: int) -> Float[Tensor, "k"]:
    """The metric of each of ``n_sets`` stacked runs, from their final residual streams.

    A metric that says which logits it reads (``readout``) gets only those, unembedded from the
    read positions; any other metric gets the full logits of each set in turn.
    """
    batch, seq = resid.shape[0] // n_sets, resid.shape[1]
    if hasattr(metric, "readout") and hasattr(metric, "from_readout"):
        r = metric.readout(batch, seq)
        read = resid.unflatten(0, (n_sets, batch))[:, torch.arange(batch), r.pos]  # [P, B, d]
        values = metric.from_readout(readout_of(model).read(read, r.tokens))  # float32 logits
        if values.shape != (n_sets,):
            raise ValueError(
                f"The metric must reduce over prompts to a scalar, got shape {tuple(values.shape)} "
                "per set (per_prompt metrics cannot be patched)."
            )
        return values
    return torch.stack(
        [check_scalar(metric(readout_of(model).logits(chunk))) for chunk in resid.split(batch)]
    )


class _Cache:
    """Clean and corrupted activations that every sender set shares."""

    def __init__(self, model: Model, clean: Tensor, corrupted: Tensor, qkv_layers: dict, kind: str):
        n = model.cfg.n_layers
        mlp = not model.cfg.attn_only

        final = f"blocks.{n - 1}.hook_resid_post"
        qkv = {f"blocks.{L}.attn.hook_{kind}" for L in qkv_layers}

        def clean_names(name: str) -> bool:
            return name.endswith(("hook_z", "hook_resid_pre", "hook_mlp_out")) or name == final or (
                name in qkv
            )

        def corrupted_names(name: str) -> bool:
            return name.endswith(("hook_z", "hook_mlp_out")) or name == final

        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        # The clean run's keys and values too: step 3 reuses them for the positions before the
        # first patched one, which no patch can change.
        self.kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, clean.shape[0])
        _, c = model.run_with_cache(clean, names_filter=clean_names, return_type=None,
                                    past_kv_cache=self.kv, attention_mask=torch.ones_like(clean))
        _, x = model.run_with_cache(corrupted, names_filter=corrupted_names, return_type=None)
        self.z_clean = [c[f"blocks.{L}.attn.hook_z"] for L in range(n)]
        self.z_corr = [x[f"blocks.{L}.attn.hook_z"] for L in range(n)]
        self.mlp_clean = [c[f"blocks.{L}.hook_mlp_out"] for L in range(n)] if mlp else None
        self.mlp_corr = [x[f"blocks.{L}.hook_mlp_out"] for L in range(n)] if mlp else None
        self.resid_pre = [c[f"blocks.{L}.hook_resid_pre"] for L in range(n)]
        self.final, self.final_corr = c[final], x[final]
        self.qkv = {L: c[f"blocks.{L}.attn.hook_{kind}"] for L in qkv_layers}

    def resid_post(self, layer: int) -> Tensor:
        return self.final if layer == len(self.resid_pre) - 1 else self.resid_pre[layer + 1]


def _stack(t: Tensor, n_sets: int) -> Tensor:
    return t.repeat(n_sets, *([1] * (t.ndim - 1)))


def _frozen_hooks(model: Model, cache: _Cache, sets: Sequence[Circuit], layers: range, freeze_mlps):
    """Hooks for step 2 over ``layers``: senders corrupted, every other head (and MLP) clean."""
    P, H = len(sets), model.cfg.n_heads
    hooks = []
    for L in layers:
        head_mask = torch.tensor([[(L, h) in s.heads for h in range(H)] for s in sets])
        corr_z, clean_z = cache.z_corr[L], cache.z_clean[L]

        def freeze_z(z, hook, head_mask=head_mask, corr=corr_z, clean=clean_z):
            m = head_mask.to(z.device)[:, None, None, :, None]  # [P, 1 (batch), 1 (pos), head, 1]
            return torch.where(m, corr[None], clean[None]).reshape(z.shape)

        hooks.append((f"blocks.{L}.attn.hook_z", freeze_z))
        mlp_mask = torch.tensor([L in s.mlps for s in sets])
        if cache.mlp_clean is not None and cache.mlp_corr is not None and (freeze_mlps or mlp_mask.any()):
            corr_m, clean_m = cache.mlp_corr[L], cache.mlp_clean[L]

            def freeze_mlp(out, hook, mlp_mask=mlp_mask, corr=corr_m, clean=clean_m):
                m = mlp_mask.to(out.device)[:, None, None, None]
                shape = (P, *corr.shape)
                base = clean[None] if freeze_mlps else out.reshape(shape)
                return torch.where(m, corr[None], base).reshape(out.shape)

            hooks.append((f"blocks.{L}.hook_mlp_out", freeze_mlp))
    return hooks


def _direct_ok(model: Model) -> bool:
    """Whether a head's write to the residual stream can be computed from its ``hook_z`` alone:
    ``z @ W_O + b_O``, then Gemma's post-attention norm where there is one (not: post-norm
    architectures such as OLMo 2, whose ``ln1`` follows the attention, or 4-bit weights)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    return cfg.original_architecture not in POST_NORM_ARCHITECTURES and not cfg.load_in_4bit


def _attn_write(model: Model, layer: int, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
    """What attention layer ``layer`` adds to the residual stream when its heads output ``z``."""
    attn, block = model.blocks[layer].attn, model.blocks[layer]
    out = torch.einsum("bphd,hdm->bpm", z, attn.W_O) + attn.b_O
    return block.ln1_post(out) if model.cfg.use_normalization_before_and_after else out


def _direct_final(model: Model, cache: _Cache, sets: Sequence[Circuit]) -> Float[Tensor, "k_batch pos d_model"]:
    """The final residual stream of each sender set when everything else is frozen, without a
    forward pass: the clean one plus each sender's change of output (exact, since no frozen
    component reads the change)."""
    out = []
    for s in sets:
        final = cache.final.clone()
        for layer in sorted({layer for layer, _ in s.heads}):
            hs = [h for l, h in s.heads if l == layer]
            clean = cache.z_clean[layer]
            if model.cfg.use_normalization_before_and_after:  # the norm mixes heads: whole layer
                z = clean.clone()
                z[:, :, hs] = cache.z_corr[layer][:, :, hs]
                final += _attn_write(model, layer, z) - _attn_write(model, layer, clean)
            else:  # linear: only the senders' terms change
                dz = cache.z_corr[layer][:, :, hs] - clean[:, :, hs]
                final += torch.einsum("bphd,hdm->bpm", dz, model.blocks[layer].attn.W_O[hs])
        for layer in s.mlps:
            assert cache.mlp_corr is not None and cache.mlp_clean is not None  # MLP senders need MLPs (_parse_senders)
            final += cache.mlp_corr[layer] - cache.mlp_clean[layer]
        out.append(final)
    return torch.cat(out)


def _run_sets(
    model: Model, cache: _Cache, sets: Sequence[Circuit], metric: Metric, receivers: dict[int, list[int]],
    kind: ReceiverInput, mask: Tensor, freeze_mlps: bool, direct: bool = True,
) -> Float[Tensor, "k"]:
    """Steps 2 and 3 for ``P = len(sets)`` sender sets at once; returns the metric of each.

    ``direct``: for the logits as receiver with frozen MLPs, compute the senders' direct effect
    without a forward pass (:func:`_direct_final`) where the architecture allows it.
    """
    P, n = len(sets), model.cfg.n_layers
    mask = mask.to(cache.final.device)  # built on the CPU; the activations may be on a GPU
    start = min(min(s.layers) for s in sets)
    resid = _stack(cache.resid_pre[start], P)
    if kind == "resid" and freeze_mlps and direct and _direct_ok(model):
        final = torch.where(mask.repeat(P, 1)[..., None], _direct_final(model, cache, sets),
                            _stack(cache.final, P))
        return _metric_per_set(model, final, metric, P)
    if kind == "resid":
        stop = max(max(s.layers) for s in sets) + 1 if freeze_mlps else n
        hooks = _frozen_hooks(model, cache, sets, range(start, stop), freeze_mlps)
        with model.hooks(fwd_hooks=hooks):
            out = model(resid, start_at_layer=start, stop_at_layer=stop)
        # Above `stop` every layer is frozen, so it adds exactly its clean output.
        final = out + _stack(cache.final - cache.resid_post(stop - 1), P)
        m = mask.repeat(P, 1)[..., None]
        final = torch.where(m, final, _stack(cache.final, P))
        return _metric_per_set(model, final, metric, P)

    # Step 2: record the receivers' q/k/v; a receiver below `start` keeps its clean input.
    recorded = {L: _stack(cache.qkv[L][:, :, heads], P) for L, heads in receivers.items()}
    top = max(receivers)
    if start <= top:
        def record(act, hook):
            L = hook.layer()
            recorded[L] = act[:, :, receivers[L]].clone()

        # With frozen MLPs, run only the sender layers; a receiver above them reads the clean
        # residual shifted by the senders' change (the layers in between add clean outputs).
        stop = min(top, max(max(s.layers) for s in sets)) + 1 if freeze_mlps else top + 1
        hooks = _frozen_hooks(model, cache, sets, range(start, stop), freeze_mlps)
        hooks += [(f"blocks.{L}.attn.hook_{kind}", record) for L in receivers if start <= L < stop]
        with model.hooks(fwd_hooks=hooks):
            out = model(resid, start_at_layer=start, stop_at_layer=stop)
        for L in [L for L in receivers if L >= stop]:
            shifted = out + _stack(cache.resid_pre[L] - cache.resid_post(stop - 1), P)
            with model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_{kind}", record)]):
                model(shifted, start_at_layer=L, stop_at_layer=L + 1)

    # Step 3: a clean run with only the receivers' inputs patched. Positions before the first
    # patched one (and before every position the metric reads) keep their clean values, so the
    # run starts there, its keys and values before it taken from the clean run.
    low = min(receivers)
    start = _first_changed(mask, metric)
    m = mask[:, start:].repeat(P, 1)[:, :, None, None]

    def patch_receiver(act, hook):
        L = hook.layer()
        act = act.clone()
        heads = receivers[L]
        act[:, :, heads] = torch.where(m.to(act.device), recorded[L][:, start:].to(act.device),
                                       act[:, :, heads])
        return act

    hooks = [(f"blocks.{L}.attn.hook_{kind}", patch_receiver) for L in receivers]
    prefix = cache_prefix(cache.kv, end=start, times=P, from_layer=low) if start > 0 else None
    with model.hooks(fwd_hooks=hooks):
        tail = model(_stack(cache.resid_pre[low][:, start:], P), start_at_layer=low, stop_at_layer=n,
                     past_kv_cache=prefix)
    final = torch.cat([_stack(cache.final[:, :start], P), tail], dim=1)
    return _metric_per_set(model, final, metric, P)


def _first_changed(mask: Tensor, metric) -> int:
    """The first position a step-3 run must compute: the first patched position of any prompt,
    or an earlier position the metric reads (all positions for a metric without ``readout``)."""
    patched = mask.any(0).nonzero()
    first = int(patched.min()) if len(patched) else mask.shape[1] - 1
    if hasattr(metric, "readout") and hasattr(metric, "from_readout"):
        return min(first, int(metric.readout(*mask.shape).pos.min()))
    return 0


def _check_model(model: Model) -> None:
    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"Path patching needs a TransformerLens HookedTransformer, got {type(model).__name__}."
        )
    cfg = model.cfg
    if cfg.positional_embedding_type == "shortformer":
        raise ValueError("Path patching does not support shortformer positional embeddings.")
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "padding_side", "right") == "left":
        raise ValueError(
            "This model's tokenizer pads on the left, which makes TransformerLens mask positions; "
            "set model.tokenizer.padding_side = 'right' (workbench.to_tokens pads on the right)."
        )


# --------------------------------------------------------------------------------------------
# Public API


@torch.no_grad()
def path_patch(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    senders: Iterable,
    receivers: Sequence[tuple[int, int]] | None = None,
    receiver_input: ReceiverInput = "resid",
    receiver_pos=None,
    freeze_mlps: bool = True,
) -> Float[Tensor, ""]:
    """The metric of the clean run when only the path senders -> receivers is corrupted.

    Args:
        clean_tokens, corrupted_tokens: ``[batch, pos]``, aligned prompts.
        metric: ``logits [batch, pos, d_vocab] -> scalar``.
        senders: heads ``(layer, head)`` and MLP layers (``int``), e.g. ``[(9, 6), (9, 9), 4]``.
        receivers: for ``receiver_input="q"`` query heads ``(layer, head)``; for ``"k"``/``"v"``
            key/value heads ``(layer, kv_head)`` (see :func:`kv_head_of`); None for ``"resid"``.
        receiver_input: ``"resid"`` (the logits), ``"q"``, ``"k"`` or ``"v"``.
        receiver_pos: positions where the receivers' input is patched: None (all), an int or a
            list of ints (the same in every prompt), a 1-d tensor ``[batch]`` (one per prompt,
            e.g. ``ds.pos["END"]``) or a bool mask ``[batch, pos]``.
        freeze_mlps: freeze every non-sender MLP to its clean output (the default). With False,
            MLPs recompute, so paths sender -> MLP -> receiver count as direct.

    Returns:
        The metric (a 0-d tensor) of the path-patched clean run; the effect of the path is
        ``metric(clean logits) - value``.
    """
    _check_model(model)
    checks.token_pair(model, clean_tokens, corrupted_tokens)
    sender_set = _parse_senders(model, senders)
    by_layer = _parse_receivers(model, receivers, receiver_input)
    mask = checks.position_mask(receiver_pos, *clean_tokens.shape, name="receiver_pos")
    cache = _Cache(model, clean_tokens, corrupted_tokens, by_layer, receiver_input)
    return _run_sets(
        model, cache, [sender_set], metric, by_layer, receiver_input, mask, freeze_mlps
    )[0]


@torch.no_grad()
def path_patch_heads(
    model: Model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    receivers: Sequence[tuple[int, int]] | None = None,
    receiver_input: ReceiverInput = "resid",
    receiver_pos=None,
    freeze_mlps: bool = True,
    variants_per_pass: int | None = None,
    progress: bool = False,
) -> Result:
    """:func:`path_patch` from every single head as the sender, to the same receivers.

    Sender heads are run several at a time, stacked along the batch axis: ``variants_per_pass``
    sender heads per forward pass (default: as many as fit in 256 prompts, at least one). Heads at or above the highest receiver
    layer cannot reach a q/k/v receiver; they get the clean metric without a forward pass.

    Returns:
        Result with dims ``("layer", "head")``: the metric of each path-patched clean run.
        ``meta["clean"]`` holds the clean metric; the effect of a head's path is
        ``meta["clean"] - value``.
    """
    _check_model(model)
    checks.token_pair(model, clean_tokens, corrupted_tokens)
    by_layer = _parse_receivers(model, receivers, receiver_input)
    mask = checks.position_mask(receiver_pos, *clean_tokens.shape, name="receiver_pos")
    if variants_per_pass is not None:
        engine.check_variants_per_pass(variants_per_pass)
    cache = _Cache(model, clean_tokens, corrupted_tokens, by_layer, receiver_input)
    clean_value = _metric_per_set(model, cache.final, metric, 1)[0]
    corrupted_value = _metric_per_set(model, cache.final_corr, metric, 1)[0]

    L, H, B = model.cfg.n_layers, model.cfg.n_heads, clean_tokens.shape[0]
    values = clean_value.repeat(L, H)
    top = max(by_layer) if by_layer else L  # a sender at or above `top` reaches no receiver
    per_run = variants_per_pass or max(1, 256 // B)
    chunks = [
        [(layer, h) for h in range(i, min(i + per_run, H))]
        for layer in range(min(top, L))
        for i in range(0, H, per_run)
    ]
    for chunk in tqdm(chunks, desc="path patching", disable=not progress):
        sets = [Circuit([head]) for head in chunk]
        out = _run_sets(model, cache, sets, metric, by_layer, receiver_input, mask, freeze_mlps)
        for (layer, h), v in zip(chunk, out):
            values[layer, h] = v
    target = "logits" if receiver_input == "resid" else f"{receiver_input} of {receivers}"
    return Result(
        values,
        ("layer", "head"),
        metric=f"{metric_name(metric)} after path patching sender head -> {target}",
        meta=dict(
            method="path_patch_heads",
            direction="corrupted sender activations patched into the clean run",
            clean=float(clean_value),
            corrupted=float(corrupted_value),
            receivers=list(receivers or []),
            receiver_input=receiver_input,
            freeze_mlps=freeze_mlps,
            model=model.cfg.model_name,
        ),
    )
