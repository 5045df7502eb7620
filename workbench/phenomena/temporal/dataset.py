"""Time-specific and time-invariant facts, for temporal heads (Park et al. 2025).

"In 1995, the president of the United States was" -> " Bill". The facts are a curated table in
``data/temporal/facts.json`` (sources in ``data/temporal/README.md``): *temporal* relations whose
object depends on the year (US presidents, UK prime ministers, German chancellors, French and
Russian presidents, popes, UN secretaries-general, World Cup winners, Summer Olympics hosts,
Wimbledon men's champions, Super Bowl winners) and *invariant* relations that do not (capitals,
languages, colours, animal classes). Invariant prompts carry a year too, so both kinds share one
template shape and the year is a pure distractor for them: the control.

Answers are compared by their FIRST token (names are several tokens): ``answer_ids`` is the first
token of ``" " + object`` after the prompt, read from the tokenization of the prompt and answer
together. The counterfactual answer of a temporal fact is the same subject's object at ANOTHER
year (1995 -> " Bill", 2005 -> " George"), chosen so that the first tokens differ and the other
year tokenizes to the same number of tokens; ``corrupted_tokens`` is the prompt with that year.
For invariant facts ``corrupted_tokens`` changes the year but the answer stays the same, and the
counterfactual answer is another subject's object in the same relation (" Paris" vs " Rome").

Both offline tokenizers split a year into single digits (" 1995" is ``' ', '1', '9', '9', '5'``),
so every 4-digit year has the same token length and clean and corrupted prompts align token by
token. Relations have different templates, so a batch of several relations is right-padded and
``pos["END"]`` gives each prompt's last position (as in ``IOIDataset``); pass ``relations=[...]``
with one relation, or use :meth:`TemporalFacts.by_length`, for batches of one length.

``time_format="alias"`` writes the time as an event instead of a year ("In the year the Berlin
Wall fell, ..." = 1989) for the subset of facts whose year has an alias.

Example (needs a model with a tokenizer; the tiny model has none)::

    >>> from workbench.models import load_model
    >>> from workbench.phenomena import temporal_facts, keep_correct
    >>> model = load_model("smollm2-135m", verbose=False)
    >>> ds = temporal_facts(model, kind="temporal", seed=0)
    >>> ds.prompts[0], ds.answers[0], ds.counterfactual_answers[0]    # doctest: +SKIP
    >>> kept = keep_correct(model, ds)  # doctest: +ELLIPSIS
    keep_correct (logit_diff): kept ... of 273 (...%)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.metrics import LogitDiff
from workbench.core.resources import data_path
from workbench.core.subsets import split_pools
from workbench.core.types import Model
from workbench.models import to_tokens
from workbench.phenomena.answers import encode_text, first_answer_token, token_span

__all__ = [
    "FACTS_PATH",
    "Fact",
    "TemporalFacts",
    "load_facts",
    "facts_frame",
    "temporal_facts",
    "temporal_relations",
    "split_relations",
]

#: The curated facts shipped with the repository.
FACTS_PATH = data_path("temporal", "facts.json")

#: Years an invariant prompt can carry (the range the temporal facts mostly cover).
INVARIANT_YEARS = tuple(range(1950, 2024))

Kind = Literal["temporal", "invariant"]


@dataclass(frozen=True)
class Fact:
    """One row of the table: ``template`` has ``{time}`` and ``{subject}`` slots.

    ``year`` is None for invariant facts (any year holds).
    """

    relation: str
    kind: str
    subject: str
    year: int | None
    object: str
    template: str


@lru_cache(maxsize=4)
def _read(path: str) -> tuple[tuple[Fact, ...], tuple[tuple[str, int, tuple[str, ...]], ...]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    facts = []
    for rel in data["relations"]:
        for subject, year, obj in rel["facts"]:
            facts.append(Fact(rel["name"], rel["kind"], subject, year, obj, rel["template"]))
    aliases = tuple((a["text"], a["year"], tuple(a.get("avoid", ()))) for a in data["aliases"])
    return tuple(facts), aliases


def load_facts(path: str | Path = FACTS_PATH) -> tuple[list[Fact], list[tuple[str, int, tuple]]]:
    """All facts, and the time aliases as ``(text, year, relations_to_avoid)``."""
    facts, aliases = _read(str(path))
    return list(facts), list(aliases)


def facts_frame(path: str | Path = FACTS_PATH) -> pd.DataFrame:
    """The fact table as a DataFrame (relation, kind, subject, year, object, template)."""
    facts, _ = load_facts(path)
    return pd.DataFrame([f.__dict__ for f in facts])


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass
class TemporalFacts:
    """A batch of fact prompts with their year-corrupted counterparts.

    Attributes (n prompts, seq tokens; right-padded when relations differ in length):
        prompts, corrupted_prompts: the texts.
        clean_tokens, corrupted_tokens: LongTensor [batch, pos], same shape.
        answer_ids: LongTensor [batch], first token of the object after the prompt.
        counterfactual_ids: LongTensor [batch], first token of the counterfactual object (another
            year's object for temporal facts; another subject's object for invariant facts).
        years, corrupted_years: LongTensor [batch], the year written (or aliased) in each prompt.
        pos: {"TIME_START", "TIME", "END"} -> LongTensor [batch]: the first and last token of the
            time expression, and the last token of the prompt.
        relations, subjects, answers, counterfactual_answers: per prompt (answers are the full
            objects with their leading space, e.g. " Bill Clinton").
        kind, time_format: how the batch was made; meta: seed, drops, keep_correct report.
        candidate_ids: per prompt, a LongTensor of the first tokens of every object the relation
            has for that subject (temporal: all its years; invariant: all subjects), answer
            included: the candidates of ``keep_correct(..., criterion="candidates")``.
    """

    prompts: list[str]
    corrupted_prompts: list[str]
    clean_tokens: Tensor
    corrupted_tokens: Tensor
    answer_ids: Tensor
    counterfactual_ids: Tensor
    years: Tensor
    corrupted_years: Tensor
    pos: dict[str, Tensor]
    relations: list[str]
    subjects: list[str]
    answers: list[str]
    counterfactual_answers: list[str]
    kind: str
    time_format: str
    meta: dict = field(default_factory=dict)
    candidate_ids: list[Tensor] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.prompts)

    def logit_diff(self, *, per_prompt: bool = False) -> LogitDiff:
        """``logit[answer] - logit[counterfactual]`` at each prompt's END, averaged."""
        return LogitDiff(self.answer_ids, self.counterfactual_ids, pos=self.pos["END"],
                         per_prompt=per_prompt)

    def subset(self, index: Sequence[int] | Tensor) -> "TemporalFacts":
        """The prompts at ``index``, all fields kept consistent (padding is trimmed)."""
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        pick = idx.tolist()
        width = int(self.pos["END"][idx].max()) + 1 if pick else 0
        return TemporalFacts(
            prompts=[self.prompts[i] for i in pick],
            corrupted_prompts=[self.corrupted_prompts[i] for i in pick],
            clean_tokens=self.clean_tokens[idx, :width],
            corrupted_tokens=self.corrupted_tokens[idx, :width],
            answer_ids=self.answer_ids[idx],
            counterfactual_ids=self.counterfactual_ids[idx],
            years=self.years[idx],
            corrupted_years=self.corrupted_years[idx],
            pos={k: v[idx] for k, v in self.pos.items()},
            relations=[self.relations[i] for i in pick],
            subjects=[self.subjects[i] for i in pick],
            answers=[self.answers[i] for i in pick],
            counterfactual_answers=[self.counterfactual_answers[i] for i in pick],
            kind=self.kind,
            time_format=self.time_format,
            meta=dict(self.meta),
            candidate_ids=[self.candidate_ids[i] for i in pick] if self.candidate_ids else [],
        )

    @property
    def factors(self) -> dict[str, set[str]]:
        """The values of each factor the prompts are built from: ``{"relation": ..., "subject": ...}``."""
        return {"relation": set(self.relations), "subject": set(self.subjects)}

    def by_length(self) -> dict[int, "TemporalFacts"]:
        """Sub-batches of one token length each (no padding): ``{n_tokens: subset}``."""
        lengths = self.pos["END"] + 1
        return {int(n): self.subset((lengths == n).nonzero().flatten())
                for n in lengths.unique()}

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: texts, years, answers and their first-token ids."""
        return pd.DataFrame(
            dict(
                relation=self.relations,
                prompt=self.prompts,
                year=self.years.tolist(),
                answer=self.answers,
                answer_id=self.answer_ids.tolist(),
                corrupted_prompt=self.corrupted_prompts,
                corrupted_year=self.corrupted_years.tolist(),
                counterfactual=self.counterfactual_answers,
                counterfactual_id=self.counterfactual_ids.tolist(),
            )
        )


def _fill(fact: Fact, time_text: str) -> str:
    return fact.template.format(time=time_text, subject=fact.subject)


def _time_span(fact: Fact, time_text: str) -> tuple[int, int]:
    prefix = fact.template.split("{time}")[0].format(subject=fact.subject)
    return len(prefix), len(prefix) + len(time_text)


@dataclass
class _Row:
    fact: Fact
    time: str
    year: int
    other_time: str
    other_year: int
    answer: str
    counterfactual: str
    answer_id: int
    counterfactual_id: int


def temporal_facts(
    model: Model,
    *,
    kind: Kind = "temporal",
    relations: Sequence[str] | None = None,
    time_format: Literal["year", "alias"] = "year",
    n: int | None = None,
    seed: int = 0,
    path: str | Path = FACTS_PATH,
) -> TemporalFacts:
    """Fact prompts for ``model``'s tokenizer, with first-token answers and counterfactuals.

    Args:
        kind: "temporal" (the object depends on the year) or "invariant" (the control).
        relations: names of relations to use (default: every relation of ``kind``); see
            :func:`facts_frame`. One relation gives prompts of one token length.
        time_format: "year" ("In 1995, ...") or "alias" ("In the year the Berlin Wall fell,
            ..."; only the facts whose year has an alias that does not give the answer away).
        n: keep a seeded random sample of this many prompts (default: all).
        seed: the choice of counterfactual years and objects, invariant years, and the sample.

    Facts with no usable counterfactual (no other year of the same token length whose object
    starts with another token) are dropped; ``meta["dropped"]`` counts them.
    """
    if kind not in ("temporal", "invariant"):
        raise ValueError(f"kind must be 'temporal' or 'invariant', got {kind!r}.")
    if time_format not in ("year", "alias"):
        raise ValueError(f"time_format must be 'year' or 'alias', got {time_format!r}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("temporal_facts needs a model with a tokenizer (the tiny model has none).")
    facts, aliases = load_facts(path)
    known = sorted({f.relation for f in facts if f.kind == kind})
    chosen = known if relations is None else list(relations)
    unknown = [r for r in chosen if r not in known]
    if unknown or not chosen:
        raise ValueError(f"Unknown {kind} relation(s) {unknown or chosen}; choose from {known}.")
    facts = [f for f in facts if f.kind == kind and f.relation in chosen]

    rng = random.Random(f"temporal-{kind}-{time_format}-{seed}")
    builder = _temporal_rows if kind == "temporal" else _invariant_rows
    rows, dropped = builder(model, facts, aliases, time_format, rng)
    if not rows:
        raise ValueError(
            f"No usable {kind} facts for relations {chosen} with time_format={time_format!r} "
            f"({dropped} dropped for lack of a same-length counterfactual)."
        )
    if n is not None:
        if not 1 <= n <= len(rows):
            raise ValueError(f"n must be between 1 and {len(rows)} (the usable facts), got {n}.")
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]
    return _assemble(model, rows, kind, time_format,
                     meta=dict(seed=seed, dropped=dropped, relations=chosen, path=str(path)))


def temporal_relations(path: str | Path = FACTS_PATH) -> list[str]:
    """The names of the temporal relations of the fact table, sorted."""
    facts, _ = load_facts(path)
    return sorted({f.relation for f in facts if f.kind == "temporal"})


def split_relations(*, fraction: float = 0.5, seed: int = 0,
                    path: str | Path = FACTS_PATH) -> tuple[list[str], list[str]]:
    """The temporal relations split into a selection part and an evaluation part
    (:func:`workbench.core.subsets.split_pools`, seeded). Every temporal relation has one subject
    (checked), so prompts built from the two parts share neither a relation nor a subject.

    >>> select, evaluate = split_relations(seed=0)
    >>> set(select) & set(evaluate), len(select) + len(evaluate) == len(temporal_relations())
    (set(), True)
    """
    facts, _ = load_facts(path)
    subjects: dict[str, set[str]] = {}
    for f in facts:
        if f.kind == "temporal":
            subjects.setdefault(f.relation, set()).add(f.subject)
    several = sorted(r for r, s in subjects.items() if len(s) > 1)
    if several:
        raise ValueError(f"Temporal relations {several} have several subjects; split by subject instead.")
    select, evaluate = split_pools({"relation": sorted(subjects)}, fraction=fraction, seed=seed)
    return sorted(select["relation"]), sorted(evaluate["relation"])


def _answer(model: Model, fact: Fact, time_text: str) -> tuple[str, int]:
    answer = " " + fact.object
    _, first = first_answer_token(model, _fill(fact, time_text), answer)
    return answer, first


def _times(fact: Fact, aliases, time_format: str, year: int | None = None) -> list[tuple[str, int]]:
    """The time expressions for ``fact``: its year as digits, or the aliases of its year."""
    if time_format == "year":
        y = fact.year if year is None else year
        if y is None:
            raise ValueError(f"{fact.relation} fact about {fact.subject!r} has no year to write.")
        return [(str(y), y)]
    return [(text, y) for text, y, avoid in aliases
            if (year is None or y == year) and fact.relation not in avoid]


def _temporal_rows(model: Model, facts, aliases, time_format, rng):
    n_tokens = {}

    def length(fact, time_text):
        key = (fact.relation, fact.subject, time_text)
        if key not in n_tokens:
            n_tokens[key] = len(encode_text(model, _fill(fact, time_text)))
        return n_tokens[key]

    # Every (fact, time expression) pair, with its first answer token.
    items = []
    for f in facts:
        for time_text, year in _times(f, aliases, time_format, f.year):
            answer, first = _answer(model, f, time_text)
            items.append((f, time_text, year, answer, first))
    rows, dropped = [], 0
    for f, time_text, year, answer, first in items:
        options = [
            it for it in items
            if it[0].relation == f.relation and it[0].subject == f.subject and it[2] != year
            and it[4] != first and length(it[0], it[1]) == length(f, time_text)
        ]
        if not options:
            dropped += 1
            continue
        g, other_time, other_year, cf_answer, cf_first = rng.choice(options)
        rows.append(_Row(f, time_text, year, other_time, other_year, answer, cf_answer,
                         first, cf_first))
    return rows, dropped


def _invariant_rows(model: Model, facts, aliases, time_format, rng):
    if time_format == "year":
        pool = [(str(y), y) for y in INVARIANT_YEARS]
    else:
        pool = [(text, y) for text, y, _ in aliases]
    rows, dropped = [], 0
    for f in facts:
        time_text, year = rng.choice(pool)
        answer, first = _answer(model, f, time_text)
        n_tok = len(encode_text(model, _fill(f, time_text)))
        others = [t for t in pool if t[1] != year
                  and len(encode_text(model, _fill(f, t[0]))) == n_tok]
        prompt = _fill(f, time_text)
        rivals = sorted({" " + g.object for g in facts
                         if g.relation == f.relation and g.object != f.object})
        rivals = [(a, first_answer_token(model, prompt, a)[1]) for a in rivals]
        rivals = [(a, i) for a, i in rivals if i != first]
        if not others or not rivals:
            dropped += 1
            continue
        other_time, other_year = rng.choice(others)
        cf_answer, cf_first = rng.choice(rivals)
        rows.append(_Row(f, time_text, year, other_time, other_year, answer, cf_answer,
                         first, cf_first))
    return rows, dropped


def _assemble(model: Model, rows: list[_Row], kind: str, time_format: str, meta: dict) -> TemporalFacts:
    prompts = [_fill(r.fact, r.time) for r in rows]
    corrupted = [_fill(r.fact, r.other_time) for r in rows]
    lengths = [len(encode_text(model, p)) for p in prompts]
    padding: Literal["error", "right"] = "right" if len(set(lengths)) > 1 else "error"
    clean_tokens = to_tokens(model, prompts, padding=padding)
    corrupted_tokens = to_tokens(model, corrupted, padding=padding)
    for p, c, n in zip(prompts, corrupted, lengths):
        if len(encode_text(model, c)) != n:
            raise RuntimeError(f"{p!r} and {c!r} tokenize to different lengths.")
    spans = []
    for r, p in zip(rows, prompts):
        start, end = _time_span(r.fact, r.time)
        spans.append(token_span(model, p, start, end))
    pos = {
        "TIME_START": torch.tensor([s[0] for s in spans]),
        "TIME": torch.tensor([s[1] for s in spans]),
        "END": torch.tensor(lengths),  # +1 for BOS, -1 for the last index
    }
    facts, _ = load_facts(meta.get("path", FACTS_PATH))
    candidates = []
    for r, p in zip(rows, prompts):
        objects = sorted({" " + f.object for f in facts if f.relation == r.fact.relation
                          and (kind == "invariant" or f.subject == r.fact.subject)})
        ids = {first_answer_token(model, p, o)[1] for o in objects}
        candidates.append(torch.tensor(sorted(ids)))
    return TemporalFacts(
        candidate_ids=candidates,
        prompts=prompts,
        corrupted_prompts=corrupted,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        answer_ids=torch.tensor([r.answer_id for r in rows]),
        counterfactual_ids=torch.tensor([r.counterfactual_id for r in rows]),
        years=torch.tensor([r.year for r in rows]),
        corrupted_years=torch.tensor([r.other_year for r in rows]),
        pos=pos,
        relations=[r.fact.relation for r in rows],
        subjects=[r.fact.subject for r in rows],
        answers=[r.answer for r in rows],
        counterfactual_answers=[r.counterfactual for r in rows],
        kind=kind,
        time_format=time_format,
        meta=meta,
    )


