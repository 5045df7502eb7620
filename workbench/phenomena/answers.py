"""What every text phenomenon shares: the first token of an answer, the token span of a piece of
text, and keeping the items a model answers correctly (temporal facts, arithmetic, the toy model).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from workbench.core.types import Model
from workbench.models import logits_at
from workbench.models.tokens import decode_token, tokenizer_of
from workbench.phenomena.registry import PhenomenonAbsent

__all__ = [
    "Criterion",
    "NothingCorrect",
    "answer_correct",
    "encode_text",
    "first_answer_token",
    "keep_correct",
    "kept",
    "token_span",
]

Criterion = Literal["logit_diff", "argmax", "candidates", "both"]


# --------------------------------------------------------------------------------------------
# Tokenization helpers (shared with the arithmetic generator)


def encode_text(model: Model, text: str) -> list[int]:
    return tokenizer_of(model).encode(text, add_special_tokens=False)


def first_answer_token(
    model: Model, prompt: str, answer: str, *, absorb_space: bool = False
) -> tuple[str, int]:
    """The first token of ``answer`` as it follows ``prompt``: ``(prompt, token_id)``.

    ``prompt + answer`` is tokenized as one text and must start with the tokens of ``prompt``
    (else the tokenizer merges the prompt's end into the answer, and the answer has no clean
    first token). If the first answer token is whitespace only (a tokenizer that writes " 8" as
    ``' ', '8'``), ``absorb_space=True`` moves that whitespace to the end of the returned prompt;
    otherwise it is an error. ``ValueError`` explains either failure.
    """
    if model.tokenizer is None:
        raise ValueError("The model has no tokenizer: text datasets need one.")
    p_ids = encode_text(model, prompt)
    full = encode_text(model, prompt + answer)
    if full[: len(p_ids)] != p_ids or len(full) == len(p_ids):
        raise ValueError(
            f"The tokenizer merges the end of {prompt!r} with the answer {answer!r}, so the "
            "answer has no first token of its own. Use another template or model."
        )
    first = full[len(p_ids)]
    text = decode_token(model, first)
    if text.strip() == "":
        if not absorb_space or answer == answer.lstrip():
            raise ValueError(
                f"The answer {answer!r} starts with a whitespace-only token {text!r} for this "
                "tokenizer, so its first token says nothing about the answer."
            )
        space = answer[: len(answer) - len(answer.lstrip())]
        return first_answer_token(model, prompt + space, answer[len(space):])
    if not answer.strip().startswith(text.strip()):
        raise ValueError(
            f"The first answer token {text!r} is not the start of {answer!r} for this tokenizer."
        )
    return prompt, first


def token_span(model: Model, text: str, start: int, end: int) -> tuple[int, int]:
    """Token positions (with BOS at 0) of the characters ``text[start:end]``: first and last."""
    full = encode_text(model, text)

    def count(prefix: str) -> int | None:
        ids = encode_text(model, prefix)
        return len(ids) if full[: len(ids)] == ids else None

    first = count(text[:start])
    if first is None:
        first = count(text[:start].rstrip())  # the space is part of the next token
    last = count(text[:end])
    if first is None or last is None or last <= first:
        raise ValueError(
            f"Cannot locate {text[start:end]!r} in the tokens of {text!r}: the tokenizer merges "
            "it with its neighbours."
        )
    return first + 1, last  # +1 for BOS; last = index of the final token (+1 BOS -1)



# --------------------------------------------------------------------------------------------
# Keeping what the model knows (works for every dataset with clean_tokens, answer_ids,
# counterfactual_ids, pos["END"] and subset(): temporal, arithmetic, toy)


@torch.no_grad()
def _judge(model: Model, ds, *, batch_size: int = 64, progress: bool = False) -> dict[str, Tensor]:
    """Every criterion at once: ``{"logit_diff", "argmax", "candidates", "both"} -> [batch]``
    booleans (``candidates`` only if ``ds`` has ``candidate_ids``), plus the per-prompt logit
    difference under ``"diff"``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    candidates = getattr(ds, "candidate_ids", None) or None
    out: dict[str, list[Tensor]] = {k: [] for k in ("logit_diff", "argmax", "candidates", "both", "diff")}
    starts = range(0, len(ds.answer_ids), batch_size)
    for s in tqdm(starts, disable=not progress, desc="checking answers"):
        sl = slice(s, s + batch_size)
        last = logits_at(model, ds.clean_tokens[sl], ds.pos["END"][sl])  # [batch, d_vocab]
        rows = torch.arange(last.shape[0])
        answers = ds.answer_ids[sl]
        ans = last[rows, answers]
        diff = ans - last[rows, ds.counterfactual_ids[sl]]
        top = last.argmax(-1) == answers
        out["diff"].append(diff)
        out["logit_diff"].append(diff > 0)
        out["argmax"].append(top)
        out["both"].append((diff > 0) & top)
        if candidates is not None:
            for j, i in enumerate(range(s, s + len(rows))):
                others = candidates[i][candidates[i] != answers[j]]
                beats = bool((ans[j] > last[j, others]).all()) if len(others) else True
                out["candidates"].append(torch.tensor([beats]))
    result = {k: torch.cat(v) for k, v in out.items() if v}
    return result


def answer_correct(
    model: Model, ds, *, criterion: Criterion = "logit_diff", batch_size: int = 64,
    progress: bool = False,
) -> Bool[Tensor, "batch"]:
    """Whether the model answers each prompt of ``ds`` correctly, judged at ``pos["END"]``.

    ``criterion``: "logit_diff" (the answer's first token beats the counterfactual's), "argmax"
    (the answer's first token is the top prediction), "candidates" (it beats the first token of
    every other object the relation allows, e.g. every other US president; needs a dataset with
    ``candidate_ids``), or "both" (logit_diff and argmax).
    """
    if criterion not in ("logit_diff", "argmax", "candidates", "both"):
        raise ValueError(
            f"criterion must be 'logit_diff', 'argmax', 'candidates' or 'both', got {criterion!r}."
        )
    if criterion == "candidates" and not getattr(ds, "candidate_ids", None):
        raise ValueError(
            f"criterion='candidates' needs a dataset with candidate_ids (temporal facts); "
            f"{type(ds).__name__} has none. Use 'argmax' or 'logit_diff'."
        )
    return _judge(model, ds, batch_size=batch_size, progress=progress)[criterion]


class NothingCorrect(ValueError):
    """:func:`keep_correct` found no item that the model answers correctly."""


def keep_correct(
    model: Model, ds, *, criterion: Criterion = "logit_diff", batch_size: int = 64,
    progress: bool = False, verbose: bool = True,
):
    """The subset of ``ds`` that ``model`` answers correctly (see :func:`answer_correct`).

    The returned dataset's ``meta["keep_correct"]`` records the criterion, how many were kept
    and of how many, and the kept indices into ``ds``. With ``verbose`` it prints the count.

    Which criterion: "logit_diff" compares the answer with ONE counterfactual, so a model that
    ignores the year still passes about half the time (SmolLM2-135M keeps 139 of 273 temporal
    facts, near chance). "candidates" asks the answer to beat every object the relation allows
    (48 of 273) and "argmax" that it is the top token (30 of 273: the model often continues
    "was" with " elected" or " a"). For temporal facts prefer "candidates".
    Raises ``ValueError`` if nothing is kept (there is nothing to analyse).
    """
    ok = answer_correct(model, ds, criterion=criterion, batch_size=batch_size, progress=progress)
    index = ok.nonzero().flatten()
    report = dict(criterion=criterion, kept=len(index), of=len(ok), index=index.tolist())
    if verbose:
        print(f"keep_correct ({criterion}): kept {len(index)} of {len(ok)} "
              f"({100 * len(index) / max(len(ok), 1):.0f}%)")
    if len(index) == 0:
        raise NothingCorrect(
            f"The model answers none of the {len(ok)} prompts correctly ({criterion}); there is "
            "nothing to keep. Try criterion='logit_diff', other relations, or a bigger model."
        )
    chosen = ds.subset(index)
    chosen.meta = dict(getattr(ds, "meta", {}), keep_correct=report)
    return chosen


def kept(model: Model, ds, *, criterion: Criterion, role: str):
    """:func:`keep_correct` for a finder: nothing answered means the role is absent, not an error
    (:class:`~workbench.phenomena.registry.PhenomenonAbsent`)."""
    try:
        return keep_correct(model, ds, criterion=criterion, verbose=False)
    except NothingCorrect as e:
        raise PhenomenonAbsent(f"{e} The {role} role cannot be found.") from None
