"""Needle accuracy under head masking: the causal test of retrieval heads (Wu et al. 2024).

:func:`workbench.techniques.heads.retrieval_scores` finds the heads that copy a needle by attending to it.
This module asks whether the model *needs* them:

* :func:`needle_correct` / :func:`needle_accuracy`: does the model reproduce each haystack's
  answer exactly (its greedy continuation is the answer), optionally with some heads masked?
* :func:`masking_experiment`: needle accuracy with the top-K retrieval heads masked against K
  random *non-retrieval* heads (several seeded draws, averaged), for a sweep of K; returns a
  :class:`MaskingResult` with ``.to_frame()`` and ``.plot()``.
* :func:`k_sweep`: head counts from 1 to a fraction of the model's heads, spaced geometrically.
* :func:`haystack_frame` and :func:`score_summary` (from :mod:`workbench.phenomena.retrieval.scores`):
  the per-haystack retrieval scores in a table, and their means by context length or needle depth.

Masking is :func:`workbench.techniques.ablation.mask_attention` (the paper's: a masked head's query is zero,
so it attends uniformly and cannot pick out the needle). Everything runs inside the model's own
hook context, so any outer intervention (``with wb.ablate(...):``) applies as well.

How correctness is checked: one forward pass over ``prompt + answer`` (teacher forcing). The
query before answer token ``j`` must put its argmax logit on that token, for every ``j``; if it
does at every step, greedy decoding would have produced exactly the answer (each step sees
exactly the tokens teacher forcing fed it), and if it fails at some first step greedy decoding
would have left the answer there. So ``measure="exact"`` equals greedy exact match at the cost
of one forward pass. ``measure="tokens"`` is the softer fraction of answer tokens right under
teacher forcing. Only the answer rows of the final residual stream are unembedded.

>>> import torch
>>> from workbench.models import tiny_model
>>> from workbench.phenomena.retrieval.dataset import Haystack
>>> model = tiny_model()
>>> h = Haystack(tokens=torch.arange(1, 13)[None], needle_span=(3, 7), answer_span=(4, 6),
...              answer_ids=torch.tensor([5, 6]))
>>> needle_correct(model, [h], heads=[(0, 1)]).values.shape
torch.Size([1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core import checks, runtime
from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.runtime import (
    cache_prefix,
    prefill,
    resid_to_logits,
    run_cached,
    supports_fast_path,
)
from workbench.core.types import HookList, Model
from workbench.phenomena.retrieval.scores import haystack_frame, score_summary
from workbench.techniques.ablation import mask_attention
from workbench.techniques.heads import HeadSet

__all__ = [
    "needle_correct",
    "needle_accuracy",
    "masking_experiment",
    "MaskingResult",
    "k_sweep",
    "haystack_frame",
    "score_summary",
    "answer_masking",
]

Measure = Literal["exact", "tokens"]
_MEASURES = ("exact", "tokens")


# --------------------------------------------------------------------------------------------
# Checks


def _check_haystacks(model: Model, haystacks) -> list:
    if isinstance(haystacks, (str, bytes, Tensor)) or not isinstance(haystacks, Iterable):
        raise TypeError(
            f"haystacks must be a list of Haystack, got {type(haystacks).__name__}; "
            "build them with workbench.phenomena.needle_haystacks(model)."
        )
    haystacks = list(haystacks)
    if not haystacks:
        raise ValueError("No haystacks given; build them with workbench.phenomena.needle_haystacks(model).")
    for h in haystacks:
        missing = [a for a in ("tokens", "answer_ids", "full_tokens", "needle_span") if not hasattr(h, a)]
        if missing:
            raise TypeError(
                f"Expected workbench.phenomena.retrieval.dataset.Haystack objects, got {type(h).__name__} "
                f"without {missing}."
            )
        checks.context(model, h.full_tokens.shape[1], "A haystack with its answer (use shorter context_lengths)")
        if int(h.full_tokens.max()) >= model.cfg.d_vocab:
            raise ValueError(f"A haystack has token ids >= d_vocab={model.cfg.d_vocab}; it was built for another model.")
    return haystacks


def _check_measure(measure) -> None:
    if measure not in _MEASURES:
        raise ValueError(f"measure must be one of {_MEASURES}, got {measure!r}.")


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


def _check_scores(model: Model, scores) -> None:
    if not isinstance(scores, Result) or tuple(scores.dims) != ("layer", "head"):
        got = scores.dims if isinstance(scores, Result) else type(scores).__name__
        raise TypeError(f"scores must be a Result with dims ('layer', 'head') (heads.retrieval_scores), got {got}.")
    want = (model.cfg.n_layers, model.cfg.n_heads)
    if tuple(scores.values.shape) != want:
        raise ValueError(f"scores have shape {tuple(scores.values.shape)} but the model's heads are {want}.")
    if torch.isnan(scores.values).all():
        raise ValueError(
            "Every score is NaN: the model answered none of the scoring haystacks. "
            "Score on haystacks it answers (e.g. shorter contexts)."
        )


def _label(h) -> str:
    depth = getattr(h, "depth", float("nan"))
    return f"{h.context_length} tok, depth {depth:g}"


# --------------------------------------------------------------------------------------------
# Needle accuracy


def _answer_logits(model: Model, full: Tensor, n_prompt: int, n_answer: int) -> Float[Tensor, "batch target d_vocab"]:
    """Logits at the ``n_answer`` queries that predict the answer tokens; only those rows unembedded.

    A long prompt is run in chunks first (:func:`workbench.models.prefill`, as
    :func:`workbench.techniques.heads.retrieval_hits` does); the answer queries then read it from the cache.
    """
    first = n_prompt - 1  # the query that predicts the first answer token
    if supports_fast_path(model) and first > runtime.PREFILL_CHUNK:
        cache = prefill(model, full[:, :first])
        final = run_cached(model, full[:, first : first + n_answer], cache,
                           stop_at_layer=model.cfg.n_layers)
    else:  # one pass; the final residual stream of the answer rows read by a hook
        kept = {}

        def keep_answer_rows(resid: Tensor, hook) -> None:
            kept["x"] = resid[:, first : first + n_answer].detach()

        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        with model.hooks(fwd_hooks=[(last, keep_answer_rows)]):
            model(full, return_type=None)
        final = kept["x"]
    return resid_to_logits(model, final)


def _groups(haystacks: list, batch_size: int) -> list[list[int]]:
    """Indices of haystacks with the same prompt and answer lengths, in chunks of ``batch_size``."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, h in enumerate(haystacks):
        by_shape.setdefault((h.tokens.shape[1], len(h.answer_ids)), []).append(i)
    return [idx[s : s + batch_size] for idx in by_shape.values() for s in range(0, len(idx), batch_size)]


def _correct(model: Model, haystacks: list, measure: str, batch_size: int, progress: bool) -> Tensor:
    out = torch.zeros(len(haystacks))
    groups = _groups(haystacks, batch_size)
    with torch.no_grad():
        for idx in tqdm(groups, disable=not progress, desc="needle accuracy"):
            hs = [haystacks[i] for i in idx]
            full = torch.cat([h.full_tokens for h in hs])
            answer = torch.stack([h.answer_ids for h in hs])  # [batch, target]
            logits = _answer_logits(model, full, hs[0].tokens.shape[1], answer.shape[1])
            right = logits.argmax(-1) == answer
            out[idx] = (right.all(-1) if measure == "exact" else right.float().mean(-1)).float()
    return out


def needle_correct(
    model: Model,
    haystacks: Sequence,
    *,
    heads: Iterable[tuple[int, int]] = (),
    measure: Measure = "exact",
    batch_size: int = 8,
    progress: bool = False,
) -> Result:
    """Whether the model reproduces each haystack's answer, with ``heads`` masked, ``[batch]``.

    Args:
        haystacks: :class:`~workbench.phenomena.retrieval.dataset.Haystack` list (one entry per prompt).
        heads: heads ``(layer, head)`` to mask (:func:`~workbench.techniques.ablation.mask_attention`).
        measure: ``"exact"``: 1 if the greedy continuation is exactly the answer, else 0;
            ``"tokens"``: the fraction of answer tokens predicted right under teacher forcing.
        batch_size: haystacks of equal length run together, this many per forward pass.

    Returns a Result ``[batch]`` labelled ``"<length> tok, depth <d>"``; ``meta`` has the masked
    heads and the measure.

    >>> import torch
    >>> from workbench.models import tiny_model
    >>> from workbench.phenomena.retrieval.dataset import Haystack
    >>> h = Haystack(tokens=torch.arange(1, 13)[None], needle_span=(3, 7), answer_span=(4, 6),
    ...              answer_ids=torch.tensor([5, 6]))
    >>> r = needle_correct(tiny_model(), [h, h], measure="tokens")
    >>> r.dims, r.values.shape
    (('batch',), torch.Size([2]))
    """
    _check_measure(measure)
    _check_batch_size(batch_size)
    haystacks = _check_haystacks(model, haystacks)
    heads = sorted(HeadSet(heads))  # validates the pairs
    with mask_attention(model, heads):
        values = _correct(model, haystacks, measure, batch_size, progress)
    metric = "needle answered exactly" if measure == "exact" else "fraction of answer tokens right"
    return Result(
        values, ("batch",), metric=metric, labels={"batch": [_label(h) for h in haystacks]},
        meta=dict(model=model.cfg.model_name, masked=heads, measure=measure),
    )


def needle_accuracy(model: Model, haystacks: Sequence, **options) -> float:
    """Mean of :func:`needle_correct` over the haystacks (same options): needle accuracy in [0, 1]."""
    return float(needle_correct(model, haystacks, **options).values.mean())


# --------------------------------------------------------------------------------------------
# The masking experiment


@dataclass
class MaskingResult(Persistent):
    """Needle accuracy with the top-K retrieval heads masked vs K random non-retrieval heads.

    Attributes:
        ks: the head counts swept, increasing.
        top: Result ``[k]``, accuracy with the K highest-scoring heads masked.
        random: Result ``[k]``, accuracy with K random non-retrieval heads masked, mean over draws.
        random_draws: ``[draw, k]`` accuracy for each random draw.
        baseline: accuracy with nothing masked.
        top_order: heads by decreasing retrieval score; the top-K set is its first K.
        random_orders: one seeded order of the non-retrieval heads per draw; a draw's K-head set
            is its first K (so the sets of one draw are nested as K grows, like the top-K sets).
        n_heads: number of heads in the model.
        meta: options (threshold, seed, measure, number of haystacks).
    """

    ks: list[int]
    top: Result
    random: Result
    random_draws: Tensor
    baseline: float
    top_order: list[tuple[int, int]]
    random_orders: list[list[tuple[int, int]]]
    n_heads: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ks)
        if self.top.shape != (n,) or self.random.shape != (n,) or tuple(self.random_draws.shape[1:]) != (n,):
            raise ValueError(f"MaskingResult: top, random and random_draws need {n} entries along k.")

    def top_heads(self, k: int) -> HeadSet:
        """The K top retrieval heads masked at this K."""
        return HeadSet(self.top_order[:k], f"top {k} retrieval heads")

    def random_heads(self, k: int, draw: int = 0) -> HeadSet:
        """The K random non-retrieval heads of one draw."""
        return HeadSet(self.random_orders[draw][:k], f"{k} random non-retrieval heads (draw {draw})")

    @property
    def gap(self) -> Result:
        """Accuracy with K random heads masked minus with the top K masked, ``[k]``: how much more
        the retrieval heads matter (in accuracy, 0..1; x100 for points)."""
        return Result(
            self.random.values - self.top.values, ("k",), metric="accuracy(random K) - accuracy(top K)",
            labels={"k": list(self.ks)}, meta=dict(self.meta),
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per K: fraction of heads masked, accuracy (top, random mean/min/max) and gap."""
        return pd.DataFrame({
            "k": self.ks,
            "fraction_of_heads": [k / self.n_heads for k in self.ks],
            "top_k": self.top.values.numpy(),
            "random_mean": self.random.values.numpy(),
            "random_min": self.random_draws.min(0).values.numpy(),
            "random_max": self.random_draws.max(0).values.numpy(),
            "gap": self.gap.values.numpy(),
        })

    def plot(self, *, title: str | None = None, ax=None):
        """Accuracy against K for both conditions, with the unmasked accuracy for reference."""

        n = self.random_draws.shape[0]
        return render("lines", 
            self.ks,
            {
                "top-K retrieval heads masked": self.top.values.tolist(),
                f"K random non-retrieval heads masked (mean of {n})": self.random.values.tolist(),
                "nothing masked": [self.baseline] * len(self.ks),
            },
            xlabel="K (heads masked)",
            ylabel=self.top.metric,
            title=title if title is not None else "Masking retrieval heads vs random heads",
            ax=ax,
        )


def k_sweep(model: Model, *, max_fraction: float = 0.1, steps: int = 4) -> list[int]:
    """Head counts ``K`` for :func:`masking_experiment`: ``steps`` values spaced geometrically
    from 1 to ``round(max_fraction * n_layers * n_heads)`` (rounded, repeats dropped).

    >>> from workbench.models import tiny_model
    >>> k_sweep(tiny_model(n_layers=30, n_heads=9))   # 270 heads: 1 .. 27
    [1, 3, 9, 27]
    """
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}.")
    k_max = max(1, round(max_fraction * model.cfg.n_layers * model.cfg.n_heads))
    if steps == 1:
        return [k_max]
    return sorted({round(k_max ** (i / (steps - 1))) for i in range(steps)})


def _check_ks(ks, n_heads: int) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise TypeError(f"ks must be a list of head counts, got {ks!r}.")
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty; give the head counts K to sweep, e.g. [1, 2, 4, 8].")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"Every K must be an int, got {k!r}.")
        if not 0 <= k <= n_heads:
            raise ValueError(f"K must lie in 0..{n_heads} (the model's number of heads), got {k}.")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks has repeated values: {ks}.")
    return sorted(ks)


def _check_masking(model: Model, haystacks, scores: Result, ks, n_draws, threshold, measure, batch_size):
    """(haystacks, sorted ks), checked."""
    _check_measure(measure)
    _check_batch_size(batch_size)
    haystacks = _check_haystacks(model, haystacks)
    _check_scores(model, scores)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws must be an int >= 1, got {n_draws!r}.")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise TypeError(f"threshold must be a number, got {threshold!r}.")
    return list(haystacks), list(_check_ks(ks, model.cfg.n_layers * model.cfg.n_heads))


def _head_orders(scores: Result, k_max: int, threshold: float, n_draws: int, seed: int):
    """(heads by decreasing score, ``n_draws`` seeded orders of the non-retrieval heads)."""
    frame = scores.to_frame().dropna(subset=["value"]).sort_values("value", ascending=False, kind="stable")
    top_order = [(int(a), int(b)) for a, b in zip(frame["layer"], frame["head"])]
    if k_max > len(top_order):
        raise ValueError(f"K={k_max} but only {len(top_order)} heads have a (non-NaN) score.")
    pool = [(int(a), int(b)) for a, b in (scores.values <= threshold).nonzero().tolist()]
    if k_max > len(pool):
        raise ValueError(
            f"K={k_max} but only {len(pool)} heads are non-retrieval heads (score <= {threshold}); "
            "use smaller ks or a higher threshold."
        )
    # n_draws seeded permutations of the pool, from one generator seeded with seed
    gen = torch.Generator().manual_seed(seed)
    return top_order, [[pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()] for _ in range(n_draws)]


def _masked_accuracies(model: Model, haystacks: list, conditions: list, measure: str, batch_size: int,
                       progress: bool) -> tuple[float, dict]:
    """(accuracy with nothing masked, ``{(name, k): accuracy}`` for each masked condition)."""
    accuracy = {}
    bar = tqdm(total=1 + len(conditions), disable=not progress, desc="masking")
    try:
        baseline = needle_accuracy(model, haystacks, measure=measure, batch_size=batch_size)
        bar.update()
        for name, k, masked in conditions:
            accuracy[name, k] = needle_accuracy(model, haystacks, heads=masked, measure=measure, batch_size=batch_size)
            bar.update()
    finally:
        bar.close()
    return baseline, accuracy


def masking_experiment(
    model: Model,
    haystacks: Sequence,
    scores: Result,
    ks: Sequence[int],
    *,
    n_draws: int = 3,
    threshold: float = 0.1,
    seed: int = 0,
    measure: Measure = "exact",
    batch_size: int = 8,
    progress: bool = False,
) -> MaskingResult:
    """Needle accuracy with the top-K retrieval heads masked vs K random non-retrieval heads.

    The experiment of Wu et al. (2024): for each K in ``ks``, mask the K heads with the highest
    ``scores`` (ties: lower layer, then head, first), and separately K heads drawn at random
    from the *non-retrieval* heads (score ``<= threshold``, NaN never drawn), ``n_draws`` seeded
    draws whose accuracies are averaged. Cost: ``1 + (1 + n_draws) * len(ks without 0)``
    accuracy evaluations over ``haystacks`` (K = 0 is the unmasked baseline).

    Args:
        haystacks: the haystacks accuracy is measured on (they may differ from the scoring ones,
            e.g. shorter contexts to save time).
        scores: ``[layer, head]`` retrieval scores (:func:`workbench.techniques.heads.retrieval_scores`).
        ks: numbers of heads to mask, each in ``0..n_layers * n_heads``; a K above the number
            of non-retrieval heads is an error.
        n_draws: random draws per K (``>= 1``); ``seed`` seeds them.
        threshold: heads scoring above it are retrieval heads, never drawn as random heads.
        measure, batch_size: as in :func:`needle_correct`.

    >>> import torch
    >>> from workbench.models import tiny_model
    >>> from workbench.phenomena.retrieval.dataset import Haystack
    >>> from workbench.core.results import Result
    >>> model = tiny_model()
    >>> h = Haystack(tokens=torch.arange(1, 13)[None], needle_span=(3, 7), answer_span=(4, 6),
    ...              answer_ids=torch.tensor([5, 6]))
    >>> scores = Result(torch.arange(8.).reshape(2, 4) / 10, ("layer", "head"))
    >>> r = masking_experiment(model, [h], scores, [0, 1, 2], n_draws=2, progress=False)
    >>> r.to_frame().columns.tolist()[:3], r.top_heads(2)
    (['k', 'fraction_of_heads', 'top_k'], HeadSet('top 2 retrieval heads', 2 heads: L1H2, L1H3))
    """
    haystacks, ks = _check_masking(model, haystacks, scores, ks, n_draws, threshold, measure, batch_size)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    top_order, orders = _head_orders(scores, ks[-1], threshold, n_draws, seed)
    conditions = [("top", k, top_order[:k]) for k in ks if k] + [
        (d, k, orders[d][:k]) for d in range(n_draws) for k in ks if k
    ]
    baseline, accuracy = _masked_accuracies(model, list(haystacks), conditions, measure, batch_size, progress)

    def acc(name, k):
        return baseline if k == 0 else accuracy[name, k]

    metric = "needle accuracy" if measure == "exact" else "needle accuracy (answer tokens right)"
    meta = dict(model=model.cfg.model_name, threshold=threshold, seed=seed, n_draws=n_draws,
                measure=measure, n_haystacks=len(haystacks))
    draws = torch.tensor([[acc(d, k) for k in ks] for d in range(n_draws)])
    return MaskingResult(
        ks=list(ks),
        top=Result(torch.tensor([acc("top", k) for k in ks]), ("k",), metric=metric,
                   labels={"k": ks}, meta=dict(meta, condition="top-K retrieval heads masked")),
        random=Result(draws.mean(0), ("k",), metric=metric, labels={"k": ks},
                      meta=dict(meta, condition="K random non-retrieval heads masked, mean over draws")),
        random_draws=draws,
        baseline=baseline,
        top_order=top_order,
        random_orders=orders,
        n_heads=n_layers * n_heads,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# Many head sets at once, masked where the answer is written


def answer_masking(
    model: Model, haystacks: Sequence, head_sets: Sequence[Iterable[tuple[int, int]]], *, sets_per_pass: int = 8,
) -> Float[Tensor, "head_set batch"]:
    """Exact needle correctness with each head set masked at the answer queries only, ``[set, batch]``.

    The prompt before the answer is run once, unmasked, into a key/value cache; then, for every
    set, only the queries that write the answer run again, with that set's queries zeroed
    (:func:`~workbench.techniques.ablation.mask_attention`'s masking, restricted to those positions), from
    the lowest layer any set masks. An empty set gives the unmasked correctness. This isolates the
    retrieval step and costs a few tokens per set instead of a whole haystack, so a null of many
    random head sets fits a time budget; it is not the paper's masking at every position.
    """
    haystacks = _check_haystacks(model, haystacks)
    sets = [sorted(HeadSet(s)) for s in head_sets]
    if not sets:
        raise ValueError("head_sets is empty; give at least one set (an empty set is the unmasked run).")
    if isinstance(sets_per_pass, bool) or not isinstance(sets_per_pass, int) or sets_per_pass < 1:
        raise ValueError(f"sets_per_pass must be a positive int, got {sets_per_pass!r}.")
    if not supports_fast_path(model):
        raise TypeError("answer_masking needs a HookedTransformer that can start mid-model (key/value cache "
                        "and start_at_layer; no left padding).")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    low = min((layer for s in sets for layer, _ in s), default=n_layers - 1)
    out = torch.zeros(len(sets), len(haystacks))
    with torch.no_grad():
        for idx in _groups(haystacks, batch_size=16):
            hs = [haystacks[i] for i in idx]
            b, first = len(hs), hs[0].tokens.shape[1] - 1
            full = torch.cat([h.full_tokens for h in hs])
            answer = torch.stack([h.answer_ids for h in hs])
            queries = full[:, first : first + answer.shape[1]]
            kv = prefill(model, full[:, :first])
            resid = run_cached(model, queries, cache_prefix(kv, end=first), stop_at_layer=low)
            for s0 in range(0, len(sets), sets_per_pass):
                chunk = sets[s0 : s0 + sets_per_pass]
                mask = torch.ones(len(chunk) * b, n_layers, n_heads)
                for j, s in enumerate(chunk):
                    for layer, h in s:
                        mask[j * b : (j + 1) * b, layer, h] = 0.0

                def zero_queries(q: Tensor, hook, mask=mask) -> Tensor:  # [rows, pos, head, d_head]
                    return q * mask[:, int(hook.name.split(".")[1])][:, None, :, None].to(q.dtype)

                hooks: HookList = [(f"blocks.{layer}.attn.hook_q", zero_queries) for layer in range(low, n_layers)]
                with model.hooks(fwd_hooks=hooks):
                    final = model(resid.repeat(len(chunk), 1, 1), start_at_layer=low, stop_at_layer=n_layers,
                                  past_kv_cache=cache_prefix(kv, end=first, times=len(chunk), from_layer=low))
                right = (resid_to_logits(model, final).argmax(-1) == answer.repeat(len(chunk), 1)).all(-1)
                out[s0 : s0 + len(chunk), idx] = right.float().view(len(chunk), b)
    return out
