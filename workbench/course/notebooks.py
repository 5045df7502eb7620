"""One source, two versions: student and solution notebooks from the course notebooks, and grading.

The course notebooks (``notebooks/course/*.ipynb``) are the solution version. A code cell tagged
``solution`` defines one exercise's function (named like the exercise); the next cell calls its
checker (``course.check("name", name)``). :func:`student_notebook` keeps each such function's
signature and docstring and replaces its body by a stub raising ``NotImplementedError`` that names
the exercise, and clears every output. :func:`build` writes both versions and an instructor's
README; :func:`grade` executes a filled-in student notebook and runs every exercise's checker on
the student's functions.
"""

from __future__ import annotations

import ast
import copy
import json
import time
from pathlib import Path

import pandas as pd

from workbench.course.base import registry

__all__ = [
    "SOLUTION_TAG",
    "build",
    "check_call",
    "course_dir",
    "course_notebooks",
    "grade",
    "instructor_readme",
    "run_checks",
    "show",
    "solution_notebook",
    "stub_source",
    "student_notebook",
]

SOLUTION_TAG = "solution"
_SCORES_MARK = "COURSE-SCORES "


def course_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "notebooks" / "course"


def course_notebooks() -> list[Path]:
    return sorted(course_dir().glob("[0-9][0-9]_*.ipynb"))


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def stub_message(name: str) -> str:
    return f"Exercise {name!r}: write this function, then run the next cell to check it."


def stub_source(source: str) -> tuple[str, list[str]]:
    """The cell with each exercise function's body replaced by a stub; and the exercises found.

    Decorators, the signature (with its type hints) and the docstring are kept; everything else
    in the cell is kept as it is.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    known = registry()
    found, pieces, last = [], [], 0
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name not in known:
            continue
        body = node.body
        has_doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                   and isinstance(body[0].value.value, str))
        keep_until = body[0].end_lineno if has_doc else body[0].lineno - 1  # 1-based, inclusive
        indent = " " * body[0].col_offset
        pieces.append("\n".join(lines[last:keep_until]))
        pieces.append(f"{indent}raise NotImplementedError({stub_message(node.name)!r})")
        assert node.end_lineno is not None  # ast.parse sets every position
        last = node.end_lineno
        found.append(node.name)
    pieces.append("\n".join(lines[last:]))
    return "\n".join(p for p in pieces if p != "").rstrip() + "\n", found


def check_call(name: str) -> str:
    return f'course.check("{name}", {name})'


def student_notebook(nb):
    """The student version of a course notebook (a copy; ``nb`` is not changed)."""
    import nbformat

    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(out.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
        if cell.cell_type != "code" or SOLUTION_TAG not in _tags(cell):
            continue
        cell.source, names = stub_source(cell.source)
        nxt = nb.cells[i + 1].source if i + 1 < len(nb.cells) else ""
        for name in names:  # every stub is followed by its checker call
            if check_call(name) not in nxt:
                cells.append(nbformat.v4.new_code_cell(check_call(name)))
    out.cells = cells
    return out


def solution_notebook(nb):
    """The solution version: the course notebook itself (a copy)."""
    return copy.deepcopy(nb)


def instructor_readme(notebooks: list[Path]) -> str:
    """Markdown: how to use the two versions, and the table of exercises with what each catches."""
    exercises = sorted(registry().values(), key=lambda e: e.order)
    total = sum(e.minutes for e in exercises)
    rows = [
        f"| {e.order + 1} | `{e.name}` | {e.notebook.split('/')[-1]} | {e.objective} | {e.minutes} "
        f"| {e.difficulty} | {'; '.join(e.catches)} |"
        for e in exercises
    ]
    names = ", ".join(p.stem for p in notebooks)
    return "\n".join([
        "# Instructor's notes",
        "",
        f"Notebooks: {names}. `student/` holds the versions to hand out (each exercise's body is a",
        "stub raising `NotImplementedError`, followed by a cell that calls its checker); `solutions/`",
        "holds the same notebooks with the reference solutions. Grade a filled-in notebook with",
        "`workbench course check student/NOTEBOOK.ipynb` (a score table, also written as CSV).",
        "",
        f"{len(exercises)} exercises, about {total} minutes in all. Each checker runs the student's",
        "function against the reference on the tiny test models (one of them grouped-query, RMSNorm,",
        "rotary) or the toy arithmetic model and names what differs; `benchmarks/bench_course.py`",
        "times every check.",
        "",
        "| # | exercise | notebook | objective | minutes | difficulty | wrong answers it catches |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


def build(out: Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write ``out/student/*.ipynb``, ``out/solutions/*.ipynb`` and ``out/README.md``."""
    import nbformat

    notebooks = course_notebooks() if notebooks is None else notebooks
    if not notebooks:
        raise FileNotFoundError(f"No course notebooks in {course_dir()}.")
    written = []
    for sub in ("student", "solutions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for sub, version in (("student", student_notebook), ("solutions", solution_notebook)):
            target = out / sub / path.name
            nbformat.write(version(nb), target)
            written.append(target)
    readme = out / "README.md"
    readme.write_text(instructor_readme(notebooks))
    written.append(readme)
    return written


# --------------------------------------------------------------------------------------------
# Grading


def run_checks(namespace: dict, names: list[str]) -> list[dict]:
    """Run each exercise's checker on the function of that name in ``namespace``."""
    rows = []
    for name in names:
        ex = registry()[name]
        fn = namespace.get(name)
        start = time.perf_counter()
        if not callable(fn):
            score, message = 0, "not defined"
        else:
            try:
                ex.check(fn)
                score, message = 1, "correct"
            except NotImplementedError:
                score, message = 0, "not implemented (the stub is still there)"
            except AssertionError as e:
                score, message = 0, str(e)
            except Exception as e:  # noqa: BLE001  (a grading run reports every failure)
                score, message = 0, f"{type(e).__name__}: {e}"
        rows.append({"exercise": name, "score": score, "minutes": ex.minutes,
                     "check_seconds": round(time.perf_counter() - start, 2), "message": message})
    return rows


def _exercises_in(nb, stem: str) -> list[str]:
    known = registry()
    names = [n for n, e in known.items() if e.notebook.split("/")[-1] == stem]
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        names += [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in known]
    return sorted(set(names), key=lambda n: known[n].order)


def grade(notebook: Path, *, csv: Path | None = None, timeout: int = 600) -> pd.DataFrame:
    """Execute ``notebook`` (errors do not stop it), then check each exercise it holds.

    Returns one row per exercise: ``exercise, score (1/0), minutes, check_seconds, message``;
    written to ``csv`` if given.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    names = _exercises_in(nb, notebook.stem)
    if not names:
        raise ValueError(f"{notebook} holds no course exercise (no function named like one).")
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json\nfrom workbench.course.notebooks import run_checks as _run_checks\n"
        f"print({_SCORES_MARK!r} + _json.dumps(_run_checks(globals(), {names!r})))"
    ))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook.resolve().parent)}})
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    line = next((ln for ln in text.splitlines() if ln.startswith(_SCORES_MARK)), None)
    if line is None:
        raise RuntimeError(f"Grading {notebook} produced no scores; last cell printed: {text[-500:]!r}")
    frame = pd.DataFrame(json.loads(line[len(_SCORES_MARK):]))
    if csv is not None:
        frame.to_csv(csv, index=False)
    return frame


def show(name: str):
    """The exercise's header for a notebook: number, objective, time and difficulty (Markdown)."""
    from IPython.display import Markdown

    e = registry()[name]
    return Markdown(f"**Exercise {e.order + 1}: `{e.name}`** · about {e.minutes} min · "
                    f"{e.difficulty}\n\n*Objective:* {e.objective}")
