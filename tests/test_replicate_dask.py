"""Replication on a real Dask cluster: a scheduler and two workers started as processes on
127.0.0.1 (one thread each), the toy phenomena of tests/test_replicate.py, tiny checkpoints.

A worker is killed while it runs a job: the job is rescheduled and every finding still arrives,
equal to the local run's; a second run computes nothing; two runs at once into one store lose
nothing; each worker loads a model once and reuses it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_replicate import checkpoints, comparable, toys  # noqa: F401  (fixtures)

import workbench as wb
from workbench.replicate import Store

distributed = pytest.importorskip("distributed")

ROOT = Path(wb.__file__).resolve().parents[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


class Cluster:
    """Processes started in the background; :meth:`address` waits until both workers joined."""

    def __init__(self, file: Path, markers: Path, procs: list[subprocess.Popen]):
        self.file, self.markers, self.procs = file, markers, procs
        self._address: str | None = None

    def address(self) -> str:
        if self._address is None:
            deadline = time.time() + 90
            while not self.file.exists() and time.time() < deadline:
                time.sleep(0.1)
            with distributed.Client(scheduler_file=str(self.file), timeout=30) as client:
                client.wait_for_workers(2, timeout=90)
                self._address = client.scheduler.address
        return self._address


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, checkpoints):  # noqa: F811
    """A scheduler and two single-thread workers (no nanny, so a killed worker stays dead), as
    processes on 127.0.0.1, started in the background while the local reference runs."""
    root = tmp_path_factory.mktemp("dask")
    markers = root / "markers"
    markers.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1", "REPLICATE_TEST_MARKERS": str(markers), "MPLBACKEND": "Agg"}
    file = root / "scheduler.json"
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(file)], env, root / "scheduler.log")]
    for name in ("w1", "w2"):  # the workers import the workbench and the toys before they join
        procs.append(_start(["distributed.cli.dask_worker", "--scheduler-file", str(file), "--nthreads", "1",
                             "--no-nanny", "--no-dashboard", "--name", name, "--host", "127.0.0.1",
                             "--preload", "test_replicate"], env, root / f"{name}.log"))
    yield Cluster(file, markers, procs)
    for p in procs:  # only the processes started here, each by its own process group
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def _kill_first_worker_that_starts_a_slow_job(markers: Path, worker_pids: set[int], killed: list[int]):
    deadline = time.time() + 60
    while time.time() < deadline:
        for m in markers.iterdir():
            pid = int(m.read_text())
            if pid in worker_pids:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_dask_gives_the_local_findings_though_a_worker_dies_mid_job(toys, checkpoints, cluster, tmp_path):  # noqa: F811
    names = ["toy_prev_token", "toy_induction", "toy_slow"]
    local = wb.replicate(checkpoints[:1], names, controls=["random-init"], out=tmp_path / "local", progress=False)
    address, markers = cluster.address(), cluster.markers
    killed: list[int] = []
    workers = {p.pid for p in cluster.procs[1:]}
    killer = threading.Thread(target=_kill_first_worker_that_starts_a_slow_job, args=(markers, workers, killed))
    killer.start()
    remote = wb.replicate(checkpoints[:1], names, controls=["random-init"], out=tmp_path / "dask",
                          scheduler=address, progress=False)
    killer.join()
    assert len(killed) == 1, "no worker was killed mid-job"
    assert remote.failed == 0 and remote.computed == local.computed == 3 * 2
    assert comparable(remote) == comparable(local)
    assert any(address in n for n in remote.notes)
    records = list(Store(tmp_path / "dask" / "store").records())
    assert all(r["where"].startswith("tcp://127.0.0.1") for r in records)
    assert all(r["job"]["threads"] == 1 for r in records)  # a 1-thread budget over 1 task slot
    loads: dict[str, int] = {}
    for r in records:  # a worker loads each model (and control) once, then reuses it
        loads[r["where"]] = loads.get(r["where"], 0) + (r["load_seconds"] > 0)
    keys = {w: {(r["job"]["model"], r["job"]["control"]) for r in records if r["where"] == w} for w in loads}
    assert all(loads[w] <= len(keys[w]) for w in loads), (loads, keys)
    again = wb.replicate(checkpoints[:1], names, controls=["random-init"], out=tmp_path / "dask",
                         scheduler=address, progress=False)
    assert (again.computed, again.reused) == (0, 3 * 2)


def test_two_concurrent_runs_into_one_store_lose_nothing(toys, checkpoints, cluster, tmp_path):  # noqa: F811
    address = cluster.address()
    client = distributed.Client(address, timeout=10, set_as_default=False)  # a Client passed in works too
    runs = [dict(phenomena=["toy_prev_token", "toy_induction"], seeds=2, scheduler=address),
            dict(phenomena=["toy_induction"], seeds=3, scheduler=client)]
    results: list = [None, None]

    def go(i):
        kw = runs[i]
        results[i] = wb.replicate(checkpoints, kw["phenomena"], seeds=kw["seeds"], scheduler=kw["scheduler"],
                                  out=tmp_path, progress=False)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert all(r is not None and r.failed == 0 for r in results)
    unique = 2 * 2 * 2 + 2 * 1  # (prev, induction) x 2 models x seeds 0-1, and induction's seed 2
    assert len(list((tmp_path / "store").glob("*/*/*.json"))) == unique
    assert not list((tmp_path / "store").glob("*/*/.tmp-*"))
    for kw in runs:  # everything either run computed is there: nothing computed again
        rep = wb.replicate(checkpoints, kw["phenomena"], seeds=kw["seeds"], out=tmp_path, progress=False)
        assert rep.computed == 0 and rep.failed == 0
