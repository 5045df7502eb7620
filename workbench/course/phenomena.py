"""Exercises 19-22: the retrieval score, year patching for temporal heads, and the operand movers
of the toy arithmetic model.

Notebook ``course/05_phenomena``. The retrieval and temporal exercises run on the tiny models
with hand-built inputs of the real datasets' shape (a :class:`~workbench.phenomena.retrieval.dataset.Haystack`;
a right-padded clean / other-year batch with one END per prompt); the toy exercises run on the
trained toy model (``workbench.models.toy``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.course.base import call, compare, register, tiny, tiny_gqa, toy
from workbench.phenomena.retrieval.dataset import Haystack

NOTEBOOK = "course/05_phenomena"


# --------------------------------------------------------------------------------------------
# 19. Retrieval hits


def haystack_case(seed: int) -> Haystack:
    """A 24-token haystack whose needle holds the 3 answer tokens twice (so random heads hit some)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 100, (1, 24), generator=gen)
    tokens[0, 0] = 0  # BOS
    answer = torch.tensor([3, 4, 5])
    tokens[0, 8:11] = answer
    tokens[0, 12:15] = answer
    return Haystack(tokens=tokens, needle_span=(7, 16), answer_span=(8, 11), answer_ids=answer)


def _check_retrieval(fn, solution):
    name = "retrieval_hits"
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        for seed in (0, 1, 2):
            model = make()
            haystack = haystack_case(seed)
            case = f"{label}, haystack seed {seed}"
            expected = solution(model, haystack)
            got = call(name, fn, model, haystack, case=case)
            compare(name, got, expected, dims=("layer", "head"),
                    what="the number of answer tokens each head copied", case=case, exact=True)


@register(notebook=NOTEBOOK, minutes=15, difficulty="core", checker=_check_retrieval,
          objective="Count, per head, the answer tokens it copies by attending (argmax) to that "
                    "very token inside the needle, by teacher forcing.",
          catches=("off-by-one query (the answer token's own position)",
                   "any attention inside the needle counted, token not compared",
                   "argmax over the query axis"))
def retrieval_hits(model, haystack: Haystack) -> Int[Tensor, "layer head"]:
    """Per head, how many answer tokens it copies from the needle by attending to them.

    Args:
        model: a ``HookedTransformer``.
        haystack: a ``Haystack``: ``tokens [1, n]`` (the prompt), ``answer_ids [m]``,
            ``needle_span (start, end)`` (positions, end excluded) and ``full_tokens`` (prompt
            followed by the answer, ``[1, n + m]``).

    Returns:
        ``Int[Tensor, "layer head"]``: run ``full_tokens`` (teacher forcing); the query that predicts
        answer token ``j`` sits at position ``n - 1 + j``. A head hits at step ``j`` when the key it
        attends to most (argmax over keys) lies inside the needle and holds ``answer_ids[j]``.
        Entry ``[l, h]`` counts the hits over the ``m`` steps (``0 .. m``).

    Example: with 3 answer tokens, a perfect retrieval head scores 3 and a previous-token head 0.
    """
    full = haystack.full_tokens  # prompt + answer, [1, n + m]
    n, m = haystack.tokens.shape[1], len(haystack.answer_ids)
    queries = torch.arange(n - 1, n - 1 + m)  # query n - 1 + j predicts answer token j
    start, end = haystack.needle_span
    hits = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)

    def count(pattern, hook):  # pattern: [1, head, query_pos, key_pos]
        top = pattern[0, :, queries].argmax(-1)  # [head, answer step]: the key each head reads most
        inside = (top >= start) & (top < end)
        same = full[0, top] == haystack.answer_ids  # that key holds the token to produce
        hits[hook.layer()] = (inside & same).sum(-1)

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=[(name, count) for name in names]):
        model(full)
    return hits


# --------------------------------------------------------------------------------------------
# 20. Year patching


def year_case(seed: int = 0) -> SimpleNamespace:
    """Four right-padded prompts whose clean and corrupted versions differ in their "year" (pos 2)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, 100, (4, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, 100, (4,), generator=gen)
    end = torch.tensor([7, 5, 6, 4])
    for b, e in enumerate(end.tolist()):
        clean[b, e + 1:] = 0  # padding after END
        corrupted[b, e + 1:] = 0
    answers, counter = torch.randint(0, 100, (2, 4), generator=gen)
    return SimpleNamespace(clean_tokens=clean, corrupted_tokens=corrupted, answer_ids=answers,
                           counterfactual_ids=counter, pos={"END": end})


def end_logit_diff(model, tokens: Tensor, ds) -> float:
    """Mean of ``logit[answer] - logit[counterfactual]`` at each prompt's END."""
    rows = torch.arange(len(tokens))
    last = model(tokens)[rows, ds.pos["END"]]
    return (last[rows, ds.answer_ids] - last[rows, ds.counterfactual_ids]).mean().item()


def _check_year(fn, solution):
    name = "year_patch_head"
    ds = year_case(0)
    for make, label in ((tiny, "tiny model"), (tiny_gqa, "grouped-query model")):
        for head in ((0, 1), (1, 2)):
            model = make()
            case = f"{label}, head L{head[0]}H{head[1]}"
            expected = solution(model, ds, head)
            got = call(name, fn, model, ds, head, case=case)
            compare(name, got, expected,
                    what="the normalised logit difference after the patch", case=case)


@register(notebook=NOTEBOOK, minutes=12, difficulty="core", checker=_check_year,
          objective="Patch one head's output from the prompt with the right year into the "
                    "other-year prompt and read the normalised logit difference at each END.",
          catches=("read at the last position, not END (padding)", "clean and corrupted swapped",
                   "not normalised"))
def year_patch_head(model, ds, head: tuple[int, int]) -> float:
    """The normalised effect of patching one head's output on a year task, read at each END.

    Args:
        model: a ``HookedTransformer``.
        ds: ``clean_tokens`` and ``corrupted_tokens`` (``[batch, pos]``, right-padded, the two
            differing only in the year), ``answer_ids`` and ``counterfactual_ids`` (``[batch]``) and
            ``pos["END"]`` (``[batch]``, the position of each prompt's last real token).
        head: ``(layer, head)``.

    Returns:
        ``float``: with ``L(tokens)`` the mean over prompts of ``logit[answer] - logit[counterfactual]``
        at each prompt's END, the value ``(L(patched) - L(corrupted)) / (L(clean) - L(corrupted))``,
        where the patched run is the corrupted one with the head's ``hook_z`` taken from the clean run
        (every position). Normalised: 0 = no effect, 1 = the whole clean behaviour back.

    Example: a head that carries the year alone scores about ``1.0``; an idle head ``0.0``.
    """
    layer, h = head
    name = f"blocks.{layer}.attn.hook_z"
    _, clean_cache = model.run_with_cache(ds.clean_tokens, names_filter=[name])

    rows = torch.arange(len(ds.clean_tokens))

    def at_end(tokens) -> float:  # each prompt's own END: the prompts are right-padded
        logits = model(tokens)[rows, ds.pos["END"]]
        return (logits[rows, ds.answer_ids] - logits[rows, ds.counterfactual_ids]).mean().item()

    def put_clean(z, hook):
        z[:, :, h] = clean_cache[name][:, :, h]
        return z

    clean, corrupted = at_end(ds.clean_tokens), at_end(ds.corrupted_tokens)
    with model.hooks(fwd_hooks=[(name, put_clean)]):
        patched = at_end(ds.corrupted_tokens)
    return (patched - corrupted) / (clean - corrupted)


# --------------------------------------------------------------------------------------------
# 21-22. The toy model's operand movers


def toy_case(n: int = 32, corrupt: Literal["a", "b", "both"] = "a"):
    from workbench.models.toy import toy_problems

    model = toy()
    return model, toy_problems(model, n=n, corrupt=corrupt, seed=0)


def _check_mover(fn, solution):
    name = "toy_operand_mover"
    for corrupt in ("a", "b"):
        model, ds = toy_case(corrupt=corrupt)
        case = f"toy model, operand {corrupt} corrupted"
        expected = solution(model, ds)
        got = call(name, fn, model, ds, case=case)
        compare(name, got, expected, dims=("head",),
                what="the normalised effect of each head's patch at '='", case=case)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_mover,
          objective="Find the toy model's operand movers: patch each head's output at '=' from "
                    "the clean problem into the one with another operand.",
          catches=("clean and corrupted swapped", "patched at the operand's position, not '='",
                   "not normalised"))
def toy_operand_mover(model, ds) -> Float[Tensor, " head"]:
    """The toy model's operand movers: each head's normalised patch at ``'='``.

    Args:
        model: the toy modular-addition model (1 layer; prompts ``a b = `` with ``'='`` at position 2).
        ds: ``clean_tokens``, ``corrupted_tokens`` (``[batch, 3]``, one operand changed) and
            ``logit_diff()`` (a metric read at position 2).

    Returns:
        ``Float[Tensor, " head"]``: for head ``h`` of layer 0, ``(M(patched) - M(corrupted)) /
        (M(clean) - M(corrupted))`` where ``M`` is ``ds.logit_diff()`` and the patched run is the
        corrupted one with the head's ``hook_z`` at position 2 only taken from the clean run.
        Normalised; heads in ``range(n_heads)`` order.

    Example: a head that moves the changed operand to ``'='`` scores near 1, the others near 0.
    """
    metric = ds.logit_diff()  # at '=' (position 2)
    clean = metric(model(ds.clean_tokens)).item()
    corrupted = metric(model(ds.corrupted_tokens)).item()
    _, cache = model.run_with_cache(ds.clean_tokens, names_filter=["blocks.0.attn.hook_z"])
    out = torch.zeros(model.cfg.n_heads)
    for h in range(model.cfg.n_heads):
        def put_clean(z, hook, h=h):
            z[:, 2, h] = cache[hook.name][:, 2, h]
            return z

        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", put_clean)]):
            out[h] = (metric(model(ds.corrupted_tokens)).item() - corrupted) / (clean - corrupted)
    return out


def _check_operand_attention(fn, solution):
    name = "toy_operand_attention"
    model, ds = toy_case()
    expected = solution(model, ds.clean_tokens)
    got = call(name, fn, model, ds.clean_tokens, case="toy model")
    compare(name, got, expected, dims=("key_pos", "head"),
            what="attention from '=' to a and to b", case="toy model")


@register(notebook=NOTEBOOK, minutes=6, difficulty="intro", checker=_check_operand_attention,
          objective="Read how much each toy head attends from '=' to each operand.",
          catches=("query and key swapped", "from b's position, not '='",
                   "scores before the softmax"))
def toy_operand_attention(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "key_pos head"]:
    """How much each toy head attends from ``'='`` to each operand.

    Args:
        model: the toy modular-addition model (1 layer).
        tokens: ``Int[Tensor, "batch 3"]``, prompts ``a b =`` (``'='`` at position 2).

    Returns:
        ``Float[Tensor, "key_pos head"]``: row 0 is the attention probability from ``'='`` to ``a``
        (position 0), row 1 to ``b`` (position 1), each the mean over the batch; heads in
        ``range(n_heads)`` order. Probabilities after the softmax, in ``[0, 1]``.

    Example: a head that reads ``a`` only has column ``[1.0, 0.0]``.
    """
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query_pos, key_pos]
    from_eq = pattern[:, :, 2].mean(0)  # [head, key_pos]: from '=' (position 2)
    return from_eq[:, :2].T  # keys a (0) and b (1)
