"""The induction toy: a two-layer attention-only model trained in the repository (a positive control)."""

import pytest
import torch

from workbench.models.toy_induction import (
    InductionToyConfig,
    copy_accuracy,
    copy_sequences,
    load_induction_toy,
    train_induction_toy,
)
from workbench.techniques import heads


@pytest.fixture(scope="module")
def toy():
    return load_induction_toy(train_if_missing=False)


def test_the_copies_are_where_the_mask_says():
    config = InductionToyConfig()
    tokens, copy = copy_sequences(config, 32, seed=3)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    for row, mask in zip(tokens, copy):
        for t in mask.nonzero().flatten().tolist():  # the next token also occurs after an earlier copy of this one
            earlier = (row[:t] == row[t]).nonzero().flatten()
            assert any(row[e + 1] == row[t + 1] for e in earlier.tolist())
    lengths = copy.sum(1) + 1
    assert lengths.min() >= config.min_segment and lengths.max() <= config.max_segment
    assert len(set(lengths.tolist())) > 5  # lengths vary: no fixed offset predicts the copy


def test_the_shipped_model_copies_on_held_out_sequences(toy):
    metrics = copy_accuracy(toy, toy.toy_config, n=128, seed=123_456)
    assert metrics["copy_accuracy"] > 0.9 and metrics["copy_loss"] < 1.0
    assert metrics["random_loss"] > 3.5  # random tokens stay unpredictable: it copies, it does not memorise


def test_layer_0_holds_the_previous_token_heads_and_layer_1_the_induction_heads(toy):
    prev = heads.previous_token_scores(toy, seq_len=20, batch=8, seed=5).values
    ind = heads.induction_scores(toy, seq_len=20, batch=8, seed=5).values
    assert prev[0].max() > 0.25 and prev[0].max() > 3 * prev[1].max()
    assert ind[1].min() > 0.5 and ind[0].max() < 0.05


def test_training_is_seeded_and_configs_are_checked():
    config = InductionToyConfig(steps=3, batch=4)
    a, _ = train_induction_toy(config)
    b, _ = train_induction_toy(config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="exceed n_ctx"):
        InductionToyConfig(max_segment=40)
    with pytest.raises(ValueError, match="min_segment"):
        InductionToyConfig(min_segment=1)
    with pytest.raises(FileNotFoundError, match="train_toy.py --task induction"):
        load_induction_toy("/nonexistent/folder", train_if_missing=False)
