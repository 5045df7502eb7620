"""Logit lens: read the residual stream of every layer through the final norm and unembedding.

:func:`logit_lens` decodes the residual stream entering every layer (``blocks.L.hook_resid_pre``)
and leaving the last one (``hook_resid_post``) through the model's own final norm
(``model.ln_final``) and unembedding, and reports, per layer and position, the logit, probability
and rank of chosen target tokens plus the top-k tokens. It **streams**: each hook reduces its
layer to those few numbers at once, in chunks of positions, so at no time does it hold more than
one chunk of ``[pos, d_vocab]`` logits, and no residual is cached. A 2,000-token context on
SmolLM2 fits in a few GB (see ``tests/test_lens.py::test_logit_lens_memory_long_context``).

Direct logit attribution lives in :mod:`workbench.techniques.dla`, attention patterns in
:mod:`workbench.techniques.attention`.

>>> import torch
>>> from workbench import models
>>> from workbench.techniques.lens import logit_lens
>>> model = models.tiny_model()
>>> tokens = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
>>> lens = logit_lens(model, tokens, top_k=3)
>>> lens.rank.dims, lens.rank.shape
(('layer', 'batch', 'pos'), (3, 2, 6))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core import checks
from workbench.core.persist import Persistent
from workbench.core.readout import final_norm_kind, readout_of
from workbench.core.results import Result, render
from workbench.core.types import Model
from workbench.models.tokens import position_labels

__all__ = [
    "LENSES",
    "Lens",
    "LensResult",
    "register_lens",
    "logit_lens",
    "layer_labels",
    "final_norm_kind",
    "decode",
    "token_strings",
]

LensTargets = Literal["final", "next"]
LensKind = Literal["rank", "prob", "logit"]

#: Elements of logits ([positions, d_vocab]) decoded at once; bounds the lens's working memory.
CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32


# --------------------------------------------------------------------------------------------
# Shared helpers


def token_strings(model: Model, ids: Sequence[int]) -> list[str]:
    """Token strings for labels; the ids themselves when the model has no tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [str(int(i)) for i in ids]
    return [tok.decode([int(i)]) for i in ids]


def decode(model: Model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits of residual vectors through the model's own final norm, unembedding and soft cap."""
    return readout_of(model).logits(resid[None])[0]


# --------------------------------------------------------------------------------------------
# Lenses: transforms of the residual stream read through the final norm and unembedding


@dataclass(frozen=True)
class Lens:
    """A way to read the residual stream: ``transform`` maps layer ``layer``'s residual (``layer ==
    n_layers`` is the final ``resid_post``) to a residual that the model's own final norm and
    unembedding then decode. The logit lens is the identity; a tuned lens (Belrose et al. 2023)
    is a subclass whose ``transform`` adds a learnt affine translator per layer, registered with
    :func:`register_lens` and then named in ``logit_lens(..., lens="tuned")``.
    """

    name: str
    title: str

    def transform(self, model: Model, layer: int, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return resid


#: Every lens :func:`logit_lens` can read with, by name.
LENSES: dict[str, Lens] = {}


def register_lens(lens: Lens) -> Lens:
    """Make ``lens`` available as ``logit_lens(..., lens=lens.name)``."""
    if lens.name in LENSES and LENSES[lens.name] is not lens:
        raise ValueError(f"A lens named {lens.name!r} is already registered.")
    LENSES[lens.name] = lens
    return lens


register_lens(Lens("logit", "logit lens"))


def _lens(lens: str | Lens) -> Lens:
    if isinstance(lens, Lens):
        return lens
    if lens not in LENSES:
        raise ValueError(f"Unknown lens {lens!r}; registered lenses: {sorted(LENSES)} (or pass a Lens).")
    return LENSES[lens]


# --------------------------------------------------------------------------------------------
# Logit lens


def layer_labels(model: Model) -> list[str]:
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
    model: Model,
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
        logits = decode(model, rows[start : start + chunk]).float()  # [n, d_vocab]
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
    return torch.tensor(checks.positions(positions, seq), dtype=torch.long)


def _lens_targets(model: Model, tokens: Tensor, targets, pos: Tensor) -> Tensor | None:
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
class LensResult(Persistent):
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

        return render("logit_lens_heatmap", self, kind, batch=batch, annotate=annotate, **kw)


@torch.no_grad()
def logit_lens(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch"] | Int[Tensor, "batch pos"] | int | LensTargets | None = "final",
    *,
    top_k: int = 5,
    positions: Sequence[int] | int | None = None,
    lens: str | Lens = "logit",
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
        lens: how each residual is read before the final norm and unembedding: a registered
            name (``"logit"``, the identity: the logit lens) or a :class:`Lens`.
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
    tokens = checks.tokens(model, tokens)
    reader = _lens(lens)
    if not isinstance(top_k, int) or not 1 <= top_k <= model.cfg.d_vocab:
        raise ValueError(f"top_k must be an int in [1, {model.cfg.d_vocab}], got {top_k!r}.")
    batch, seq = tokens.shape
    pos = _lens_positions(positions, seq)
    tgt = _lens_targets(model, tokens, "final" if targets is None else targets, pos)
    n = model.cfg.n_layers
    if tgt is None:  # the final layer's top-1, from a first pass over the last residual only
        first = _run_lens(model, tokens, pos, None, top_k=1, layers=[n], progress=False, lens=reader)
        tgt = first[n].top_ids[..., 0]
    reads = _run_lens(model, tokens, pos, tgt, top_k=top_k, layers=range(n + 1), progress=progress, lens=reader)
    mode = targets if isinstance(targets, str) else "final" if targets is None else "ids"
    return _assemble_lens(model, tokens, pos, tgt, reads, top_k, mode, reader)


def _run_lens(model: Model, tokens, pos, targets, *, top_k, layers, progress, lens: Lens) -> dict[int, _Readout]:
    """One forward pass; the hook of each requested layer reduces it to a :class:`_Readout`."""
    n = model.cfg.n_layers
    reads: dict[int, _Readout] = {}
    dummy = torch.zeros(tokens.shape[0], len(pos), dtype=torch.long)
    bar = tqdm(total=len(layers), desc=lens.title, disable=not progress)

    def make_hook(layer: int):
        def read_resid(resid, hook):
            read = lens.transform(model, layer, resid[:, pos])
            reads[layer] = _read_layer(model, read, dummy if targets is None else targets, top_k)
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


def _assemble_lens(model: Model, tokens, pos, tgt, reads, top_k, mode, lens: Lens) -> LensResult:
    n = model.cfg.n_layers
    batch = tokens.shape[0]
    labels = layer_labels(model)
    order = [reads[l] for l in range(n + 1)]
    stack = {k: torch.stack([getattr(r, k) for r in order]) for k in ("logit", "prob", "rank")}
    str_tokens = [token_strings(model, tokens[b, pos].tolist()) for b in range(batch)]
    single = batch == 1
    dims = ("layer", "pos") if single else ("layer", "batch", "pos")
    axis_labels = {"layer": labels}
    if single:
        axis_labels["pos"] = position_labels(model, tokens[0], pos.tolist())
    meta = dict(
        model=model.cfg.model_name,
        method=lens.title,
        lens=lens.name,
        positions=pos.tolist(),
        targets=mode,
        final_norm=final_norm_kind(model),
    )
    what = {"logit": "target logit", "prob": "target probability", "rank": "target rank"}
    results = {
        k: Result(
            v[:, 0] if single else v, dims, f"{lens.title}: {what[k]}", dict(axis_labels), dict(meta)
        )
        for k, v in stack.items()
    }
    top_tokens = _top_frame(model, order, labels, pos, top_k)
    target_strs = [
        [s if t >= 0 else "" for s, t in zip(token_strings(model, row.clamp(min=0).tolist()), row)]
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


def _top_frame(model: Model, reads: list[_Readout], labels, pos, top_k) -> pd.DataFrame:
    ids = torch.stack([r.top_ids for r in reads])  # [layer, batch, npos, k]
    L, B, P, K = ids.shape
    grid = torch.meshgrid(*[torch.arange(s) for s in (L, B, P, K)], indexing="ij")
    flat = ids.reshape(-1)
    uniq, inverse = flat.unique(return_inverse=True)
    strings = token_strings(model, uniq.tolist())
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
