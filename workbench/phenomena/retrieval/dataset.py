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

__all__ = ["FILLER_PATH", "Needle", "Haystack", "load_filler", "needle_haystacks"]

#: The filler prose shipped with the repository.
FILLER_PATH = data_path("haystack", "filler.txt")


@dataclass(frozen=True)
class Needle:
    """The needle sentence, the question, and the answer; ``{code}`` is replaced by a seeded code.

    ``sentence`` is inserted into the filler (keep its leading space: filler sentences end with
    ``.`` and the next one starts with a space). ``answer`` must appear, token for token, inside
    the tokens of ``sentence``: that is what a retrieval head copies from.
    """

    sentence: str = " The secret code is {code}."
    question: str = "\n\nWhat is the secret code? The secret code is"
    answer: str = " {code}"
    code_digits: int = 4

    def __post_init__(self) -> None:
        for name in ("sentence", "answer"):
            if "{code}" not in getattr(self, name):
                raise ValueError(f"Needle.{name} must contain '{{code}}', got {getattr(self, name)!r}.")
        if not 1 <= self.code_digits <= 9:
            raise ValueError(f"Needle.code_digits must be 1..9, got {self.code_digits}.")

    def code(self, rng: random.Random) -> str:
        """A random code with no leading zero, e.g. ``"4821"``."""
        lo = 10 ** (self.code_digits - 1)
        return str(rng.randrange(lo, 10 * lo))


@dataclass
class Haystack:
    """One needle-in-a-haystack prompt.

    Attributes:
        tokens: the prompt, ``[1, pos]`` with ``pos == context_length``; BOS first, question last.
        needle_span: ``(start, end)``, token positions of the needle sentence (end exclusive).
        answer_span: ``(start, end)``, positions of the answer's tokens inside the needle.
        answer_ids: the tokens the model should produce after the prompt, ``[n_answer]``.
        context_length: number of prompt tokens (``tokens.shape[1]``).
        depth: the requested depth, a fraction of the filler before the needle.
        needle_depth: the depth actually used (after snapping to a sentence boundary).
        answer: the answer text, e.g. ``" 4821"``.
        seed: the seed the haystack was built from (for the record).
    """

    tokens: Int[Tensor, "batch pos"]
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]
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


def load_filler(path: str | Path | None = None) -> str:
    """The filler prose as one line of sentences separated by single spaces (no paragraph breaks)."""
    text = Path(path or FILLER_PATH).read_text(encoding="utf-8")
    return " ".join(text.split())


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
    needle: Needle = Needle(),
    snap: int = 24,
    filler: str | Path | None = None,
) -> list[Haystack]:
    """Seeded needle-in-a-haystack prompts, ``len(context_lengths) * len(depths) * n_per`` of them.

    Args:
        model: a model with a tokenizer (``model.tokenizer``); only the tokenizer is used.
        context_lengths: total prompt length in tokens (BOS + filler + needle + question), exact.
        depths: where the needle goes, as a fraction of the filler tokens (0 = first, 1 = last).
        n_per: haystacks per (length, depth) pair, each with its own filler offset and code.
        seed: base seed.
        needle: needle sentence, question and answer templates.
        snap: move the needle to the nearest sentence boundary at most this many tokens away
            (0: exactly at ``round(depth * n_filler)``, even mid-sentence).
        filler: a path to other filler text (default: ``data/haystack/filler.txt``).

    Returns:
        list of :class:`Haystack`, ordered by length, then depth, then repeat.
    """
    if not isinstance(needle, Needle):
        raise TypeError(f"needle must be a workbench.phenomena.retrieval.dataset.Needle, got {type(needle).__name__}.")
    if n_per < 1:
        raise ValueError(f"n_per must be at least 1, got {n_per}.")
    if snap < 0:
        raise ValueError(f"snap must be >= 0 tokens, got {snap}.")
    for d in depths:
        if not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"depths must lie in [0, 1], got {d}.")
    text = load_filler(filler)
    filler_ids = to_tokens(model, " " + text, prepend_bos=False)[0].tolist()
    decoded = [decode_token(model, i) for i in filler_ids]
    starts = [0, *_sentence_starts(filler_ids, decoded)]
    bos = to_tokens(model, "")[0].tolist()  # exactly [BOS]

    out = []
    for length in context_lengths:
        for depth in depths:
            for i in range(n_per):
                rng = random.Random(f"{seed}-{int(length)}-{float(depth)}-{i}")
                out.append(
                    _one_haystack(
                        model, int(length), float(depth), rng, needle, snap, bos,
                        filler_ids, decoded, starts, seed,
                    )
                )
    return out


def _one_haystack(model: Model, length, depth, rng, needle, snap, bos, filler_ids, decoded, starts, seed):
    code = needle.code(rng)
    needle_ids = to_tokens(model, needle.sentence.format(code=code), prepend_bos=False)[0].tolist()
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
    if a is None:
        raise ValueError(
            f"The answer {answer!r} does not tokenize to a contiguous piece of the needle "
            f"{needle.sentence.format(code=code)!r} for this tokenizer; change the templates."
        )
    return Haystack(
        tokens=torch.tensor([ids]),
        needle_span=(start, start + len(needle_ids)),
        answer_span=(start + a, start + a + len(answer_ids)),
        answer_ids=torch.tensor(answer_ids),
        context_length=length,
        depth=depth,
        needle_depth=cut / n_filler,
        answer=answer,
        seed=seed,
        meta=dict(code=code, filler_offset=offset, n_filler=n_filler),
    )


def _find(haystack: list[int], piece: list[int]) -> int | None:
    for i in range(len(haystack) - len(piece) + 1):
        if haystack[i : i + len(piece)] == piece:
            return i
    return None
