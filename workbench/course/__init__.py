"""Course mode: exercises with reference solutions and checkers, in a progression.

>>> from workbench import course
>>> ex = course.exercises()
>>> len(ex) >= 20, ex[0].name
(True, 'tokens_with_bos')
>>> ex = course.get("attention_pattern")
>>> ex.check(ex.solution, allow_package=True)  # quiet: right (the package's own reference)

Each :class:`Exercise` has ``name``, ``notebook``, ``objective``, ``minutes``, ``difficulty``,
``solution`` (the reference function), ``catches`` (the wrong answers its checker rejects) and
``check(fn)``: it runs the solution, then the student's ``fn``, on the tiny test models (a
grouped-query one among them; norm weights away from 1) or the toy model, case by case, and raises
``AssertionError`` saying what differs and which typical mistake it matches, or returns quietly;
``report(fn)`` gives every case's verdict (what grading counts). In a course notebook: ``course.check("attention_pattern", attention_pattern)``.

The course notebooks (``notebooks/course/``) hold the solutions in cells tagged ``solution``;
``workbench course build OUT`` writes student notebooks (bodies replaced by stubs), solution
notebooks and the instructor's material (``--student``: the hand-out alone);
``workbench course check NOTEBOOK`` grades a filled-in one, ``workbench course grade FOLDER`` a class
(:mod:`workbench.course.grading`).
"""

from __future__ import annotations

from workbench.course import basics, lens, patching, paths, phenomena, sae  # noqa: F401  (registers the exercises)
from workbench.course.base import CourseWarning, Exercise, registry
from workbench.course.notebooks import show

__all__ = ["CourseWarning", "Exercise", "check", "exercises", "get", "show", "table"]


def exercises() -> list[Exercise]:
    """Every exercise, in the order of the course."""
    return sorted(registry().values(), key=lambda e: e.order)


def get(name: str) -> Exercise:
    """One exercise by name; ``KeyError`` naming the known ones."""
    known = registry()
    if name not in known:
        raise KeyError(f"No exercise {name!r}. Exercises: {', '.join(known)}.")
    return known[name]


def check(name: str, fn) -> None:
    """Check ``fn`` for the exercise ``name``; print a line when it is right (raises when wrong)."""
    get(name).check(fn)
    print(f"{name}: correct.")


def table():
    """The exercises as a DataFrame (name, notebook, objective, minutes, difficulty, catches)."""
    import pandas as pd

    return pd.DataFrame([e.to_row() for e in exercises()])
