"""Indirect-object identification prompts (Wang et al. 2022), for any tokenizer.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The name given once is
the indirect object (IO); the name given twice is the subject (S1 first, S2 second). ABBA
prompts name IO first, BABA prompts name S first. Names, places and objects are kept only when
they are single tokens (with their leading space) for the model's tokenizer, so every prompt of a
template has the same token length and the same positions.

>>> from workbench.phenomena.ioi.dataset import ioi_dataset                  # doctest: +SKIP
>>> ds = ioi_dataset(model, n=40, seed=0, templates=[0])             # doctest: +SKIP
>>> ds.clean_tokens.shape, ds.pos["S2"][:3]                          # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from workbench.core.metrics import LogitDiff
from workbench.core.subsets import split_pools, subset_items
from workbench.core.types import Model
from workbench.models import to_tokens
from workbench.models.tokens import tokenizer_of

__all__ = ["FACTORS", "TEMPLATES", "IOIDataset", "ioi_dataset", "ioi_split", "single_token_words"]

# Written in ABBA order: {A} is the indirect object, {B} the subject (named twice).
# Every name follows a space, so it tokenizes the same way wherever it stands.
TEMPLATES: tuple[str, ...] = (
    "Then, {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "After {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {A} and {B} had a long argument, and afterwards {B} said to",
    "When {A} and {B} arrived at the {PLACE}, {B} handed the {OBJECT} to",
    "Friends {A} and {B} went to the {PLACE}. Afterwards {B} brought a {OBJECT} to",
    "Today {A} and {B} were sitting in the {PLACE}. {B} passed the {OBJECT} to",
    "At the {PLACE}, {A} and {B} talked for hours. Later, {B} sent a {OBJECT} to",
    "Yesterday {A} and {B} visited the {PLACE}, and {B} bought a {OBJECT} for",
    "After the meeting, {A} and {B} went to the {PLACE}. {B} threw the {OBJECT} to",
    "Later {A} and {B} went to the {PLACE} together. Then {B} showed the {OBJECT} to",
    "Since {A} and {B} were at the {PLACE}, {B} lent a {OBJECT} to",
    "When {A} and {B} left the {PLACE}, {B} returned the {OBJECT} to",
    "The {PLACE} was busy when {A} and {B} arrived. {B} offered a {OBJECT} to",
    "Last week {A} and {B} cleaned the {PLACE}, and {B} gave the {OBJECT} to",
)

NAMES = (
    "Mary John Tom James Paul Mark David Michael Robert Daniel Sarah Emma Anna Laura Lisa Kate "
    "Jane Alice Susan Peter George Frank Jack Henry Steven Kevin Brian Eric Ryan Adam Alex Sam "
    "Max Ben Dan Mike Chris Lucy Amy Helen Rose Grace Claire Joseph Thomas Richard Andrew Simon "
    "Victoria Rachel Jessica Nancy Karen Linda Patricia Edward Charles William Martin Scott"
).split()
PLACES = (
    "store garden restaurant school hospital station office market park house kitchen library "
    "beach church museum hotel airport bank farm lake"
).split()
OBJECTS = (
    "ring kiss bone basketball computer necklace drink snack book bag ball key letter gift box "
    "pen cake card hat phone"
).split()
# The factors a split keeps disjoint (see :func:`ioi_split` and :attr:`IOIDataset.factors`).
FACTORS: tuple[str, ...] = ("names", "templates", "places", "objects")


def single_token_words(model: Model, words: Sequence[str]) -> list[str]:
    """The words that are one token for the model's tokenizer when preceded by a space."""
    tok = tokenizer_of(model)
    return [w for w in words if len(tok.encode(" " + w, add_special_tokens=False)) == 1]


@dataclass
class IOIDataset:
    """A batch of IOI prompts with their corrupted counterparts and key positions.

    Attributes (n prompts, seq tokens; right-padded if templates differ in length):
        prompts, corrupted_prompts, abc_prompts: the texts.
        clean_tokens, corrupted_tokens, abc_tokens: LongTensor [batch, pos].
        io_ids, s_ids: LongTensor [batch], the IO and S name tokens.
        pos: {"IO", "S1", "S1+1", "S2", "END"} -> LongTensor [batch].
        template_ids: LongTensor [batch]; order: "ABBA" or "BABA" per prompt.
        corruption: how corrupted prompts were made ("ABC": S2 replaced by a third name; "flip":
            IO and S swapped everywhere, so the right answer becomes S).
    """

    prompts: list[str]
    corrupted_prompts: list[str]
    abc_prompts: list[str]
    clean_tokens: Tensor
    corrupted_tokens: Tensor
    abc_tokens: Tensor
    io_ids: Tensor
    s_ids: Tensor
    pos: dict[str, Tensor]
    template_ids: Tensor
    order: list[str]
    corruption: str
    names: list[tuple[str, str]] = field(repr=False)
    words: list[dict[str, tuple[str, ...]]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def factors(self) -> dict[str, set[str]]:
        """The values of each factor that these prompts use: ``"names"`` (every name in the clean,
        corrupted and ABC prompts), ``"templates"`` (template strings), ``"places"``, ``"objects"``
        (empty for a template without a place or an object)."""
        out: dict[str, set[str]] = {k: set() for k in FACTORS}
        for row in self.words:
            for k in FACTORS:
                out[k].update(row[k])
        return out

    def logit_diff(self, *, per_prompt: bool = False) -> LogitDiff:
        """``logit[IO] - logit[S]`` at the END position, averaged over prompts."""
        return LogitDiff(self.io_ids, self.s_ids, pos=self.pos["END"], per_prompt=per_prompt)

    def subset(self, index: Sequence[int] | Tensor) -> "IOIDataset":
        """The prompts at ``index`` (keeps all fields consistent)."""
        return subset_items(self, index)


def _fill(template: str, order: str, a: str, b: str, place: str, obj: str) -> str:
    first, second = (a, b) if order == "ABBA" else (b, a)
    # The first two name slots are "{A} and {B}"; in BABA they swap, the final {B} stays.
    text = template.replace("{A}", "\0FIRST", 1).replace("{B}", "\0SECOND", 1)
    text = text.replace("\0FIRST", first).replace("\0SECOND", second)
    return text.replace("{B}", b).replace("{PLACE}", place).replace("{OBJECT}", obj)


def _positions(tokens: Tensor, io: int, s: int, corrupted_s2: Tensor | None = None) -> dict:
    """Find IO, S1, S2 in one row of tokens; fail loudly if the names do not tokenize as expected."""
    io_at = (tokens == io).nonzero().flatten().tolist()
    s_at = (tokens == s).nonzero().flatten().tolist()
    if len(io_at) != 1 or len(s_at) != 2:
        raise RuntimeError(
            f"IO token occurs {len(io_at)}x and S token {len(s_at)}x in a prompt; expected 1 and 2. "
            "A name did not tokenize as a single token in context."
        )
    return {"IO": io_at[0], "S1": s_at[0], "S1+1": s_at[0] + 1, "S2": s_at[1]}


def _check_options(n: int, templates: Sequence[int] | None, order: str, corruption: str) -> list[int]:
    """The template indices to cycle over, after checking every option of :func:`ioi_dataset`."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if order not in ("mixed", "ABBA", "BABA"):
        raise ValueError(f"order must be 'mixed', 'ABBA' or 'BABA', got {order!r}.")
    if corruption not in ("ABC", "flip"):
        raise ValueError(f"corruption must be 'ABC' or 'flip', got {corruption!r}.")
    chosen = list(range(len(TEMPLATES))) if templates is None else list(templates)
    bad = [t for t in chosen if not 0 <= t < len(TEMPLATES)]
    if bad or not chosen:
        raise ValueError(f"templates must be indices in 0..{len(TEMPLATES) - 1}, got {templates}.")
    return chosen


def _pool(model: Model, given: Sequence[str] | None, default: Sequence[str], what: str) -> list[str]:
    """The single-token words of ``given`` (default: the module's pool) for ``model``."""
    if given is not None and (isinstance(given, str) or not all(isinstance(w, str) for w in given)):
        raise TypeError(f"{what} must be a sequence of words, got {given!r}.")
    return single_token_words(model, default if given is None else list(given))


def _prompt_rows(
    model: Model, n: int, chosen: list[int], seed: int, order: str, corruption: str,
    pools: tuple[Sequence[str] | None, Sequence[str] | None, Sequence[str] | None] = (None, None, None),
) -> list[tuple]:
    """``n`` seeded rows ``(template, order, IO name, S name, clean, corrupted, ABC prompt, words)``."""
    names = _pool(model, pools[0], NAMES, "names")
    places = _pool(model, pools[1], PLACES, "places")
    objects = _pool(model, pools[2], OBJECTS, "objects")
    if len(names) < 3 or not places or not objects:
        raise ValueError(
            f"Too few single-token words for this tokenizer (names {len(names)}, places "
            f"{len(places)}, objects {len(objects)})."
        )
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        t = chosen[i % len(chosen)]
        o = order if order != "mixed" else ("ABBA", "BABA")[(i // len(chosen)) % 2]
        a, b, c = rng.sample(names, 3)
        a2, b2, c2 = rng.sample(names, 3)
        place, obj = rng.choice(places), rng.choice(objects)
        clean = _fill(TEMPLATES[t], o, a, b, place, obj)
        if corruption == "ABC":
            # S2 becomes a third name: the sentence no longer says who is repeated.
            head, _, tail = clean.rpartition(f" {b} ")
            corrupted = f"{head} {c} {tail}"
        else:
            corrupted = _fill(TEMPLATES[t], o, b, a, place, obj)
        abc = _fill(TEMPLATES[t], o, a2, b2, place, obj)
        head, _, tail = abc.rpartition(f" {b2} ")
        abc = f"{head} {c2} {tail}"
        has_place, has_object = "{PLACE}" in TEMPLATES[t], "{OBJECT}" in TEMPLATES[t]
        words = {
            "names": (a, b, c, a2, b2, c2) if corruption == "ABC" else (a, b, a2, b2, c2),
            "templates": (TEMPLATES[t],),
            "places": (place,) if has_place else (), "objects": (obj,) if has_object else (),
        }
        rows.append((t, o, a, b, clean, corrupted, abc, words))
    return rows


def ioi_dataset(
    model: Model,
    n: int = 50,
    *,
    seed: int = 0,
    templates: Sequence[int] | None = None,
    order: Literal["mixed", "ABBA", "BABA"] = "mixed",
    corruption: Literal["ABC", "flip"] = "ABC",
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
) -> IOIDataset:
    """Generate ``n`` seeded IOI prompts for ``model``'s tokenizer.

    Args:
        n: number of prompts (cycled over the chosen templates).
        templates: indices into :data:`TEMPLATES` (default: all 16). One template gives prompts of
            one length, so positions align across the batch (needed for patching by position).
        order: "ABBA", "BABA" or "mixed" (alternating).
        corruption: "ABC" replaces S2 by a third name (the usual patching baseline); "flip" swaps
            the two names throughout.
        names, places, objects: restrict the pools the prompts draw from (default: :data:`NAMES`,
            :data:`PLACES`, :data:`OBJECTS`); only single-token words are kept. The defaults draw
            exactly as before these options existed.
    """
    chosen = _check_options(n, templates, order, corruption)
    rows = _prompt_rows(model, n, chosen, seed, order, corruption, (names, places, objects))

    prompts = [r[4] for r in rows]
    lengths = {len(tokenizer_of(model).encode(p, add_special_tokens=False)) for p in prompts}
    padding: Literal["error", "right"] = "right" if len(lengths) > 1 else "error"
    clean_tokens = to_tokens(model, prompts, padding=padding)
    corrupted_tokens = to_tokens(model, [r[5] for r in rows], padding=padding)
    abc_tokens = to_tokens(model, [r[6] for r in rows], padding=padding)
    if clean_tokens.shape != corrupted_tokens.shape or clean_tokens.shape != abc_tokens.shape:
        raise RuntimeError("Clean and corrupted prompts tokenized to different lengths.")

    tok = tokenizer_of(model)
    io_ids = torch.tensor([tok.encode(" " + r[2], add_special_tokens=False)[0] for r in rows])
    s_ids = torch.tensor([tok.encode(" " + r[3], add_special_tokens=False)[0] for r in rows])
    found = [_positions(clean_tokens[i], int(io_ids[i]), int(s_ids[i])) for i in range(n)]
    pos = {k: torch.tensor([f[k] for f in found]) for k in ("IO", "S1", "S1+1", "S2")}
    pos["END"] = torch.tensor(
        [len(tok.encode(p, add_special_tokens=False)) for p in prompts]
    )  # +1 for BOS, -1 for the last index
    return IOIDataset(
        prompts=prompts, corrupted_prompts=[r[5] for r in rows], abc_prompts=[r[6] for r in rows],
        clean_tokens=clean_tokens, corrupted_tokens=corrupted_tokens, abc_tokens=abc_tokens,
        io_ids=io_ids, s_ids=s_ids, pos=pos, template_ids=torch.tensor([r[0] for r in rows]),
        order=[r[1] for r in rows], corruption=corruption, names=[(r[2], r[3]) for r in rows],
        words=[r[7] for r in rows],
    )


def ioi_split(
    model: Model,
    n_select: int,
    n_eval: int,
    *,
    seed: int = 0,
    templates: Sequence[int] | None = None,
    order: Literal["mixed", "ABBA", "BABA"] = "mixed",
    corruption: Literal["ABC", "flip"] = "ABC",
    fraction: float = 0.5,
) -> tuple[IOIDataset, IOIDataset]:
    """A selection set and an evaluation set of IOI prompts that share no name, template, place or
    object, by construction.

    The model's single-token names, the places, the objects and the templates (those given,
    default all) are each split into disjoint selection/evaluation parts with
    :func:`workbench.core.subsets.split_pools` (``fraction`` to selection, seeded by ``seed``);
    ``n_select`` prompts are then built from the selection parts and ``n_eval`` from the
    evaluation parts (seeds ``seed`` and ``seed + 1``). Each half's ``.factors`` lists the values
    it uses. A half whose templates differ in token length is right-padded, as in
    :func:`ioi_dataset`.
    """
    if n_select < 1 or n_eval < 1:
        raise ValueError(f"n_select and n_eval must be at least 1, got {n_select} and {n_eval}.")
    chosen = _check_options(n_select, templates, order, corruption)
    pools: dict[str, Sequence[Any]] = {
        "names": single_token_words(model, NAMES), "templates": chosen,
        "places": single_token_words(model, PLACES), "objects": single_token_words(model, OBJECTS),
    }
    sel, ev = split_pools(pools, fraction=fraction, seed=seed)
    halves = []
    for part, n, s in ((sel, n_select, seed), (ev, n_eval, seed + 1)):
        halves.append(ioi_dataset(
            model, n, seed=s, templates=part["templates"], order=order, corruption=corruption,
            names=part["names"], places=part["places"], objects=part["objects"],
        ))
    return halves[0], halves[1]
