"""How a student's function is run and compared: case by case, guarded, with a diagnosis.

A check runs inside a :class:`CaseLog` (``with CaseLog(name) as log``). Each case the checker
tries is recorded as passed or failed, so that a check reports ``3 of 4 cases passed`` and a
grade can give partial credit, and a failing case does not hide the others.

* :func:`call` runs the student's function. An exception, a hook left attached, or a weight of the
  model (or SAE) edited in place fails the case; the hook is removed and the weights restored
  (they are fingerprinted before and after: a SHA-1 of every parameter and buffer).
* :func:`compare` compares with the reference (computed before the student's code runs). On the
  first failing case it runs the exercise's catalogue of typical wrong answers
  (:mod:`workbench.course.catalogue`) on the same inputs and names the one the result equals.
* A NumPy array or a list where a tensor is expected is a warning, not a failure.

Outside a ``CaseLog`` (a checker called directly), the first failure raises ``AssertionError``.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "FAILED",
    "CaseLog",
    "call",
    "check_scalar_out",
    "compare",
    "fail",
    "fingerprint",
    "hooks_left",
    "remove_hooks",
]

_LOG: contextvars.ContextVar[CaseLog | None] = contextvars.ContextVar("course_log", default=None)


class _Failed:
    """What :func:`call` returns for a case that already failed (nothing left to compare)."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED = _Failed()


@dataclass
class CaseLog:
    """The cases of one check: ``cases[label]`` holds the failure messages (empty: passed)."""

    name: str
    cases: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: dict[str, tuple] = field(default_factory=dict)
    diagnosed: bool = False

    def __enter__(self) -> CaseLog:
        self._token = _LOG.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _LOG.reset(self._token)

    def record(self, case: str, message: str | None = None) -> None:
        failures = self.cases.setdefault(case or "the check", [])
        if message is not None:
            failures.append(message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def passed(self) -> list[str]:
        return [c for c, failures in self.cases.items() if not failures]

    @property
    def failed(self) -> list[str]:
        return [c for c, failures in self.cases.items() if failures]

    def summary(self) -> str:
        """The first failure, then which cases passed and which failed."""
        if not self.failed:
            return f"{self.name}: correct ({len(self.cases)} of {len(self.cases)} cases)."
        first = self.cases[self.failed[0]][0]
        return (f"{first}\nCases: {len(self.passed)} of {len(self.cases)} passed; failed: "
                f"{'; '.join(self.failed)}.")


def _fail(name: str, case: str, message: str) -> None:
    log = _LOG.get()
    if log is None:
        raise AssertionError(message)
    log.record(case, message)


def fail(name: str, message: str, *, case: str = "") -> None:
    """Fail ``case`` with ``message`` (prefixed with the exercise and the case)."""
    where = f" ({case})" if case else ""
    _fail(name, case, f"{name}{where}: {message}")


# --------------------------------------------------------------------------------------------
# Hooks and weights


def hooks_left(model) -> list[str]:
    """Names of the hook points and modules of ``model`` that still hold a hook."""
    hook_dict = getattr(model, "hook_dict", {})
    left = [name for name, hp in hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    left += [name or "model" for name, m in model.named_modules()
             if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
             and name not in hook_dict]
    return left


def remove_hooks(model) -> None:
    """Remove every hook from ``model`` (TransformerLens's and raw torch hooks)."""
    if hasattr(model, "reset_hooks"):
        model.reset_hooks(including_permanent=True)
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()


def fingerprint(module: torch.nn.Module) -> dict[str, str]:
    """SHA-1 of every parameter and buffer of ``module``, by name."""
    out = {}
    for key, value in module.state_dict().items():
        data = value.detach().cpu().contiguous().reshape(-1)
        out[key] = hashlib.sha1(data.view(torch.uint8).numpy().tobytes()  # noqa: S324
                                if data.numel() else b"").hexdigest()
    return out


class _WeightGuard:
    """Fingerprints the modules among the arguments; restores and names any weight changed."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        self.modules = list(modules)
        self.before = [fingerprint(m) for m in self.modules]
        self.saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]

    def changed(self) -> list[str]:
        """The names of the weights that changed (restored now)."""
        names = []
        for m, before, saved in zip(self.modules, self.before, self.saved):
            after = fingerprint(m)
            diff = [k for k in before if after.get(k) != before[k]] + [k for k in after if k not in before]
            if diff:
                with torch.no_grad():
                    m.load_state_dict(saved, strict=False)
                names += diff
        return names


def _modules_in(args, kwargs) -> list[torch.nn.Module]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, torch.nn.Module)]


def _run(fn: Callable, args, kwargs, modules) -> tuple[object, BaseException | None, list, list]:
    """``fn(*args, **kwargs)``; the output, the exception, the hooks left and the weights changed."""
    guard = _WeightGuard(modules)
    out, error = None, None
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001  (reported as the case's failure)
        error = e
    left = [h for m in modules for h in hooks_left(m)]
    for m in modules:
        remove_hooks(m)
    return out, error, left, guard.changed()


def call(name: str, fn: Callable, *args, models: Sequence = (), case: str = "", **kwargs):
    """``fn(*args, **kwargs)`` as the student wrote it, guarded.

    An exception (other than ``NotImplementedError``, the stub's own), a hook left attached or a
    weight edited in place fails the case (hooks removed, weights restored); the result is then
    :data:`FAILED`, which :func:`compare` and :func:`check_scalar_out` pass over.
    ``models``: the modules to guard (default: every ``torch.nn.Module`` among the arguments).
    """
    modules = list(models) or _modules_in(args, kwargs)
    where = f" ({case})" if case else ""
    log = _LOG.get()
    if log is not None:
        log.inputs.setdefault(case, (args, kwargs))
    out, error, left, changed = _run(fn, args, kwargs, modules)
    if isinstance(error, NotImplementedError):
        raise error
    if error is not None:
        what = "failed an assertion" if isinstance(error, AssertionError) else \
            f"raised {type(error).__name__}"
        _fail(name, case, f"{name}{where}: your function {what}: {error}")
        return FAILED
    if changed:
        _fail(name, case, f"{name}{where}: your function changed the model's weights in place "
              f"({', '.join(changed[:3])}); they were restored. Change activations with hooks "
              "inside `with model.hooks(...)`, never the weights.")
        return FAILED
    if left:
        _fail(name, case, f"{name}{where}: a hook was left attached on {', '.join(left[:3])} "
              "after your function returned (removed now). Attach hooks only inside "
              "`with model.hooks(...)`.")
        return FAILED
    return out


# --------------------------------------------------------------------------------------------
# Comparing


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


def _close(g: Tensor, e: Tensor, atol: float, rtol: float, exact: bool) -> Tensor:
    return g == e if exact else torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)


def _diagnose(name: str, case: str, g: Tensor, atol: float, rtol: float) -> str:
    """`` It equals a typical wrong answer: ...`` when one of the catalogue's does, else ``""``."""
    from workbench.course.catalogue import mistakes

    log = _LOG.get()
    if log is None or log.diagnosed or case not in log.inputs:
        return ""
    log.diagnosed = True  # once per check: the catalogue costs a few forward passes
    args, kwargs = log.inputs[case]
    for mistake, wrong in mistakes(name):
        out, error, _, _ = _run(wrong, args, kwargs, _modules_in(args, kwargs))
        if error is not None or out is None:
            continue
        try:
            w = _as_tensor(out, name, "")
        except AssertionError:
            continue
        if w.shape == g.shape and bool(_close(g, w, atol, rtol, False).all()):
            return f" Your result equals a typical wrong answer: {mistake}."
    return ""


def compare(name: str, got, expected, *, dims: Sequence[str] = (), what: str = "the result",
            case: str = "", atol: float = 1e-4, rtol: float = 1e-3, exact: bool = False) -> None:
    """Record whether ``got`` equals ``expected`` (shape, then values), saying where not.

    ``dims`` names the axes, so that the message reads ``layer=1, head=2: expected 0.31, got -0.31``;
    a few common slips (sign flipped, axes transposed) are named when they fit, and a typical wrong
    answer from the catalogue when the result equals it.
    """
    if got is FAILED:
        return
    where = f" ({case})" if case else ""
    log = _LOG.get()
    if log is not None and isinstance(expected, Tensor) and expected.ndim and not isinstance(got, Tensor):
        if type(got).__module__ == "numpy" or isinstance(got, (list, tuple)):
            log.warn(f"{name}: your function returns a {type(got).__name__}; return a torch "
                     "tensor (the check converted it, but other code may not).")
    e = _as_tensor(expected, name, "the reference")
    try:
        g = _as_tensor(got, name, what)
    except AssertionError as err:
        _fail(name, case, f"{err}".replace(f"{name}:", f"{name}{where}:", 1))
        return
    if g.shape != e.shape:
        axes = f" [{', '.join(dims)}]" if dims else ""
        hint = " (the axes look transposed)" if g.ndim == e.ndim == 2 and g.shape == e.shape[::-1] else ""
        _fail(name, case, f"{name}{where}: {what} should have shape {tuple(e.shape)}{axes}, got "
              f"{tuple(g.shape)}{hint}.{_diagnose(name, case, g, atol, rtol)}")
        return
    close = _close(g, e, atol, rtol, exact)
    if bool(close.all()):
        if log is not None:
            log.record(case)
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
    _fail(name, case, msg + _diagnose(name, case, g, atol, rtol))


def check_scalar_out(name: str, out, case: str = ""):
    """The student's scalar answer as a float (:data:`FAILED` if it is not one number)."""
    if out is FAILED:
        return FAILED
    try:
        t = _as_tensor(out, name, "the result")
    except AssertionError as err:
        _fail(name, case, str(err))
        return FAILED
    if t.numel() != 1:
        _fail(name, case, f"{name} ({case}): should return one number, got shape {tuple(t.shape)}.")
        return FAILED
    return float(t.reshape(()))
