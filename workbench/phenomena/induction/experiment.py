"""Induction heads as a pre-registered experiment, on repeated random tokens.

1. :func:`prepare`: ``n_seeds`` sequences ``[BOS] r r`` (one random ``r`` per seed), the seeds split
   into a selection and an evaluation part (:func:`~workbench.core.subsets.split_pools` over the
   factor ``seed``: no sequence is in both).
2. :func:`select_heads`: each head's induction score on the selection sequences; the top K (the
   atlas's K: 3% of heads, at least 3), ranked at 3 decimals with ties to the lower head.
3. :func:`measure`: per evaluation sequence, each head's induction score and the model's loss on
   each copy; a null of layer-matched random head sets.
4. :func:`scorecard`: the registered claims (``claims.toml``) with intervals and verdicts.

Works on any model, the tiny random ones too (their heads are measured and fail the claims).

>>> from workbench.models import tiny_model
>>> card = run(tiny_model())
>>> [f.claim.name for f in card.findings]
['induction-heads', 'in-context']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.components import head_set_mean, random_head_sets, top_k_heads
from workbench.core.subsets import split_pools
from workbench.core.types import HookList, Model
from workbench.findings import Scorecard, evaluate, preregistration
from workbench.models import model_label
from workbench.phenomena.registry import default_k
from workbench.techniques.heads import repeated_tokens

__all__ = ["InductionSelection", "RepeatedSequences", "default_k", "measure", "per_sequence_scores", "prepare",
           "run", "scorecard", "select_heads"]

NOTEBOOK = "induction"  # no notebook of its own: 06_head_atlas shows its scorecard
PACKAGE = "workbench.phenomena.induction"


@dataclass
class RepeatedSequences:
    """Sequences ``[BOS] r r``, one per seed, ``tokens [seed, 1 + 2 seq_len]``."""

    tokens: Int[Tensor, "batch pos"]
    seeds: list[int]
    seq_len: int

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def factors(self) -> dict[str, set[str]]:
        return {"seed": {str(s) for s in self.seeds}}


@dataclass
class InductionSelection:
    """Step 2's record: the selection scores ``[layer, head]``, K and the chosen heads."""

    scores: Tensor
    k: int
    chosen: list[tuple[int, int]]


def registration() -> preregistration.Registration:
    return preregistration.load(PACKAGE)


def _sequences(model: Model, seeds: list[int], seq_len: int) -> RepeatedSequences:
    tokens = torch.cat([repeated_tokens(model, seq_len, 1, s) for s in seeds])
    return RepeatedSequences(tokens, seeds, seq_len)


def prepare(model: Model, design: dict, *, seed: int = 0) -> tuple[RepeatedSequences, RepeatedSequences]:
    """Selection and evaluation sequences from disjoint seeds (``seed * n_seeds`` onwards)."""
    seq_len = min(int(design["seq_len"]), (model.cfg.n_ctx - 1) // 2)
    n = int(design["n_seeds"])
    pool = [str(seed * n + i) for i in range(n)]
    sel, ev = split_pools({"seed": pool}, fraction=float(design["select_fraction"]), seed=seed)
    return (_sequences(model, sorted(int(s) for s in sel["seed"]), seq_len),
            _sequences(model, sorted(int(s) for s in ev["seed"]), seq_len))


def per_sequence_scores(model: Model, seqs: RepeatedSequences) -> tuple[Float[Tensor, "batch layer head"], Tensor]:
    """Each head's induction score on each sequence (mean attention from the second copy of a token
    to the token after its first copy), and each sequence's loss on the first and second copy
    (``[batch, 2]``, nats), from one forward pass."""
    L, n_layers = seqs.seq_len, model.cfg.n_layers
    out = torch.zeros(len(seqs), n_layers, model.cfg.n_heads)

    def induction_attention(pattern: Tensor, hook) -> None:  # [batch, head, q, k]
        diag = pattern.diagonal(offset=-(L - 1), dim1=-2, dim2=-1)  # q = i + L - 1
        out[:, hook.layer()] = diag[..., 2:L + 2].mean(-1).float().cpu()  # q = L+1 .. 2L

    hooks: HookList = [(f"blocks.{layer}.attn.hook_pattern", induction_attention) for layer in range(n_layers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(seqs.tokens)
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, seqs.tokens[:, 1:, None])[..., 0].float().cpu()
    losses = torch.stack([nll[:, 1:L].mean(1), nll[:, L + 1:2 * L].mean(1)], 1)
    return out, losses


def select_heads(model: Model, select: RepeatedSequences) -> InductionSelection:
    """The top-K heads by mean induction score on the selection sequences."""
    scores = per_sequence_scores(model, select)[0].mean(0)
    k = default_k(model)
    return InductionSelection(scores, k, top_k_heads(scores, k, decimals=3))


def measure(model: Model, evaluate_: RepeatedSequences, selection: InductionSelection, design: dict, *,
            seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """On the evaluation sequences: the chosen heads' mean score per sequence ``[batch]``, the null
    (the same for ``n_null`` layer-matched random sets, each averaged over sequences) and the
    losses ``[batch, 2]``."""
    per, losses = per_sequence_scores(model, evaluate_)
    sets = random_head_sets(model.cfg.n_layers, model.cfg.n_heads, like=selection.chosen,
                            n_draws=int(design["n_null"]), seed=seed, nearest=True)
    null = torch.stack([head_set_mean(per, s).mean() for s in sets])
    return head_set_mean(per, selection.chosen), null, losses


def scorecard(reg: preregistration.Registration, label: str, selection: InductionSelection, chosen_score: Tensor,
              null: Tensor, losses: Tensor, *, n_select: int, notebook: str = NOTEBOOK) -> Scorecard:
    """Both registered claims, measured on the evaluation sequences."""
    c = reg.claims
    card = Scorecard(label, notebook)
    card.add(evaluate(c["induction-heads"], chosen_score, null=null, n_select=n_select,
                      note=f"K={selection.k} heads chosen on {n_select} selection sequences"))
    card.add(evaluate(c["in-context"], losses[:, 0] - losses[:, 1], n_select=0,
                      note="nothing selected: the model's own loss"))
    return card


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """:func:`prepare`, :func:`select_heads`, :func:`measure`, :func:`scorecard` on ``model``."""
    reg = registration()
    select, evaluate_ = prepare(model, reg.design, seed=seed)
    selection = select_heads(model, select)
    chosen_score, null, losses = measure(model, evaluate_, selection, reg.design, seed=seed)
    label = label or model_label(model, str(model.cfg.model_name))
    return scorecard(reg, label, selection, chosen_score, null, losses, n_select=len(select))
