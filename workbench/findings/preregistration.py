"""Pre-registration: a phenomenon's claims live in a file, and a lock file holds each claim's hash.

A phenomenon folder holds ``claims.toml``: a ``[design]`` table (split sizes, data parameters,
null sizes: everything a claim's number depends on besides the model and the seed) and one
``[[claims]]`` table per claim, with the fields of :class:`~workbench.findings.claims.Claim`::

    [design]
    n_select = 32
    n_eval = 64

    [[claims]]
    name = "logit_diff"
    claim = "the model prefers the indirect object"
    paper = "Wang et al. 2022: 3.56 on GPT-2 small"
    statistic = "mean logit(IO) - logit(S), evaluation prompts"
    threshold = 1.0
    weaker = 0.0

Beside it, ``claims.lock.json`` records, for each claim, the hash of its fields and of the design,
the date it was registered, and every amendment (old hash, new hash, date, reason). A claim whose
hash is not the lock's current one is refused by :func:`load` (and fails a test) until the change is
recorded: ``workbench claims amend PHENOMENON CLAIM --reason "..."``. An amended claim carries the
reason (``Claim.amended``), which every scorecard and ``findings.json`` shows beside its finding.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "claims.toml").write_text('[design]\\nn_eval = 8\\n[[claims]]\\nname = "c"\\n'
...     'claim = "big"\\npaper = "p"\\nstatistic = "mean"\\nthreshold = 0.5\\n')
>>> lock(folder, date="2026-12-01")
['c']
>>> load(folder).claims["c"].threshold
0.5
>>> _ = (folder / "claims.toml").write_text((folder / "claims.toml").read_text().replace("0.5", "0.4"))
>>> load(folder)
Traceback (most recent call last):
...
workbench.findings.preregistration.Unregistered: ...
>>> amend(folder, "c", "the paper's bar is 0.4", date="2026-12-02")
>>> load(folder).claims["c"].amended
"2026-12-02: the paper's bar is 0.4"
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.findings.claims import Claim

__all__ = ["Registration", "Unregistered", "amend", "claim_hash", "load", "lock", "problems"]

CLAIMS = "claims.toml"
LOCK = "claims.lock.json"
_FIELDS = {f.name for f in fields(Claim)} - {"amended"}


class Unregistered(ValueError):
    """A claim differs from its registered hash and no amendment records the change."""


@dataclass(frozen=True)
class Registration:
    """A folder's claims as registered: the design, the claims (amendments attached), their hashes."""

    folder: Path
    design: dict[str, Any]
    claims: dict[str, Claim]
    hashes: dict[str, str]

    @property
    def hash(self) -> str:
        """One hash over every claim's hash (what a results store keys a phenomenon's findings by)."""
        return _digest(self.hashes)


def claim_hash(claim: Claim, design: dict[str, Any]) -> str:
    """The hash of ``claim``'s fields (its amendment note aside) and of the design it is measured under."""
    body = {k: v for k, v in asdict(claim).items() if k in _FIELDS}
    return _digest({"claim": body, "design": design})


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _folder(where: str | Path) -> Path:
    """A folder path, or a package name (``"workbench.phenomena.ioi"``) whose folder holds the files."""
    if isinstance(where, Path) or "/" in str(where) or os.sep in str(where):
        return Path(where)
    return Path(str(resources.files(str(where))))


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Claim], dict[str, Any]]:
    path = folder / CLAIMS
    if not path.is_file():
        raise FileNotFoundError(f"No {CLAIMS} in {folder}: a phenomenon declares its claims there.")
    with path.open("rb") as f:
        data = tomllib.load(f)
    unknown = set(data) - {"design", "claims"}
    if unknown:
        raise ValueError(f"{path}: unknown tables {sorted(unknown)}; expected [design] and [[claims]].")
    claims: dict[str, Claim] = {}
    for entry in data.get("claims", []):
        bad = set(entry) - _FIELDS
        if bad:
            raise ValueError(f"{path}: claim {entry.get('name')!r} has unknown fields {sorted(bad)}; "
                             f"a claim has {sorted(_FIELDS)}.")
        if entry.get("name") in claims:
            raise ValueError(f"{path}: two claims are named {entry['name']!r}.")
        claims[entry["name"]] = Claim(**entry)
    lock_path = folder / LOCK
    locked = json.loads(lock_path.read_text()) if lock_path.is_file() else {}
    return data.get("design", {}), claims, locked


def _current(entry: dict[str, Any]) -> str:
    amendments = entry.get("amendments", [])
    return amendments[-1]["new"] if amendments else entry["hash"]


def problems(where: str | Path) -> list[str]:
    """What keeps the folder's claims from matching their lock: unregistered, changed, or removed claims."""
    folder = _folder(where)
    design, claims, locked = _read(folder)
    out = []
    for name, claim in claims.items():
        if name not in locked:
            out.append(f"{name}: not registered (run `workbench claims lock {folder}`)")
        elif claim_hash(claim, design) != _current(locked[name]):
            out.append(f"{name}: changed since it was registered, with no amendment recorded (run "
                       f"`workbench claims amend {folder} {name} --reason \"...\"`)")
    out += [f"{name}: in the lock but no longer declared" for name in locked if name not in claims]
    return out


def load(where: str | Path) -> Registration:
    """The folder's registered claims. Raises :class:`Unregistered` when a claim does not match the lock."""
    folder = _folder(where)
    trouble = problems(folder)
    if trouble:
        raise Unregistered(f"{folder / CLAIMS} does not match {LOCK}:\n  " + "\n  ".join(trouble))
    design, claims, locked = _read(folder)
    for name, claim in claims.items():
        amendments = locked[name].get("amendments", [])
        if amendments:
            last = amendments[-1]
            claims[name] = replace(claim, amended=f"{last['date']}: {last['reason']}")
    return Registration(folder, design, claims, {n: claim_hash(c, design) for n, c in claims.items()})


def _today(date: str | None) -> str:
    return date or datetime.date.today().isoformat()


def _write(folder: Path, locked: dict[str, Any]) -> None:
    """Write the lock atomically (a crash leaves the old lock or the new one, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lock-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(locked, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / LOCK)


def lock(where: str | Path, *, date: str | None = None) -> list[str]:
    """Register every claim not yet in the lock; returns their names. A changed claim is refused:
    record it with :func:`amend`."""
    folder = _folder(where)
    design, claims, locked = _read(folder)
    changed = [n for n, c in claims.items() if n in locked and claim_hash(c, design) != _current(locked[n])]
    if changed:
        raise Unregistered(f"Claims {changed} changed since they were registered: record each with "
                           f"`workbench claims amend {folder} NAME --reason \"...\"`.")
    new = [n for n in claims if n not in locked]
    for n in new:
        locked[n] = {"hash": claim_hash(claims[n], design), "registered": _today(date), "amendments": []}
    _write(folder, locked)
    return new


def amend(where: str | Path, name: str, reason: str, *, date: str | None = None) -> None:
    """Record that claim ``name`` changed (its fields or the design), and why."""
    if not reason.strip():
        raise ValueError("An amendment needs a reason: say what changed and why.")
    folder = _folder(where)
    design, claims, locked = _read(folder)
    if name not in claims:
        raise ValueError(f"No claim named {name!r} in {folder / CLAIMS}; claims: {sorted(claims)}.")
    if name not in locked:
        raise ValueError(f"Claim {name!r} was never registered: run `workbench claims lock {folder}` first.")
    new = claim_hash(claims[name], design)
    old = _current(locked[name])
    if new == old:
        raise ValueError(f"Claim {name!r} has not changed since its last registration; nothing to amend.")
    locked[name].setdefault("amendments", []).append(
        {"old": old, "new": new, "date": _today(date), "reason": reason.strip()})
    _write(folder, locked)
