"""The replication report: one row per finding, a claims x models table, a figure.

:func:`rows` turns store records (and the plan's rows for what could not run) into the long
frame of :class:`Replication` (one row per finding: phenomenon, claim, model, model hash,
control, seed, value, ci_low, ci_high, null_percentile, verdict, n_select, n_eval, seconds, then
status, note, error, stale). :meth:`Replication.write` saves ``replication.csv``,
``replication.json``, ``replication.html`` (self-contained: no file is fetched from the network),
``replication.md`` (the README's table, :meth:`Replication.to_markdown`) and ``replication.png``.

In the table and the figure a column is a model, with its controls beside it; a cell is a claim's
value [95% interval] and verdict, coloured by the verdict. With several seeds a cell shows the
verdict most seeds reach, "k/n seeds agree", and the value and interval of the first seed that
reaches it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from workbench.core.persist import Persistent

__all__ = ["COLUMNS", "Replication", "rows"]

#: The columns of ``replication.csv`` / ``.json``, in order.
COLUMNS = ["phenomenon", "claim", "model", "model_hash", "control", "seed", "value", "ci_low", "ci_high",
           "null_percentile", "verdict", "n_select", "n_eval", "seconds", "status", "note", "error", "stale"]


def _model_name(source: str) -> str:
    from workbench.models.registry import resolve

    try:
        return resolve(source).report_name()
    except Exception:
        return source


def _record_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    job = record["job"]
    base = {"phenomenon": job["phenomenon"], "model": _model_name(job["model"]),
            "model_hash": job["model_hash"], "control": job["control"], "seed": job["seed"],
            "seconds": record.get("seconds"), "status": record["status"], "error": record.get("error") or "",
            "stale": ""}
    if record.get("computed_by_code") and record["computed_by_code"] != job["code_hash"]:
        base["stale"] = (f"computed by code {record['computed_by_code']}, planned by code {job['code_hash']}")
    if record["status"] != "ok" or not record["findings"]:
        return [{**base, "claim": "", "verdict": "", "note": "no findings" if not base["error"] else ""}]
    out = []
    for f in record["findings"]:
        out.append({**base, "claim": f["name"], "value": f["value"], "ci_low": f["ci_low"],
                    "ci_high": f["ci_high"], "null_percentile": f["null_percentile"], "verdict": f["verdict"],
                    "n_select": f["n_select"], "n_eval": f["n_eval"], "note": f.get("note", "")})
    return out


def rows(records: Iterable[dict[str, Any]], skipped: Iterable[dict[str, Any]] = ()) -> pd.DataFrame:
    """The long frame of a replication: one row per finding, per failed job, per skipped cell."""
    out = [r for rec in records for r in _record_rows(rec)]
    out += [{**s, "model": _model_name(s["model"]), "claim": "", "verdict": "", "seed": None} for s in skipped]
    frame = pd.DataFrame(out, columns=COLUMNS)
    for col in ("value", "ci_low", "ci_high", "null_percentile", "seconds"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in ("seed", "n_select", "n_eval"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("claim", "verdict", "note", "error", "stale", "status", "control"):
        frame[col] = frame[col].fillna("").astype(str)
    # Phenomena and models in the order they were asked for (first appearance), then by control and seed.
    rank = {c: {v: i for i, v in enumerate(dict.fromkeys(frame[c]))} for c in ("phenomenon", "model")}
    rank["control"] = {"none": 0, "random-init": 1, "placebo": 2}
    order = frame.assign(**{f"_{c}": frame[c].map(r) for c, r in rank.items()})
    order = order.sort_values(["_phenomenon", "_model", "_control", "seed"], kind="stable")
    return frame.loc[order.index].reset_index(drop=True)


def _colour(verdict: str) -> str:
    from matplotlib.colors import to_hex

    from workbench.viz.plot import VERDICT_COLOURS

    return to_hex(VERDICT_COLOURS[verdict]) if verdict in VERDICT_COLOURS else "#bbbbbb"


def _columns(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, control) columns: each model in order of appearance, its controls beside it."""
    order = {"none": 0, "random-init": 1, "placebo": 2}
    models = list(dict.fromkeys(frame["model"]))
    pairs = set(zip(frame["model"], frame["control"]))
    return [(m, c) for m in models for c in sorted({c for mm, c in pairs if mm == m}, key=lambda c: order[c])]


def _cell(group: pd.DataFrame) -> dict[str, Any]:
    """What one table cell says: verdict (modal over seeds), value [interval], seeds agreeing."""
    ok = group[group["status"] == "ok"]
    if ok.empty:
        first = group.iloc[0]
        text = f"failed: {first['error']}" if first["status"] == "failed" else (first["note"] or first["status"])
        return {"verdict": "", "text": text, "seeds": "", "colour": "#dddddd"}
    counts = Counter(ok["verdict"])
    verdict, k = counts.most_common(1)[0]
    row = ok[ok["verdict"] == verdict].iloc[0]
    value = "no value" if pd.isna(row["value"]) else f"{row['value']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"
    seeds = f"{k}/{len(ok)} seeds agree" if len(ok) > 1 else ""
    return {"verdict": verdict, "text": value, "seeds": seeds, "colour": _colour(verdict),
            "stale": bool((ok["stale"] != "").any())}


def _table(frame: pd.DataFrame) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """(row keys (phenomenon, claim), column keys (model, control), {(row, col): cell})."""
    cols = _columns(frame)
    present = list(dict.fromkeys(zip(frame["phenomenon"], frame["claim"])))
    keys = [(p, c) for p in dict.fromkeys(frame["phenomenon"]) for pp, c in present if pp == p and c]
    keys = [k for p in dict.fromkeys(frame["phenomenon"]) for k in [*[k for k in keys if k[0] == p], (p, "")]
            if k in present]
    cells = {}
    for (ph, claim, model, control), group in frame.groupby(["phenomenon", "claim", "model", "control"], sort=False):
        cells[((ph, claim), (model, control))] = _cell(group)
    return keys, cols, cells


@dataclass
class Replication(Persistent):
    """The findings of a replication across models (one row per finding; see :data:`COLUMNS`).

    ``computed``: jobs run by this call; ``reused``: jobs found in the store; ``failed``: jobs
    that failed (recorded with their error; retried by the next run); ``notes``: what the report
    says besides the table (store written by other code, placement, threads).
    """

    frame: pd.DataFrame
    out: str = ""
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def findings(self) -> pd.DataFrame:
        """The rows that are findings (a measured claim), without the timing and placement."""
        f = self.frame[(self.frame["status"] == "ok") & (self.frame["claim"] != "")]
        return f.drop(columns=["seconds"]).reset_index(drop=True)

    def plot(self, ax=None, **kwargs):
        """Claims x (model, control): cells coloured by verdict, each with its value."""
        from workbench.replicate.figure import replication_figure

        return replication_figure(self, ax=ax, **kwargs)

    def table(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
        """The claims x models table: row keys, column keys, and each cell's verdict and text."""
        return _table(self.frame)

    def to_markdown(self) -> str:
        """The claims x models table as Markdown (the README's table): in each cell the value
        [95% interval], the verdict in bold, and with several seeds how many agree."""
        keys, cols, cells = self.table()
        head = ["phenomenon: claim", *(m if c == "none" else f"{m} ({c})" for m, c in cols)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in keys:
            row = [f"{key[0]}: {key[1]}" if key[1] else key[0]]
            for col in cols:
                cell = cells.get((key, col))
                parts = [] if cell is None else [cell["text"], f"**{cell['verdict']}**" if cell["verdict"] else "",
                                                 f"({cell['seeds']})" if cell["seeds"] else ""]
                row.append(" ".join(p for p in parts if p))
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
        return "\n".join(lines) + "\n"

    def _repr_html_(self) -> str:
        from workbench.replicate.figure import html_report

        return html_report(self, standalone=False)

    def write(self, out: str | Path) -> list[Path]:
        """Write ``replication.csv``, ``.json``, ``.html``, ``.md`` and ``.png`` into ``out`` (each atomically)."""
        from workbench.replicate.figure import html_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        frame = self.frame
        payload = {"computed": self.computed, "reused": self.reused, "failed": self.failed,
                   "seconds": self.seconds, "notes": self.notes,
                   "rows": json.loads(frame.to_json(orient="records"))}
        written = [_atomic(out / "replication.csv", frame.to_csv(index=False).encode()),
                   _atomic(out / "replication.json", (json.dumps(payload, indent=1) + "\n").encode()),
                   _atomic(out / "replication.html", html_report(self).encode()),
                   _atomic(out / "replication.md", self.to_markdown().encode())]
        fig = self.plot()
        tmp = out / f".replication-{os.getpid()}.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        os.replace(tmp, out / "replication.png")
        return [*written, out / "replication.png"]


def _atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path
