"""The catalogue of typical wrong answers, exercise by exercise (instructor material).

``mistakes(name)`` gives an exercise's ``(mistake, function)`` pairs, in the order of its
``catches``. A checker that finds a difference runs them on the failing case and names the one the
student's result equals. The course's student build (``workbench course build --student``) does not
copy this catalogue; it ships inside the installed package, where a determined student can read it
(see the instructor's guide, ``notebooks/course/INSTRUCTOR.md``).
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.course.catalogue import first, second

__all__ = ["WRONG", "mistakes"]

WRONG: list[tuple[str, str, Callable]] = [*first.WRONG, *second.WRONG]


def mistakes(name: str) -> list[tuple[str, Callable]]:
    """The typical wrong answers of exercise ``name``: ``(mistake, function)`` pairs."""
    return [(mistake, fn) for ex, mistake, fn in WRONG if ex == name]
