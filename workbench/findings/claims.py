"""Declared findings: a claim stated before it is measured, tested against chance, with an interval.

A phenomenon notebook declares its :class:`Claim` objects first (the statement, the paper and its
number, the statistic, a threshold that is the same for every model), then measures each one on a
held-out evaluation split and turns the measurement into a :class:`Finding` with
:func:`evaluate`: the value, a 95% bootstrap interval over evaluation items, the percentile of the
value in a null distribution, and a verdict. A :class:`Scorecard` collects the findings, shows them
as a table and writes ``findings.json``.

The verdict rule (:func:`verdict`), for a claim that the statistic is at or above its threshold
(``direction="above"``; ``"below"`` mirrors it), with "clears" meaning by more than the claim's
``tolerance`` (so that no verdict rests on a bound within rounding of its threshold):

- ``replicated``: the whole interval clears the threshold and the value beats the null (percentile
  at or above ``Claim.null_level``, 95 unless declared otherwise), or the claim has no null;
- ``at chance``: the interval clears the threshold (or the weaker bar) but the value does not beat
  the null: random components do as well;
- ``below the paper's bar``: the interval misses the threshold but clears the claim's declared
  ``weaker`` bar, and beats the null where there is one;
- ``inconclusive``: the interval straddles the threshold (or a bound is within ``tolerance`` of it);
- ``not replicated``: otherwise;
- ``not measured``: the model lacks the behaviour the claim is about (:func:`not_measured`); never
  folded into another verdict.

Each finding reports its ``margin``: how far the deciding interval bound lies past the threshold
(positive: on the claim's side).

>>> import torch
>>> claim = Claim("demo", "the effect is positive", paper="none", statistic="mean effect", threshold=0.0)
>>> per_item = torch.tensor([0.9, 1.1, 1.0, 1.2, 0.8] * 8)
>>> f = evaluate(claim, per_item, null=torch.zeros(200), n_select=10)
>>> f.verdict, f.n_eval, round(f.value, 2)
('replicated', 40, 1.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.persist import Persistent, load_state, register_state_class, save_state
from workbench.core.results import render

__all__ = [
    "VERDICTS",
    "Claim",
    "Finding",
    "Scorecard",
    "bootstrap_ci",
    "evaluate",
    "not_measured",
    "null_percentile",
    "verdict",
]

Verdict = Literal["replicated", "at chance", "below the paper's bar", "not replicated", "inconclusive", "not measured"]
#: The six verdicts, from the strongest to "the model lacks the behaviour".
VERDICTS: tuple[str, ...] = (
    "replicated", "at chance", "below the paper's bar", "not replicated", "inconclusive", "not measured",
)
N_RESAMPLES = 1000


@register_state_class
@dataclass(frozen=True)
class Claim:
    """A claim declared before it is measured.

    ``threshold`` is the paper's bar, the same for every model; ``weaker`` is an optional weaker bar
    on the same side (verdict ``below the paper's bar``); ``null`` says how chance is modelled (e.g.
    "200 random head sets from the same layers"); ``tolerance``: a bound this close to a bar does not
    decide (half a unit of the printed last digit by default). ``amended`` is the reason of the
    claim's last recorded amendment (:mod:`workbench.findings.preregistration`), empty if none.
    """

    name: str
    claim: str
    paper: str
    statistic: str
    threshold: float
    direction: Literal["above", "below"] = "above"
    weaker: float | None = None
    null: str = ""
    null_level: float = 95.0
    tolerance: float = 0.005
    amended: str = ""

    def __post_init__(self) -> None:
        if self.direction not in ("above", "below"):
            raise ValueError(f"Claim {self.name!r}: direction must be 'above' or 'below', got {self.direction!r}")
        if self.weaker is not None and not self._passes(self.threshold, self.weaker):
            raise ValueError(
                f"Claim {self.name!r}: the weaker bar {self.weaker} must be weaker than the threshold "
                f"{self.threshold} (on the same side, direction={self.direction!r})"
            )

    def _passes(self, x: float, bar: float) -> bool:
        return x >= bar if self.direction == "above" else x <= bar

    def past(self, x: float, bar: float) -> float:
        """How far ``x`` lies past ``bar`` on the claim's side (negative: short of it)."""
        return x - bar if self.direction == "above" else bar - x


@dataclass(frozen=True)
class Finding(Persistent):
    """One claim measured on one model."""

    claim: Claim
    value: float
    ci_low: float
    ci_high: float
    null_percentile: float | None
    n_null: int
    n_select: int
    n_eval: int
    verdict: Verdict
    note: str = ""

    @property
    def margin(self) -> float:
        """How far the interval lies past the threshold: positive, the whole interval clears it by
        this much; negative, the whole interval misses it by this much; for an interval that
        straddles the threshold, minus the distance to its nearer bound. NaN when not measured."""
        c = self.claim
        lo = self.ci_low if c.direction == "above" else self.ci_high
        hi = self.ci_high if c.direction == "above" else self.ci_low
        past_lo, past_hi = c.past(lo, c.threshold), c.past(hi, c.threshold)
        if past_lo > 0:
            return past_lo
        if past_hi < 0:
            return past_hi
        return -min(-past_lo, past_hi)

    def to_dict(self) -> dict:
        d = asdict(self)
        c = d.pop("claim")
        return {
            "name": c["name"],
            "claim": c["claim"],
            "paper": c["paper"],
            "statistic": c["statistic"],
            "threshold": c["threshold"],
            "direction": c["direction"],
            "weaker": c["weaker"],
            "null": c["null"],
            "amended": c["amended"],
            **{k: _json_number(v) for k, v in d.items()},
            "margin": _json_number(self.margin),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        """The inverse of :meth:`to_dict` (``None`` values read back as NaN). The claim's
        ``null_level`` and ``tolerance`` are not in the dict: they come back as their defaults."""
        claim = Claim(d["name"], d["claim"], d["paper"], d["statistic"], d["threshold"], d["direction"],
                      weaker=d.get("weaker"), null=d["null"], amended=d.get("amended", ""))
        value, low, high = (float("nan") if d[k] is None else float(d[k]) for k in ("value", "ci_low", "ci_high"))
        return cls(claim, value, low, high, d["null_percentile"], d["n_null"], d["n_select"], d["n_eval"],
                   d["verdict"], d.get("note", ""))

    def to_frame(self) -> pd.DataFrame:
        """One row: the claim and its measurement (the columns of ``findings.json``)."""
        return pd.DataFrame([self.to_dict()])

    def plot(self, **kwargs):
        """The value, its interval and the threshold (a one-row :meth:`Scorecard.plot`)."""
        kwargs.setdefault("title", f"{self.claim.name}: {self.verdict}")
        return render("scorecard_chart", Scorecard("", self.claim.name, [self]), **kwargs)


def _json_number(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def bootstrap_ci(
    items: Tensor,
    statistic: Callable[[Tensor], Tensor] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(items)`` over the first axis (evaluation items).

    ``statistic`` maps a resampled ``items`` (same shape) to a scalar; the default is the mean.
    Resampling uses its own seeded generator on the CPU, so the interval does not depend on the
    global random state.

    >>> bootstrap_ci(torch.ones(10))
    (1.0, 1.0)
    """
    items = torch.as_tensor(items)
    n = items.shape[0]
    if n < 2:
        raise ValueError(f"bootstrap_ci needs at least 2 evaluation items, got {n}")
    statistic = statistic or (lambda x: x.float().mean())
    # Kept by hand rather than scipy.stats.bootstrap(method="percentile"): scipy draws its own
    # resamples from a NumPy generator, so the stored intervals would move (measured on 20 random
    # inputs of 16-128 items: by up to 0.031, one item's step for 32 binary items, and up to 6% of
    # the items' standard deviation). The stored outputs depend on these torch-seeded draws.
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_resamples, n), generator=gen).to(items.device)
    stats = torch.stack([torch.as_tensor(statistic(items[i])).float().reshape(()) for i in idx]).cpu()
    alpha = (1 - level) / 2
    # The linear ("type 7") quantile. scipy.stats.quantile(method="linear"), mstats.mquantiles
    # (alphap=betap=1) and scoreatpercentile define the same one but interpolate in another order:
    # on 3,000 random sets of 1,000 resampled means they differ from torch.quantile by one ulp
    # (up to 2.2e-16) in 22% of cases (np.quantile: 2.8e-17 in 2 of 3,000), so torch.quantile stays
    # (tests/test_experiment.py checks the definitions agree to 1e-12).
    low, high = torch.quantile(stats.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(low), float(high)


def null_percentile(value: float, null: Tensor | Sequence[float]) -> float:
    """Percentage of null draws below ``value``, ties counted half (resolution 100 / len(null))."""
    null = torch.as_tensor(null, dtype=torch.float64).flatten()
    if null.numel() == 0:
        raise ValueError("null_percentile needs at least one null draw")
    # scipy.stats.percentileofscore(null, value, kind="mean") is this statistic, computed as
    # (below + at or below) * (50 / n): on 20,000 random nulls with ties it differs from the formula
    # here by a few ulps (up to 1.4e-14) in 26% of cases, so the stored percentiles would change in
    # their last digits; the formula stays (tests/test_experiment.py checks they agree to 1e-12).
    below = (null < value).double().sum() + 0.5 * (null == value).double().sum()
    return float(100.0 * below / null.numel())


def verdict(claim: Claim, ci_low: float, ci_high: float, null_pct: float | None) -> Verdict:
    """The verdict rule of the module docstring."""
    lo, hi = (ci_low, ci_high) if claim.direction == "above" else (ci_high, ci_low)
    tol = claim.tolerance
    beats = null_pct is None or (
        null_pct >= claim.null_level if claim.direction == "above" else null_pct <= 100 - claim.null_level)
    if claim.past(lo, claim.threshold) > tol:
        return "replicated" if beats else "at chance"
    if claim.past(hi, claim.threshold) >= -tol:
        return "inconclusive"
    if claim.weaker is not None and claim.past(lo, claim.weaker) > tol:
        return "below the paper's bar" if beats else "at chance"
    return "not replicated"


def evaluate(
    claim: Claim,
    per_item: Tensor,
    *,
    statistic: Callable[[Tensor], Tensor] | None = None,
    null: Tensor | Sequence[float] | None = None,
    n_select: int,
    note: str = "",
    seed: int = 0,
    requires: Sequence[Finding] = (),
) -> Finding:
    """Measure ``claim`` from per-evaluation-item values: value, bootstrap interval, null, verdict.

    ``per_item`` has one row per evaluation item (its first axis is resampled); ``statistic`` turns
    rows into the claim's scalar (default: the mean). ``null`` holds the same statistic for each
    random draw (random head sets, permutations); ``None`` when the claim has no null.
    ``requires``: findings this claim presupposes (e.g. that the model shows the behaviour at
    all); unless each of them is ``replicated``, a ``replicated``, ``at chance`` or ``below the
    paper's bar`` verdict becomes ``inconclusive`` (a circuit of a behaviour the model lacks says
    nothing), with a note.
    """
    per_item = torch.as_tensor(per_item).detach()
    stat = statistic or (lambda x: x.float().mean())
    value = float(torch.as_tensor(stat(per_item)).float())
    low, high = bootstrap_ci(per_item, stat, seed=seed)
    pct = None if null is None else null_percentile(value, null)
    n_null = 0 if null is None else int(torch.as_tensor(null).numel())
    result = verdict(claim, low, high, pct)
    missing = [f.claim.name for f in requires if f.verdict != "replicated"]
    if missing and result in ("replicated", "at chance", "below the paper's bar"):
        result = "inconclusive"
        note = "; ".join(filter(None, [note, f"presupposes {', '.join(missing)}, which is not replicated"]))
    return Finding(
        claim=claim, value=value, ci_low=low, ci_high=high, null_percentile=pct, n_null=n_null,
        n_select=int(n_select), n_eval=int(per_item.shape[0]),
        verdict=result,
        note=note,
    )


@dataclass
class Scorecard(Persistent):
    """The findings of one notebook on one model: a table, an HTML view and ``findings.json``."""

    model: str
    notebook: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> Finding:
        if any(f.claim.name == finding.claim.name for f in self.findings):
            raise ValueError(f"Scorecard already has a finding named {finding.claim.name!r}")
        self.findings.append(finding)
        return finding

    def to_frame(self) -> pd.DataFrame:
        rows = [f.to_dict() for f in self.findings]
        return pd.DataFrame(rows)

    def summary(self, digits: int = 2) -> str:
        """One line per finding with rounded values (what nbval compares)."""
        lines = []
        for f in self.findings:
            null = "-" if f.null_percentile is None else f"{f.null_percentile:.0f}th pct of {f.n_null}"
            measured = (f"{f.value:.{digits}f} [{f.ci_low:.{digits}f}, {f.ci_high:.{digits}f}] vs "
                        f"{f.claim.threshold:g} (margin {f.margin:+.{digits + 1}f})" if f.value == f.value
                        else f"no value ({f.note})")  # NaN: see not_measured
            amended = f" | amended: {f.claim.amended}" if f.claim.amended else ""
            lines.append(f"{f.claim.name}: {measured} | null {null} | "
                         f"n {f.n_select}/{f.n_eval} | {f.verdict}{amended}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Scorecard({self.notebook} on {self.model})\n{self.summary()}"

    def _repr_html_(self) -> str:
        cols = ["claim", "paper", "value", "ci_low", "ci_high", "threshold", "margin", "null_percentile", "verdict"]
        return self.to_frame()[cols].to_html(index=False, float_format=lambda x: f"{x:.3g}")

    def plot(self, **kwargs):

        return render("scorecard_chart", self, **kwargs)

    def view(self, **kwargs):
        """The interactive table: sortable, filtered by verdict, each interval drawn (no network)."""
        return render("view_scorecard", self, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write ``findings.json`` (a ``.pt`` path: the lossless result file of :mod:`workbench.core.persist`)."""
        path = Path(path)
        if path.suffix == ".pt":
            return save_state(self, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": self.model, "notebook": self.notebook, "findings": [f.to_dict() for f in self.findings]}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Scorecard":
        """Read a scorecard written by :meth:`save`: ``findings.json`` (see :meth:`Finding.from_dict`)
        or a ``.pt`` result file."""
        path = Path(path)
        if path.suffix == ".pt":
            return load_state(cls, path)
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"model", "notebook", "findings"} <= set(data):
            raise ValueError(f"{path} is not a scorecard's findings.json (needs model, notebook and findings).")
        return cls(data["model"], data["notebook"], [Finding.from_dict(d) for d in data["findings"]])


def not_measured(claim: Claim, *, n_select: int, n_eval: int, note: str) -> Finding:
    """A finding that could not be measured on this model (e.g. it solves no evaluation item):
    no value, no interval, verdict ``not measured``, and ``note`` saying why."""
    nan = float("nan")
    return Finding(claim=claim, value=nan, ci_low=nan, ci_high=nan, null_percentile=None, n_null=0,
                   n_select=int(n_select), n_eval=int(n_eval), verdict="not measured", note=note)
