"""The IOI experiment of ``01_ioi_circuit`` as steps: prepare the split, select on it, measure, score.

Each step is a function the notebook calls in turn; :func:`run` composes them into the
phenomenon's scorecard. The claims and the design (split sizes, class thresholds, null sizes) are
the registered ones of ``claims.toml`` (:func:`registration`).

1. :func:`prepare`: selection and evaluation prompts that share no name, template, place or object
   (:func:`workbench.phenomena.ioi.dataset.ioi_split`), and the behaviour on the evaluation split.
2. :func:`select`: the paper's four path patching steps on the selection split only, and the
   circuit (the union of the classes, capped at ``max_fraction`` of all heads).
3. :func:`measure_faithfulness`, :func:`measure_incompleteness`, :func:`measure_attention`: on
   the evaluation split, with layer-matched random head sets as the null.

A model that lacks the behaviour (its logit difference does not clear even the weaker bar) gets
``not measured`` for the circuit's faithfulness and completeness (both divide by ``F(M)``); the
attention claims are still measured against their nulls (and cannot be ``replicated``, since they
presuppose the behaviour). A class that path patching leaves empty makes its attention claim
``not measured``.

>>> from workbench.phenomena.ioi.experiment import registration
>>> sorted(registration().claims)[:2]
['behaviour', 'faithfulness']
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from workbench.core import components
from workbench.core.types import Model
from workbench.findings.claims import Claim, Finding, Scorecard, evaluate, not_measured
from workbench.findings.preregistration import Registration, load
from workbench.models import model_label
from workbench.phenomena.ioi import circuits
from workbench.phenomena.ioi.dataset import IOIDataset, ioi_split
from workbench.techniques.ablation import Circuit, Completeness

__all__ = [
    "NOTEBOOK", "behaviour_absent", "measure_attention", "measure_behaviour", "measure_faithfulness",
    "measure_incompleteness", "prepare", "registration", "run", "select",
]

NOTEBOOK = "01_ioi_circuit"
#: The attention claims and the head class each is about.
ATTENTION = (("name-movers-attend-IO", "name mover"), ("s-inhibition-attend-S2", "S-inhibition"),
             ("s2-heads-attend-S1", "S2"))


def registration() -> Registration:
    """The registered claims and design of ``workbench/phenomena/ioi/claims.toml``."""
    return load("workbench.phenomena.ioi")


def prepare(model: Model, design: Mapping[str, Any], *, seed: int = 0) -> tuple[IOIDataset, IOIDataset]:
    """Step 1: ``design["n_select"]`` selection and ``design["n_eval"]`` evaluation prompts, disjoint
    on names, templates, places and objects (:func:`ioi_split`, ABC corruption, mixed orders)."""
    return ioi_split(model, int(design["n_select"]), int(design["n_eval"]), seed=seed,
                     order=design.get("order", "mixed"), corruption=design.get("corruption", "ABC"))


def measure_behaviour(model: Model, claim: Claim, ev: IOIDataset, *, seed: int = 0) -> tuple[Finding, Tensor]:
    """The logit difference IO - S per evaluation prompt, and the behaviour finding."""
    ld = ev.logit_diff(per_prompt=True)(model(ev.clean_tokens)).float()
    return evaluate(claim, ld, n_select=0, seed=seed), ld


def behaviour_absent(behaviour: Finding) -> bool:
    """The model lacks the behaviour: its logit difference does not clear even the weaker bar."""
    return behaviour.verdict in ("not replicated", "not measured")


def select(model: Model, sel: IOIDataset, design: Mapping[str, Any]) -> tuple[circuits.IOIClasses, list]:
    """Step 2, on the selection split only: the head classes (four path patching sweeps with
    ``rel`` and ``min_effect``) and the circuit, their union capped at ``max_fraction`` of all
    heads (negative name movers dropped first)."""
    found = circuits.find_ioi_classes(model, sel, rel=float(design["rel"]), min_effect=float(design["min_effect"]))
    n_total = model.cfg.n_layers * model.cfg.n_heads
    choice = circuits.build_circuit(found.classes, found.effects, max_heads=int(design["max_fraction"] * n_total),
                                    last=["negative name mover"])
    return found, sorted(choice.heads)


def _lacks(claim: Claim, n_select: int, ev: IOIDataset, behaviour: Finding) -> Finding:
    note = (f"the model lacks the behaviour: logit difference {behaviour.value:.2f} "
            f"[{behaviour.ci_low:.2f}, {behaviour.ci_high:.2f}]")
    return not_measured(claim, n_select=n_select, n_eval=len(ev), note=note)


def measure_faithfulness(
    model: Model, claim: Claim, ev: IOIDataset, circuit: Sequence, design: Mapping[str, Any], *,
    behaviour: Finding, n_select: int, seed: int = 0, extra: Sequence[Sequence] = (),
) -> tuple[Finding, Tensor]:
    """Step 3a: ``F(C) / F(M)`` on the evaluation split, everything outside ``C`` mean-ablated (ABC
    means per template), against ``design["n_null_circuits"]`` random circuits of the same size
    with the same heads per layer. Returns the finding and ``F``: ``[2 + len(extra) + n_null,
    prompt]`` for ``C``, the whole model ``M``, the ``extra`` head sets, then the null circuits.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    all_heads = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    nulls = components.random_head_sets(n_layers, n_heads, like=list(circuit),
                                        n_draws=int(design["n_null_circuits"]), seed=seed)
    F = circuits.ablated_metric(model, ev.clean_tokens, ev.abc_tokens, ev.logit_diff(per_prompt=True),
                                [list(circuit), all_heads, *extra, *nulls], template_ids=ev.template_ids)
    if behaviour_absent(behaviour):
        return _lacks(claim, n_select, ev, behaviour), F
    F_C, F_M, F_null = F[0], F[1], F[2 + len(extra):]
    null = F_null.mean(1) / F_M.mean()
    finding = evaluate(claim, torch.stack([F_C, F_M], 1), statistic=_ratio, null=null, n_select=n_select,
                       seed=seed, requires=[behaviour])
    return finding, F


def _ratio(x: Tensor) -> Tensor:
    """``F(C) / F(M)`` over (resampled) prompts: ``x`` is ``[prompt, (F(C), F(M))]``."""
    return x[:, 0].mean() / x[:, 1].mean()


def _incompleteness(x: Tensor) -> Tensor:
    """Mean over subsets of ``|F(C\\K) - F(M\\K)| / F(M)``; ``x`` is ``[prompt, 2 n_subsets + 1]``."""
    k = (x.shape[1] - 1) // 2
    c, m = x[:, :k].mean(0), x[:, k:2 * k].mean(0)
    return (c - m).abs().mean() / x[:, -1].mean()


def measure_incompleteness(
    model: Model, claim: Claim, ev: IOIDataset, circuit: Sequence, F_M: Tensor, design: Mapping[str, Any], *,
    behaviour: Finding, n_select: int, seed: int = 0,
) -> tuple[Finding, Completeness]:
    """Step 3b: for ``design["n_subsets"]`` random subsets ``K`` of the circuit (each head kept with
    probability 1/2, seeded), ``|F(C \\ K) - F(M \\ K)|`` relative to ``F(M)`` on the evaluation split."""
    circuit = list(circuit)
    n = int(design["n_subsets"])
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    all_heads = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    gen = torch.Generator().manual_seed(seed)
    rows = (torch.rand(n, len(circuit), generator=gen) < 0.5).tolist()
    subsets = [[h for h, keep in zip(circuit, row) if keep] for row in rows]
    kept = [[h for h in circuit if h not in k] for k in subsets] + [[h for h in all_heads if h not in k] for k in subsets]
    F_K = circuits.ablated_metric(model, ev.clean_tokens, ev.abc_tokens, ev.logit_diff(per_prompt=True), kept,
                                  template_ids=ev.template_ids)
    comp = Completeness(Circuit(circuit), [Circuit(k) for k in subsets], F_K[:n].mean(1), F_K[n:].mean(1))
    if behaviour_absent(behaviour):
        return _lacks(claim, n_select, ev, behaviour), comp
    items = torch.cat([F_K.T, F_M[:, None]], 1)  # [prompt, 2 x n_subsets + 1]
    finding = evaluate(claim, items, statistic=_incompleteness, n_select=n_select, seed=seed, requires=[behaviour])
    return finding, comp


def attention_scores(model: Model, ev: IOIDataset) -> dict[str, Tensor]:
    """Per evaluation prompt ``[batch, layer, head]``: END->IO minus END->S1+S2, END->S2, S2->S1+S1+1."""
    p = ev.pos
    end_io = circuits.attention_by_prompt(model, ev.clean_tokens, p["END"], [p["IO"]])
    end_s = circuits.attention_by_prompt(model, ev.clean_tokens, p["END"], [p["S1"], p["S2"]])
    end_s2 = circuits.attention_by_prompt(model, ev.clean_tokens, p["END"], [p["S2"]])
    s2_s1 = circuits.attention_by_prompt(model, ev.clean_tokens, p["S2"], [p["S1"], p["S1+1"]])
    return {"name-movers-attend-IO": end_io - end_s, "s-inhibition-attend-S2": end_s2, "s2-heads-attend-S1": s2_s1}


def measure_attention(
    model: Model, claims: Mapping[str, Claim], ev: IOIDataset, found: circuits.IOIClasses,
    design: Mapping[str, Any], *, behaviour: Finding, n_select: int, seed: int = 0,
) -> tuple[list[Finding], dict[str, Tensor]]:
    """Step 3c: each class's attention score on the evaluation split against
    ``design["n_null_heads"]`` random head sets with the same heads per layer. Returns the
    findings and the per-prompt scores (:func:`attention_scores`)."""
    scores = attention_scores(model, ev)
    sets = {"name mover": found.classes["name mover"], "S-inhibition": found.classes["S-inhibition"],
            "S2": found.s2_heads}
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    findings = []
    for name, cls in ATTENTION:
        heads = list(sets[cls])
        if not heads:
            findings.append(not_measured(claims[name], n_select=n_select, n_eval=len(ev),
                                         note=f"path patching found no {cls} heads on the selection split"))
            continue
        draws = components.random_head_sets(n_layers, n_heads, like=heads, n_draws=int(design["n_null_heads"]),
                                            seed=seed)
        null = torch.stack([components.head_set_mean(scores[name], d).mean() for d in draws])
        findings.append(evaluate(claims[name], components.head_set_mean(scores[name], heads), null=null,
                                 n_select=n_select, seed=seed, requires=[behaviour]))
    return findings, scores


def run(model: Model, *, seed: int = 0, label: str | None = None) -> Scorecard:
    """The whole experiment on ``model``: every registered claim, in the order of ``claims.toml``."""
    reg = registration()
    design, claims = reg.design, reg.claims
    sel, ev = prepare(model, design, seed=seed)
    card = Scorecard(label or model_label(model, str(model.cfg.model_name)), NOTEBOOK)
    behaviour, _ = measure_behaviour(model, claims["behaviour"], ev, seed=seed)
    found, circuit = select(model, sel, design)
    n = len(sel)
    faith, F = measure_faithfulness(model, claims["faithfulness"], ev, circuit, design, behaviour=behaviour,
                                    n_select=n, seed=seed)
    incomplete, _ = measure_incompleteness(model, claims["incompleteness"], ev, circuit, F[1], design,
                                           behaviour=behaviour, n_select=n, seed=seed)
    attention, _ = measure_attention(model, claims, ev, found, design, behaviour=behaviour, n_select=n, seed=seed)
    by_name = {f.claim.name: f for f in [behaviour, faith, incomplete, *attention]}
    for name in claims:
        card.add(by_name[name])
    return card
