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
from workbench.phenomena.arithmetic.finder import arithmetic_role_scores
from workbench.phenomena.registry import Phenomenon, Role, register

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

register(Phenomenon(
    "arithmetic", "Arithmetic heads", finder=arithmetic_role_scores, notebook="04_arithmetic_heads",
    roles=(Role("arithmetic", "C5", "direct effect of the operands and the operator"),),
))
