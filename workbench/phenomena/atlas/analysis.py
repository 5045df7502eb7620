"""Head atlas: the head-finding step of every phenomenon on one model, on one map.

Each phenomenon notebook ends with a few heads that carry its behaviour. The atlas runs the
*finding* step of each (not the whole story) with one shared selection rule, so the sets can be
compared on one ``layer x head`` map and in a table of overlaps (cf. Merullo et al. 2023, "Circuit
Component Reuse Across Tasks in Transformer Language Models", who found 78% of the IOI circuit's
heads reused for Colored Objects in GPT-2).

Each role is declared by its phenomenon in :mod:`workbench.phenomena.registry` (its folder's finder
and colour); the atlas runs every registered finder. Today's roles and the score that ranks heads
for each (higher = more of that role):

============  =================================================================================
role          score
============  =================================================================================
name mover    IOI: path patching head -> logits at END (ABC corruption), drop of the
              normalised logit difference (step (a) of ``01_ioi_circuit``)
S-inhibition  IOI: path patching head -> queries of the name movers at END (step (b))
induction     attention from a repeated token to the token after its first copy
              (:func:`workbench.techniques.heads.induction_scores`)
retrieval     retrieval score on needle-in-a-haystack prompts (:func:`~workbench.techniques.heads.retrieval_scores`),
              with the needle form ``needle`` (see below)
temporal      exact activation patching of each candidate head between prompts that differ only
              in the year (candidates: the best heads by attribution patching), on kept facts
arithmetic    direct effect (path patching head -> logits) of other operands plus another
              operator, on kept few-shot addition problems
============  =================================================================================

**Needle form.** With the ``"verbatim"`` needle the question ends with the needle's own prefix
("... The secret code is" -> " 4821"), so copying the code is an induction task by construction: a
head that attends to the token after an earlier copy of the current token retrieves it. The
``"paraphrased"`` needle (the default) asks in other words: the needle says "The code to open the
safe is 4821." and the question ends "To open the safe, type the number", so the token before the
answer differs from the one before the code in the needle and the induction shortcut is not
available. The retrieval/induction overlap is only evidence with the paraphrased form.

**Selection rule**, the same for every role: the ``k`` heads with the largest score, counting only
scores above zero; ``k`` defaults to 3% of the model's heads (at least 3). A fixed ``k`` keeps the
overlaps comparable across roles and models. Each overlap is printed next to what two random sets
of the same sizes would share (``|A| |B| / n_heads``) and, with ``overlaps(null_draws=...)``, next
to a **layer-matched** null: random sets with as many heads in each layer as each role, which is
the right chance when roles sit in the same band of layers.

Usage::

    atlas = head_atlas(model)                  # a few minutes on a 2-core CPU
    atlas.plot(); atlas.to_frame(); atlas.overlaps()
    atlas.save_report("reports/smollm2-135m/atlas")   # atlas.png, atlas_heads.csv, atlas_overlaps.csv

or ``workbench atlas --model gemma-3-270m`` from a shell.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, get_args

import pandas as pd
import torch

from workbench.core.components import (
    HeadSet,
    OverlapMeasure,
    overlap_table,
    random_head_sets,
    top_k_heads,
    top_positive,
)
from workbench.core.persist import Persistent, load_state
from workbench.core.results import Result, render
from workbench.findings import null_percentile
from workbench.phenomena import registry
from workbench.phenomena.registry import PhenomenonAbsent, default_k
from workbench.phenomena.retrieval.finder import NEEDLES, NeedleForm

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["NEEDLES", "HeadAtlas", "head_atlas", "default_k", "finders", "layer_matched_overlap_null", "top_share"]


def finders() -> dict[str, registry.Phenomenon]:
    """The registered phenomena that have a head-finding step, in registration order."""
    return {name: p for name, p in registry.PHENOMENA.items() if p.finder is not None}


@dataclass
class HeadAtlas(Persistent):
    """The heads of each role on one model: ``scores`` per role and the chosen ``sets``."""

    model_name: str
    shape: tuple[int, int]
    k: int
    scores: dict[str, Result]
    sets: dict[str, HeadSet]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_heads(self) -> int:
        return self.shape[0] * self.shape[1]

    def to_frame(self) -> pd.DataFrame:
        """One row per head that has a role: layer, head, label, roles, then each role's score."""
        rows = []
        for layer, h in sorted(set().union(*(s.heads for s in self.sets.values()))):
            roles = [r for r, s in self.sets.items() if (layer, h) in s]
            row = {"layer": layer, "head": h, "label": f"L{layer}H{h}", "n_roles": len(roles),
                   "roles": "; ".join(roles)}
            for r, sc in self.scores.items():
                row[r] = sc.values[layer, h].item()
            rows.append(row)
        columns = ["layer", "head", "label", "n_roles", "roles", *self.scores]
        return pd.DataFrame(rows, columns=columns)

    def overlaps(self, *, null_draws: int = 0, seed: int = 0) -> pd.DataFrame:
        """One row per pair of roles: shared heads, Jaccard, the share of each set in the other,
        and the number of shared heads two random sets of the same sizes would have on average.

        With ``null_draws > 0``, also the layer-matched null (:func:`layer_matched_overlap_null`):
        ``null_shared`` (its mean) and ``null_percentile`` (of the observed count, ties half).
        """
        rows = []
        names = list(self.sets)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                sa, sb = self.sets[a], self.sets[b]
                shared = sa & sb
                rows.append({
                    "role_a": a, "role_b": b, "size_a": len(sa), "size_b": len(sb),
                    "shared": len(shared), "jaccard": sa.jaccard(sb),
                    "a_in_b": sa.fraction_in(sb), "b_in_a": sb.fraction_in(sa),
                    "chance_shared": len(sa) * len(sb) / self.n_heads,
                    "heads": " ".join(f"L{l}H{h}" for l, h in shared),
                })
                if null_draws > 0:
                    null = layer_matched_overlap_null(sa, sb, self.shape, n_draws=null_draws, seed=seed)
                    rows[-1]["null_shared"] = float(null.mean())
                    rows[-1]["null_percentile"] = null_percentile(len(shared), null)
        return pd.DataFrame(rows)

    def overlap_matrix(self, measure: OverlapMeasure = "jaccard") -> pd.DataFrame:
        """Square table of :func:`workbench.techniques.heads.overlap_table` over the roles."""
        return overlap_table(list(self.sets.values()), measure)

    def plot(self, title: str | None = None):
        """Layers x heads map; a head with several roles is split into stripes, one per role."""

        colour = {r.name: r.colour for r in registry.roles()}
        sets = [s for s in self.sets.values() if len(s)]
        title = title or f"{self.model_name}: head atlas (top {self.k} heads per role)"
        colours = [colour.get(str(s.name), "C9") for s in sets]
        return render("head_sets", sets, shape=self.shape, title=title, colors=colours)

    def save_report(self, folder: str | Path) -> list[Path]:
        """Write ``atlas.png``, ``atlas_heads.csv`` and ``atlas_overlaps.csv`` into ``folder`` (the
        report; :meth:`save` writes the whole atlas to one file that :meth:`load` reads).

        Files are written under temporary names and renamed at the end, so a folder never holds
        a mix of an old and a new atlas.
        """
        import matplotlib.pyplot as plt

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        final = [folder / "atlas.png", folder / "atlas_heads.csv", folder / "atlas_overlaps.csv"]
        tmp = [p.with_name("." + p.name + ".partial") for p in final]
        fig = self.plot()
        fig.savefig(tmp[0], format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        self.to_frame().to_csv(tmp[1], index=False, float_format="%.6g")
        self.overlaps().to_csv(tmp[2], index=False, float_format="%.6g")
        for t, f in zip(tmp, final):
            t.replace(f)
        return final

    @classmethod
    def load(cls, path: str | Path) -> "HeadAtlas":
        """Read an atlas saved to a ``.pt`` file (a report folder's csv files hold too little)."""
        if Path(path).is_dir():
            raise ValueError(f"{path} is a report folder (save_report); an atlas loads from the file save() writes.")
        return load_state(cls, path)


def layer_matched_overlap_null(a, b, shape: tuple[int, int], *, n_draws: int, seed: int = 0) -> torch.Tensor:
    """Shared heads of random sets drawn like ``a`` and like ``b`` (same heads per layer): ``[n_draws]``.

    Two roles that both sit in layers 17-23 share more heads by chance than two sets spread over
    every layer; this null keeps each set's layers and redraws the heads within them.
    """
    a, b = [tuple(map(int, h)) for h in a], [tuple(map(int, h)) for h in b]
    if not a or not b:
        return torch.zeros(n_draws)
    draws_a = random_head_sets(*shape, like=a, n_draws=n_draws, seed=seed)
    draws_b = random_head_sets(*shape, like=b, n_draws=n_draws, seed=seed + 1)
    return torch.tensor([float(len(set(x) & set(y))) for x, y in zip(draws_a, draws_b)])


def head_atlas(
    model: HookedTransformer,
    *,
    phenomena: Sequence[str] | None = None,
    k: int | None = None,
    seed: int = 0,
    model_name: str | None = None,
    verbose: bool = True,
    needle: NeedleForm = "paraphrased",
) -> HeadAtlas:
    """Run the head-finding step of each phenomenon on ``model`` and pick the top-``k`` heads per role.

    Args:
        phenomena: names of registered phenomena with a finder (default: all of them, see
            :func:`finders`: ``ioi``, ``induction``, ``retrieval``, ``temporal``, ``arithmetic``).
        k: heads per role (default :func:`default_k`: 3% of heads, at least 3).
        seed: every dataset's seed.
        model_name: label for plots and files (default ``model.cfg.model_name``).
        verbose: print each phenomenon's time and heads as it finishes.
        needle: the retrieval role's needle form, ``"paraphrased"`` or ``"verbatim"`` (see the
            module docstring: the verbatim form makes retrieval an induction task).
    """
    known = finders()
    phenomena = list(known) if phenomena is None else list(phenomena)
    if needle not in get_args(NeedleForm):
        raise ValueError(f"needle must be one of {get_args(NeedleForm)}, got {needle!r}.")
    unknown = [p for p in phenomena if p not in known]
    if unknown or not phenomena:
        raise ValueError(f"Unknown phenomena {unknown or list(phenomena)}; choose from {list(known)}.")
    k = default_k(model) if k is None else int(k)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if not 1 <= k <= n_heads:
        raise ValueError(f"k must be between 1 and the model's {n_heads} heads, got {k}.")
    scores: dict[str, Result] = {}
    sets: dict[str, HeadSet] = {}
    seconds: dict[str, float] = {}
    with torch.no_grad():
        for name in phenomena:
            start = time.perf_counter()
            found = _find(model, known[name], k=k, seed=seed, needle=needle)
            seconds[name] = time.perf_counter() - start
            for role, sc in found.items():
                scores[role] = sc
                sets[role] = top_positive(sc, k, role)
                if verbose:
                    shown = " ".join(f"L{l}H{h}" for l, h in sets[role])
                    print(f"{role:>12}: {shown or '(no head with a positive score)'}  [{seconds[name]:.0f} s]")
    ordered = {r.name: sets[r.name] for r in registry.roles() if r.name in sets}
    return HeadAtlas(
        model_name=model_name or model.cfg.model_name,
        shape=(model.cfg.n_layers, model.cfg.n_heads),
        k=k,
        scores={r: scores[r] for r in ordered},
        sets=ordered,
        seconds=seconds,
    )


def _find(model: HookedTransformer, phenomenon: registry.Phenomenon, *, k: int, seed: int,
          needle: NeedleForm) -> dict[str, Result]:
    """One phenomenon's role scores; an absent phenomenon gives NaN scores (no heads), not an error."""
    assert phenomenon.finder is not None
    extra = {"needle": needle} if "needle" in phenomenon.options else {}
    try:
        return phenomenon.finder(model, k=k, seed=seed, **extra)
    except PhenomenonAbsent as e:
        nan = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
        return {r.name: Result(nan.clone(), ("layer", "head"), f"absent: {e}") for r in phenomenon.roles}


def top_share(scores: torch.Tensor, k: int, other) -> float:
    """The share of the top-``k`` heads of a ``[layer, head]`` score (positive scores only, ranked
    with :func:`workbench.core.components.top_k_heads` at 3 decimals) that are in ``other``, out of ``k``.

    >>> top_share(torch.tensor([[0.9, 0.0], [0.5, 0.2]]), 2, [(1, 0)])
    0.5
    """
    scores = torch.as_tensor(scores).float().nan_to_num(nan=-math.inf)
    chosen = [h for h in top_k_heads(scores, k, decimals=3) if scores[h] > 0]
    other = {tuple(map(int, h)) for h in other}
    return sum(h in other for h in chosen) / k
