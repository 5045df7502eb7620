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
            got = call(name, fn, model, haystack, case=case)
            compare(name, got, solution(model, haystack), dims=("layer", "head"),
                    what="the number of answer tokens each head copied", case=case, exact=True)


@register(notebook=NOTEBOOK, minutes=15, difficulty="core", checker=_check_retrieval,
          objective="Count, per head, the answer tokens it copies by attending (argmax) to that "
                    "very token inside the needle, by teacher forcing.",
          catches=("off-by-one query (the answer token's own position)",
                   "any attention inside the needle counted, token not compared",
                   "argmax over the query axis"))
def retrieval_hits(model, haystack: Haystack) -> Int[Tensor, "layer head"]:
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
            got = call(name, fn, model, ds, head, case=case)
            compare(name, got, solution(model, ds, head),
                    what="the normalised logit difference after the patch", case=case)


@register(notebook=NOTEBOOK, minutes=12, difficulty="core", checker=_check_year,
          objective="Patch one head's output from the prompt with the right year into the "
                    "other-year prompt and read the normalised logit difference at each END.",
          catches=("read at the last position, not END (padding)", "clean and corrupted swapped",
                   "not normalised"))
def year_patch_head(model, ds, head: tuple[int, int]) -> float:
    layer, h = head
    name = f"blocks.{layer}.attn.hook_z"
    _, clean_cache = model.run_with_cache(ds.clean_tokens, names_filter=[name])

    def put_clean(z, hook):
        z[:, :, h] = clean_cache[name][:, :, h]
        return z

    clean = end_logit_diff(model, ds.clean_tokens, ds)
    corrupted = end_logit_diff(model, ds.corrupted_tokens, ds)
    with model.hooks(fwd_hooks=[(name, put_clean)]):
        patched = end_logit_diff(model, ds.corrupted_tokens, ds)
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
        got = call(name, fn, model, ds, case=case)
        compare(name, got, solution(model, ds), dims=("head",),
                what="the normalised effect of each head's patch at '='", case=case)


@register(notebook=NOTEBOOK, minutes=10, difficulty="core", checker=_check_mover,
          objective="Find the toy model's operand movers: patch each head's output at '=' from "
                    "the clean problem into the one with another operand.",
          catches=("clean and corrupted swapped", "patched at the operand's position, not '='",
                   "not normalised"))
def toy_operand_mover(model, ds) -> Float[Tensor, " head"]:
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
    got = call(name, fn, model, ds.clean_tokens, case="toy model")
    compare(name, got, solution(model, ds.clean_tokens), dims=("key_pos", "head"),
            what="attention from '=' to a and to b", case="toy model")


@register(notebook=NOTEBOOK, minutes=6, difficulty="intro", checker=_check_operand_attention,
          objective="Read how much each toy head attends from '=' to each operand.",
          catches=("query and key swapped", "from b's position, not '='",
                   "scores before the softmax"))
def toy_operand_attention(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "key_pos head"]:
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query_pos, key_pos]
    from_eq = pattern[:, :, 2].mean(0)  # [head, key_pos]: from '=' (position 2)
    return from_eq[:, :2].T  # keys a (0) and b (1)
