"""Running jobs: here, one after another or on a local cluster, or on a Dask cluster.

:func:`run_job` runs one job wherever it is called (this process or a Dask worker) and returns
its record; it never raises for a failing phenomenon or model (the error goes into the record),
so one bad job does not stop the others. The model comes from a small per-process cache
(:func:`model_for`): a worker loads a model once and reuses it for every phenomenon and seed of
that model it is given.

Threads. Each job sets torch's threads before it runs, so that the jobs running side by side
never use more threads than there are cores (two jobs that each take every core run many times
slower than one after the other):

- here, one after another (the default, ``jobs=1``): a job gets the whole thread budget
  (:func:`workbench.replicate.jobs.thread_budget`: ``OMP_NUM_THREADS``, else the usable CPUs);
- here, ``jobs=N`` or ``"auto"``: :func:`local_parallelism` picks how many jobs run at once, as
  worker processes of a local Dask cluster, each with ``budget // N`` threads;
- on a Dask cluster: a job gets ``budget // worker threads`` of the worker process's budget
  (Dask's nanny starts workers with ``OMP_NUM_THREADS=1`` unless configured otherwise, so by
  default one thread per task slot).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from workbench.replicate.jobs import CACHE_LOCK, Job, code_hash, thread_budget

__all__ = ["local_parallelism", "model_for", "run_job", "run_local", "run_on_dask", "connect"]

#: Models kept loaded per process (the last ones used), keyed by :attr:`Job.load_key`.
MODEL_CACHE_SIZE = 2
_models: dict[tuple, Any] = {}
_lock = threading.Lock()
#: How many models this process has loaded (tests read it to see that a worker reuses its model).
LOADS: list[tuple] = []


def model_for(job: Job):
    """The model ``job`` runs on, loaded once per process and reused; ``(model, seconds to load)``."""
    from workbench.models import load_model, random_init_model

    key = job.load_key
    with _lock, CACHE_LOCK:
        if key in _models:
            _models[key] = _models.pop(key)  # most recently used last
            return _models[key], 0.0
        start = time.perf_counter()
        if job.control == "random-init":
            model = random_init_model(job.model, seed=job.seed)
            model.to(job.device or "cpu")
        else:
            model = load_model(job.model, device=job.device, dtype=job.dtype, verbose=False)
        while len(_models) >= MODEL_CACHE_SIZE:
            _models.pop(next(iter(_models)))
        _models[key] = model
        LOADS.append(key)
        return model, time.perf_counter() - start


def _where() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job: Job, run: Callable) -> dict[str, Any]:
    """Run ``run(model, seed=job.seed, label=...)`` for ``job`` with ``job.threads`` torch threads;
    the record to store: status, findings or error, seconds, where, and this process's code hash."""
    import torch

    torch.set_num_threads(max(1, job.threads))
    record: dict[str, Any] = {"job": job.to_dict(), "key": job.key, "computed_by_code": code_hash(),
                              "where": _where(), "findings": [], "error": None, "load_seconds": 0.0}
    start = time.perf_counter()
    try:
        model, record["load_seconds"] = model_for(job)
        label = str(model.cfg.model_name)
        torch.manual_seed(job.seed)  # the same numbers wherever and in whatever order jobs run
        card = run(model, seed=job.seed, label=label)
        record["findings"] = [f.to_dict() for f in card.findings]
        record["status"] = "ok"
    except Exception as e:  # recorded with the job; the other jobs go on
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=8)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _failed(job: Job, error: BaseException) -> dict[str, Any]:
    return {"job": job.to_dict(), "key": job.key, "computed_by_code": None, "where": None,
            "findings": [], "status": "failed", "error": f"{type(error).__name__}: {error}",
            "seconds": 0.0, "load_seconds": 0.0}


def _estimated_bytes(source: str) -> int:
    """Memory a loaded model takes, estimated from its weight files: a GGUF file's 4-bit weights
    become float32 (x8), a checkpoint's weights are held once more while converting (x2); a name
    whose files are not here counts as 4 GB."""
    from workbench.models.registry import resolve
    from workbench.models.zoo import offline_spec

    try:
        src = resolve(source)
        if src.kind == "offline":
            return 8 * offline_spec(source).gguf().stat().st_size
        if src.local and src.kind != "hub":
            path = Path(src.check())
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            factor = 8 if path.suffix == ".gguf" else 2
            return factor * sum(f.stat().st_size for f in files)
    except Exception:
        pass
    return 4 * 2**30


def local_parallelism(jobs: Iterable[Job], requested: int | str = 1) -> tuple[int, int]:
    """``(jobs at once, torch threads per job)`` on this machine.

    ``requested=1`` (the default): one after another with every thread. An int N or ``"auto"``:
    at most N (auto: the thread budget) at once, no more than the distinct models to load, and no
    more than fit in half the available memory (the largest model's estimate,
    :func:`_estimated_bytes`, per job); each job then gets ``budget // at once`` threads, so their
    sum fits the cores.
    """
    import psutil  # type: ignore[import-untyped]

    jobs = list(jobs)
    budget = thread_budget()
    if requested == 1 or not jobs:
        return 1, budget
    if requested != "auto" and not (isinstance(requested, int) and requested >= 1):
        raise ValueError(f"jobs must be a positive int or 'auto', got {requested!r}.")
    cap = budget if requested == "auto" else int(requested)
    largest = max(_estimated_bytes(m) for m in {j.model for j in jobs})
    fit = max(1, int(0.5 * psutil.virtual_memory().available // max(largest, 1)))
    at_once = max(1, min(cap, budget, fit, len({j.load_key for j in jobs})))
    return at_once, max(1, budget // at_once)


def run_local(jobs: list[Job], runs: dict, done: Callable[[Job, dict], None],
              threads: int) -> None:
    """Run ``jobs`` here, one after another, grouped by model so that each model loads once."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.load_key, []).append(job)
    starting = getattr(done, "start", None)  # a progress bar names the job it is on
    for key, group in groups.items():
        for job in group:
            if starting is not None:
                starting(job)
            done(job, run_job(replace(job, threads=threads), runs[(job.phenomenon, job.control)]))
        with _lock:
            _models.pop(key, None)  # no later job here uses it


def connect(address: Any, *, timeout: float = 5.0):
    """A ``dask.distributed.Client`` for ``address`` (``tcp://host:port``, or a Client as it is);
    an unreachable scheduler is a ValueError within ``timeout`` seconds."""
    from distributed import Client

    if isinstance(address, Client):
        return address
    if not isinstance(address, str) or "://" not in address and ":" not in address:
        raise ValueError(f"A Dask scheduler address looks like tcp://host:port, got {address!r}.")
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ValueError(f"Cannot reach the Dask scheduler at {address!r} within {timeout:g} s "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}). "
                         "Is it running, and is the address right?") from None


def _on_worker(job: Job, run: Callable) -> dict[str, Any]:
    """A Dask task: the job with its own ``threads`` if set (a local cluster sized here), else
    ``budget // worker threads`` of the worker process's thread budget."""
    from distributed import get_worker

    if job.threads < 1:
        slots = max(1, int(get_worker().state.nthreads))
        job = replace(job, threads=max(1, thread_budget() // slots))
    return run_job(job, run)


def run_on_dask(client, jobs: list[Job], runs: dict, done: Callable[[Job, dict], None]) -> None:
    """Each job a Dask task named by its key (two runs asking for the same job share one task).
    A worker that dies mid-job has its task rescheduled by Dask; a task that still fails (e.g. it
    killed every worker it ran on) is recorded as failed."""
    from distributed import as_completed

    first: dict[tuple, int] = {}
    for i, job in enumerate(jobs):
        first.setdefault(job.load_key, i)
    futures = {}
    for job in sorted(jobs, key=lambda j: first[j.load_key]):  # a model's jobs together: fewer loads
        fut = client.submit(_on_worker, job, runs[(job.phenomenon, job.control)],
                            key=f"replicate-{job.phenomenon}-{job.id}", pure=False)
        futures[fut] = job
    for fut in as_completed(list(futures), loop=client.loop):
        job = futures[fut]
        try:
            record = fut.result()
        except Exception as e:
            record = _failed(job, e)
        done(job, record)
        fut.release()
