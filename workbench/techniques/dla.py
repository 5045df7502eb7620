"""Direct logit attribution: split a logit difference into one number per model part.

:func:`direct_logit_attribution` splits a logit difference ``logit[answer] - logit[wrong]`` at
the read-out position into one number per model part: the embeddings, every attention head
(``z @ W_O``), each layer's attention bias ``b_O`` (its own component ``"L{l} attn bias"``, so
heads stay pure), every MLP, and a constant ``"unembed bias"`` (the final norm's bias and the
unembedding bias). Each part's output is divided by the final norm's scale **of the full final
residual** (frozen, as TransformerLens's ``ActivationCache.apply_ln_to_stack`` does), centred for
a LayerNorm (centring is linear, so it distributes over the parts), and dotted with
``ln_final.w * (W_U[:, answer] - W_U[:, wrong])``. The weight ``ln_final.w`` is multiplied in when
the model has one (the offline models are not weight-processed); a processed model's
``LNPre``/``RMSPre`` final norm has none. The parts then sum exactly to the model's logit
difference (checked on every call and stored in ``meta``).

Models that normalise each block's output again (``cfg.use_normalization_before_and_after``,
e.g. Gemma-3) make a block write ``norm(sum of heads + b_O)``, which is not a sum over heads.
There the attention block's own output (``hook_attn_out``) is attributed exactly, and it is split
among heads with the post-attention norm's scale frozen at its value on this input (the same
approximation that the final norm's scale already makes). What the split leaves over (zero for an
RMSNorm, the bias for a LayerNorm) is reported as ``"L{l} attn rest"``, and a warning says that the
per-head numbers are a frozen-scale split, not independent effects.

>>> import torch
>>> from workbench import models
>>> from workbench.techniques.dla import direct_logit_attribution
>>> from workbench.core.metrics import LogitDiff
>>> model = models.tiny_model()
>>> tokens = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
>>> dla = direct_logit_attribution(model, tokens, LogitDiff([1, 2], [3, 4], per_prompt=True))
>>> dla.dims, abs(dla.meta["max_sum_error"]) < 1e-4
(('batch', 'component'), True)
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core import checks
from workbench.core.metrics import LogitDiff
from workbench.core.readout import final_norm_kind, readout_of
from workbench.core.results import Result
from workbench.core.types import Model
from workbench.techniques.lens import decode

__all__ = [
    "direct_logit_attribution",
    "head_view",
    "block_view",
    "component_labels",
]

# --------------------------------------------------------------------------------------------
# Direct logit attribution


def _post_norm(model: Model) -> bool:
    return bool(getattr(model.cfg, "use_normalization_before_and_after", False))


def _norm_parts(module, kind: str):
    """(weight or None, bias or None, centres?) of a norm module of the given kind."""
    w = getattr(module, "w", None) if kind in ("LN", "RMS") else None
    b = getattr(module, "b", None) if kind == "LN" else None
    return w, b, kind in ("LN", "LNPre")


def _module_norm_kind(module) -> str:
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    kinds = {LayerNorm: "LN", LayerNormPre: "LNPre", RMSNorm: "RMS", RMSNormPre: "RMSPre"}
    if type(module) in kinds:
        return kinds[type(module)]
    raise NotImplementedError(f"Unsupported norm module {type(module).__name__}.")


def _read_direction(w, centre: bool, direction: Float[Tensor, "batch d_model"]) -> Tensor:
    """The vector a norm's input is dotted with: ``w * direction``, centred for a LayerNorm.

    For ``y = (x - mean(x)) / s * w + b``: ``y . d = x . centre(w * d) / s + b . d``.
    """
    d = direction if w is None else direction * w
    return d - d.mean(-1, keepdim=True) if centre else d


def component_labels(model: Model) -> list[str]:
    """Names of the DLA components of ``model``, in the order of the result's component axis."""
    names = ["embed"]
    if model.cfg.positional_embedding_type == "standard":
        names.append("pos_embed")
    for l in range(model.cfg.n_layers):
        names += [f"L{l}H{h}" for h in range(model.cfg.n_heads)]
        names.append(f"L{l} attn bias")
        if _post_norm(model):
            names.append(f"L{l} attn rest")
        if not model.cfg.attn_only:
            names.append(f"MLP{l}")
    names.append("unembed bias")
    return names


def _check_inputs(model: Model, metric) -> None:
    if not isinstance(metric, LogitDiff):
        raise TypeError(
            f"metric must be a workbench.core.metrics.LogitDiff, got {type(metric).__name__}: direct "
            "logit attribution needs an answer and a wrong token per prompt, e.g. "
            "LogitDiff(answers, wrong, pos=-1, per_prompt=True)."
        )
    if getattr(model.cfg, "post_embedding_ln", False):
        raise NotImplementedError("Models with a norm after the embedding are not supported.")


def _warn_softcap(cap) -> None:
    # stacklevel=3 here and below: the frame that stacklevel=2 named inside direct_logit_attribution.
    warnings.warn(
        f"This model soft-caps its logits (output_logits_soft_cap={cap}); the attributions "
        "add up to the logit difference before the cap, which the cap then squashes.",
        stacklevel=3,
    )


def _warn_post_norm() -> None:
    warnings.warn(
        "This model normalises each attention block's output again (post-attention norm, "
        "cfg.use_normalization_before_and_after), so a block writes norm(sum of heads), not "
        "a sum over heads. Each block's attribution is exact; its split among heads freezes "
        "the post-attention norm's scale at its value on this input, and what the split "
        "leaves over is reported as 'L{l} attn rest'. Read per-head numbers as shares of "
        "the block, not as independent effects.",
        stacklevel=3,
    )


def _final_direction(model: Model, kind: str, ans: Tensor, wrong: Tensor) -> tuple[Tensor, Tensor]:
    """(direction each part's output is dotted with, constant unembed-bias term), ``[batch, ...]``."""
    w_fin, b_fin, centre = _norm_parts(getattr(model, "ln_final", None), kind)
    # Every dot product and sum below is taken in float32, whatever the model's dtype.
    unembed_dir, const = readout_of(model).answer_direction(ans, wrong)  # [batch, d_model], [batch]
    d_final = _read_direction(None if w_fin is None else w_fin.float(), centre, unembed_dir)
    if b_fin is not None:
        const = const + unembed_dir @ b_fin.float()
    return d_final, const


def _attribution_hooks(model: Model, store: dict, bar, rows: Tensor, pos: Tensor, d_final: Tensor,
                       kind: str, post: bool) -> tuple[list, list[Tensor]]:
    """(forward hooks filling ``store`` with each part's dot product, each layer's direction)."""
    batch = rows.shape[0]

    def at_pos(x: Tensor) -> Tensor:
        return x[rows, pos]  # [batch, ...]

    def save_dot(key: str):
        def dot_with_direction(x, hook):
            store[key] = (at_pos(x).float() * d_final).sum(-1)

        return dot_with_direction

    def save_scale(key: str):
        def save_norm_scale(x, hook):
            store[key] = at_pos(x).reshape(batch).float()

        return save_norm_scale

    def save_heads(layer: int, d_layer: Tensor):
        W_O = model.blocks[layer].attn.W_O  # [head, d_head, d_model]

        def dot_heads(z, hook):
            # (z_h @ W_O[h]) . d  ==  z_h . (W_O[h] @ d): never forms [batch, head, d_model].
            read = torch.einsum("hem,bm->bhe", W_O.float(), d_layer)
            store[f"{layer}.heads"] = torch.einsum("bhe,bhe->bh", at_pos(z).float(), read)
            bar.update(1)

        return dot_heads

    def save_resid(x, hook):
        store["resid"] = at_pos(x).clone()

    hooks = [("hook_embed", save_dot("embed"))]
    if model.cfg.positional_embedding_type == "standard":
        hooks.append(("hook_pos_embed", save_dot("pos_embed")))
    if kind != "none":
        hooks.append(("ln_final.hook_scale", save_scale("final_scale")))
    hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", save_resid))
    d_layers = []
    for l, block in enumerate(model.blocks):
        d_layer = d_final
        if post:
            p_kind = _module_norm_kind(block.ln1_post)
            w_post, _, c_post = _norm_parts(block.ln1_post, p_kind)
            d_layer = _read_direction(None if w_post is None else w_post.float(), c_post, d_final)
            hooks.append((f"blocks.{l}.ln1_post.hook_scale", save_scale(f"{l}.post_scale")))
            hooks.append((f"blocks.{l}.hook_attn_out", save_dot(f"{l}.attn")))
        d_layers.append(d_layer)
        hooks.append((f"blocks.{l}.attn.hook_z", save_heads(l, d_layer)))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{l}.hook_mlp_out", save_dot(f"{l}.mlp")))
    return hooks, d_layers


def _component_values(model: Model, store: dict, d_layers: list[Tensor], d_final: Tensor, const: Tensor,
                      kind: str, post: bool) -> Tensor:
    """``[batch, component]``: the stored dot products in :func:`component_labels` order."""
    batch = const.shape[0]
    cols = [store["embed"]]
    if "pos_embed" in store:
        cols.append(store["pos_embed"])
    for l, block in enumerate(model.blocks):
        heads = store[f"{l}.heads"]
        b_O = getattr(block.attn, "b_O", None)
        bias = torch.zeros(batch, device=d_final.device) if b_O is None else d_layers[l] @ b_O.float()
        if post:
            s = store[f"{l}.post_scale"]
            heads, bias = heads / s[:, None], bias / s
        cols += list(heads.T) + [bias]
        if post:
            cols.append(store[f"{l}.attn"] - heads.sum(-1) - bias)
        if not model.cfg.attn_only:
            cols.append(store[f"{l}.mlp"])
    values = torch.stack(cols, dim=-1)  # [batch, component - 1]
    if kind != "none":
        values = values / store["final_scale"][:, None]
    return torch.cat([values, const[:, None]], dim=-1)


def _actual_logit_diffs(model: Model, resid: Tensor, rows: Tensor, ans: Tensor, wrong: Tensor, kind: str,
                        cap) -> tuple[Tensor, Tensor]:
    """(the model's logit difference, the same before the soft-cap), ``[batch]`` each."""
    logits = decode(model, resid).float()  # [batch, d_vocab], softcap included
    actual = logits[rows, ans] - logits[rows, wrong]
    if cap:
        x = resid[None]
        pre = readout_of(model).logits(x, cap=False)[0]
        actual_pre = (pre[rows, ans] - pre[rows, wrong]).float()
    else:
        actual_pre = actual
    return actual, actual_pre


@torch.no_grad()
def direct_logit_attribution(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    *,
    progress: bool = False,
) -> Result:
    """Each head's, MLP's and embedding's direct effect on a logit difference.

    Args:
        tokens: ``[batch, pos]`` prompts.
        metric: a :class:`~workbench.core.metrics.LogitDiff` (answer and wrong token per prompt, the
            read-out position(s)); ``per_prompt=True`` keeps the batch axis, else the mean.
        progress: show a progress bar over layers.

    Returns:
        Result with dims ``(component,)`` or ``(batch, component)``; component labels from
        :func:`component_labels`: ``"embed"``, ``"pos_embed"`` (learned positions only),
        ``"L{l}H{h}"``, ``"L{l} attn bias"``, ``"L{l} attn rest"`` (post-norm models only),
        ``"MLP{l}"``, ``"unembed bias"``. They sum to the metric's value on ``tokens``;
        ``meta["logit_diff"]`` holds that value and ``meta["max_sum_error"]`` the largest gap.
        :func:`head_view` turns it into a layer x head grid, :func:`block_view` into blocks.

    >>> from workbench import models
    >>> import torch
    >>> model = models.tiny_model()
    >>> r = direct_logit_attribution(model, torch.arange(8)[None], LogitDiff([3], [4]))
    >>> r.labels["component"][:3], head_view(r).dims
    (['embed', 'pos_embed', 'L0H0'], ('layer', 'head'))
    """
    _check_inputs(model, metric)
    tokens = checks.tokens(model, tokens)
    batch, seq = tokens.shape
    readout = metric.readout(batch, seq)  # checks the batch size, normalises positions
    pos, ans, wrong = readout.pos, readout.tokens[:, 0], readout.tokens[:, 1]
    rows = torch.arange(batch)
    cap = readout_of(model).softcap_value
    if cap:
        _warn_softcap(cap)

    kind = final_norm_kind(model)
    d_final, const = _final_direction(model, kind, ans, wrong)
    post = _post_norm(model)
    if post:
        _warn_post_norm()

    store: dict[str, Tensor] = {}
    bar = tqdm(total=model.cfg.n_layers, desc="direct logit attribution", disable=not progress)
    hooks, d_layers = _attribution_hooks(model, store, bar, rows, pos, d_final, kind, post)
    try:
        with model.hooks(fwd_hooks=hooks):
            model(tokens, return_type=None)
    finally:
        bar.close()

    values = _component_values(model, store, d_layers, d_final, const, kind, post)
    actual, actual_pre = _actual_logit_diffs(model, store["resid"], rows, ans, wrong, kind, cap)
    err = (values.sum(-1) - actual_pre).abs().max().item()
    labels = component_labels(model)
    meta = dict(
        model=model.cfg.model_name,
        method="direct logit attribution",
        positions=pos.tolist(),
        final_norm=kind,
        post_norm_split=post,
        logit_diff=actual if metric.per_prompt else actual.mean(),
        max_sum_error=err,
    )
    metric_name = "direct logit attribution (logit difference)"
    if metric.per_prompt:
        return Result(values, ("batch", "component"), metric_name, {"component": labels}, meta)
    return Result(values.mean(0), ("component",), metric_name, {"component": labels}, meta)


def _component_axis(result: Result) -> int:
    if "component" not in result.dims or "component" not in result.labels:
        raise ValueError(
            f"Expected a direct logit attribution result (a labelled 'component' axis), got dims "
            f"{result.dims}."
        )
    return result.dims.index("component")


def head_view(result: Result) -> Result:
    """The heads of a :func:`direct_logit_attribution` result as a ``(layer, head)`` grid
    (``(batch, layer, head)`` per prompt)."""
    axis = _component_axis(result)
    names = result.labels["component"]
    idx = {}
    for i, name in enumerate(names):
        if name.startswith("L") and "H" in name and " " not in name:
            l, h = name[1:].split("H")
            idx[(int(l), int(h))] = i
    if not idx:
        raise ValueError("The result has no head components (names like 'L3H2').")
    n_layers = max(l for l, _ in idx) + 1
    n_heads = max(h for _, h in idx) + 1
    order = torch.tensor([idx[(l, h)] for l in range(n_layers) for h in range(n_heads)])
    v = result.values.index_select(axis, order)
    v = v.reshape(*v.shape[:axis], n_layers, n_heads, *v.shape[axis + 1 :])
    dims = result.dims[:axis] + ("layer", "head") + result.dims[axis + 1 :]
    labels = {k: x for k, x in result.labels.items() if k != "component"}
    return Result(v, dims, result.metric, labels, dict(result.meta))


def _block_of(name: str) -> str:
    if name.startswith("MLP") or name in ("embed", "pos_embed", "unembed bias"):
        return name
    return f"L{name[1:].split('H')[0].split(' ')[0]} attn"


def block_view(result: Result) -> Result:
    """Sum the heads, bias and rest of each attention block: ``embed``, ``L0 attn``, ``MLP0``, ...

    On a post-norm model (Gemma-3) each ``L{l} attn`` is exactly the block's own attribution.
    """
    axis = _component_axis(result)
    blocks: list[str] = []
    for name in result.labels["component"]:
        b = _block_of(name)
        if b not in blocks:
            blocks.append(b)
    member = torch.tensor([blocks.index(_block_of(n)) for n in result.labels["component"]])
    onehot = torch.nn.functional.one_hot(member, len(blocks)).to(result.values.dtype)
    v = torch.tensordot(result.values.movedim(axis, -1), onehot, dims=1).movedim(-1, axis)
    labels = dict(result.labels)
    labels["component"] = blocks
    return Result(v, result.dims, result.metric, labels, dict(result.meta))
