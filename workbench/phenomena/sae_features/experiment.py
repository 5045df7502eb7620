"""The SAE-features experiment of ``05_sae_features`` as steps: split, select a name feature, test it.

1. :func:`prepare`: selection and evaluation IOI prompts that share no name, template, place or
   object (:func:`workbench.phenomena.ioi.dataset.ioi_split`).
2. :func:`name_candidates` and :func:`choose_feature`, on the selection prompts only: features
   that fire at both name positions (IO and S1) of at least ``min_firing`` of the prompts, and the
   one whose ablation moves the logit difference most (largest ``|z|`` rounded to 2 decimals;
   ties to the lower index).
3. :func:`null_features`: the null is features that fire at a name position (IO, S1 or S2) of the
   evaluation prompts, as the chosen feature does (not random active features); up to
   ``n_null`` of them, seeded.
4. :func:`measure_ablation` (held-out ablation against the null) and :func:`measure_reading` (the
   share of the feature's top corpus contexts that are a person's given name,
   :data:`~workbench.phenomena.sae_features.names.PERSON_NAMES`, against the same null features
   read the same way).

:func:`run` composes them; a model without an SAE (none shipped, none given) gets ``not measured``.

>>> from workbench.phenomena.sae_features.experiment import registration
>>> sorted(registration().claims)
['held-out-ablation', 'reading']
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.types import Model
from workbench.findings.claims import Claim, Finding, Scorecard, evaluate, not_measured
from workbench.findings.preregistration import Registration, load
from workbench.models import model_label
from workbench.phenomena.ioi.dataset import IOIDataset, ioi_split
from workbench.phenomena.sae_features.analysis import (
    feature_ablations,
    name_position_features,
    top_words,
)
from workbench.phenomena.sae_features.names import is_person_name
from workbench.techniques.sae import SHIPPED_SAES, ablate_features, encode, load_corpus, load_sae

__all__ = [
    "NOTEBOOK", "choose_feature", "measure_ablation", "measure_reading", "name_candidates", "null_features",
    "prepare", "registration", "run", "share_lost",
]

NOTEBOOK = "05_sae_features"


def registration() -> Registration:
    """The registered claims and design of ``workbench/phenomena/sae_features/claims.toml``."""
    return load("workbench.phenomena.sae_features")


def prepare(model: Model, design: Mapping[str, Any], *, seed: int = 0) -> tuple[IOIDataset, IOIDataset]:
    """Step 1: selection and evaluation prompts, disjoint on names, templates, places, objects."""
    return ioi_split(model, int(design["n_select"]), int(design["n_eval"]), seed=seed)


@torch.no_grad()
def name_candidates(model: Model, sae, sel: IOIDataset, *, min_firing: float) -> tuple[pd.DataFrame, list[int]]:
    """Step 2a: per feature, how often it fires at IO, S1, S2 and END of the selection prompts (and its
    mean activation at IO); the candidates fire at both IO and S1 in at least ``min_firing`` of them
    (if none does: the three that fire most often at IO, rounded to 3 decimals, ties to the lower index)."""
    latents = encode(model, sae, sel.clean_tokens)  # [batch, pos, feature]
    rows = torch.arange(len(sel))
    at = {name: latents[rows, sel.pos[name]] for name in ["IO", "S1", "S2", "END"]}  # each [batch, feature]
    firing = pd.DataFrame({name: (a > 0).float().mean(0) for name, a in at.items()})
    firing["mean act at IO"] = at["IO"].mean(0)
    found = firing.index[(firing["IO"] >= min_firing) & (firing["S1"] >= min_firing)].tolist()
    if not found:
        found = firing["IO"].round(3).sort_values(ascending=False, kind="stable").index[:3].tolist()
    return firing, [int(f) for f in found]


@torch.no_grad()
def choose_feature(model: Model, sae, sel: IOIDataset, candidates: Sequence[int]) -> tuple[pd.DataFrame, int]:
    """Step 2b: ablate each candidate on the selection prompts; the table of changes in the logit
    difference (mean, standard error, z, share of clean) and the feature with the largest ``|z|``
    (rounded to 2 decimals; ties to the lower index)."""
    if not candidates:
        raise ValueError("choose_feature needs at least one candidate feature.")
    per_prompt = sel.logit_diff(per_prompt=True)
    clean = per_prompt(model(sel.clean_tokens))
    changes = {}
    for f in candidates:
        with ablate_features(model, sae, [f]):
            changes[f] = per_prompt(model(sel.clean_tokens)) - clean
    table = pd.DataFrame({"change": {f: d.mean().item() for f, d in changes.items()},
                          "stderr": {f: d.std().item() / len(d) ** 0.5 for f, d in changes.items()}})
    table["z"] = table["change"] / table["stderr"]
    table["share of clean"] = table["change"] / clean.mean().item()
    table.attrs.update(clean=clean.mean().item(), clean_stderr=clean.std().item() / len(clean) ** 0.5)
    order = table["z"].abs().round(2).fillna(0.0).sort_index().sort_values(ascending=False, kind="stable")
    return table, int(order.index[0])


def null_features(model: Model, sae, ev: IOIDataset, feature: int, design: Mapping[str, Any], *,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """Step 3: the pool of features that fire at a name position of at least ``null_min_share`` of
    the evaluation prompts (``feature`` excepted) and up to ``n_null`` of them drawn without
    replacement (seeded). Returns ``(pool, drawn)``."""
    pool = name_position_features(model, sae, ev, min_share=float(design["null_min_share"]), exclude=[feature])
    gen = torch.Generator().manual_seed(seed)
    drawn = [pool[i] for i in torch.randperm(len(pool), generator=gen)[: int(design["n_null"])].tolist()]
    return pool, drawn


def share_lost(x: Tensor) -> Tensor:
    """``x``: ``[prompt, (clean, ablated)]``: the drop in the mean, over ``max(mean clean, 1)`` (a model
    without the behaviour cannot pass by dividing by almost nothing)."""
    return (x[:, 0].mean() - x[:, 1].mean()) / x[:, 0].mean().clamp_min(1.0)


def measure_ablation(model: Model, sae, claim: Claim, ev: IOIDataset, feature: int, nulls: Sequence[int], *,
                     n_select: int, seed: int = 0, note: str = "") -> tuple[Finding, Tensor]:
    """Step 4a: ablate ``feature`` and each null feature on the evaluation prompts. Returns the finding
    and the per-prompt values ``[2 + len(nulls), prompt]`` (clean, feature, null features)."""
    values = feature_ablations(model, sae, ev.clean_tokens, ev.logit_diff(per_prompt=True), [-1, feature, *nulls])
    clean, chosen, null = values[0], values[1], values[2:]
    null_share = (clean.mean() - null.mean(1)) / clean.mean().clamp_min(1.0) if len(nulls) else None
    finding = evaluate(claim, torch.stack([clean, chosen], 1), statistic=share_lost, null=null_share,
                       n_select=n_select, seed=seed, note=note)
    return finding, values


def measure_reading(claim: Claim, words: Mapping[int, Sequence[str]], feature: int, nulls: Sequence[int], *,
                    n_select: int, seed: int = 0, note: str = "") -> Finding:
    """Step 4b: the share of ``feature``'s top-context words that are person names, with the same
    share for each null feature (those with at least one context) as the null."""
    mine = [is_person_name(w) for w in words.get(feature, [])]
    if len(mine) < 2:
        return not_measured(claim, n_select=n_select, n_eval=len(mine),
                            note=f"feature {feature} has fewer than 2 top contexts")
    null = [sum(map(is_person_name, words[f])) / len(words[f]) for f in nulls if words.get(f)]
    return evaluate(claim, torch.tensor(mine, dtype=torch.float), null=torch.tensor(null) if null else None,
                    n_select=n_select, seed=seed, note=note)


def _no_sae(claims: Mapping[str, Claim], design: Mapping[str, Any], model: Model) -> list[Finding]:
    note = f"no SAE for {model.cfg.model_name} (none shipped and none given)"
    return [not_measured(c, n_select=int(design["n_select"]), n_eval=0, note=note) for c in claims.values()]


def run(model: Model, *, seed: int = 0, label: str | None = None, sae=None, corpus=None) -> Scorecard:
    """The whole experiment on ``model`` with ``sae`` (default: the SAE shipped for the model, by
    its model name) and ``corpus`` for the top contexts (default: the held-out corpus split)."""
    reg = registration()
    design, claims = reg.design, reg.claims
    card = Scorecard(label or model_label(model, str(model.cfg.model_name)), NOTEBOOK)
    name = str(model.cfg.model_name)  # a random-init control has no shipped SAE (its own must be trained)
    if sae is None and name in SHIPPED_SAES:
        sae = load_sae(name, model=model)
    if sae is None:
        for f in _no_sae(claims, design, model):
            card.add(f)
        return card
    sel, ev = prepare(model, design, seed=seed)
    _, candidates = name_candidates(model, sae, sel, min_firing=float(design["min_firing"]))
    _, feature = choose_feature(model, sae, sel, candidates)
    pool, nulls = null_features(model, sae, ev, feature, design, seed=seed)
    note = f"feature {feature}; {len(pool)} name-position features in the pool"
    card.add(measure_ablation(model, sae, claims["held-out-ablation"], ev, feature, nulls, n_select=len(sel),
                              seed=seed, note=note)[0])
    words = top_words(model, sae, [feature, *nulls], load_corpus("heldout") if corpus is None else corpus,
                      k=int(design["n_contexts"]))
    card.add(measure_reading(claims["reading"], words, feature, nulls, n_select=len(sel), seed=seed,
                             note=f"feature {feature}; top contexts from the held-out corpus split"))
    return card
