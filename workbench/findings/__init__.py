"""Findings: claims declared before they are measured, verdicts, statistics and scorecards.

No model code lives here: a finding is computed from per-item measurements that a phenomenon
made, so this layer imports only :mod:`workbench.core`.
"""

from workbench.findings.claims import (
    VERDICTS,
    Claim,
    Finding,
    Scorecard,
    bootstrap_ci,
    evaluate,
    not_measured,
    null_percentile,
    verdict,
)

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
