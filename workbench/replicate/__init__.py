"""Replication across models: every phenomenon's ``run()`` on many models, with controls and
seeds, on this machine or a Dask cluster, through a results store that never computes a job twice.

- :mod:`~workbench.replicate.jobs`: the jobs and their keys (claims, model content, code, control,
  seed), input checks;
- :mod:`~workbench.replicate.store`: the results store (one atomic JSON file per job);
- :mod:`~workbench.replicate.execute`: running jobs here or on Dask, threads per job, model reuse;
- :mod:`~workbench.replicate.report` and :mod:`~workbench.replicate.figure`: the
  :class:`Replication` and its CSV, JSON, HTML and PNG;
- :mod:`~workbench.replicate.api`: :func:`replicate`; :mod:`~workbench.replicate.cli`: ``workbench
  replicate``.
"""

from workbench.replicate.api import replicate
from workbench.replicate.jobs import CONTROLS, Job, code_hash, model_hash, plan
from workbench.replicate.report import Replication
from workbench.replicate.store import Store

__all__ = ["CONTROLS", "Job", "Replication", "Store", "code_hash", "model_hash", "plan", "replicate"]
