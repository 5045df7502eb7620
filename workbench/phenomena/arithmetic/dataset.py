"""Arithmetic prompts for arithmetic heads (Zhang et al. 2024; Stolfo et al. 2023).

Three templates, for ``+``, ``-`` and ``*`` on 1- or 2-digit operands::

    equation    "3+5="
    statement   "What is 3 plus 5? Answer: "
    few_shot    "2+7=9\\n6+1=7\\n3+5="       (two solved problems of the same operator first)

The answer is compared by its FIRST token, read from the tokenization of prompt and result
together. Both offline tokenizers write every digit as its own token, so the first answer token
is the result's FIRST DIGIT ("47" -> "4"); a tokenizer that has the whole number as one token gives
the whole number, and anything else (e.g. "123" -> "12", "3") is a ``ValueError``. Both tokenizers
also write " 8" as ``' ', '8'``, so the statement prompt ends in that space token and the model's
next token is the digit itself.

Every problem comes with two counterfactual problems of the same token length, whose results
start with a different token: other operands with the same operator (``corruption="operands"``)
and the same operands with another operator (``corruption="operator"``). Both are drawn for every
problem, so one ``seed`` gives the same clean problems whichever corruption is asked for.
Subtraction keeps results non-negative (``a >= b``).

Example (needs a model with a tokenizer; the tiny model has none)::

    >>> from workbench.models import load_model
    >>> from workbench.phenomena.arithmetic.dataset import arithmetic_problems, keep_correct
    >>> model = load_model("smollm2-135m", verbose=False)
    >>> ds = arithmetic_problems(model, ops=("+",), digits=1, template="few_shot", n=40)
    >>> ds.prompts[0], ds.answer_strs[0]                                 # doctest: +SKIP
    >>> kept = keep_correct(model, ds, criterion="argmax")  # doctest: +ELLIPSIS
    keep_correct (argmax): kept ... of 40 (...%)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, Sequence

import pandas as pd
import torch
from torch import Tensor

from workbench.core.metrics import LogitDiff
from workbench.core.subsets import split_pools, subset_items
from workbench.core.types import Model
from workbench.models import to_tokens
from workbench.models.tokens import decode_token
from workbench.phenomena.answers import (
    answer_correct,
    encode_text,
    first_answer_token,
    keep_correct,
    token_span,
)

__all__ = [
    "OPS",
    "OP_WORDS",
    "ArithmeticProblems",
    "arithmetic_problems",
    "answer_correct",
    "keep_correct",
    "SumProblems",
    "sum_problems",
    "sum_split",
    "pair_key",
]

OPS = ("+", "-", "*")
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
Op = Literal["+", "-", "*"]
Template = Literal["equation", "statement", "few_shot"]


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _pairs(op: str, digits: int) -> list[tuple[int, int]]:
    lo, hi = (1, 9) if digits == 1 else (10, 99)
    return [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)
            if op != "-" or a >= b]


def _shot_width(ops: Sequence[str], op: str, digits: int) -> int:
    """How many digits the few-shot examples' results have: one width for every operator of the
    batch if there is one (so that all prompts have one token length), else the largest for op."""
    widths = {o: {len(str(_apply(a, o, b))) for a, b in _pairs(o, digits)} for o in ops}
    common = set.intersection(*widths.values())
    return max(common) if common else max(widths[op])


@dataclass
class ArithmeticProblems:
    """A batch of arithmetic prompts with counterfactual prompts of the same token length.

    Attributes (n prompts, seq tokens, all of one length):
        prompts, corrupted_prompts: the texts.
        clean_tokens, corrupted_tokens: LongTensor [batch, pos].
        operands, corrupted_operands: LongTensor [batch, 2]; ops, corrupted_ops: per prompt.
        results, corrupted_results: LongTensor [batch], the true values.
        answer_ids, counterfactual_ids: LongTensor [batch], first token of each result after
            the clean prompt; answer_strs: that token's text (a first digit here).
        pos: {"A_START", "A", "OP", "B_START", "B", "END"} -> LongTensor [batch]: first and last
            token of each operand, the operator token, the last prompt token (for few_shot, of
            the final, unsolved problem).
        template, digits, corruption; meta: seed and the keep_correct report.
    """

    prompts: list[str]
    corrupted_prompts: list[str]
    clean_tokens: Tensor
    corrupted_tokens: Tensor
    operands: Tensor
    corrupted_operands: Tensor
    ops: list[str]
    corrupted_ops: list[str]
    results: Tensor
    corrupted_results: Tensor
    answer_ids: Tensor
    counterfactual_ids: Tensor
    answer_strs: list[str]
    pos: dict[str, Tensor]
    template: str
    digits: int
    corruption: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def logit_diff(self, *, per_prompt: bool = False) -> LogitDiff:
        """``logit[answer] - logit[counterfactual answer]`` at the last position, averaged."""
        return LogitDiff(self.answer_ids, self.counterfactual_ids, pos=self.pos["END"],
                         per_prompt=per_prompt)

    def subset(self, index: Sequence[int] | Tensor) -> "ArithmeticProblems":
        """The prompts at ``index``, all fields kept consistent."""
        return subset_items(self, index)

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt."""
        return pd.DataFrame(
            dict(
                prompt=self.prompts,
                op=self.ops,
                result=self.results.tolist(),
                answer_token=self.answer_strs,
                corrupted_prompt=self.corrupted_prompts,
                corrupted_result=self.corrupted_results.tolist(),
            )
        )


def _render(template: str, a: int, op: str, b: int, shots: str) -> tuple[str, dict[str, tuple]]:
    """The prompt text and the character spans of a, op, b (of the final problem)."""
    if template == "statement":
        parts = ["What is ", str(a), " ", OP_WORDS[op], " ", str(b), "? Answer:"]
        keys = [None, "A", None, "OP", None, "B", None]
    else:
        parts = [shots, str(a), op, str(b), "="]
        keys = [None, "A", "OP", "B", None]
    spans, at = {}, 0
    for part, key in zip(parts, keys):
        if key:
            spans[key] = (at, at + len(part))
        at += len(part)
    return "".join(parts), spans


def _check_answer_token(model: Model, result: int, token: int) -> str:
    text = decode_token(model, token).strip()
    value = str(result)
    if text not in (value[0], value):
        raise ValueError(
            f"The result {value} starts with the token {text!r} for this tokenizer: neither its "
            "first digit nor the whole number. The arithmetic generator needs a tokenizer that "
            "writes digits singly or numbers whole."
        )
    return text


def arithmetic_problems(
    model: Model,
    *,
    ops: Sequence[str] = OPS,
    digits: int = 1,
    template: Template = "equation",
    n: int = 60,
    corruption: Literal["operands", "operator"] = "operands",
    seed: int = 0,
) -> ArithmeticProblems:
    """Seeded arithmetic prompts for ``model``'s tokenizer.

    Args:
        ops: operators, cycled over the prompts ("+", "-", "*").
        digits: 1 (operands 1..9) or 2 (operands 10..99).
        template: "equation", "statement" or "few_shot" (two solved examples first).
        n: number of prompts; each operator's share is drawn without repetition.
        corruption: which counterfactual fills ``corrupted_tokens``/``counterfactual_ids``:
            "operands" (other operands, same operator) or "operator" (same operands, another
            operator).
        seed: the problems, the few-shot examples and the counterfactuals.
    """
    ops = tuple(ops)
    bad_ops = [o for o in ops if o not in OPS]
    if bad_ops or not ops:
        raise ValueError(f"Unknown operator(s) {bad_ops or ops}; ops must be drawn from {OPS}.")
    if digits not in (1, 2):
        raise ValueError(f"digits must be 1 or 2, got {digits!r}.")
    if template not in ("equation", "statement", "few_shot"):
        raise ValueError(
            f"template must be 'equation', 'statement' or 'few_shot', got {template!r}."
        )
    if corruption not in ("operands", "operator"):
        raise ValueError(f"corruption must be 'operands' or 'operator', got {corruption!r}.")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("arithmetic_problems needs a model with a tokenizer (the tiny model has "
                         "none; the toy model has workbench.models.toy.toy_problems).")
    per_op = {o: sum(1 for i in range(n) if ops[i % len(ops)] == o) for o in ops}
    for o, k in per_op.items():
        if k > len(_pairs(o, digits)):
            raise ValueError(f"n={n} asks for {k} problems with {o!r} but only "
                             f"{len(_pairs(o, digits))} distinct {digits}-digit ones exist.")

    if template == "few_shot" and len(ops) > 1:
        widths = [{len(str(_apply(a, o, b))) for a, b in _pairs(o, digits)} for o in ops]
        if not set.intersection(*widths):
            raise ValueError(
                f"few_shot prompts with {digits}-digit operands cannot share one token length "
                f"across the operators {ops} (their worked examples have results of different "
                "lengths); ask for one operator per batch, e.g. ops=('+',)."
            )
    rng = random.Random(f"arithmetic-{digits}-{template}-{seed}")
    pools = {o: rng.sample(_pairs(o, digits), len(_pairs(o, digits))) for o in ops}
    rows = []
    for i in range(n):
        op = ops[i % len(ops)]
        while True:
            if not pools[op]:
                raise ValueError(f"Too few {digits}-digit problems with {op!r} have a "
                                 "counterfactual whose answer starts with another token.")
            a, b = pools[op].pop()
            row = _problem(model, rng, ops, template, digits, a, op, b)
            if row is not None:
                rows.append(row)
                break
    return _assemble(model, rows, template, digits, corruption, seed)


def _shots(rng, ops, op: str, digits: int, avoid: tuple[int, int]) -> str:
    width = _shot_width(ops, op, digits)
    pool = [(a, b) for a, b in _pairs(op, digits)
            if (a, b) != avoid and len(str(_apply(a, op, b))) == width]
    return "".join(f"{a}{op}{b}={_apply(a, op, b)}\n" for a, b in rng.sample(pool, 2))


def _problem(model: Model, rng, ops, template, digits, a, op, b):
    """One clean problem with both counterfactuals, or None if it has no usable counterfactual."""
    shots = _shots(rng, ops, op, digits, (a, b)) if template == "few_shot" else ""
    prompt, spans = _render(template, a, op, b, shots)
    space = " " if template == "statement" else ""
    result = _apply(a, op, b)
    full_prompt, first = first_answer_token(model, prompt, space + str(result), absorb_space=True)
    answer_str = _check_answer_token(model, result, first)
    n_tok = len(encode_text(model, full_prompt))

    def variant(a2, op2, b2):
        text, _ = _render(template, a2, op2, b2, shots)
        text = text + full_prompt[len(prompt):]  # the same absorbed space, if any
        r2 = _apply(a2, op2, b2)
        if r2 < 0 or len(encode_text(model, text)) != n_tok:
            return None
        cf = _first_after(model, full_prompt, r2)  # read in the CLEAN prompt's context
        if cf == first:
            return None
        return text, a2, op2, b2, r2, cf

    candidates = rng.sample(_pairs(op, digits), min(60, len(_pairs(op, digits))))
    by_operands = next((v for v in (variant(a2, op, b2) for a2, b2 in candidates
                                    if (a2, b2) != (a, b)) if v), None)
    others = [o for o in OPS if o != op]
    rng.shuffle(others)
    by_operator = next((v for v in (variant(a, o, b) for o in others) if v), None)
    if by_operands is None or by_operator is None:
        return None
    return dict(prompt=full_prompt, spans=spans, a=a, op=op, b=b, result=result, first=first,
                answer_str=answer_str, operands=by_operands, operator=by_operator)


def _first_after(model: Model, prompt: str, result: int) -> int:
    """First token of ``result`` written right after ``prompt`` (which ends where digits go)."""
    _, token = first_answer_token(model, prompt, str(result))
    _check_answer_token(model, result, token)
    return token


def _assemble(model: Model, rows, template, digits, corruption, seed) -> ArithmeticProblems:
    prompts = [r["prompt"] for r in rows]
    corrupted = [r[corruption][0] for r in rows]
    lengths = {len(encode_text(model, p)) for p in prompts + corrupted}
    if len(lengths) > 1:
        raise ValueError(
            f"These prompts tokenize to different lengths ({sorted(lengths)}) for this tokenizer "
            f"(template {template!r}); ask for one operator per batch or another template."
        )
    clean_tokens = to_tokens(model, prompts)
    corrupted_tokens = to_tokens(model, corrupted)
    found: dict[str, list[int]] = {k: [] for k in ("A_START", "A", "OP", "B_START", "B")}
    for r in rows:
        for key in ("A", "OP", "B"):
            first, last = token_span(model, r["prompt"], *r["spans"][key])
            if key == "OP":
                found["OP"].append(last)
            else:
                found[f"{key}_START"].append(first)
                found[key].append(last)
    pos = {k: torch.tensor(v) for k, v in found.items()}
    pos["END"] = torch.full((len(rows),), clean_tokens.shape[1] - 1)
    cf = [r[corruption] for r in rows]
    return ArithmeticProblems(
        prompts=prompts,
        corrupted_prompts=corrupted,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        operands=torch.tensor([[r["a"], r["b"]] for r in rows]),
        corrupted_operands=torch.tensor([[c[1], c[3]] for c in cf]),
        ops=[r["op"] for r in rows],
        corrupted_ops=[c[2] for c in cf],
        results=torch.tensor([r["result"] for r in rows]),
        corrupted_results=torch.tensor([c[4] for c in cf]),
        answer_ids=torch.tensor([r["first"] for r in rows]),
        counterfactual_ids=torch.tensor([c[5] for c in cf]),
        answer_strs=[r["answer_str"] for r in rows],
        pos=pos,
        template=template,
        digits=digits,
        corruption=corruption,
        meta=dict(seed=seed),
    )


# --------------------------------------------------------------------------------------------
# Two-digit sums scored on every digit


@dataclass
class SumProblems:
    """Few-shot two-digit additions whose results have two digits, scored on both digits.

    Attributes (n problems):
        prompts: texts ``"a+b=r\\nc+d=s\\ne+f="``; corrupted_prompts: other operands, same shots.
        clean_tokens [n, P]: the prompts; full_tokens [n, P + 1]: prompt + the result's first
            digit, so one teacher-forced pass predicts both digits (at ``P - 1`` and ``P``);
            corrupted_full [n, P + 1]: the corrupted prompt + the clean result's first digit.
        answer_ids [n, 2]: the result's two digit tokens; results, operands: the values.
        example_operands [n, 2, 2]: the operands of the two worked examples;
        corrupted_operands [n, 2]: the counterfactual problem's operands.
        pos: ``A_START, A, OP, B_START, B, END`` of the final problem (``END = P - 1``).
    """

    prompts: list[str]
    corrupted_prompts: list[str]
    clean_tokens: Tensor
    full_tokens: Tensor
    corrupted_full: Tensor
    answer_ids: Tensor
    results: Tensor
    operands: Tensor
    pos: dict[str, Tensor]
    seed: int
    example_operands: Tensor
    corrupted_operands: Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int] | Tensor) -> "SumProblems":
        return subset_items(self, index)

    @property
    def factors(self) -> dict[str, set[str]]:
        """The operand pairs the problems are built from: the final problem's and the
        counterfactual's, unordered (``"13+18"`` stands for 13+18 and 18+13). The worked examples'
        pairs are :attr:`example_pairs`."""
        pairs = torch.cat([self.operands, self.corrupted_operands]).tolist()
        return {"operand pair": {pair_key(a, b) for a, b in pairs}}

    @property
    def example_pairs(self) -> set[str]:
        """The operand pairs of the worked examples (unordered, as in :attr:`factors`)."""
        return {pair_key(a, b) for a, b in self.example_operands.reshape(-1, 2).tolist()}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(dict(prompt=self.prompts, result=self.results.tolist(),
                                 corrupted_prompt=self.corrupted_prompts))


def pair_key(a: int, b: int) -> str:
    """The unordered operand pair ``"a+b"`` with ``a <= b``: 13+18 and 18+13 are one pair."""
    return f"{min(a, b)}+{max(a, b)}"


def _differs(r: int, s: int) -> bool:
    """No digit of ``s`` sits where the same digit sits in ``r`` (two-digit numbers)."""
    return str(r)[0] != str(s)[0] and str(r)[1] != str(s)[1]


def _check_range(model: Model, lo: int, hi: int) -> list[tuple[int, int]]:
    if not 10 <= lo <= hi or 2 * hi > 99:
        raise ValueError(f"Need 10 <= lo <= hi and 2 * hi <= 99 (two-digit operands and results), got {lo}, {hi}.")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("sum_problems needs a model with a tokenizer.")
    return [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]


def _sum_rows(rng: random.Random, problems, examples, counter) -> list[tuple]:
    """For each problem ``(a, b)``: two worked examples drawn from ``examples`` and a counterfactual
    from ``counter``, each with a result that shares no digit position with ``a + b``."""
    rows = []
    for a, b in problems:
        r = a + b
        shots_from = [p for p in examples if _differs(r, sum(p))]
        counter_from = [p for p in counter if _differs(r, sum(p))]
        if len(shots_from) < 2 or not counter_from:
            raise ValueError(f"Too few operand pairs to draw worked examples and a counterfactual for {a}+{b} "
                             f"({len(shots_from)} example pairs, {len(counter_from)} counterfactual pairs).")
        shots = rng.sample(shots_from, 2)
        c, d = rng.choice(counter_from)
        head = "".join(f"{x}+{y}={x + y}\n" for x, y in shots)
        rows.append((a, b, r, head + f"{a}+{b}=", head + f"{c}+{d}=", shots, (c, d)))
    return rows


def _assemble_sums(model: Model, rows: list[tuple], seed: int) -> SumProblems:
    n = len(rows)
    prompts = [x[3] for x in rows]
    corrupted = [x[4] for x in rows]
    clean, bad = to_tokens(model, prompts, padding="right"), to_tokens(model, corrupted, padding="right")
    answers = torch.tensor([[encode_text(model, d)[-1] for d in str(x[2])] for x in rows])
    full = to_tokens(model, [p + str(x[2])[0] for p, x in zip(prompts, rows)], padding="right")
    lengths = {len(encode_text(model, t)) for t in prompts + corrupted}
    if len(lengths) > 1 or full.shape[1] != clean.shape[1] + 1 or not torch.equal(full[:, -1], answers[:, 0]):
        raise ValueError("This tokenizer does not write every digit as its own token; sum_problems needs one that does.")
    cf = torch.cat([bad, answers[:, :1]], dim=1)
    p = clean.shape[1]
    # the final problem is the last 6 tokens: a1 a2 + b1 b2 =
    pos = {key: torch.full((n,), p - 6 + k) for k, key in enumerate(("A_START", "A", "OP", "B_START", "B", "END"))}
    return SumProblems(prompts=prompts, corrupted_prompts=corrupted, clean_tokens=clean, full_tokens=full,
                       corrupted_full=cf, answer_ids=answers, results=torch.tensor([x[2] for x in rows]),
                       operands=torch.tensor([[x[0], x[1]] for x in rows]), pos=pos, seed=seed,
                       example_operands=torch.tensor([x[5] for x in rows]).reshape(n, 2, 2),
                       corrupted_operands=torch.tensor([x[6] for x in rows]).reshape(n, 2))


def sum_problems(model: Model, *, n: int = 200, seed: int = 0, lo: int = 10, hi: int = 49) -> SumProblems:
    """``n`` distinct seeded problems ``a+b=`` with ``lo <= a, b <= hi`` (results of two digits),
    after two solved examples whose results share no digit position with the answer (so neither
    digit can be copied from them); the counterfactual has other operands whose result differs in
    both digits. Every prompt has the same token length (checked). Worked examples and
    counterfactuals come from every pair: for disjoint selection and evaluation problems use
    :func:`sum_split`.
    """
    pairs = _check_range(model, lo, hi)
    if not 1 <= n <= len(pairs):
        raise ValueError(f"n must be between 1 and {len(pairs)} (distinct problems), got {n}.")
    rng = random.Random(f"sums-{lo}-{hi}-{seed}")
    rows = _sum_rows(rng, rng.sample(pairs, n), pairs, pairs)
    return _assemble_sums(model, rows, seed)


def sum_split(model: Model, *, n_select: int, n_eval: int, seed: int = 0, lo: int = 10, hi: int = 29,
              fraction: float = 0.38) -> tuple[SumProblems, SumProblems]:
    """Selection and evaluation problems built from disjoint operand pairs.

    The unordered operand pairs (13+18 is 18+13) are split by
    :func:`workbench.core.subsets.split_pools` (``fraction`` of them for selection, seeded). A
    selection problem, its worked examples and its counterfactual use selection pairs only; an
    evaluation problem and its counterfactual use evaluation pairs, and its worked examples
    selection pairs: no evaluation sum appears, answered, in any prompt.

    >>> from workbench.phenomena.arithmetic.dataset import pair_key
    >>> pair_key(18, 13)
    '13+18'
    """
    pairs = _check_range(model, lo, hi)
    keys = sorted({pair_key(a, b) for a, b in pairs}, key=lambda k: tuple(map(int, k.split("+"))))
    sel_keys, ev_keys = (set(part["operand pair"]) for part in
                         split_pools({"operand pair": keys}, fraction=fraction, seed=seed))
    select_pairs = [p for p in pairs if pair_key(*p) in sel_keys]
    eval_pairs = [p for p in pairs if pair_key(*p) in ev_keys]
    for name, n, pool in (("n_select", n_select, select_pairs), ("n_eval", n_eval, eval_pairs)):
        if not 1 <= n <= len(pool):
            raise ValueError(f"{name} must be between 1 and {len(pool)} (the problems of its part of the operand "
                             f"pairs, fraction={fraction}), got {n}.")
    rng = random.Random(f"sum-split-{lo}-{hi}-{seed}")
    select_rows = _sum_rows(rng, rng.sample(select_pairs, n_select), select_pairs, select_pairs)
    eval_rows = _sum_rows(rng, rng.sample(eval_pairs, n_eval), select_pairs, eval_pairs)
    return _assemble_sums(model, select_rows, seed), _assemble_sums(model, eval_rows, seed)
