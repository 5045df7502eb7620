"""Metrics: plain callables ``logits [batch, pos, d_vocab] -> scalar tensor``.

Each metric here also says which logits it reads (``readout``: one position and a few token ids
per prompt) and how to finish from just those (``from_readout``). Patching engines use that to
skip the full unembedding of every position; any other callable still works, through the slow
path.

>>> import torch
>>> from workbench.core.metrics import LogitDiff
>>> logits = torch.zeros(2, 3, 5); logits[:, -1, 1] = 2.0
>>> m = LogitDiff(answers=torch.tensor([1, 1]), wrong=torch.tensor([0, 0]))
>>> float(m(logits))
2.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.core.types import Model

__all__ = [
    "Metric",
    "Readout",
    "LogitDiff",
    "AnswerProb",
    "AnswerRank",
    "Normalised",
    "normalise",
    "check_scalar",
    "metric_name",
]

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


@dataclass(frozen=True)
class Readout:
    """The logits a metric reads: at ``pos[b]`` of prompt b, the tokens ``tokens[b, :]``."""

    pos: Int[Tensor, "batch"]
    tokens: Int[Tensor, "batch n"]

    def gather(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch n"]:
        """The read logits, in float32 whatever the model's dtype (metrics reduce in float32)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos, tokens = self.pos.to(logits.device), self.tokens.to(logits.device)
        return logits[rows, pos][rows[:, None], tokens].float()


def _as_batch_vector(x, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.long)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(
            f"{name} must hold one token id per prompt (shape [batch]), got shape {tuple(t.shape)}. "
            "Answers must be single tokens; see workbench.models.single_token_id."
        )
    return t


def _positions(pos, batch: int) -> Tensor:
    p = torch.as_tensor(pos, dtype=torch.long)
    return p.expand(batch).clone() if p.ndim == 0 else p


def metric_name(metric: object) -> str:
    """A short name for a metric: its own repr if it has one, else its function or class name."""
    if type(metric).__repr__ is not object.__repr__:
        return repr(metric)
    return getattr(metric, "__name__", type(metric).__name__)


def check_scalar(value, what: str = "metric") -> Tensor:
    """Raise a clear error unless ``value`` is a finite scalar tensor."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=torch.float32)
    if value.numel() != 1:
        raise ValueError(
            f"The {what} must return a scalar, got shape {tuple(value.shape)}. "
            "Reduce over the batch (e.g. .mean()) inside the metric."
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"The {what} returned {value.item()} (not finite).")
    return value.reshape(())


class LogitDiff:
    """Mean over prompts of ``logit[answer] - logit[wrong]`` at position ``pos`` (default: last).

    Args:
        answers, wrong: one token id per prompt, shape ``[batch]``.
        pos: an int for every prompt, or one position per prompt ``[batch]`` (for padded batches).
        per_prompt: return ``[batch]`` instead of the mean (for analysis, not for patching).
    """

    def __init__(self, answers, wrong, *, pos: int | Tensor = -1, per_prompt: bool = False):
        self.answers = _as_batch_vector(answers, "answers")
        self.wrong = _as_batch_vector(wrong, "wrong")
        if self.answers.shape != self.wrong.shape:
            raise ValueError(
                f"answers and wrong differ in length ({len(self.answers)} vs {len(self.wrong)})."
            )
        self.pos = pos
        self.per_prompt = per_prompt

    def readout(self, batch: int, seq_len: int) -> Readout:
        pos = _positions(self.pos, batch) % seq_len
        if len(self.answers) != batch:
            raise ValueError(f"Metric was built for {len(self.answers)} prompts, got {batch}.")
        return Readout(pos, torch.stack([self.answers, self.wrong], dim=1))

    def from_readout(self, x: Float[Tensor, "... batch 2"]) -> Tensor:
        diff = x[..., 0] - x[..., 1]
        return diff if self.per_prompt else diff.mean(-1)

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        r = self.readout(logits.shape[0], logits.shape[1])
        return self.from_readout(r.gather(logits))


class _AnswerMetric:
    """A metric of one answer token per prompt, read at ``pos``."""

    def __init__(self, answers, *, pos: int | Tensor = -1):
        self.answers = _as_batch_vector(answers, "answers")
        self.pos = pos

    def _read(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(row index, the logits at each prompt's ``pos`` [batch, d_vocab], the answer ids)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = (_positions(self.pos, logits.shape[0]) % logits.shape[1]).to(logits.device)
        return rows, logits[rows, pos], self.answers.to(logits.device)


class AnswerProb(_AnswerMetric):
    """Mean probability of the answer token at ``pos`` (softmax over the full vocabulary)."""

    def __call__(self, logits: Tensor) -> Tensor:
        rows, final, answers = self._read(logits)
        logp = final.float().log_softmax(-1)  # float32: a bf16 softmax loses the tail
        return logp[rows, answers].exp().mean()


class AnswerRank(_AnswerMetric):
    """Mean rank of the answer token at ``pos`` (0 = top prediction)."""

    def __call__(self, logits: Tensor) -> Tensor:
        rows, final, answers = self._read(logits)
        answer = final[rows, answers]
        return (final > answer[:, None]).sum(-1).float().mean()


class Normalised:
    """``(metric - corrupted) / (clean - corrupted)``: 0 on the corrupted run, 1 on the clean run.

    Build it with :func:`normalise`, which measures both baselines and checks them.
    """

    def __init__(self, metric: Metric, clean_value: float, corrupted_value: float):
        gap = clean_value - corrupted_value
        if not abs(gap) > 1e-6:
            raise ValueError(
                f"The metric does not tell clean from corrupted (clean {clean_value:.6g}, corrupted "
                f"{corrupted_value:.6g}); a normalised metric would divide by zero. Choose a "
                "corruption that changes the answer."
            )
        self.metric = metric
        self.clean_value = float(clean_value)
        self.corrupted_value = float(corrupted_value)
        if hasattr(metric, "readout") and hasattr(metric, "from_readout"):
            self.readout = metric.readout

    def _scale(self, value: Tensor) -> Tensor:
        return (value - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def from_readout(self, x: Tensor) -> Tensor:
        metric = self.metric
        if not hasattr(metric, "from_readout"):
            raise AttributeError(f"{metric_name(metric)} has no from_readout: it cannot finish from a readout.")
        return self._scale(metric.from_readout(x))

    def __call__(self, logits: Tensor) -> Tensor:
        return self._scale(self.metric(logits))

    def __repr__(self) -> str:
        return (
            f"Normalised({type(self.metric).__name__}, clean={self.clean_value:.4g}, "
            f"corrupted={self.corrupted_value:.4g})"
        )


@torch.no_grad()
def normalise(model: Model, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Metric) -> Normalised:
    """Wrap ``metric`` so the clean run scores 1 and the corrupted run 0, and check that it does."""
    clean = check_scalar(metric(model(clean_tokens)), "metric on the clean run")
    corrupted = check_scalar(metric(model(corrupted_tokens)), "metric on the corrupted run")
    normed = Normalised(metric, clean.item(), corrupted.item())
    # The self-check: the wrapped metric must map the two baselines to exactly 1 and 0.
    one = normed._scale(clean).item()
    zero = normed._scale(corrupted).item()
    if abs(one - 1) > 1e-5 or abs(zero) > 1e-5:
        raise AssertionError(f"normalised metric gives clean {one}, corrupted {zero}")
    return normed
