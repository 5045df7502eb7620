"""The phenomenon registry: a phenomenon is one folder that registers itself here, once.

A :class:`Phenomenon` names its head-finding step (``finder``: ``model -> {role: [layer, head]
scores}``), the head :class:`Role` objects that step scores (with their colours on the atlas's
map), and the notebook that tells its story. The head atlas, ``workbench run`` and the
scorecards iterate :data:`PHENOMENA`; nothing else lists phenomena.

Adding a phenomenon: a folder ``workbench/phenomena/<name>/`` whose ``__init__`` ends in::

    register(Phenomenon("duplicate", "Duplicate-token heads", finder=duplicate_scores,
                        roles=(Role("duplicate token", "C6", "attends to an earlier copy"),)))

and one line in ``workbench/phenomena/__init__.py`` importing the folder.

>>> list(PHENOMENA)[:3]
['ioi', 'induction', 'retrieval']
>>> [r.name for r in roles()][:2]
['name mover', 'S-inhibition']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from workbench.core.results import Result
    from workbench.core.types import Model
    from workbench.findings.claims import Scorecard

__all__ = ["PHENOMENA", "Phenomenon", "PhenomenonAbsent", "Role", "default_k", "get", "register", "roles"]

#: Finder: ``finder(model, *, k, seed, **options) -> {role name: Result [layer, head]}``.
Finder = Callable[..., "dict[str, Result]"]
#: Experiment: ``run(model, *, seed=0) -> Scorecard``: the phenomenon's pre-registered claims,
#: selected on one split and measured on the other, with their nulls and verdicts.
Experiment = Callable[..., "Scorecard"]


class PhenomenonAbsent(ValueError):
    """A finder found nothing to score on: the model does not show the phenomenon at all (e.g. it
    answers none of the facts). The atlas records the role with NaN scores and no heads."""


@dataclass(frozen=True)
class Role:
    """A head role a phenomenon's finder scores: its name, its colour on maps, what it does."""

    name: str
    colour: str
    description: str = ""


@dataclass(frozen=True)
class Phenomenon:
    """One registered phenomenon.

    Attributes:
        name: the registry key (``"ioi"``, ``"retrieval"``, ...), used by the CLI and the atlas.
        title: a human title.
        finder: the head-finding step, or ``None`` for a phenomenon with no head roles.
        roles: the roles ``finder`` returns scores for, in the order of the atlas's legend.
        notebook: the stem of the notebook that tells its story (``"02_retrieval_heads"``).
        options: keyword options of ``finder`` that callers may pass through (``"needle"``).
        run: the whole experiment, ``run(model, *, seed=0) -> Scorecard``, or ``None``.
        claims: the folder's pre-registration (``claims.toml`` + ``claims.lock.json``), a package
            path such as ``"workbench.phenomena.ioi"``; ``None`` when the phenomenon has no claims.
    """

    name: str
    title: str
    finder: Finder | None = None
    roles: tuple[Role, ...] = ()
    notebook: str | None = None
    options: tuple[str, ...] = ()
    run: Experiment | None = None
    claims: str | None = None

    def __post_init__(self) -> None:
        if (self.finder is None) != (not self.roles):
            raise ValueError(f"Phenomenon {self.name!r}: a finder needs roles and roles need a finder.")


#: Every registered phenomenon, in registration order.
PHENOMENA: dict[str, Phenomenon] = {}


def register(phenomenon: Phenomenon) -> Phenomenon:
    """Add ``phenomenon`` to :data:`PHENOMENA`. A name or role registered twice is an error."""
    if phenomenon.name in PHENOMENA and PHENOMENA[phenomenon.name] != phenomenon:
        raise ValueError(f"A phenomenon named {phenomenon.name!r} is already registered.")
    taken = {r.name for p in PHENOMENA.values() if p.name != phenomenon.name for r in p.roles}
    clash = [r.name for r in phenomenon.roles if r.name in taken]
    if clash:
        raise ValueError(f"Roles {clash} of {phenomenon.name!r} are already declared by another phenomenon.")
    PHENOMENA[phenomenon.name] = phenomenon
    return phenomenon


def get(name: str) -> Phenomenon:
    """The phenomenon registered as ``name``; an unknown name lists the known ones."""
    try:
        return PHENOMENA[name]
    except KeyError:
        raise ValueError(f"Unknown phenomenon {name!r}; choose from {sorted(PHENOMENA)}.") from None


def roles() -> list[Role]:
    """Every role of every registered phenomenon, in registration order."""
    return [r for p in PHENOMENA.values() for r in p.roles]


def default_k(model: Model) -> int:
    """Heads per role: 3% of the model's heads, at least 3 (the head atlas's K, and the induction
    claims' K)."""
    return max(3, round(0.03 * model.cfg.n_layers * model.cfg.n_heads))
