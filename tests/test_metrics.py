"""Metrics against hand computations; the readout path against the full path; the normalisation check."""

import pytest
import torch

from workbench.core.metrics import (
    AnswerProb,
    AnswerRank,
    LogitDiff,
    Normalised,
    check_scalar,
    normalise,
)


def logits(seed=0, batch=3, pos=4, vocab=7):
    return torch.randn(batch, pos, vocab, generator=torch.Generator().manual_seed(seed))


def test_logit_diff_by_hand_and_per_prompt_positions():
    x = logits()
    ans, wrong = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 6])
    expected = torch.stack([x[b, -1, ans[b]] - x[b, -1, wrong[b]] for b in range(3)])
    assert torch.allclose(LogitDiff(ans, wrong)(x), expected.mean())
    assert torch.allclose(LogitDiff(ans, wrong, per_prompt=True)(x), expected)
    pos = torch.tensor([0, 2, 1])
    by_pos = torch.stack([x[b, pos[b], ans[b]] - x[b, pos[b], wrong[b]] for b in range(3)])
    assert torch.allclose(LogitDiff(ans, wrong, pos=pos)(x), by_pos.mean())


def test_logit_diff_readout_equals_full_path():
    x = logits(1)
    m = LogitDiff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), pos=torch.tensor([1, 3, 2]))
    r = m.readout(3, 4)
    assert torch.equal(m.from_readout(r.gather(x)), m(x))


def test_logit_diff_errors():
    with pytest.raises(ValueError, match="differ in length"):
        LogitDiff(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="built for 2 prompts, got 3"):
        LogitDiff(torch.tensor([1, 2]), torch.tensor([0, 0]))(logits())


def test_answer_prob_and_rank_by_hand():
    x = logits(2)
    ans = torch.tensor([0, 5, 6])
    probs = x[:, -1].softmax(-1)
    assert torch.allclose(AnswerProb(ans)(x), probs[torch.arange(3), ans].mean())
    ranks = [(x[b, -1] > x[b, -1, ans[b]]).sum().item() for b in range(3)]
    assert AnswerRank(ans)(x).item() == pytest.approx(sum(ranks) / 3)
    top = x[:, -1].argmax(-1)
    assert AnswerRank(top)(x).item() == 0.0


def test_check_scalar():
    assert check_scalar(2.0).shape == ()
    with pytest.raises(ValueError, match="must return a scalar"):
        check_scalar(torch.ones(2))
    with pytest.raises(ValueError, match="not finite"):
        check_scalar(torch.tensor(float("nan")))


def test_normalised_maps_baselines_to_one_and_zero(tiny):
    clean = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 7) % 100
    base = LogitDiff(torch.tensor([1, 2]), torch.tensor([3, 4]))
    m = normalise(tiny, clean, corrupted, base)
    with torch.no_grad():
        assert m(tiny(clean)).item() == pytest.approx(1.0, abs=1e-5)
        assert m(tiny(corrupted)).item() == pytest.approx(0.0, abs=1e-5)
        x = tiny(clean)
        r = m.readout(2, 5)
        assert torch.allclose(m.from_readout(r.gather(x)), m(x))
    with pytest.raises(ValueError, match="does not tell clean from corrupted"):
        Normalised(base, 1.0, 1.0)
