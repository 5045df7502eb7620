"""``replicate(models, phenomena=None, ...) -> Replication``: every phenomenon's ``run()`` on every
model, with controls and seeds, here or on a Dask cluster, through a results store.

>>> import workbench as wb
>>> rep = wb.replicate(["smollm2-135m", "gemma-3-270m"], ["ioi"],
...                   controls=["random-init"], out="reports/replication")  # doctest: +SKIP
>>> rep.to_frame()[["claim", "model", "control", "verdict"]]  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from workbench.replicate.execute import connect, local_parallelism, run_local, run_on_dask
from workbench.replicate.jobs import Job, code_hash, plan
from workbench.replicate.report import Replication, rows
from workbench.replicate.store import Store

__all__ = ["replicate"]


class _Progress:
    """A progress bar over jobs naming the current model and phenomenon (tqdm), fed by each
    finished job; stores each record as it arrives (one thread at a time)."""

    def __init__(self, store: Store, total: int, show: bool):
        from tqdm.auto import tqdm

        self.store, self.lock = store, threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.bar = tqdm(total=total, desc="replicate", unit="job", disable=not show or total == 0)

    @staticmethod
    def _name(job: Job) -> str:
        return f"{Path(job.model).name} / {job.phenomenon} / {job.control} / seed {job.seed}"

    def start(self, job: Job) -> None:
        """Name the job that runs now (local runs; on Dask, the bar names the last one finished)."""
        self.bar.set_postfix_str(f"running {self._name(job)}")

    def __call__(self, job: Job, record: dict[str, Any]) -> None:
        with self.lock:
            self.store.write(job, record)
            self.records.append(record)
            status = "done" if record["status"] == "ok" else "FAILED"
            self.bar.set_postfix_str(f"{status} {self._name(job)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _run(todo: list[Job], runs: dict, progress: _Progress, client: Any, jobs: int | str,
         notes: list[str]) -> None:
    if client is not None:
        notes.append(f"ran on the Dask cluster at {client.scheduler.address}; each job with its worker's "
                     "thread budget divided by the worker's task slots")
        run_on_dask(client, [replace(j, threads=0) for j in todo], runs, progress)  # 0: the worker decides
        return
    at_once, threads = local_parallelism(todo, jobs)
    if at_once == 1:
        notes.append(f"ran here, one job after another, {threads} torch thread(s) per job")
        run_local(todo, runs, progress, threads)
        return
    from distributed import Client, LocalCluster

    notes.append(f"ran here, {at_once} jobs at once (worker processes), {threads} torch thread(s) each")
    with LocalCluster(n_workers=at_once, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        run_on_dask(client, [replace(j, threads=threads) for j in todo], runs, progress)


def replicate(
    models: Sequence[str],
    phenomena: Sequence[str] | None = None,
    *,
    controls: Sequence[str] = (),
    seeds: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    out: str | Path = "reports/replication",
    scheduler: Any = None,
    jobs: int | str = 1,
    progress: bool = False,
    write: bool = True,
) -> Replication:
    """Run every phenomenon's registered ``run()`` on every model (and control, and seed).

    Args:
        models: model sources as :func:`workbench.load_model` takes them (offline names, folders,
            ``.gguf`` files, hub names).
        phenomena: registry names (default: every registered phenomenon). One with no ``run()``
            gets a "no run() registered" row.
        controls: ``"random-init"`` (the model's architecture, random weights seeded by the seed)
            and/or ``"placebo"`` (the phenomenon's placebo, where it declares one; otherwise a
            "placebo not available for this phenomenon" row). Each is a column beside its model.
        seeds: run seeds ``0 .. seeds-1``; the report says how many agree.
        device, dtype: as :func:`workbench.load_model` takes them (part of the store's key).
        out: the report folder; the results store is ``out/store``.
        scheduler: ``tcp://host:port`` of a Dask scheduler, or a ``dask.distributed.Client``.
        jobs: here, how many jobs at once: 1 (default, one after another), N, or ``"auto"``
            (see :func:`workbench.replicate.execute.local_parallelism`).
        progress: show a progress bar. write: write the report files into ``out``.

    Returns:
        :class:`~workbench.replicate.report.Replication`; ``computed`` jobs were run now, ``reused``
        were found in the store (keyed by claims, model content, code, control, seed, dtype and
        device kind), ``failed`` are recorded with their error and retried next time.

    Raises:
        ValueError: before anything runs, for an unknown phenomenon, model source or control
            (naming the valid choices), a bad seed count, device or dtype, or an unreachable
            scheduler (within seconds).
    """
    start = time.perf_counter()
    if jobs != "auto" and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int or 'auto', got {jobs!r}.")
    planned = plan(models, phenomena, controls=controls, seeds=seeds, device=device, dtype=dtype)
    client = None if scheduler is None else connect(scheduler)  # unreachable: fails before any work
    store = Store(Path(out) / "store")
    todo = [j for j in planned.jobs if not store.done(j)]
    notes = [f"code hash {code_hash()}"]
    notes += [f"placebo of {name}: {getattr(fn, 'n_draws', 'an unstated number of')} draws"
              for (name, control), fn in planned.runs.items() if control == "placebo"]
    stale = store.other_code(code_hash())
    if stale:
        notes.append(f"{stale} stored records were written by other workbench code; they are not used "
                     "(their jobs are recomputed under this code's key)")
    bar = _Progress(store, len(todo), progress)
    try:
        if todo:
            _run(todo, planned.runs, bar, client, jobs, notes)
    finally:
        bar.close()
        if client is not None and client is not scheduler:
            client.close()
    records = [store.read(j) for j in planned.jobs]
    frame = rows([r for r in records if r is not None], planned.skipped)
    rep = Replication(frame, str(out), computed=len(bar.records), reused=len(planned.jobs) - len(todo),
                      failed=sum(1 for r in records if r is not None and r["status"] != "ok"),
                      seconds=round(time.perf_counter() - start, 2), notes=notes)
    if write:
        rep.write(out)
    return rep
