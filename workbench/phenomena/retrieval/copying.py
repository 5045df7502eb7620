"""Retrieval scores counted only at the answer steps that no induction step can do.

Wu et al.'s retrieval score (:func:`workbench.techniques.heads.retrieval_scores`) counts a hit when
a head, writing answer token ``a_j``, attends to ``a_j`` inside the needle. When the answer is
written in the needle token for token (``" 4821"`` is ``' ', '4', '8', '2', '1'`` for SmolLM2),
every step after the first can also be done by an induction head: the token before ``a_j`` in the
answer precedes ``a_j`` in the needle too, and an induction head attends to the token after an
earlier copy of the current token, whatever the paraphrase of the question.

:func:`copy_step_scores` counts hits only at the steps :meth:`Haystack.copy_steps` marks: ``a_j`` is in
the needle and never after the token that precedes it in the answer. With a needle that writes
the code as ``4-8-2-1`` and the answer `` 4821``, those are the digits after the first (the space
and the first digit follow the same tokens in the needle and are not scored).

>>> import torch
>>> from workbench.models import tiny_model
>>> from workbench.phenomena.retrieval.dataset import Haystack
>>> h = Haystack(tokens=torch.tensor([[1, 7, 4, 9, 5, 2, 3]]), needle_span=(1, 6), answer_span=None,
...              answer_ids=torch.tensor([4, 5, 6]))
>>> r = copy_step_scores(tiny_model(), [h])   # a random model answers nothing: NaN scores
>>> r.values.shape, r.meta["n_answered"], r.meta["copy_steps"]
(torch.Size([2, 4]), 0, [2])
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core import checks, runtime
from workbench.core.results import Result
from workbench.core.types import HookList, Model

__all__ = ["copy_hits", "copy_step_scores"]


def copy_hits(model: Model, haystack) -> tuple[Int[Tensor, "layer head"], int, bool]:
    """Hits of every head at the haystack's copy steps, by teacher forcing: ``(hits, n_steps, answered)``.

    One forward pass over ``prompt + answer`` (long prompts prefilled in chunks). A head hits at a
    copy step if the argmax of its attention row there lies inside ``needle_span`` on a token equal
    to the answer token of that step. ``answered``: the argmax logit is the answer token at every
    answer step (greedy decoding writes exactly the answer).
    """
    full = haystack.full_tokens
    n, m = haystack.tokens.shape[1], len(haystack.answer_ids)
    checks.context(model, full.shape[1], "The haystack with its answer")
    steps = haystack.copy_steps()
    start, end = haystack.needle_span
    answer = haystack.answer_ids
    hits = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)
    kept: dict[str, Tensor] = {}
    offset = n - 1 if runtime.supports_fast_path(model) and n - 1 > runtime.PREFILL_CHUNK else 0
    queries = torch.arange(n - 1, n - 1 + m)[steps] - offset

    def count_copy_hits(pattern: Tensor, hook) -> None:  # keys are absolute positions, cached or not
        top = pattern[0, :, queries, :].argmax(-1)  # [head, copy step]
        hits[hook.layer()] = (((top >= start) & (top < end)) & (full[0, top] == answer[steps][None])).sum(-1)

    def keep_answer_rows(resid: Tensor, hook) -> None:
        kept["x"] = resid[:, n - 1 - offset : n - 1 - offset + m].detach()

    hooks: HookList = [(f"blocks.{layer}.attn.hook_pattern", count_copy_hits) for layer in range(model.cfg.n_layers)]
    hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", keep_answer_rows))
    with torch.no_grad():
        if offset:
            cache = runtime.prefill(model, full[:, :offset])
            with model.hooks(fwd_hooks=hooks):
                runtime.run_cached(model, full[:, offset:], cache, return_type=None)
        else:
            with model.hooks(fwd_hooks=hooks):
                model(full, return_type=None)
        logits = runtime.resid_to_logits(model, kept["x"])[0]
    return hits, int(steps.sum()), bool((logits.argmax(-1) == answer).all())


def copy_step_scores(model: Model, haystacks: Sequence) -> Result:
    """Retrieval score of every head at the copy steps only, ``[layer, head]``: hits / copy steps per
    answered haystack, averaged. ``meta``: ``per_haystack`` (``[haystack, layer, head]``, NaN where
    the model did not answer or the haystack has no copy step), ``answered``, ``n_answered``,
    ``n_total``, ``copy_steps`` (per haystack). NaN everywhere, with a warning, if none counts."""
    haystacks = list(haystacks)
    if not haystacks:
        raise ValueError("No haystacks given; build them with workbench.phenomena.needle_haystacks(model).")
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    per = torch.full((len(haystacks), *shape), float("nan"))
    answered, n_steps = [], []
    for i, h in enumerate(haystacks):
        hits, k, ok = copy_hits(model, h)
        answered.append(ok)
        n_steps.append(k)
        if ok and k:
            per[i] = hits.float() / k
    counted = ~torch.isnan(per[:, 0, 0])
    if not counted.any():
        warnings.warn("No haystack counts (none answered, or no copy step): every copy score is NaN.", stacklevel=2)
        values = torch.full(shape, float("nan"))
    else:
        values = per[counted].mean(0)
    return Result(values, ("layer", "head"), metric="retrieval score at the copy steps",
                  meta=dict(model=model.cfg.model_name, per_haystack=per, answered=answered,
                            n_answered=int(sum(answered)), n_total=len(haystacks), copy_steps=n_steps))
