"""What every exercise shares: the :class:`Exercise` record, the registry, and the checking tools.

A checker runs the student's function and the reference solution on the same small inputs (the
tiny test models, a grouped-query one among them, or the toy arithmetic model) and compares the
two with :func:`compare`, whose message names the exercise, the case, the index that differs (by
its axis names: ``layer=1, head=2``), the expected and the received value. A student's function
runs through :func:`call`, which turns any exception into an ``AssertionError`` that says so
(except ``NotImplementedError``, the stub's own message), and fails, after removing it, on any
hook the function left attached to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Difficulty",
    "Exercise",
    "call",
    "check_scalar_out",
    "compare",
    "hooks_left",
    "register",
    "registry",
    "remove_hooks",
    "tiny",
    "tiny_gqa",
    "toy",
]

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

    def check(self, fn: Callable) -> None:
        """Run ``fn`` against the solution; ``AssertionError`` saying what differs, else nothing."""
        if not callable(fn):
            raise AssertionError(f"{self.name}: expected a function, got {type(fn).__name__}.")  # noqa: TRY004
        self.checker(fn)

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


def tiny():
    """The tiny LayerNorm model with learned positions (2 layers, 4 heads, d_model 64)."""
    from workbench.models import tiny_model

    return tiny_model()


def tiny_gqa():
    """The tiny grouped-query model: 4 query heads sharing 2 key/value heads, RMSNorm, rotary."""
    from workbench.models import tiny_model

    return tiny_model(n_kv_heads=2, normalization="RMS", positional="rotary")


def toy():
    """The trained toy modular-addition model (``workbench.models.toy``)."""
    from workbench.models.toy import load_toy_model

    return load_toy_model(progress=False)


# --------------------------------------------------------------------------------------------
# Running the student's function


def hooks_left(model) -> list[str]:
    """Names of the hook points and modules of ``model`` that still hold a hook."""
    left = [name for name, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    left += [name or "model" for name, m in model.named_modules()
             if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
             and name not in model.hook_dict]
    return left


def remove_hooks(model) -> None:
    """Remove every hook from ``model`` (TransformerLens's and raw torch hooks)."""
    model.reset_hooks(including_permanent=True)
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()


def call(name: str, fn: Callable, *args, models: Sequence = (), case: str = "", **kwargs):
    """``fn(*args, **kwargs)`` as the student wrote it; ``AssertionError`` if it raises or leaks a hook.

    ``models``: the models to inspect for hooks left attached (default: every argument that has a
    ``hook_dict``). A leaked hook is removed before the error is raised.
    """
    models = list(models) or [a for a in args if hasattr(a, "hook_dict")]
    where = f" ({case})" if case else ""
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        for m in models:
            remove_hooks(m)
        raise
    except AssertionError as e:
        for m in models:
            remove_hooks(m)
        raise AssertionError(f"{name}{where}: your function failed an assertion: {e}") from e
    except Exception as e:
        for m in models:
            remove_hooks(m)
        raise AssertionError(f"{name}{where}: your function raised {type(e).__name__}: {e}") from e
    for m in models:
        left = hooks_left(m)
        if left:
            remove_hooks(m)
            raise AssertionError(
                f"{name}{where}: a hook was left attached on {', '.join(left[:3])} after your "
                "function returned (removed now). Attach hooks only inside `with model.hooks(...)`."
            )
    return out


def _as_tensor(x, name: str, what: str) -> Tensor:
    values = x if isinstance(x, Tensor) else getattr(x, "values", x)  # a workbench Result
    if isinstance(values, Tensor):
        return values.detach().float().cpu()
    try:
        return torch.as_tensor(values, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise AssertionError(f"{name}: {what} should be a tensor or a number, got "
                             f"{type(x).__name__}.") from None


def _index_label(dims: Sequence[str], index: Sequence[int]) -> str:
    if not len(index):
        return "the value"
    return ", ".join(f"{d}={i}" for d, i in zip(dims, index))


def compare(name: str, got, expected, *, dims: Sequence[str] = (), what: str = "the result",
            case: str = "", atol: float = 1e-4, rtol: float = 1e-3, exact: bool = False) -> None:
    """``AssertionError`` unless ``got`` equals ``expected`` (shape, then values), saying where not.

    ``dims`` names the axes, so that the message reads ``layer=1, head=2: expected 0.31, got -0.31``;
    a few common slips (sign flipped, axes transposed, a scalar multiple) are named when they fit.
    """
    where = f" ({case})" if case else ""
    e = _as_tensor(expected, name, "the reference")
    g = _as_tensor(got, name, what)
    if g.shape != e.shape:
        axes = f" [{', '.join(dims)}]" if dims else ""
        hint = ""
        if g.ndim == e.ndim == 2 and g.shape == e.shape[::-1]:
            hint = " (the axes look transposed)"
        raise AssertionError(
            f"{name}{where}: {what} should have shape {tuple(e.shape)}{axes}, got "
            f"{tuple(g.shape)}{hint}."
        )
    close = g == e if exact else torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    if bool(close.all()):
        return
    bad = (~close).nonzero()
    first = tuple(int(i) for i in bad[0]) if bad.numel() else ()
    n_bad, n = int((~close).sum()), close.numel()
    msg = (f"{name}{where}: {what} differs from the reference at {n_bad} of {n} values; first at "
           f"{_index_label(dims, first)}: expected {e[first].item():.5g}, got {g[first].item():.5g}.")
    if not exact and torch.allclose(g, -e, atol=atol, rtol=rtol) and e.abs().max() > atol:
        msg += " Every value has the opposite sign: check the direction of the difference."
    elif g.ndim >= 2 and e.ndim >= 2:
        swapped = g.transpose(-1, -2)
        if swapped.shape == e.shape and torch.allclose(swapped, e, atol=atol, rtol=rtol):
            msg += f" Your last two axes look swapped ({', '.join(dims[-2:])})."
    raise AssertionError(msg)


def check_scalar_out(name: str, out, case: str = "") -> float:
    """The student's scalar answer as a float; ``AssertionError`` if it is not one number."""
    t = _as_tensor(out, name, "the result")
    if t.numel() != 1:
        raise AssertionError(f"{name} ({case}): should return one number, got shape {tuple(t.shape)}.")
    return float(t.reshape(()))
