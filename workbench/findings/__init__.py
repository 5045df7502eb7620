"""Findings: claims declared before they are measured, verdicts, statistics and scorecards.

No model code lives here: a finding is computed from per-item measurements that a phenomenon
made, so this layer imports only :mod:`workbench.core`.
"""

from workbench.findings import claims
from workbench.findings.claims import *  # noqa: F403  (the claims module's public names)

__all__ = ["claims", *claims.__all__]
