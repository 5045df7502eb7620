"""Arithmetic heads as a pre-registered experiment (issue 23): operand pairs split disjoint, worked
examples from selection pairs only, a head choice with a stated tie rule that a CPU's last digit
cannot flip; run() holds every registered claim, and the notebook's steps compose to run().

Fast: the tiny model with the digit tokenizer of tests/test_arithmetic.py.
"""

import pytest
import torch
from test_arithmetic import digit_model

from workbench.core.components import top_k_heads
from workbench.core.subsets import overlaps
from workbench.findings.claims import VERDICTS
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.arithmetic import experiment as ex
from workbench.phenomena.arithmetic.dataset import pair_key, sum_problems, sum_split


@pytest.fixture(scope="module")
def dm():
    return digit_model()


def test_the_split_is_disjoint_on_operand_pairs_and_examples_come_from_selection(dm):
    d = ex.registration().design
    for seed in range(3):
        select, evaluation = sum_split(dm, n_select=d["n_select"], n_eval=d["n_eval"], seed=seed, lo=d["lo"],
                                       hi=d["hi"], fraction=d["split_fraction"])
        assert (len(select), len(evaluation)) == (d["n_select"], d["n_eval"])
        assert overlaps(select.factors, evaluation.factors) == {"operand pair": set()}
        eval_pairs = evaluation.factors["operand pair"]
        # no evaluation sum appears, answered, in any prompt
        assert not select.example_pairs & eval_pairs and not evaluation.example_pairs & eval_pairs
        # the prompts say so too
        for prompt in select.prompts + evaluation.prompts:
            shots = [line.split("=")[0] for line in prompt.split("\n")[:-1]]
            assert not {pair_key(*map(int, s.split("+"))) for s in shots} & eval_pairs


def test_the_old_problems_put_evaluation_sums_in_selection_prompts(dm):
    """What the check catches: the notebook's former problems (one pool, first 80 select, next 240
    evaluate) had evaluation sums answered among the selection prompts' worked examples."""
    problems = sum_problems(dm, n=320, seed=0, lo=10, hi=29)
    select, evaluation = problems.subset(range(80)), problems.subset(range(80, 320))
    assert select.example_pairs & {pair_key(a, b) for a, b in evaluation.operands.tolist()}


def test_the_tie_rule_does_not_flip_with_a_last_digit():
    # head 0 sits on a rounding edge at 3 decimals; head 1 is a near tie above it
    for eps in (1e-9, -1e-9):
        scores = torch.tensor([[0.0125 + eps, 0.0128, 0.001]], dtype=torch.float64)
        assert ex.stable_top_k(scores, 1, tolerance=1e-3)[0] == [(0, 0)]
    # rounding to 3 decimals does flip
    flips = {tuple(top_k_heads(torch.tensor([[0.0125 + e, 0.0128, 0.001]], dtype=torch.float64), 1, decimals=3))
             for e in (1e-9, -1e-9)}
    assert len(flips) == 2
    chosen, gap, edge = ex.stable_top_k(torch.tensor([[3.0, 1.0], [2.0, 0.0]]), 2, tolerance=0.1)
    assert chosen == [(0, 0), (1, 0)] and gap == 1.0 and edge == pytest.approx(0.9)
    with pytest.raises(ValueError, match="k must be"):
        ex.stable_top_k(torch.zeros(2, 2), 4, tolerance=0.0)


def _check_card(card):
    assert [f.claim.name for f in card.findings] == list(ex.registration().claims)
    assert all(f.verdict in VERDICTS for f in card.findings)
    assert card.notebook == "04_arithmetic_heads"


def test_run_without_a_tokenizer_says_nothing_was_measured():
    card = ex.run(tiny_model())
    _check_card(card)
    assert {f.verdict for f in card.findings} == {"not measured"}
    assert all("tokenizer" in f.note for f in card.findings)


def test_run_on_a_random_model_measures_attention_and_the_steps_agree(dm):
    card = ex.run(dm, seed=0, label="digits")
    _check_card(card)
    movers = card.findings[-1]
    assert movers.verdict != "not measured" and movers.n_null == ex.registration().design["n_null_attention"]
    reg = ex.registration()
    d = reg.design
    data = ex.prepare(dm, seed=0, design=d)
    sel = ex.select_heads(dm, data.select, k=ex.n_chosen(dm, d["k_fraction"]), tolerance=d["tolerance"])
    m = ex.measure(dm, data, sel.chosen, reg.claims, n_null=d["n_null"], n_null_attention=d["n_null_attention"],
                   min_solved=d["min_solved"], seed=0)
    assert ex.scorecard(dm, m.findings, label="digits").summary() == card.summary()


def test_run_is_registered_with_the_claims():
    p = registry.get("arithmetic")
    assert p.run is ex.run and p.claims == "workbench.phenomena.arithmetic"
