"""Needle-in-a-haystack prompts for retrieval heads.

A haystack is neutral filler prose (``data/haystack/filler.txt``, written for this repository; see
``data/haystack/README.md``) with one *needle* sentence inserted at a chosen depth, followed by a
question whose answer is in the needle::

    [BOS] filler ... The secret code is 4821. ... filler <question> What is the secret code?
    The secret code is

and the answer the model should produce next is ``" 4821"`` (for both offline tokenizers: the
tokens ``' '``, ``'4'``, ``'8'``, ``'2'``, ``'1'``).

The prompt is assembled from token ids, not from one string: the filler is tokenized once, cut to
exactly the number of tokens needed, and the needle and question ids are spliced in. So
``haystack.tokens.shape[1] == context_length`` exactly, for every tokenizer, with nothing cut
silently. The needle goes in at a sentence boundary of the filler close to the requested depth
(``snap`` tokens at most; ``snap=0`` puts it at exactly ``round(depth * n_filler)``).

Everything is seeded: the filler's starting sentence and the code of each haystack come from
``random.Random(f"{seed}-{context_length}-{depth}-{i}")``, which is stable across runs and
Python processes.

Example (needs a model with a tokenizer; the tiny model has none)::

    >>> from workbench.models import load_model
    >>> from workbench.phenomena import needle_haystacks
    >>> model = load_model("smollm2-135m", verbose=False)
    >>> hs = needle_haystacks(model, context_lengths=(300,), depths=(0.5,), n_per=1)
    >>> hs[0].tokens.shape, hs[0].answer   # doctest: +SKIP
    (torch.Size([1, 300]), ' 4821')
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.core.resources import data_path
from workbench.core.types import Model
from workbench.models import to_tokens
from workbench.models.tokens import decode_token

__all__ = ["FILLER_PATH", "Needle", "Haystack", "filler_paragraphs", "load_filler", "needle_haystacks"]

#: The filler prose shipped with the repository.
FILLER_PATH = data_path("haystack", "filler.txt")


@dataclass(frozen=True)
class Needle:
    """The needle sentence, the question, and the answer; ``{code}`` is replaced by a seeded code.

    ``sentence`` is inserted into the filler (keep its leading space: filler sentences end with
    ``.`` and the next one starts with a space). In the sentence the code's digits are joined by
    ``separator``; in the answer they are written together. With no separator (the default) the
    answer must appear, token for token, inside the tokens of ``sentence``: that is what a
    retrieval head copies from, and every step after the first can also be done by an induction
    step (the token before each digit in the answer precedes it in the needle too). With a
    separator (``"-"``: the needle says ``4-8-2-1``, the answer is `` 4821``) the answer is not
    in the needle as such, and :meth:`Haystack.copy_steps` marks the answer steps that no
    induction step can do.
    """

    sentence: str = " The secret code is {code}."
    question: str = "\n\nWhat is the secret code? The secret code is"
    answer: str = " {code}"
    code_digits: int = 4
    separator: str = ""

    def __post_init__(self) -> None:
        for name in ("sentence", "answer"):
            if "{code}" not in getattr(self, name):
                raise ValueError(f"Needle.{name} must contain '{{code}}', got {getattr(self, name)!r}.")
        if not 1 <= self.code_digits <= 9:
            raise ValueError(f"Needle.code_digits must be 1..9, got {self.code_digits}.")
        if any(c.isdigit() for c in self.separator):
            raise ValueError(f"Needle.separator must not hold digits, got {self.separator!r}.")

    def code(self, rng: random.Random) -> str:
        """A random code with no leading zero, e.g. ``"4821"``."""
        lo = 10 ** (self.code_digits - 1)
        return str(rng.randrange(lo, 10 * lo))

    def written(self, code: str) -> str:
        """The needle sentence with ``code`` written in it (digits joined by ``separator``)."""
        return self.sentence.format(code=self.separator.join(code))

    @property
    def verbatim(self) -> bool:
        """Whether the answer is written in the needle token for token (no separator)."""
        return self.separator == ""


@dataclass
class Haystack:
    """One needle-in-a-haystack prompt.

    Attributes:
        tokens: the prompt, ``[1, pos]`` with ``pos == context_length``; BOS first, question last.
        needle_span: ``(start, end)``, token positions of the needle sentence (end exclusive).
        answer_span: ``(start, end)``, positions of the answer's tokens inside the needle, or
            ``None`` when the needle writes the code in another form (``Needle.separator``).
        answer_ids: the tokens the model should produce after the prompt, ``[n_answer]``.
        context_length: number of prompt tokens (``tokens.shape[1]``).
        depth: the requested depth, a fraction of the filler before the needle.
        needle_depth: the depth actually used (after snapping to a sentence boundary).
        answer: the answer text, e.g. ``" 4821"``.
        seed: the seed the haystack was built from (for the record).
    """

    tokens: Int[Tensor, "batch pos"]
    needle_span: tuple[int, int]
    answer_span: tuple[int, int] | None
    answer_ids: Int[Tensor, "target"]
    context_length: int = -1
    depth: float = float("nan")
    needle_depth: float = float("nan")
    answer: str = ""
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = torch.as_tensor(self.tokens, dtype=torch.long)
        self.answer_ids = torch.as_tensor(self.answer_ids, dtype=torch.long).reshape(-1)
        if self.tokens.ndim != 2 or self.tokens.shape[0] != 1:
            raise ValueError(
                f"Haystack.tokens must have shape [1, pos], got {tuple(self.tokens.shape)}; "
                "build one haystack per prompt."
            )
        n = self.tokens.shape[1]
        if self.context_length == -1:
            self.context_length = n
        if self.context_length != n:
            raise ValueError(f"context_length={self.context_length} but tokens have {n} positions.")
        if len(self.answer_ids) == 0:
            raise ValueError("Haystack.answer_ids is empty: the answer needs at least one token.")
        self.needle_span = _check_span(self.needle_span, n, "needle_span")
        if self.answer_span is None:
            return
        self.answer_span = _check_span(self.answer_span, n, "answer_span")
        s, e = self.answer_span
        if not (self.needle_span[0] <= s and e <= self.needle_span[1]):
            raise ValueError(f"answer_span {self.answer_span} is not inside needle_span {self.needle_span}.")
        if e - s != len(self.answer_ids) or not torch.equal(self.tokens[0, s:e], self.answer_ids):
            raise ValueError(
                f"The tokens at answer_span {self.answer_span} ({self.tokens[0, s:e].tolist()}) are not "
                f"answer_ids ({self.answer_ids.tolist()})."
            )

    @property
    def n_answer(self) -> int:
        return len(self.answer_ids)

    def copy_steps(self) -> Tensor:
        """Which answer steps only a copy from the needle explains, ``[n_answer]`` bool.

        Step ``j`` writes answer token ``a_j`` from the query holding the token before it
        (``q_j``). It counts if ``a_j`` occurs inside the needle and no needle position holding
        ``a_j`` follows a ``q_j``: an induction head (attend to the token after an earlier copy of
        the current token) can then not reach ``a_j`` in the needle. Where ``meta["code_steps"]``
        says which answer tokens write the code's digits (:func:`needle_haystacks` records it),
        only those count: copying a bare space is not retrieving a code. With a verbatim needle
        every step but the first fails this; with a needle that writes ``4-8-2-1`` for the answer
        `` 4821`` (SmolLM2: ``' ', '4', '8', '2', '1'``), the digits after the first count.

        >>> h = Haystack(tokens=torch.tensor([[1, 7, 4, 9, 5, 2, 3]]), needle_span=(1, 6), answer_span=None,
        ...              answer_ids=torch.tensor([4, 5, 6]))
        >>> h.copy_steps().tolist()   # 4 follows 7 in the needle, not 3; 5 follows 9, not 4; 6 is absent
        [True, True, False]
        """
        full = self.full_tokens[0]
        n, (start, end) = self.context_length, self.needle_span
        steps = []
        for j, a in enumerate(self.answer_ids.tolist()):
            query = int(full[n - 1 + j])
            at = [p for p in range(start, end) if int(full[p]) == a]
            steps.append(bool(at) and not any(p > 0 and int(full[p - 1]) == query for p in at))
        code = self.meta.get("code_steps", [True] * len(steps))
        return torch.tensor(steps, dtype=torch.bool) & torch.tensor(code, dtype=torch.bool)

    @property
    def full_tokens(self) -> Int[Tensor, "batch pos"]:
        """Prompt followed by the answer, ``[1, context_length + n_answer]`` (for teacher forcing)."""
        return torch.cat([self.tokens, self.answer_ids[None]], dim=1)

    def __repr__(self) -> str:
        return (
            f"Haystack(context_length={self.context_length}, depth={self.depth}, "
            f"needle_span={self.needle_span}, answer={self.answer!r})"
        )


def _check_span(span, n: int, name: str) -> tuple[int, int]:
    try:
        start, end = (int(x) for x in span)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (start, end) of ints, got {span!r}.") from None
    if not 0 <= start < end <= n:
        raise ValueError(f"{name}={span} is not a non-empty span inside 0..{n}.")
    return start, end


def filler_paragraphs(path: str | Path | None = None) -> list[str]:
    """The filler's paragraphs (separated by blank lines), each as one line; the filler factor of a
    split (:mod:`workbench.phenomena.retrieval.experiment`) is their index."""
    text = Path(path or FILLER_PATH).read_text(encoding="utf-8")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def load_filler(path: str | Path | None = None, paragraphs: Sequence[int] | None = None) -> str:
    """The filler prose as one line of sentences separated by single spaces (no paragraph breaks);
    ``paragraphs``: only these paragraphs (indices into :func:`filler_paragraphs`), in this order."""
    every = filler_paragraphs(path)
    if paragraphs is None:
        return " ".join(every)
    bad = [i for i in paragraphs if not 0 <= int(i) < len(every)]
    if bad or not list(paragraphs):
        raise ValueError(f"paragraphs must be a non-empty list of indices in 0..{len(every) - 1}, got {list(paragraphs)}.")
    return " ".join(every[int(i)] for i in paragraphs)


def _sentence_starts(ids: list[int], decoded: list[str]) -> list[int]:
    """Indices i such that token i-1 ends a sentence (so a needle may go in before token i)."""
    return [i for i in range(1, len(ids)) if decoded[i - 1].rstrip().endswith((".", "!", "?"))]


def _nearest(candidates: list[int], target: int, window: int) -> int:
    best = min(candidates, key=lambda c: (abs(c - target), c), default=target)
    return best if abs(best - target) <= window else target


def needle_haystacks(
    model: Model,
    *,
    context_lengths: Sequence[int] = (300, 1000, 2000),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    n_per: int = 2,
    seed: int = 0,
    needle: Needle | Sequence[Needle] = Needle(),
    snap: int = 24,
    filler: str | Path | None = None,
    paragraphs: Sequence[int] | None = None,
) -> list[Haystack]:
    """Seeded needle-in-a-haystack prompts, ``len(context_lengths) * len(depths) * n_per`` of them.

    Args:
        model: a model with a tokenizer (``model.tokenizer``); only the tokenizer is used.
        context_lengths: total prompt length in tokens (BOS + filler + needle + question), exact.
        depths: where the needle goes, as a fraction of the filler tokens (0 = first, 1 = last).
        n_per: haystacks per (length, depth) pair, each with its own filler offset and code.
        seed: base seed.
        needle: needle sentence, question and answer templates; a sequence of them: haystack
            ``i`` (in the order returned) uses ``needle[i % len(needle)]`` (its index is
            ``meta["needle"]``).
        snap: move the needle to the nearest sentence boundary at most this many tokens away
            (0: exactly at ``round(depth * n_filler)``, even mid-sentence).
        filler: a path to other filler text (default: ``data/haystack/filler.txt``).
        paragraphs: use only these paragraphs of the filler (a disjoint split gives each half its own).

    Returns:
        list of :class:`Haystack`, ordered by length, then depth, then repeat.
    """
    needles = [needle] if isinstance(needle, Needle) else list(needle) if isinstance(needle, (list, tuple)) else [needle]
    if not needles or not all(isinstance(n, Needle) for n in needles):
        raise TypeError(f"needle must be a workbench.phenomena.retrieval.dataset.Needle or a list of them, "
                        f"got {type(needle).__name__}.")
    if n_per < 1:
        raise ValueError(f"n_per must be at least 1, got {n_per}.")
    if snap < 0:
        raise ValueError(f"snap must be >= 0 tokens, got {snap}.")
    for d in depths:
        if not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"depths must lie in [0, 1], got {d}.")
    text = load_filler(filler, paragraphs)
    filler_ids = to_tokens(model, " " + text, prepend_bos=False)[0].tolist()
    decoded = [decode_token(model, i) for i in filler_ids]
    starts = [0, *_sentence_starts(filler_ids, decoded)]
    bos = to_tokens(model, "")[0].tolist()  # exactly [BOS]

    out: list[Haystack] = []
    for length in context_lengths:
        for depth in depths:
            for i in range(n_per):
                rng = random.Random(f"{seed}-{int(length)}-{float(depth)}-{i}")
                which = len(out) % len(needles)
                h = _one_haystack(model, int(length), float(depth), rng, needles[which], snap, bos,
                                  filler_ids, decoded, starts, seed)
                h.meta["needle"] = which
                out.append(h)
    return out


def _one_haystack(model: Model, length, depth, rng, needle, snap, bos, filler_ids, decoded, starts, seed):
    code = needle.code(rng)
    needle_ids = to_tokens(model, needle.written(code), prepend_bos=False)[0].tolist()
    question_ids = to_tokens(model, needle.question.format(code=code), prepend_bos=False)[0].tolist()
    answer = needle.answer.format(code=code)
    answer_ids = to_tokens(model, answer, prepend_bos=False)[0].tolist()
    n_filler = length - len(bos) - len(needle_ids) - len(question_ids)
    if n_filler < 1:
        raise ValueError(
            f"context_length={length} is too short: BOS, needle and question alone take "
            f"{length - n_filler} tokens. Ask for at least {length - n_filler + 1}."
        )
    if n_filler > len(filler_ids):
        warnings.warn(
            f"context_length={length} needs {n_filler} filler tokens but the filler has only "
            f"{len(filler_ids)}: it repeats, which induction heads can exploit. Pass a longer filler.", stacklevel=2
        )
    # Filler: start at a seeded sentence, read on cyclically until n_filler tokens are taken.
    offset = rng.choice(starts)
    reps = (offset + n_filler) // len(filler_ids) + 1
    stream = (filler_ids * (reps + 1))[offset : offset + n_filler]
    stream_text = (decoded * (reps + 1))[offset : offset + n_filler]
    target = round(depth * n_filler)
    candidates = [0, *_sentence_starts(stream, stream_text), n_filler] if snap else []
    cut = _nearest(candidates, target, snap)
    ids = bos + stream[:cut] + needle_ids + stream[cut:] + question_ids
    start = len(bos) + cut
    a = _find(needle_ids, answer_ids)
    if a is None and needle.verbatim:
        raise ValueError(
            f"The answer {answer!r} does not tokenize to a contiguous piece of the needle "
            f"{needle.written(code)!r} for this tokenizer; change the templates."
        )
    return Haystack(
        tokens=torch.tensor([ids]),
        needle_span=(start, start + len(needle_ids)),
        answer_span=None if a is None else (start + a, start + a + len(answer_ids)),
        answer_ids=torch.tensor(answer_ids),
        context_length=length,
        depth=depth,
        needle_depth=cut / n_filler,
        answer=answer,
        seed=seed,
        meta=dict(code=code, filler_offset=offset, n_filler=n_filler,
                  code_steps=[any(c.isdigit() for c in decode_token(model, t)) for t in answer_ids]),
    )


def _find(haystack: list[int], piece: list[int]) -> int | None:
    for i in range(len(haystack) - len(piece) + 1):
        if haystack[i : i + len(piece)] == piece:
            return i
    return None
