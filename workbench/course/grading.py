"""Grading a class: every student notebook in a folder into one CSV and one HTML summary.

``workbench course grade FOLDER`` runs :func:`grade_folder`. For each student notebook
(``*.ipynb`` under ``FOLDER``, feedback copies excepted):

* the exercises graded are those the notebook's code cells define or check (a function named like
  an exercise, or ``course.check("name", ...)``), read from the registry, not from the file name;
* the notebook is executed (errors do not stop it) with a time limit for the whole notebook; a
  notebook that hangs or whose kernel dies is reported, and the others are graded;
* each exercise scores the fraction of its checker's cases that passed (partial credit);
* a solution imported from ``workbench`` scores zero, with a message (the code cells are read for
  it, and the check itself rejects a function defined in the package);
* the executed notebook, ending in a cell that prints every exercise's verdict, is saved beside
  the student's as ``NAME.feedback.ipynb``.

Outputs: ``FOLDER/grades.csv`` (one row per student, one column of points per exercise, ``total``
and ``status``), ``FOLDER/grades_long.csv`` (one row per student and exercise, with the message)
and ``FOLDER/grades.html``.
"""

from __future__ import annotations

import ast
import html
import json
import time
from pathlib import Path

import pandas as pd

from workbench.course.base import registry

__all__ = [
    "FEEDBACK_SUFFIX",
    "exercises_in",
    "grade_folder",
    "grade_notebook",
    "imported_solutions",
    "run_checks",
]

FEEDBACK_SUFFIX = ".feedback.ipynb"
_SCORES_MARK = "COURSE-SCORES "


def run_checks(namespace: dict, names: list[str], flagged: dict[str, str] | None = None) -> list[dict]:
    """Check the function of each name in ``namespace``: one row per exercise, with its points.

    ``points`` is the fraction of the checker's cases that passed (0 to 1); ``score`` is 1 when
    every case passed. ``flagged`` maps exercise names to a reason to score zero (an import).
    """
    rows = []
    for name in names:
        ex = registry()[name]
        fn = namespace.get(name)
        start = time.perf_counter()
        passed = cases = 0
        if flagged and name in flagged:
            message = flagged[name]
        elif not callable(fn):
            message = "not defined"
        else:
            try:
                log = ex.report(fn)
                passed, cases = len(log.passed), len(log.cases)
                message = log.summary() if log.failed else "correct"
                if log.warnings:
                    message += " Warning: " + " ".join(log.warnings)
            except NotImplementedError:
                message = "not implemented (the stub is still there)"
            except Exception as e:  # noqa: BLE001  (a grading run reports every failure)
                message = f"{type(e).__name__}: {e}"
        points = round(passed / cases, 3) if cases else 0.0
        rows.append({"exercise": name, "score": int(cases > 0 and passed == cases),
                     "points": points, "cases": f"{passed}/{cases}", "minutes": ex.minutes,
                     "check_seconds": round(time.perf_counter() - start, 2), "message": message})
    return rows


def _code_trees(nb):
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            yield ast.parse(cell.source)
        except SyntaxError:  # a magic, or a student's typo: that cell tells us nothing
            continue


def exercises_in(nb) -> list[str]:
    """The exercises a notebook holds: functions named like one, and ``course.check`` calls."""
    known = registry()
    names = set()
    for tree in _code_trees(nb):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in known:
                names.add(node.name)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "check"
                  and node.args and isinstance(node.args[0], ast.Constant)
                  and node.args[0].value in known):
                names.add(node.args[0].value)
    return sorted(names, key=lambda n: known[n].order)


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_dotted(node.func) + "()")
    return ".".join(reversed(parts))


def imported_solutions(nb) -> dict[str, str]:
    """Exercises whose solution the notebook takes from ``workbench``: ``{name: message}``.

    Caught: ``from workbench.course... import NAME``; ``from workbench... import NAME`` when the
    notebook defines no function ``NAME`` of its own; an attribute path through ``course`` ending
    in an exercise's name (``course.lens.logit_lens``); any ``.solution``. A technique of the same
    name used for comparison (``wb.lens.logit_lens`` in a figure) is not flagged; a package
    function handed to the checker is rejected by the check itself.
    """
    known = registry()
    found: dict[str, str] = {}

    def flag(name: str, how: str) -> None:
        found.setdefault(name, f"{name}: the solution is taken from the workbench package "
                               f"({how}); an imported solution scores zero.")

    trees = list(_code_trees(nb))
    defined = {n.name for tree in trees for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench"):
                for alias in node.names:
                    name = alias.asname or alias.name
                    from_course = (node.module or "").startswith("workbench.course")
                    if alias.name in known and (from_course or name not in defined):
                        flag(name, f"from {node.module} import {alias.name}")
            elif isinstance(node, ast.Attribute):
                path = _dotted(node)
                if node.attr in known and "course" in path.split(".")[:-1]:
                    flag(node.attr, path)
                elif node.attr == "solution":
                    text = ast.unparse(node)
                    for name in known:
                        if name in text:
                            flag(name, text)
    return found


def _checks_cell(names: list[str], flagged: dict[str, str]) -> str:
    return (
        "# Grading (added by `workbench course grade`)\n"
        "import json as _json\n"
        "from workbench.course.grading import run_checks as _run_checks\n"
        f"_rows = _run_checks(globals(), {names!r}, {flagged!r})\n"
        "for _r in _rows:\n"
        "    print(f\"{_r['exercise']}: {_r['points']:.2f} ({_r['cases']} cases) - {_r['message']}\")\n"
        f"print({_SCORES_MARK!r} + _json.dumps(_rows))"
    )


def grade_notebook(notebook: Path, *, time_limit: float = 300,
                   feedback: Path | None = None) -> tuple[pd.DataFrame, str]:
    """Execute one notebook and check its exercises: ``(rows, status)``.

    ``status`` is ``"ok"``, ``"timed out after N s"`` or ``"crashed: ..."``; on a time-out or a
    crash every exercise scores zero with that message. ``feedback``: where to save the executed
    notebook.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(notebook, as_version=4)
    names = exercises_in(nb)
    if not names:
        return pd.DataFrame(columns=["exercise", "points", "message"]), "no course exercise found"
    flagged = imported_solutions(nb)
    nb.cells.append(nbformat.v4.new_code_cell(_checks_cell(names, flagged)))
    deadline = time.monotonic() + time_limit
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True,
                            timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
                            resources={"metadata": {"path": str(notebook.resolve().parent)}})
    status = "ok"
    try:
        client.execute()
    except CellTimeoutError:
        status = f"timed out after {time_limit:g} s"
    except DeadKernelError as e:
        status = f"crashed: the kernel died ({str(e).splitlines()[0] if str(e) else 'no message'})"
    except Exception as e:  # noqa: BLE001  (one student's notebook never stops the class)
        status = f"crashed: {type(e).__name__}: {e}"
    if feedback is not None:
        nbformat.write(nb, feedback)
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", [])
                   if o.get("output_type") == "stream")
    line = next((ln for ln in text.splitlines() if ln.startswith(_SCORES_MARK)), None)
    if line is None:
        if status == "ok":
            status = "crashed: the grading cell printed no scores"
        rows = [{"exercise": n, "score": 0, "points": 0.0, "message": status} for n in names]
        return pd.DataFrame(rows), status
    return pd.DataFrame(json.loads(line[len(_SCORES_MARK):])), status


def student_notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb")
                  if not p.name.endswith(FEEDBACK_SUFFIX) and ".ipynb_checkpoints" not in p.parts)


def grade_folder(folder: Path, *, time_limit: float = 300, out: Path | None = None) -> pd.DataFrame:
    """Grade every student notebook under ``folder``; the wide table (student x exercise points).

    Writes ``grades.csv``, ``grades_long.csv`` and ``grades.html`` to ``out`` (default
    ``folder``) and each ``NAME.feedback.ipynb`` beside its notebook.
    """
    out = folder if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    long, statuses = [], {}
    for path in student_notebooks(folder):
        student = path.relative_to(folder).with_suffix("").as_posix()
        feedback = path.with_name(path.stem + FEEDBACK_SUFFIX)
        rows, status = grade_notebook(path, time_limit=time_limit, feedback=feedback)
        statuses[student] = status
        for row in rows.to_dict("records"):
            long.append({"student": student, "exercise": row["exercise"],
                         "points": float(row["points"]), "message": row["message"]})
    frame = pd.DataFrame(long, columns=["student", "exercise", "points", "message"])
    order = {n: e.order for n, e in registry().items()}
    exercises = sorted(frame.exercise.unique(), key=lambda name: order.get(name, 0))
    wide = (frame.pivot_table(index="student", columns="exercise", values="points", aggfunc="first")
            .reindex(index=sorted(statuses), columns=exercises).fillna(0.0))
    wide["total"] = wide.sum(axis=1).round(3)
    wide["status"] = pd.Series(statuses)
    wide.index.name = "student"
    wide.columns.name = None
    wide.to_csv(out / "grades.csv")
    frame.to_csv(out / "grades_long.csv", index=False)
    (out / "grades.html").write_text(summary_html(wide, frame))
    return wide


def summary_html(wide: pd.DataFrame, long: pd.DataFrame) -> str:
    """The class summary: the points table, the mean per exercise, and every failure message."""
    numeric = wide.drop(columns=["status"])
    means = numeric.mean().round(2).to_frame("class mean").T
    failures = long[long.points < 1]
    items = "".join(
        f"<li><b>{html.escape(r.student)}</b> / <code>{html.escape(r.exercise)}</code> "
        f"({r.points:.2f}): <pre>{html.escape(str(r.message))}</pre></li>"
        for r in failures.itertuples()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Course grades</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}"
        "pre{white-space:pre-wrap;margin:2px 0}</style></head><body>"
        f"<h1>Course grades</h1><p>{len(wide)} notebooks; points per exercise are the fraction "
        "of its cases passed.</p>"
        f"{wide.to_html(float_format=lambda x: f'{x:.2f}')}{means.to_html()}"
        f"<h2>What to look at</h2><ul>{items or '<li>nothing: every exercise passed</li>'}</ul>"
        "</body></html>"
    )
