"""The jobs of a replication and the keys they are stored under.

A :class:`Job` is one phenomenon's registered ``run()`` on one model, under one control
(``"none"``: the model itself; ``"random-init"``: its architecture with random weights;
``"placebo"``: the phenomenon's placebo, where it declares one) and one seed. Its :attr:`Job.key`
is what the results store files it under: the phenomenon's claims hash (its pre-registration),
the model's content hash, a hash of the workbench's own code, the control, the seed, and the
dtype and device kind the numbers were computed in. The same key means the same findings, so a
re-run skips it.

:func:`plan` checks every input before anything runs (an unknown phenomenon, model source or
control names the valid choices) and returns the jobs, plus the rows of what cannot run at all
(a phenomenon with no ``run()``, a control a phenomenon lacks).

>>> sorted(CONTROLS)
['none', 'placebo', 'random-init']
>>> len(code_hash())
16
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

__all__ = ["CONTROLS", "Job", "Plan", "code_hash", "model_hash", "plan", "thread_budget"]

Control = Literal["none", "random-init", "placebo"]
#: The controls a job may run under; ``"none"`` is the model itself and is always run.
CONTROLS: tuple[str, ...] = ("none", "random-init", "placebo")


@dataclass(frozen=True)
class Job:
    """One phenomenon on one model under one control and seed (plain fields: it travels to Dask
    workers and into the store). ``threads``: the torch threads the job may use (0 on Dask: the
    worker decides, see :mod:`workbench.replicate.execute`); not part of the key."""

    phenomenon: str
    model: str
    model_hash: str
    claims_hash: str
    code_hash: str
    control: str
    seed: int
    device: str | None = None
    dtype: str | None = None
    threads: int = 1

    @property
    def key(self) -> dict[str, Any]:
        """What identifies the job's findings: equal keys, equal findings."""
        return {"claims": self.claims_hash, "model": self.model_hash, "code": self.code_hash,
                "control": self.control, "seed": self.seed, "dtype": self.dtype or "float32",
                "device": (self.device or "cpu").split(":")[0]}

    @property
    def id(self) -> str:
        """A short hash of :attr:`key` (the Dask task's name, the store file's suffix)."""
        return _digest(self.key)[:16]

    @property
    def load_key(self) -> tuple:
        """Jobs with the same load key share one loaded model."""
        return (self.model, self.control if self.control == "random-init" else "none",
                self.seed if self.control == "random-init" else None, self.device, self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """The jobs to run (with the callable each runs) and the rows of what cannot run."""

    jobs: list[Job]
    runs: dict[tuple[str, str], Callable]  # (phenomenon, control) -> run(model, *, seed, label)
    skipped: list[dict[str, Any]]


def _digest(obj: object) -> str:
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 (16 hex digits) over the path and content of every ``.py`` file of the installed
    workbench package: any change to the code changes it, unlike the version string. The shipped
    data is not hashed (the claims and their design are, through the claims hash)."""
    root = Path(__file__).resolve().parents[1]
    total = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "data" in rel.parts or "__pycache__" in rel.parts:
            continue
        total.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return total.hexdigest()[:16]


#: Serialises what reads the model cache's digest index within a process (:func:`model_hash`,
#: model loads): the index is rewritten through a temporary file named by process id only, so two
#: threads of one process (two replications at once) would collide on it.
CACHE_LOCK = threading.RLock()


def model_hash(source: str) -> str:
    """The content hash of a model source (16 hex digits): its weight files' SHA-256 for local
    sources (an offline model's GGUF file, a folder's checkpoint files, a ``.gguf`` file); for a
    hub or TransformerLens name, whose files are not here before loading, the hash of the name."""
    from workbench.models import cache
    from workbench.models.registry import resolve
    from workbench.models.zoo import offline_spec

    src = resolve(source)
    with CACHE_LOCK:
        if src.kind == "offline":
            return cache.content_digest([offline_spec(src.text).gguf()])[:16]
        if src.local and src.kind != "hub":
            _, record, _ = src.cache_entry()
            return str(record["digest"])[:16]
    return "name-" + hashlib.sha256(src.text.encode()).hexdigest()[:11]


def thread_budget() -> int:
    """The cores this process may use: ``OMP_NUM_THREADS`` when set, else the CPUs it may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _claims_hash(phenomenon) -> str:
    from workbench.findings import preregistration

    if phenomenon.claims is None:
        return f"{phenomenon.name}-no-claims"
    return preregistration.load(phenomenon.claims).hash


def _check_inputs(models: Sequence[str], phenomena: Sequence[str] | None, controls: Sequence[str],
                  seeds: int) -> tuple[list[str], list[str]]:
    """The checked model sources (paths made absolute) and phenomenon names; a ValueError naming
    the valid choices for the first bad one."""
    from workbench.models.registry import resolve
    from workbench.phenomena.registry import PHENOMENA

    if isinstance(models, (str, Path)) or not models:
        raise ValueError(f"models must be a non-empty list of model sources, got {models!r}.")
    names = list(PHENOMENA) if phenomena is None else list(phenomena)
    unknown = [p for p in names if p not in PHENOMENA]
    if unknown:
        raise ValueError(f"Unknown phenomenon {unknown[0]!r}; choose from {sorted(PHENOMENA)}.")
    bad = [c for c in controls if c not in CONTROLS[1:]]
    if bad:
        raise ValueError(f"Unknown control {bad[0]!r}; choose from {list(CONTROLS[1:])}.")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be a positive int (seeds 0..N-1), got {seeds!r}.")
    checked = []
    for m in models:
        try:
            checked.append(resolve(str(m)).check())
        except Exception as e:  # every kind's own error, said with the source it is about
            raise ValueError(f"Model source {str(m)!r}: {e}") from None
    return checked, names


def _skip(phenomenon: str, model: str, control: str, status: str, note: str) -> dict[str, Any]:
    return {"phenomenon": phenomenon, "model": model, "control": control, "status": status, "note": note}


def plan(models: Sequence[str], phenomena: Sequence[str] | None = None, *,
         controls: Sequence[str] = (), seeds: int = 1, device: str | None = None,
         dtype: str | None = None, threads: int = 1) -> Plan:
    """Check the inputs, then list the jobs: every phenomenon with a ``run()`` x model x control x
    seed. A phenomenon with no ``run()`` and a placebo a phenomenon does not declare become rows
    with a status saying so (they are not jobs, so they are never retried)."""
    from workbench.models.devices import resolve_device, resolve_dtype
    from workbench.phenomena.registry import PHENOMENA

    sources, names = _check_inputs(models, phenomena, controls, seeds)
    if device is not None:
        resolve_device(device)
    if dtype is not None:
        resolve_dtype(dtype)
    hashes = {m: model_hash(m) for m in sources}
    code = code_hash()
    jobs, runs, skipped = [], {}, []
    wanted = ["none", *[c for c in CONTROLS[1:] if c in controls]]
    for name in names:
        ph = PHENOMENA[name]
        if ph.run is None:
            skipped += [_skip(name, m, "none", "no run()", "no run() registered for this phenomenon")
                        for m in sources]
            continue
        claims = _claims_hash(ph)
        for control in wanted:
            fn = getattr(ph, "placebo", None) if control == "placebo" else ph.run
            if fn is None:
                skipped += [_skip(name, m, control, "not available",
                                  "placebo not available for this phenomenon") for m in sources]
                continue
            runs[(name, control)] = fn
            jobs += [Job(name, m, hashes[m], claims, code, control, s, device, dtype, threads)
                     for m in sources for s in range(seeds)]
    return Plan(jobs, runs, skipped)
