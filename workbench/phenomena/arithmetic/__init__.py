"""Arithmetic heads: worked-example problems, the heads that carry the operands, and their ablation."""

from workbench.phenomena.arithmetic.analysis import (
    TopVsRandom,
    answer_accuracy,
    head_means,
    operand_attention,
    operand_attention_per_problem,
    random_heads,
    sum_correct,
    top_heads,
    top_vs_random,
)
from workbench.phenomena.arithmetic.dataset import (
    OP_WORDS,
    OPS,
    ArithmeticProblems,
    SumProblems,
    answer_correct,
    arithmetic_problems,
    keep_correct,
    sum_problems,
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
    "answer_accuracy",
    "random_heads",
    "top_heads",
    "TopVsRandom",
    "top_vs_random",
    "operand_attention",
    "head_means",
    "sum_correct",
    "operand_attention_per_problem",
]
