"""Logit lens and direct logit attribution: read the residual stream through the unembedding.

Logit lens
----------
:func:`logit_lens` decodes the residual stream entering every layer (``blocks.L.hook_resid_pre``)
and leaving the last one (``hook_resid_post``) through the model's own final norm
(``model.ln_final``) and unembedding, and reports, per layer and position, the logit, probability
and rank of chosen target tokens plus the top-k tokens. It **streams**: each hook reduces its
layer to those few numbers at once, in chunks of positions, so at no time does it hold more than
one chunk of ``[pos, d_vocab]`` logits, and no residual is cached. A 2,000-token context on
SmolLM2 fits in a few GB (see ``tests/test_lens.py::test_logit_lens_memory_long_context``).

Direct logit attribution
------------------------
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
>>> from workbench.lens import logit_lens, direct_logit_attribution
>>> from workbench.metrics import LogitDiff
>>> model = models.tiny_model()
>>> tokens = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
>>> lens = logit_lens(model, tokens, top_k=3)
>>> lens.rank.dims, lens.rank.shape
(('layer', 'batch', 'pos'), (3, 2, 6))
>>> dla = direct_logit_attribution(model, tokens, LogitDiff([1, 2], [3, 4], per_prompt=True))
>>> dla.dims, abs(dla.meta["max_sum_error"]) < 1e-4
(('batch', 'component'), True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .metrics import LogitDiff
from .models import resid_to_logits
from .results import Result

__all__ = [
    "LensResult",
    "logit_lens",
    "layer_labels",
    "direct_logit_attribution",
    "head_view",
    "block_view",
    "final_norm_kind",
    "component_labels",
    "get_patterns",
]

LensTargets = Literal["final", "next"]
LensKind = Literal["rank", "prob", "logit"]
NormKind = Literal["LN", "LNPre", "RMS", "RMSPre", "none"]

#: Elements of logits ([positions, d_vocab]) decoded at once; bounds the lens's working memory.
CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32


# --------------------------------------------------------------------------------------------
# Shared helpers


def _check_tokens(model, tokens) -> Int[Tensor, "batch pos"]:
    if not isinstance(tokens, Tensor):
        raise TypeError(
            f"tokens must be a LongTensor [batch, pos], got {type(tokens).__name__}. "
            "Turn text into tokens with workbench.models.to_tokens(model, prompts)."
        )
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"tokens must be an integer tensor [batch, pos], got dtype {tokens.dtype} and shape "
            f"{tuple(tokens.shape)}."
        )
    if tokens.numel() == 0:
        raise ValueError("tokens is empty.")
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(
            f"token ids must lie in [0, {model.cfg.d_vocab}), got {int(tokens.min())}.."
            f"{int(tokens.max())}."
        )
    return tokens.long()


def _token_strings(model, ids: Sequence[int]) -> list[str]:
    """Token strings for labels; the ids themselves when the model has no tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [str(int(i)) for i in ids]
    return [tok.decode([int(i)]) for i in ids]


def final_norm_kind(model) -> NormKind:
    """The kind of ``model.ln_final``, read from ``model.cfg`` (``"none"`` when there is none).

    ``"LN"``/``"RMS"`` carry a weight ``ln_final.w`` (and ``"LN"`` a bias ``ln_final.b``); the
    ``...Pre`` kinds are what weight processing leaves: normalisation only.
    """
    cfg = model.cfg
    kind = cfg.normalization_type
    if kind is None:
        return "none"
    if kind not in ("LN", "LNPre", "RMS", "RMSPre"):
        raise ValueError(f"Unsupported normalization_type {kind!r} in model.cfg.")
    if getattr(cfg, "final_rms", False) and kind in ("LN", "LNPre"):
        kind = "RMS" if kind == "LN" else "RMSPre"
    return kind


def _softcap(model) -> float:
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0)
    return float(cap) if cap is not None and cap > 0 else 0.0


def _decode(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits of residual vectors through the model's own final norm, unembedding and soft cap."""
    return resid_to_logits(model, resid[None])[0]


# --------------------------------------------------------------------------------------------
# Logit lens


def layer_labels(model) -> list[str]:
    """Row labels of the lens: ``"L0 pre"`` ... ``"L{n-1} pre"``, then ``"final"``."""
    return [f"L{i} pre" for i in range(model.cfg.n_layers)] + ["final"]


@dataclass
class _Readout:
    """What one layer of the lens keeps: a few numbers per (prompt, position)."""

    logit: Tensor  # [batch, pos] at the chosen positions
    prob: Tensor
    rank: Tensor
    top_ids: Tensor  # [batch, npos, k]
    top_logits: Tensor
    top_probs: Tensor


def _logsumexp(logits: Float[Tensor, "pos d_vocab"]) -> Float[Tensor, " pos"]:
    """``logits.logsumexp(-1)``, several times faster on CPU for spread-out logits.

    Terms more than 80 below the maximum are raised to ``exp(-80)`` before summing: this keeps
    ``exp`` out of float32's slow subnormal range, and changes the sum (at least 1) by less than
    ``d_vocab * 2e-35``.
    """
    top = logits.amax(-1, keepdim=True)
    return (logits - top).clamp_(min=-80.0).exp_().sum(-1).log_() + top[:, 0]


@torch.no_grad()
def _read_layer(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    targets: Int[Tensor, "batch pos"],
    top_k: int,
) -> _Readout:
    """Decode one layer's residual at the chosen positions, in chunks of rows, and reduce."""
    batch, npos, d_model = resid.shape
    rows = resid.reshape(-1, d_model)
    tgt = targets.reshape(-1)
    chunk = max(1, CHUNK_ELEMENTS // model.cfg.d_vocab)
    out: dict[str, list[Tensor]] = {k: [] for k in ("logit", "prob", "rank", "ids", "tl", "tp")}
    for start in range(0, rows.shape[0], chunk):
        logits = _decode(model, rows[start : start + chunk]).float()  # [n, d_vocab]
        t = tgt[start : start + chunk]
        valid = t >= 0
        lse = _logsumexp(logits)
        t_logit = logits.gather(1, t.clamp(min=0)[:, None])[:, 0]
        rank = torch.gt(logits, t_logit[:, None]).sum(-1, dtype=torch.int32).float()
        nan = torch.tensor(float("nan"))
        out["logit"].append(torch.where(valid, t_logit, nan))
        out["prob"].append(torch.where(valid, (t_logit - lse).exp(), nan))
        out["rank"].append(torch.where(valid, rank, nan))
        top = logits.topk(top_k, dim=-1)
        out["ids"].append(top.indices)
        out["tl"].append(top.values)
        out["tp"].append((top.values - lse[:, None]).exp())
        del logits
    cat = {k: torch.cat(v) for k, v in out.items()}
    return _Readout(
        logit=cat["logit"].reshape(batch, npos),
        prob=cat["prob"].reshape(batch, npos),
        rank=cat["rank"].reshape(batch, npos),
        top_ids=cat["ids"].reshape(batch, npos, top_k),
        top_logits=cat["tl"].reshape(batch, npos, top_k),
        top_probs=cat["tp"].reshape(batch, npos, top_k),
    )


def _lens_positions(positions, seq: int) -> Tensor:
    if positions is None:
        return torch.arange(seq)
    p = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if p.numel() == 0:
        raise ValueError("positions is empty; pass None for every position.")
    if int(p.max()) >= seq or int(p.min()) < -seq:
        raise ValueError(f"positions {p.tolist()} out of range for a sequence of {seq} tokens.")
    return p % seq


def _lens_targets(model, tokens: Tensor, targets, pos: Tensor) -> Tensor | None:
    """Targets as ``[batch, npos]`` ids (-1 = none); None means "the final layer's top-1"."""
    batch, seq = tokens.shape
    if isinstance(targets, str):
        if targets == "final":
            return None
        if targets == "next":
            nxt = torch.full((batch, seq), -1, dtype=torch.long)
            nxt[:, :-1] = tokens[:, 1:]
            return nxt[:, pos]
        raise ValueError(f"targets={targets!r}: use 'final', 'next', token ids, or None.")
    t = torch.as_tensor(targets, dtype=torch.long)
    if t.ndim == 0:
        t = t.expand(batch, len(pos))
    elif t.ndim == 1:
        if len(t) != batch:
            raise ValueError(
                f"targets has {len(t)} ids but there are {batch} prompts: give one id per prompt "
                f"([batch]) or one per prompt and chosen position ([batch, {len(pos)}])."
            )
        t = t[:, None].expand(batch, len(pos))
    elif t.shape != (batch, len(pos)):
        raise ValueError(
            f"targets of shape {tuple(t.shape)} do not fit {batch} prompts x {len(pos)} positions; "
            f"expected [batch] or [batch, {len(pos)}]."
        )
    if int(t.min()) < 0 or int(t.max()) >= model.cfg.d_vocab:
        raise ValueError(f"target ids must lie in [0, {model.cfg.d_vocab}).")
    return t.clone()


@dataclass
class LensResult:
    """The logit lens of a batch of prompts.

    Attributes:
        logit, prob, rank: Results with dims ``(layer, batch, pos)`` (``(layer, pos)`` for one
            prompt): the target token's logit, probability (softmax over the whole vocabulary)
            and rank (0 = top prediction) when the residual entering each layer is decoded.
            Layer labels ``"L0 pre"`` ... ``"final"``; NaN where a position has no target.
        top_tokens: long frame, one row per (layer, prompt, position, top-k rank).
        targets: ``[batch, npos]`` target ids (-1: none).
        positions: ``[npos]`` the positions read.
        str_tokens: per prompt, the token strings of the chosen positions.
        target_strs: per prompt, the token strings of the targets ("" where none).
    """

    logit: Result
    prob: Result
    rank: Result
    top_tokens: pd.DataFrame
    targets: Tensor
    positions: Tensor
    str_tokens: list[list[str]]
    target_strs: list[list[str]]
    meta: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, [batch,] pos): target id and string, logit, prob, rank."""
        frame = self.logit.to_frame().rename(columns={"value": "logit"})
        frame["prob"] = self.prob.to_frame()["value"].to_numpy()
        frame["rank"] = self.rank.to_frame()["value"].to_numpy()
        b = frame["batch"].to_numpy() if "batch" in frame else [0] * len(frame)
        p = frame["pos"].to_numpy()
        tgt = self.targets[torch.tensor(b), torch.tensor(p)]
        frame["target"] = tgt.numpy()
        frame["position"] = self.positions[torch.tensor(p)].numpy()
        frame["target_str"] = [self.target_strs[int(i)][int(j)] for i, j in zip(b, p)]
        return frame

    def plot(self, kind: LensKind = "rank", *, batch: int = 0, annotate: bool | None = None, **kw):
        """Heatmap, layers down and positions across, of ``kind`` for prompt ``batch``."""
        from . import plot

        return plot.logit_lens_heatmap(self, kind, batch=batch, annotate=annotate, **kw)


@torch.no_grad()
def logit_lens(
    model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"] | Int[Tensor, "batch pos"] | int | LensTargets | None = "final",
    *,
    top_k: int = 5,
    positions: Sequence[int] | int | None = None,
    progress: bool = False,
) -> LensResult:
    """The prediction at every layer: decode each ``resid_pre`` and the final ``resid_post``.

    Args:
        tokens: ``[batch, pos]`` (or ``[pos]``), from :func:`workbench.models.to_tokens`.
        targets: which token's logit/probability/rank to follow: ``"final"`` (or None) the
            model's own top-1 prediction at each position (costs a second forward pass);
            ``"next"`` the next token of the prompt (none at the last position); an id for every
            prompt and position; ids ``[batch]``; or ids ``[batch, npos]`` per chosen position.
        top_k: how many top tokens to list per layer and position.
        positions: which positions to read (default: all); negative counts from the end.
        progress: show a progress bar over layers.

    Returns:
        :class:`LensResult`; dims ``(layer, batch, pos)``, or ``(layer, pos)`` for one prompt.

    Memory: one chunk of ``[<= CHUNK_ELEMENTS / d_vocab positions, d_vocab]`` logits at a time.

    >>> from workbench import models
    >>> import torch
    >>> model = models.tiny_model()
    >>> r = logit_lens(model, torch.arange(8)[None], targets="next", top_k=2)
    >>> r.rank.dims, r.rank.labels["layer"]
    (('layer', 'pos'), ['L0 pre', 'L1 pre', 'final'])
    """
    tokens = _check_tokens(model, tokens)
    if not isinstance(top_k, int) or not 1 <= top_k <= model.cfg.d_vocab:
        raise ValueError(f"top_k must be an int in [1, {model.cfg.d_vocab}], got {top_k!r}.")
    batch, seq = tokens.shape
    pos = _lens_positions(positions, seq)
    tgt = _lens_targets(model, tokens, "final" if targets is None else targets, pos)
    n = model.cfg.n_layers
    if tgt is None:  # the final layer's top-1, from a first pass over the last residual only
        first = _run_lens(model, tokens, pos, None, top_k=1, layers=[n], progress=False)
        tgt = first[n].top_ids[..., 0]
    reads = _run_lens(model, tokens, pos, tgt, top_k=top_k, layers=range(n + 1), progress=progress)
    mode = targets if isinstance(targets, str) else "final" if targets is None else "ids"
    return _assemble_lens(model, tokens, pos, tgt, reads, top_k, mode)


def _run_lens(model, tokens, pos, targets, *, top_k, layers, progress) -> dict[int, _Readout]:
    """One forward pass; the hook of each requested layer reduces it to a :class:`_Readout`."""
    n = model.cfg.n_layers
    reads: dict[int, _Readout] = {}
    dummy = torch.zeros(tokens.shape[0], len(pos), dtype=torch.long)
    bar = tqdm(total=len(layers), desc="logit lens", disable=not progress)

    def make_hook(layer: int):
        def read_resid(resid, hook):
            reads[layer] = _read_layer(
                model, resid[:, pos], dummy if targets is None else targets, top_k
            )
            bar.update(1)

        return read_resid

    names = [
        (f"blocks.{l}.hook_resid_pre" if l < n else f"blocks.{n - 1}.hook_resid_post", l)
        for l in layers
    ]
    try:
        with model.hooks(fwd_hooks=[(name, make_hook(l)) for name, l in names]):
            model(tokens, return_type=None)
    finally:
        bar.close()
    return reads


def _assemble_lens(model, tokens, pos, tgt, reads, top_k, mode) -> LensResult:
    n = model.cfg.n_layers
    batch = tokens.shape[0]
    labels = layer_labels(model)
    order = [reads[l] for l in range(n + 1)]
    stack = {k: torch.stack([getattr(r, k) for r in order]) for k in ("logit", "prob", "rank")}
    str_tokens = [_token_strings(model, tokens[b, pos].tolist()) for b in range(batch)]
    single = batch == 1
    dims = ("layer", "pos") if single else ("layer", "batch", "pos")
    axis_labels = {"layer": labels}
    if single:
        axis_labels["pos"] = str_tokens[0]
    meta = dict(
        model=model.cfg.model_name,
        method="logit lens",
        positions=pos.tolist(),
        targets=mode,
        final_norm=final_norm_kind(model),
    )
    what = {"logit": "target logit", "prob": "target probability", "rank": "target rank"}
    results = {
        k: Result(
            v[:, 0] if single else v, dims, f"logit lens: {what[k]}", dict(axis_labels), dict(meta)
        )
        for k, v in stack.items()
    }
    top_tokens = _top_frame(model, order, labels, pos, top_k)
    target_strs = [
        [s if t >= 0 else "" for s, t in zip(_token_strings(model, row.clamp(min=0).tolist()), row)]
        for row in tgt
    ]
    return LensResult(
        results["logit"],
        results["prob"],
        results["rank"],
        top_tokens,
        tgt,
        pos,
        str_tokens,
        target_strs,
        meta,
    )


def _top_frame(model, reads: list[_Readout], labels, pos, top_k) -> pd.DataFrame:
    ids = torch.stack([r.top_ids for r in reads])  # [layer, batch, npos, k]
    L, B, P, K = ids.shape
    grid = torch.meshgrid(*[torch.arange(s) for s in (L, B, P, K)], indexing="ij")
    flat = ids.reshape(-1)
    uniq, inverse = flat.unique(return_inverse=True)
    strings = _token_strings(model, uniq.tolist())
    return pd.DataFrame(
        {
            "layer": grid[0].reshape(-1).numpy(),
            "layer_label": [labels[i] for i in grid[0].reshape(-1).tolist()],
            "batch": grid[1].reshape(-1).numpy(),
            "pos": grid[2].reshape(-1).numpy(),
            "position": pos[grid[2].reshape(-1)].numpy(),
            "rank": grid[3].reshape(-1).numpy(),
            "token": flat.numpy(),
            "token_str": [strings[i] for i in inverse.tolist()],
            "logit": torch.stack([r.top_logits for r in reads]).reshape(-1).numpy(),
            "prob": torch.stack([r.top_probs for r in reads]).reshape(-1).numpy(),
        }
    )


# --------------------------------------------------------------------------------------------
# Direct logit attribution


def _post_norm(model) -> bool:
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


def component_labels(model) -> list[str]:
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


@torch.no_grad()
def direct_logit_attribution(
    model,
    tokens: Int[Tensor, "batch pos"],
    metric: LogitDiff,
    *,
    progress: bool = False,
) -> Result:
    """Each head's, MLP's and embedding's direct effect on a logit difference.

    Args:
        tokens: ``[batch, pos]`` prompts.
        metric: a :class:`~workbench.metrics.LogitDiff` (answer and wrong token per prompt, the
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
    if not isinstance(metric, LogitDiff):
        raise TypeError(
            f"metric must be a workbench.metrics.LogitDiff, got {type(metric).__name__}: direct "
            "logit attribution needs an answer and a wrong token per prompt, e.g. "
            "LogitDiff(answers, wrong, pos=-1, per_prompt=True)."
        )
    if getattr(model.cfg, "post_embedding_ln", False):
        raise NotImplementedError("Models with a norm after the embedding are not supported.")
    tokens = _check_tokens(model, tokens)
    batch, seq = tokens.shape
    readout = metric.readout(batch, seq)  # checks the batch size, normalises positions
    pos, ans, wrong = readout.pos, readout.tokens[:, 0], readout.tokens[:, 1]
    rows = torch.arange(batch)
    cap = _softcap(model)
    if cap:
        warnings.warn(
            f"This model soft-caps its logits (output_logits_soft_cap={cap}); the attributions "
            "add up to the logit difference before the cap, which the cap then squashes.",
            stacklevel=2,
        )

    kind = final_norm_kind(model)
    w_fin, b_fin, centre = _norm_parts(getattr(model, "ln_final", None), kind)
    # Every dot product and sum below is taken in float32, whatever the model's dtype.
    unembed_dir = (model.W_U[:, ans].T - model.W_U[:, wrong].T).float()  # [batch, d_model]
    d_final = _read_direction(None if w_fin is None else w_fin.float(), centre, unembed_dir)
    const = (model.b_U[ans] - model.b_U[wrong]).float()
    if b_fin is not None:
        const = const + unembed_dir @ b_fin.float()

    post = _post_norm(model)
    if post:
        warnings.warn(
            "This model normalises each attention block's output again (post-attention norm, "
            "cfg.use_normalization_before_and_after), so a block writes norm(sum of heads), not "
            "a sum over heads. Each block's attribution is exact; its split among heads freezes "
            "the post-attention norm's scale at its value on this input, and what the split "
            "leaves over is reported as 'L{l} attn rest'. Read per-head numbers as shares of "
            "the block, not as independent effects.",
            stacklevel=2,
        )

    store: dict[str, Tensor] = {}
    bar = tqdm(total=model.cfg.n_layers, desc="direct logit attribution", disable=not progress)

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
    try:
        with model.hooks(fwd_hooks=hooks):
            model(tokens, return_type=None)
    finally:
        bar.close()

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
    values = torch.cat([values, const[:, None]], dim=-1)

    logits = _decode(model, store["resid"]).float()  # [batch, d_vocab], softcap included
    actual = logits[rows, ans] - logits[rows, wrong]
    if cap:
        x = store["resid"][None]
        pre = model.unembed(model.ln_final(x) if kind != "none" else x)[0]
        actual_pre = (pre[rows, ans] - pre[rows, wrong]).float()
    else:
        actual_pre = actual
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


# --------------------------------------------------------------------------------------------
# Attention patterns


def _check_heads(model, heads) -> list[tuple[int, int]]:
    if heads is None:
        return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [heads]
    out = []
    for item in heads:
        try:
            l, h = (int(x) for x in item)
        except (TypeError, ValueError):
            raise ValueError(
                f"heads must be (layer, head) pairs, e.g. [(3, 2), (5, 0)], got {item!r}."
            ) from None
        if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(
                f"Head ({l}, {h}) does not exist: the model has {model.cfg.n_layers} layers of "
                f"{model.cfg.n_heads} heads."
            )
        out.append((l, h))
    if not out:
        raise ValueError("heads is empty; pass None for every head.")
    return out


@torch.no_grad()
def get_patterns(
    model, tokens: Int[Tensor, "batch pos"], heads: Sequence[tuple[int, int]] | None = None
) -> dict[tuple[int, int], Float[Tensor, "batch pos pos"]]:
    """Attention patterns of the chosen heads only, ``{(layer, head): [batch, query, key]}``.

    Hooks just the layers that hold a chosen head, keeps just those heads, and stops the forward
    pass after the last of them, so a long context never caches every layer's full pattern.
    ``heads=None`` records every head (small prompts only: ``n_layers * n_heads * pos^2``).

    >>> from workbench import models
    >>> import torch
    >>> p = get_patterns(models.tiny_model(), torch.arange(5)[None], [(1, 2)])
    >>> list(p), tuple(p[(1, 2)].shape)
    ([(1, 2)], (1, 5, 5))
    """
    tokens = _check_tokens(model, tokens)
    heads = _check_heads(model, heads)
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    out: dict[tuple[int, int], Tensor] = {}

    def make_hook(layer: int, wanted: list[int]):
        def keep_heads(pattern, hook):
            for h in wanted:
                out[(layer, h)] = pattern[:, h].clone()

        return keep_heads

    hooks = [(f"blocks.{l}.attn.hook_pattern", make_hook(l, hs)) for l, hs in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, stop_at_layer=max(by_layer) + 1)
    return {k: out[k] for k in heads}
