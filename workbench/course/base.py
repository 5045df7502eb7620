"""What every exercise shares: the :class:`Exercise` record, the registry, and the check models.

A checker runs the reference solution, then the student's function, on the same small inputs (the
tiny test models, a grouped-query one among them, or the toy arithmetic model; each with norm
weights and biases away from 1 and 0, so that a norm mistake shows) and compares the two with
:func:`~workbench.course.checking.compare`, case by case (:mod:`workbench.course.checking`: the
guards against hooks left attached and weights edited in place, and the diagnosis of typical
wrong answers). :meth:`Exercise.report` gives every case's verdict (partial credit);
:meth:`Exercise.check` raises ``AssertionError`` with the first failure and the list of cases.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.course.checking import (
    FAILED,
    CaseLog,
    call,
    check_scalar_out,
    compare,
    fail,
    hooks_left,
    remove_hooks,
)

__all__ = [
    "FAILED",
    "CaseLog",
    "CourseWarning",
    "Difficulty",
    "Exercise",
    "call",
    "check_scalar_out",
    "compare",
    "fail",
    "from_package",
    "hooks_left",
    "register",
    "registry",
    "remove_hooks",
    "tiny",
    "tiny_gqa",
    "toy",
]


class CourseWarning(UserWarning):
    """Something to fix that does not make the answer wrong (a NumPy array instead of a tensor)."""


def from_package(fn: Callable) -> str | None:
    """``"module.name"`` when ``fn`` is defined inside the ``workbench`` package, else ``None``."""
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    fn = getattr(fn, "__wrapped__", fn)
    module = getattr(fn, "__module__", None) or ""
    if module == "workbench" or module.startswith("workbench."):
        return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"
    return None


Difficulty = Literal["intro", "core", "advanced"]
_DIFFICULTIES = ("intro", "core", "advanced")

_REGISTRY: dict[str, Exercise] = {}


@dataclass(frozen=True)
class Exercise:
    """One exercise: what to write, in which notebook, and how it is checked.

    Attributes:
        name: the function the student writes (and the key of the registry).
        notebook: the course notebook that holds it, e.g. ``"course/01_hooks_and_attention"``.
        objective: one sentence: what the student can do afterwards.
        minutes: estimated time.
        difficulty: ``"intro"``, ``"core"`` or ``"advanced"``.
        solution: the reference function.
        catches: the typical wrong answers the checker rejects (the tests hold one of each).
        order: position in the progression.
    """

    name: str
    notebook: str
    objective: str
    minutes: int
    difficulty: Difficulty
    solution: Callable
    checker: Callable[[Callable], None] = field(repr=False)
    catches: tuple[str, ...] = ()
    order: int = 0

    def report(self, fn: Callable, *, allow_package: bool = False) -> CaseLog:
        """Run ``fn`` against the solution, case by case; the :class:`CaseLog` of verdicts.

        A function defined inside the ``workbench`` package (the reference imported) fails every
        case unless ``allow_package`` (the package's own tests of its references).
        ``NotImplementedError`` (the stub) propagates.
        """
        log = CaseLog(self.name)
        if not callable(fn):
            log.record("the check", f"{self.name}: expected a function, got {type(fn).__name__}.")
            return log
        origin = None if allow_package else from_package(fn)
        if origin is not None:
            log.record("the check", f"{self.name}: your function is {origin}, imported from the "
                       "workbench package; write your own (an imported solution scores zero).")
            return log
        with log:
            self.checker(fn)
        return log

    def check(self, fn: Callable, *, allow_package: bool = False) -> None:
        """Run ``fn`` against the solution; ``AssertionError`` saying what differs, else nothing.

        Warnings (a NumPy array where a tensor is expected) are issued as :class:`CourseWarning`.
        """
        log = self.report(fn, allow_package=allow_package)
        for message in log.warnings:
            warnings.warn(message, CourseWarning, stacklevel=2)
        if log.failed:
            raise AssertionError(log.summary())

    def to_row(self) -> dict:
        return {"name": self.name, "notebook": self.notebook, "objective": self.objective,
                "minutes": self.minutes, "difficulty": self.difficulty,
                "catches": "; ".join(self.catches)}


def register(*, notebook: str, objective: str, minutes: int, difficulty: Difficulty,
             catches: Sequence[str], checker: Callable[[Callable, Callable], None]):
    """Decorator on a reference solution: registers it as the exercise named like the function.

    ``checker(fn, solution)`` compares the student's ``fn`` with ``solution``.
    """
    if difficulty not in _DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {_DIFFICULTIES}, got {difficulty!r}.")

    def wrap(solution: Callable) -> Callable:
        name = solution.__name__
        if name in _REGISTRY:
            raise ValueError(f"Exercise {name!r} is registered twice.")
        _REGISTRY[name] = Exercise(
            name=name, notebook=notebook, objective=objective, minutes=minutes,
            difficulty=difficulty, solution=solution,
            checker=lambda fn: checker(fn, solution), catches=tuple(catches),
            order=len(_REGISTRY),
        )
        return solution

    return wrap


def registry() -> dict[str, Exercise]:
    return _REGISTRY


# --------------------------------------------------------------------------------------------
# Models the checkers run on (fresh for every check, so a student's hook cannot leak out)


def _uneven_norms(model, seed: int = 11):
    """Set every norm's weight to 1 + N(0, 0.3) and bias to N(0, 0.2), seeded.

    With the identity weights of a fresh model, a mistake about which norm (``ln1`` instead of
    ``ln_final``) or a forgotten ``ln_final.w`` gives the right numbers; these weights show it.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (name.startswith("ln_final.") or ".ln" in name):
                continue
            if name.endswith(".w"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def tiny():
    """The tiny LayerNorm model with learned positions (2 layers, 4 heads, d_model 64)."""
    from workbench.models import tiny_model

    return _uneven_norms(tiny_model())


def tiny_gqa():
    """The tiny grouped-query model: 4 query heads sharing 2 key/value heads, RMSNorm, rotary."""
    from workbench.models import tiny_model

    return _uneven_norms(tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary"))


def toy():
    """The trained toy modular-addition model (``workbench.models.toy``)."""
    from workbench.models.toy import load_toy_model

    return load_toy_model(progress=False)
