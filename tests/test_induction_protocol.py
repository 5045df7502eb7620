"""Induction heads as a pre-registered experiment: heads chosen on some random sequences, measured on
others (disjoint seeds), against a layer-matched null."""

import pytest
import torch

from workbench.core.subsets import overlaps
from workbench.findings import VERDICTS, preregistration
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.induction import experiment as ix
from workbench.techniques import heads

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", [0, 3])
def test_selection_and_evaluation_sequences_share_no_seed_and_no_sequence(seed):
    model = tiny_model()
    design = ix.registration().design
    select, evaluate = ix.prepare(model, design, seed=seed)
    assert overlaps(select.factors, evaluate.factors) == {"seed": set()}
    assert len(select) + len(evaluate) == design["n_seeds"]
    assert len(select) == round(design["select_fraction"] * design["n_seeds"])
    rows = {tuple(r) for r in select.tokens.tolist()}
    assert not rows & {tuple(r) for r in evaluate.tokens.tolist()}


def test_per_sequence_scores_match_the_technique():
    model = tiny_model()
    seqs = ix._sequences(model, [5, 6], 10)
    per, losses = ix.per_sequence_scores(model, seqs)
    for i, s in enumerate([5, 6]):
        expected = heads.induction_scores(model, seq_len=10, batch=1, seed=s).values
        torch.testing.assert_close(per[i], expected)
    expected = heads.induction_loss(model, seq_len=10, batch=1, seed=5).meta
    torch.testing.assert_close(losses[0], torch.stack([expected["loss_first"][-1], expected["loss_second"][-1]]),
                               atol=1e-4, rtol=1e-4)


def test_null_is_layer_matched_to_the_chosen_heads():
    model = tiny_model(n_layers=3, n_heads=4)
    design = dict(ix.registration().design, n_null=50)
    select, evaluate = ix.prepare(model, design)
    selection = ix.select_heads(model, select)
    chosen, null, _ = ix.measure(model, evaluate, selection, design)
    assert chosen.shape == (len(evaluate),) and null.shape == (50,)
    assert selection.k == 3 and len(selection.chosen) == 3


def test_run_on_the_tiny_model_measures_both_claims():
    card = ix.run(tiny_model())
    assert [f.claim.name for f in card.findings] == list(preregistration.load(ix.PACKAGE).claims)
    assert all(f.verdict in VERDICTS and f.verdict != "replicated" for f in card.findings)
    assert all(f.value == f.value for f in card.findings)  # measured: attention and loss exist on any model
    assert registry.get("induction").run is ix.run


def test_steps_and_run_agree():
    model = tiny_model()
    reg = ix.registration()
    select, evaluate = ix.prepare(model, reg.design)
    selection = ix.select_heads(model, select)
    card = ix.scorecard(reg, "m", selection, *ix.measure(model, evaluate, selection, reg.design), n_select=len(select))
    assert card.summary() == ix.run(model, label="m").summary()
