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
import inspect
import re
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
    "catalogue_markdown",
    "header_markdown",
    "instructor_readme",
    "show",
    "solution_notebook",
    "stub_source",
    "student_notebook",
]

SOLUTION_TAG = "solution"
_SHOW = re.compile(r'course\.show\("(\w+)"\)')


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
        header = _SHOW.fullmatch(cell.source.strip()) if cell.cell_type == "code" else None
        if header and header.group(1) in registry():  # readable before anything runs
            cells.append(nbformat.v4.new_markdown_cell(header_markdown(header.group(1))))
            continue
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
        "`workbench course check student/NOTEBOOK.ipynb` (a score table, also written as CSV), a",
        "class with `workbench course grade FOLDER` (grades.csv, grades.html, feedback notebooks).",
        "Hand out `workbench course build --student OUT`: stubs only, no solutions, no catalogue.",
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


def catalogue_markdown() -> str:
    """Instructor material: every exercise's typical wrong answers, with their code."""
    from workbench.course.catalogue import mistakes

    parts = ["# The wrong-answer catalogue", "",
             "What each checker recognises and names when a student's result equals it.", ""]
    for e in sorted(registry().values(), key=lambda e: e.order):
        parts += [f"## {e.order + 1}. `{e.name}`", ""]
        for mistake, fn in mistakes(e.name):
            parts += [f"**{mistake}**", "", "```python", inspect.getsource(fn).rstrip(), "```", ""]
    return "\n".join(parts)


def student_readme(notebooks: list[Path]) -> str:
    """Markdown for the student hand-out: set-up, how to work, how it is graded (no answers)."""
    return "\n".join([
        "# Course notebooks",
        "",
        "Set-up (once): `pip install -e PATH/TO/workbench` (or the wheel your instructor gave),",
        "then `jupyter lab` in this folder.",
        "",
        f"Notebooks, in order: {', '.join(p.stem for p in notebooks)}. In each, write every",
        "exercise's function where it says `raise NotImplementedError`, then run the cell after it:",
        "the checker tries your function on small models, case by case, and names what differs.",
        "Grading runs the same checks: each exercise earns the fraction of its cases that pass; a",
        "solution imported from the `workbench` package earns zero.",
        "",
    ])


def build(out: Path, notebooks: list[Path] | None = None, *, student_only: bool = False
          ) -> list[Path]:
    """Write the course hand-out; ``student_only`` for the version given to students.

    Instructor build (default): ``out/student/*.ipynb``, ``out/solutions/*.ipynb``,
    ``out/README.md`` (the table of exercises with what each checker catches),
    ``out/CATALOGUE.md`` (the wrong answers with their code) and ``out/INSTRUCTOR.md`` (the
    guide). Student build: ``out/*.ipynb`` (stubs, no outputs) and ``out/README.md`` (set-up);
    no solution, no catalogue.
    """
    import nbformat

    notebooks = course_notebooks() if notebooks is None else notebooks
    if not notebooks:
        raise FileNotFoundError(f"No course notebooks in {course_dir()}.")
    versions = [(out, student_notebook)] if student_only else \
        [(out / "student", student_notebook), (out / "solutions", solution_notebook)]
    written = []
    for folder, _ in versions:
        folder.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for folder, version in versions:
            nbformat.write(version(nb), folder / path.name)
            written.append(folder / path.name)
    texts = {"README.md": student_readme(notebooks)} if student_only else {
        "README.md": instructor_readme(notebooks), "CATALOGUE.md": catalogue_markdown()}
    guide = course_dir() / "INSTRUCTOR.md"
    if not student_only and guide.is_file():
        texts["INSTRUCTOR.md"] = guide.read_text()
    for name, text in texts.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


# --------------------------------------------------------------------------------------------
# Grading one notebook (a class: workbench.course.grading)


def grade(notebook: Path, *, csv: Path | None = None, timeout: int = 600) -> pd.DataFrame:
    """Execute ``notebook`` (errors do not stop it), then check each exercise it holds.

    Returns one row per exercise: ``exercise, score (1 when every case passed), points (the
    fraction of cases passed), cases, minutes, check_seconds, message``; written to ``csv`` if
    given. ``timeout``: the time limit for the whole notebook, in seconds.
    """
    from workbench.course.grading import grade_notebook

    frame, status = grade_notebook(notebook, time_limit=timeout)
    if not len(frame):
        raise ValueError(f"{notebook} holds no course exercise (no function named like one).")
    if status != "ok" and "score" not in frame:
        raise RuntimeError(f"Grading {notebook}: {status}")
    if csv is not None:
        frame.to_csv(csv, index=False)
    return frame


def header_markdown(name: str) -> str:
    """The exercise's header: number, name, time, difficulty and objective (Markdown text)."""
    e = registry()[name]
    return (f"**Exercise {e.order + 1}: `{e.name}`** · about {e.minutes} min · "
            f"{e.difficulty}\n\n*Objective:* {e.objective}")


def show(name: str):
    """The exercise's header for a notebook: number, objective, time and difficulty (Markdown)."""
    from IPython.display import Markdown

    return Markdown(header_markdown(name))
