"""Arithmetic heads (Zhang et al. 2024; Stolfo et al. 2023): accuracy under head ablation, and
where the heads look.

Zhang et al. find a handful of attention heads that arithmetic depends on: mean-ablating the top
ten of LLaMA2-7B drops its accuracy on problems it solved from 100% to about 30%, while ten
random heads leave 98%. This module holds the two measurements behind that comparison, for any
dataset with ``clean_tokens``, ``answer_ids`` and ``pos["END"]`` (the text datasets of
:mod:`workbench.phenomena.arithmetic.dataset` and the toy model's :func:`workbench.models.toy.toy_problems`):

- :func:`answer_accuracy`: the share of problems whose top prediction at ``pos["END"]`` is the
  answer, optionally with heads ablated (:func:`workbench.techniques.ablation.ablate`);
- :func:`top_vs_random`: ablate the ``k`` best-scoring heads and, in seeded draws, ``k`` random
  heads from the rest, for several ``k``;
- :func:`operand_attention`: the attention from the last position to the operand and operator
  tokens, ``[key_pos, layer, head]`` with key_pos labelled by role.

>>> from workbench.models.toy import load_toy_model, toy_problems
>>> from workbench.core.results import Result
>>> import torch
>>> model = load_toy_model()
>>> ds = toy_problems(model, n=64)
>>> answer_accuracy(model, ds)
1.0
>>> scores = Result(torch.tensor([[0.1, 0.9, 0.2, 0.3]]), ("layer", "head"))
>>> r = top_vs_random(model, ds, scores, ks=[1], n_draws=2, progress=False)
>>> r.top.dims, r.random.dims, tuple(r.draws.shape)
(('k',), ('k',), (1, 2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.components import random_head_sets, top_k_heads
from workbench.core.persist import Persistent
from workbench.core.results import Result, render
from workbench.core.runtime import logits_at, resid_to_logits
from workbench.core.types import HookList, Model
from workbench.techniques.ablation import ComponentAblation, ablate
from workbench.techniques.heads import attention_to

__all__ = ["answer_accuracy", "random_heads", "top_heads", "TopVsRandom", "top_vs_random",
           "operand_attention", "head_means", "sum_correct", "operand_attention_per_problem"]

Head = tuple[int, int]


def _check_dataset(ds) -> None:
    missing = [a for a in ("clean_tokens", "answer_ids", "pos") if not hasattr(ds, a)]
    if missing or "END" not in getattr(ds, "pos", {}):
        raise TypeError(
            f"Expected a problem set with clean_tokens, answer_ids and pos['END'] (from "
            f"arithmetic_problems or toy_problems); {type(ds).__name__} lacks "
            f"{missing or ['pos[END]']}."
        )


def _check_ablation(ablation: str) -> None:
    if ablation not in get_args(ComponentAblation):
        raise ValueError(f"ablation must be one of {list(get_args(ComponentAblation))}, got {ablation!r}.")


@torch.no_grad()
def _correct(model: Model, ds, batch_size: int) -> Tensor:
    """Bool [batch]: the top prediction at ``pos["END"]`` is ``answer_ids``."""
    out = []
    for start in range(0, len(ds.clean_tokens), batch_size):
        sl = slice(start, start + batch_size)
        last = logits_at(model, ds.clean_tokens[sl], ds.pos["END"][sl])  # [batch, d_vocab]
        out.append(last.argmax(-1) == ds.answer_ids[sl])
    return torch.cat(out)


def answer_accuracy(
    model: Model,
    ds,
    *,
    heads: Sequence[Head] = (),
    ablation: ComponentAblation = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 64,
) -> float:
    """Share of ``ds`` whose top next token at ``pos["END"]`` is the answer, ``heads`` ablated.

    ``ablation="mean"`` (the paper's ablation) replaces each head's output by its mean over
    ``reference`` per position; ``reference`` defaults to ``ds.clean_tokens``, the problems
    themselves. No heads: the plain accuracy.
    """
    _check_dataset(ds)
    _check_ablation(ablation)
    heads = list(heads)
    if not heads:
        return _correct(model, ds, batch_size).float().mean().item()
    if reference is None and ablation != "zero":
        reference = ds.clean_tokens
    with ablate(model, heads=heads, ablation=ablation, reference=reference):
        return _correct(model, ds, batch_size).float().mean().item()


def top_heads(scores: Result, k: int) -> list[Head]:
    """The ``k`` heads with the largest score, best first (ties: lower index first)."""
    if tuple(scores.dims) != ("layer", "head"):
        raise ValueError(f"scores must have dims ('layer', 'head'), got {scores.dims}.")
    return top_k_heads(scores.values, k)


def random_heads(model: Model, k: int, *, seed: int, exclude: Sequence[Head] = ()) -> list[Head]:
    """``k`` distinct heads drawn uniformly (seeded) from all heads not in ``exclude``."""
    return random_head_sets(model.cfg.n_layers, model.cfg.n_heads, k=k, n_draws=1, seed=seed, exclude=exclude)[0]


@dataclass
class TopVsRandom(Persistent):
    """Accuracy with the top-k heads ablated against k random heads, for several k.

    Attributes:
        top: Result ``[k]``, accuracy with the ``k`` best-scoring heads ablated.
        random: Result ``[k]``, mean accuracy over the random draws.
        draws: Tensor ``[k, draw]``, the accuracy of each random draw.
        base: accuracy with nothing ablated.
        heads: ``{k: top heads}``; random_sets: ``{k: [heads of each draw]}``.
    """

    top: Result
    random: Result
    draws: Float[Tensor, "k draw"]
    base: float
    heads: dict[int, list[Head]]
    random_sets: dict[int, list[list[Head]]]

    def drop_ratio(self) -> Float[Tensor, " k"]:
        """``(base - top) / (base - random)``: how many times more the top heads cost
        (``inf`` where the random heads cost nothing and the top heads something)."""
        top_drop = self.base - self.top.values
        rnd_drop = (self.base - self.random.values).clamp(min=0)
        return top_drop / rnd_drop

    def to_frame(self) -> pd.DataFrame:
        """One row per k: accuracies, drops and their ratio, the worst random draw."""
        ks = list(self.top.labels["k"])
        return pd.DataFrame(dict(
            k=ks,
            top_k=self.top.values.tolist(),
            random_k=self.random.values.tolist(),
            random_min=self.draws.min(1).values.tolist(),
            drop_top=(self.base - self.top.values).tolist(),
            drop_random=(self.base - self.random.values).tolist(),
            ratio=self.drop_ratio().tolist(),
        ))

    def plot(self, **kwargs):
        """Accuracy against k with the top-k heads ablated, with k random heads, and with none."""
        ks = list(self.top.labels["k"])
        ys = {"top-k heads ablated": self.top.values.tolist(),
              f"k random heads ablated (mean of {self.draws.shape[1]})": self.random.values.tolist(),
              "nothing ablated": [self.base] * len(ks)}
        kwargs.setdefault("title", "Ablating the top heads vs random heads")
        return render("lines", ks, ys, xlabel="k (heads ablated)", ylabel=self.top.metric, **kwargs)


def top_vs_random(
    model: Model,
    ds,
    scores: Result,
    *,
    ks: Sequence[int] = (1, 5, 10),
    n_draws: int = 5,
    seed: int = 0,
    ablation: ComponentAblation = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> TopVsRandom:
    """Ablate the ``k`` heads with the largest ``scores`` vs ``n_draws`` seeded draws of ``k``
    random heads from the other heads, and measure :func:`answer_accuracy` on ``ds``.

    Draw ``j`` for ``k`` is seeded by ``(seed, k, j)`` alone (``seed * 10**6 + k * 1000 + j``),
    so adding a ``k`` never changes the other draws.
    """
    _check_ablation(ablation)
    ks = [int(k) for k in ks]
    if not ks or n_draws < 1:
        raise ValueError(f"Give at least one k and n_draws >= 1, got ks={ks}, n_draws={n_draws}.")

    def accuracy(heads: Sequence[Head] = ()) -> float:
        return answer_accuracy(model, ds, heads=heads, ablation=ablation, reference=reference,
                               batch_size=batch_size)

    base = accuracy()
    top, draws, heads, sets = [], torch.zeros(len(ks), n_draws), {}, {}
    for i, k in enumerate(tqdm(ks, disable=not progress, desc="top vs random")):
        heads[k] = top_heads(scores, k)
        top.append(accuracy(heads[k]))
        sets[k] = [random_heads(model, k, seed=seed * 10**6 + k * 1000 + j, exclude=heads[k])
                   for j in range(n_draws)]
        for j, chosen in enumerate(sets[k]):
            draws[i, j] = accuracy(chosen)
    meta = dict(ablation=ablation, n_draws=n_draws, seed=seed, base=base)
    labels = {"k": ks}
    return TopVsRandom(
        top=Result(torch.tensor(top), ("k",), "accuracy, top-k heads ablated", labels, meta),
        random=Result(draws.mean(1), ("k",), "accuracy, k random heads ablated", labels, meta),
        draws=draws, base=base, heads=heads, random_sets=sets,
    )


Role = Literal["A", "OP", "B"]


def _role_mask(ds, role: str, n_pos: int) -> Tensor:
    """Bool [batch, pos]: the tokens of an operand (all its digits) or the operator."""
    start = ds.pos.get(f"{role}_START", ds.pos[role])
    end = ds.pos[role]
    ar = torch.arange(n_pos)[None]
    return (ar >= start[:, None]) & (ar <= end[:, None])


def operand_attention(model: Model, ds, roles: Sequence[str] | None = None) -> Result:
    """Attention from ``pos["END"]`` to each role's tokens, ``[key_pos, layer, head]``.

    ``roles``: keys of ``ds.pos`` (default: ``"A", "OP", "B"`` where present; the toy problems
    have no operator token). An operand of several tokens counts all of them (``A_START..A``).
    """
    _check_dataset(ds)
    roles = list(roles) if roles is not None else [r for r in ("A", "OP", "B") if r in ds.pos]
    unknown = [r for r in roles if r not in ds.pos]
    if not roles or unknown:
        raise ValueError(f"roles must be keys of ds.pos {sorted(ds.pos)}, got {roles}.")
    tokens = ds.clean_tokens
    n_pos = tokens.shape[1]
    queries = torch.zeros_like(tokens, dtype=torch.bool)
    queries[torch.arange(len(tokens)), ds.pos["END"]] = True
    values = torch.stack([
        attention_to(model, tokens, _role_mask(ds, r, n_pos), query_positions=queries).values
        for r in roles
    ])
    return Result(values, ("key_pos", "layer", "head"), "attention from END to the role's tokens",
                  {"key_pos": roles}, {"model": model.cfg.model_name})


# --------------------------------------------------------------------------------------------
# Whole answers under mean ablation of many head sets; attention to the operands per problem


@torch.no_grad()
def head_means(model: Model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer pos head d_head"]:
    """Each head's output ``z`` averaged over ``tokens``, position by position (mean ablation's means)."""
    kept: dict[int, Tensor] = {}

    def keep(z: Tensor, hook) -> None:
        kept[int(hook.name.split(".")[1])] = z.mean(0)

    hooks: HookList = [(f"blocks.{layer}.attn.hook_z", keep) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, return_type=None)
    return torch.stack([kept[layer] for layer in range(model.cfg.n_layers)])


@torch.no_grad()
def sum_correct(
    model: Model, ds, head_sets: Sequence[Sequence[Head]], *, means: Tensor, sets_per_pass: int = 8,
) -> Float[Tensor, "head_set batch"]:
    """Whether each problem's whole answer (both digits) is the top prediction, ``[set, problem]``,
    with each set's heads mean-ablated (outputs replaced by ``means``, from :func:`head_means`).

    One teacher-forced pass over ``ds.full_tokens`` (:func:`workbench.phenomena.arithmetic.dataset.sum_problems`)
    per set, started at the lowest ablated layer from the unablated residual stream; ``sets_per_pass``
    sets share one batch. An empty set gives the plain correctness.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    sets = [sorted({(int(a), int(b)) for a, b in s}) for s in head_sets]
    if not sets:
        raise ValueError("head_sets is empty; give at least one set (an empty set is the plain run).")
    if isinstance(sets_per_pass, bool) or not isinstance(sets_per_pass, int) or sets_per_pass < 1:
        raise ValueError(f"sets_per_pass must be a positive int, got {sets_per_pass!r}.")
    bad = [h for s in sets for h in s if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ValueError(f"Heads outside the model's {n_layers} x {n_heads} grid: {bad[:3]}.")
    full, answer = ds.full_tokens, ds.answer_ids
    if tuple(means.shape[:3]) != (n_layers, full.shape[1], n_heads):
        raise ValueError(f"means have shape {tuple(means.shape)}; take them with head_means on tokens of "
                         f"length {full.shape[1]} (ds.full_tokens).")
    end = ds.clean_tokens.shape[1] - 1
    low = min((layer for s in sets for layer, _ in s), default=n_layers - 1)
    _, cache = model.run_with_cache(full, names_filter=f"blocks.{low}.hook_resid_pre")
    resid = cache[f"blocks.{low}.hook_resid_pre"]
    out = torch.zeros(len(sets), len(full))
    for s0 in range(0, len(sets), sets_per_pass):
        chunk = sets[s0 : s0 + sets_per_pass]
        drop = torch.zeros(len(chunk) * len(full), n_layers, n_heads)
        for j, s in enumerate(chunk):
            for layer, h in s:
                drop[j * len(full) : (j + 1) * len(full), layer, h] = 1.0

        def mean_ablate(z: Tensor, hook, drop=drop) -> Tensor:  # [rows, pos, head, d_head]
            layer = int(hook.name.split(".")[1])
            d = drop[:, layer][:, None, :, None].to(z.dtype)
            return z * (1 - d) + means[layer][None].to(z.dtype) * d

        hooks: HookList = [(f"blocks.{layer}.attn.hook_z", mean_ablate) for layer in range(low, n_layers)]
        with model.hooks(fwd_hooks=hooks):
            final = model(resid.repeat(len(chunk), 1, 1), start_at_layer=low, stop_at_layer=n_layers)
        logits = resid_to_logits(model, final[:, end : end + 2])
        right = (logits.argmax(-1) == answer.repeat(len(chunk), 1)).all(-1)
        out[s0 : s0 + len(chunk)] = right.float().view(len(chunk), len(full))
    return out


@torch.no_grad()
def operand_attention_per_problem(model: Model, ds) -> Float[Tensor, "batch layer head"]:
    """Attention from ``pos["END"]`` to both operands' tokens (``A_START..A`` and ``B_START..B``), per problem."""
    _check_dataset(ds)
    tokens = ds.clean_tokens
    keys = _role_mask(ds, "A", tokens.shape[1]) | _role_mask(ds, "B", tokens.shape[1])  # [batch, pos]
    rows = torch.arange(len(tokens))
    out = []

    def read(pattern: Tensor, hook) -> None:  # [batch, head, query, key]
        q = pattern[rows, :, ds.pos["END"]]  # [batch, head, key]
        out.append((q * keys[:, None].to(q.dtype)).sum(-1))

    hooks: HookList = [(f"blocks.{layer}.attn.hook_pattern", read) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        model(tokens, return_type=None)
    return torch.stack(out, 1)
