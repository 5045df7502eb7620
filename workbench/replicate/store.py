"""The results store: one JSON file per finished job, written atomically, found again by its key.

Layout, under ``OUT/store/``::

    <phenomenon>-<claims hash>/<model name>-<model hash>/<control>-seed<N>-<job id>.json

``<job id>`` is a hash of the whole key (:attr:`workbench.replicate.jobs.Job.key`: claims, model,
code, control, seed, dtype, device kind), so a job whose key is stored is finished and a re-run
skips it. Each file is written to a temporary file in the same folder and moved into place with
``os.replace``: a reader (or a crash) sees the old file or the whole new one, never half of one.
Two replications writing into one store at once lose nothing: every job is its own file, and two
writers of the same job write the same findings (the last move wins, whole).

A record holds the job, its status (``"ok"`` or ``"failed"`` with the error), the findings
(``Finding.to_dict()``), the seconds it took, where it ran, and the code hash of the process that
computed it. Failed jobs are stored beside finished ones (``...-<job id>.failed.json``) so the
report shows their error, but they do not count as finished: a re-run tries them again.

A store written by other code: its files carry another code hash in their key, so this code does
not find them and recomputes those jobs (they are never mixed in). A record computed by a worker
whose code differs from the code that planned the job (a Dask worker with another checkout) is
kept and *marked*: the report's ``stale`` column names both hashes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from workbench.replicate.jobs import Job

__all__ = ["Store"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


class Store:
    """The findings of finished jobs under ``folder`` (see the module docstring for the layout)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"Store({str(self.folder)!r})"

    def path(self, job: Job, *, failed: bool = False) -> Path:
        """Where ``job``'s record lives."""
        from workbench.models.registry import resolve

        try:
            name = resolve(job.model).report_name()
        except Exception:
            name = job.model
        stem = f"{job.control}-seed{job.seed}-{job.id}"
        return (self.folder / _safe(f"{job.phenomenon}-{job.claims_hash}")
                / _safe(f"{name}-{job.model_hash}") / (stem + (".failed.json" if failed else ".json")))

    def done(self, job: Job) -> bool:
        """Whether ``job``'s findings are stored (a stored failure does not count)."""
        return self.path(job).is_file()

    def read(self, job: Job) -> dict[str, Any] | None:
        """``job``'s record: its findings, else its stored failure, else ``None``."""
        for failed in (False, True):
            path = self.path(job, failed=failed)
            if path.is_file():
                return json.loads(path.read_text())
        return None

    def write(self, job: Job, record: dict[str, Any]) -> Path:
        """Store ``record`` atomically. A finished record replaces any stored failure of the job."""
        failed = record.get("status") != "ok"
        path = self.path(job, failed=failed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if not failed:
            self.path(job, failed=True).unlink(missing_ok=True)
        return path

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record in the store (finished and failed), in no particular order."""
        for path in sorted(self.folder.glob("*/*/*.json")):
            try:
                yield json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a file another writer is replacing right now

    def other_code(self, code: str) -> int:
        """How many stored records were planned by code other than ``code`` (not used: recomputed)."""
        return sum(1 for r in self.records() if r.get("job", {}).get("code_hash") != code)
