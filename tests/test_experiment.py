"""Declared findings: intervals, nulls, verdicts, the scorecard; seeded head choices."""

import json

import pytest
import torch

from workbench.core.components import random_head_sets, top_k_heads
from workbench.findings.claims import (
    Claim,
    Scorecard,
    bootstrap_ci,
    evaluate,
    not_measured,
    null_percentile,
    verdict,
)

CLAIM = Claim("c", "effect above 0.5", paper="p", statistic="mean", threshold=0.5)


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    gen = torch.Generator().manual_seed(1)
    small = torch.randn(20, generator=gen) + 1
    large = torch.randn(2000, generator=gen) + 1
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    # the interval of a mean of N(1, 1) draws: about 1.96 / sqrt(n) each side
    assert abs((hi_l - lo_l) / 2 - 1.96 / 2000**0.5) < 0.01


def test_bootstrap_ci_is_seeded_and_leaves_global_state():
    x = torch.arange(30.0)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert torch.rand(1) == before


def test_bootstrap_ci_rejects_one_item():
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci(torch.ones(1))


def test_bootstrap_ci_gives_the_stored_numbers():
    # the seeded torch resamples and torch.quantile behind the notebooks' stored intervals
    assert bootstrap_ci(torch.arange(30.0)) == (11.399166297912599, 17.567500877380372)
    binary = torch.tensor([0.0, 1, 1, 0, 1, 1, 1, 0, 1, 1])
    assert bootstrap_ci(binary) == (0.4000000059604645, 0.8999999761581421)


def test_bootstrap_quantile_is_scipys_linear_quantile():
    """The interval's quantile is the linear (type 7) one that scipy.stats.quantile computes; they
    differ only in rounding (see the comment in bootstrap_ci), so torch.quantile stays."""
    from scipy.stats import quantile

    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 17, 64):
        items = torch.randint(0, 3, (n,), generator=gen).float()  # ties in the resampled means
        idx = torch.randint(0, n, (1000, n), generator=gen)
        stats = items[idx].mean(1).double()
        ours = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64))
        theirs = quantile(stats.numpy(), [0.025, 0.975], method="linear")
        assert torch.allclose(ours, torch.from_numpy(theirs), rtol=0, atol=1e-12)


def test_null_percentile_counts_ties_half():
    assert null_percentile(5.0, [1, 2, 3, 4]) == 100.0
    assert null_percentile(0.0, [1, 2, 3, 4]) == 0.0
    assert null_percentile(2.0, [1, 2, 3, 4]) == 37.5


def test_null_percentile_is_scipys_mean_percentileofscore():
    """The same statistic as scipy.stats.percentileofscore(kind="mean"), up to rounding (scipy
    multiplies by 50 / n; see the comment in null_percentile), with ties."""
    from scipy.stats import percentileofscore

    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 200, (1,), generator=gen))
        null = torch.randint(0, 6, (n,), generator=gen).double() / 2
        value = float(torch.randint(-1, 7, (1,), generator=gen)) / 2
        theirs = percentileofscore(null.numpy(), value, kind="mean")
        assert abs(null_percentile(value, null) - theirs) < 1e-12


@pytest.mark.parametrize(
    "lo, hi, pct, expected",
    [
        (0.6, 0.9, 99.0, "replicated"),
        (0.6, 0.9, None, "replicated"),
        (0.6, 0.9, 50.0, "at chance"),
        (0.4, 0.9, 99.0, "inconclusive"),
        (0.1, 0.3, 99.0, "not replicated"),
        (0.503, 0.9, 99.0, "inconclusive"),  # a bound within rounding of the threshold does not decide
        (0.1, 0.497, 99.0, "inconclusive"),
        (0.506, 0.9, 99.0, "replicated"),
    ],
)
def test_verdict_rule(lo, hi, pct, expected):
    assert verdict(CLAIM, lo, hi, pct) == expected


def test_verdict_below_and_weaker_bar():
    below = Claim("b", "loss under 0.2", paper="p", statistic="s", threshold=0.2, direction="below", weaker=0.4)
    assert verdict(below, 0.05, 0.15, None) == "replicated"
    assert verdict(below, 0.25, 0.35, None) == "below the paper's bar"
    assert verdict(below, 0.25, 0.35, 50.0) == "at chance"  # clears the weaker bar, not the null
    assert verdict(below, 0.25, 0.35, 1.0) == "below the paper's bar"
    assert verdict(below, 0.5, 0.6, None) == "not replicated"
    assert verdict(below, 0.1, 0.3, None) == "inconclusive"
    with pytest.raises(ValueError, match="weaker"):
        Claim("x", "x", paper="p", statistic="s", threshold=0.5, weaker=0.7)


@pytest.mark.parametrize("lo, hi, margin", [(0.6, 0.9, 0.1), (0.1, 0.3, -0.2), (0.45, 0.9, -0.05), (0.1, 0.52, -0.02)])
def test_margin_is_the_distance_of_the_deciding_bound(lo, hi, margin):
    f = evaluate(CLAIM, torch.zeros(4), n_select=1)
    f = type(f)(CLAIM, (lo + hi) / 2, lo, hi, None, 0, 1, 4, verdict(CLAIM, lo, hi, None))
    assert f.margin == pytest.approx(margin)
    below = Claim("b", "b", paper="p", statistic="s", threshold=0.5, direction="below")
    g = type(f)(below, 0.2, 0.1, 0.3, None, 0, 1, 4, "replicated")
    assert g.margin == pytest.approx(0.2)


def test_evaluate_and_scorecard_round_trip(tmp_path):
    per_item = torch.linspace(0.7, 0.9, 64)
    f = evaluate(CLAIM, per_item, null=torch.linspace(0, 0.6, 200), n_select=16)
    assert f.verdict == "replicated" and f.n_eval == 64 and f.null_percentile == 100.0
    weak = evaluate(Claim("w", "w", paper="p", statistic="s", threshold=0.5), torch.full((8,), 0.1), n_select=4)
    assert weak.verdict == "not replicated"
    card = Scorecard("tiny", "nb", [f, weak])
    with pytest.raises(ValueError, match="already"):
        card.add(f)
    data = json.loads(card.save(tmp_path / "f.json").read_text())
    keys = {"claim", "paper", "value", "ci_low", "ci_high", "null_percentile", "threshold", "verdict", "n_select", "n_eval"}
    assert keys <= set(data["findings"][0])
    assert [d["verdict"] for d in data["findings"]] == ["replicated", "not replicated"]
    assert "replicated" in card._repr_html_() and len(card.to_frame()) == 2
    assert card.summary().splitlines()[0].startswith("c: 0.80 [")
    assert card.plot() is not None


def test_top_k_heads_tie_rule_and_rounding():
    s = torch.tensor([[0.3, 0.7], [0.7 + 1e-5, float("nan")]])
    assert top_k_heads(s, 1) == [(1, 0)]
    assert top_k_heads(s, 1, decimals=3) == [(0, 1)]  # equal after rounding: lower index first
    assert top_k_heads(s, 3) == [(1, 0), (0, 1), (0, 0)]
    with pytest.raises(ValueError, match="between 0 and 4"):
        top_k_heads(s, 5)


def test_random_head_sets_are_seeded_sized_and_layer_matched():
    a = random_head_sets(6, 4, k=3, n_draws=50, seed=3)
    assert a == random_head_sets(6, 4, k=3, n_draws=50, seed=3)
    assert a != random_head_sets(6, 4, k=3, n_draws=50, seed=4)
    assert all(len(set(s)) == 3 for s in a)
    like = [(2, 0), (2, 1), (4, 3)]
    matched = random_head_sets(6, 4, like=like, n_draws=100, seed=0, exclude=like)
    for s in matched:
        assert sorted(h[0] for h in s) == [2, 2, 4] and not set(s) & set(like)
    assert len({tuple(s) for s in matched}) > 1
    band = random_head_sets(6, 4, k=2, layers=[1, 2], n_draws=20, seed=0)
    assert {h[0] for s in band for h in s} <= {1, 2}
    with pytest.raises(ValueError, match="exactly one"):
        random_head_sets(6, 4, n_draws=1, seed=0)
    with pytest.raises(ValueError, match="heads to draw from"):
        random_head_sets(2, 2, like=[(0, 0), (0, 1)], n_draws=1, seed=0, exclude=[(0, 0)])


def test_random_head_sets_borrow_from_the_nearest_layers_only_when_short():
    like = [(2, 0), (2, 1), (2, 2), (4, 3)]  # layer 2 has one head left once `like` is excluded
    sets = random_head_sets(6, 4, like=like, n_draws=200, seed=0, exclude=like, nearest=True)
    for s in sets:
        layers = sorted(h[0] for h in s)
        assert len(set(s)) == 4 and not set(s) & set(like)
        assert layers.count(2) == 1 and layers.count(4) == 1  # all layer 2 has left, and layer 4's own head
        assert sum(layer in (1, 3) for layer in layers) == 2  # layer 2's shortfall, from distance 1
    assert {h for s in sets for h in s if h[0] in (1, 3)} == {(1, h) for h in range(4)} | {(3, h) for h in range(4)}
    # without a shortfall, nearest= changes nothing
    easy = [(2, 0), (4, 3)]
    assert (random_head_sets(6, 4, like=easy, n_draws=20, seed=1, exclude=easy, nearest=True)
            == random_head_sets(6, 4, like=easy, n_draws=20, seed=1, exclude=easy))
    with pytest.raises(ValueError, match="nearest=True"):
        random_head_sets(6, 4, like=like, n_draws=1, seed=0, exclude=like)
    with pytest.raises(ValueError, match="only 2 can be drawn"):
        random_head_sets(1, 4, like=[(0, 0), (0, 1), (0, 2)], n_draws=1, seed=0, exclude=[(0, 0), (0, 1)], nearest=True)


def test_a_claim_that_presupposes_an_unreplicated_finding_cannot_replicate():
    strong = torch.linspace(0.9, 1.1, 40)
    behaviour = evaluate(CLAIM, torch.zeros(40), n_select=0)
    assert behaviour.verdict == "not replicated"
    f = evaluate(CLAIM, strong, null=torch.zeros(200), n_select=10, requires=[behaviour])
    assert f.verdict == "inconclusive" and "presupposes c" in f.note
    ok = evaluate(CLAIM, strong, n_select=0)
    assert evaluate(CLAIM, strong, null=torch.zeros(200), n_select=10, requires=[ok]).verdict == "replicated"
    # a negative verdict stays what it is
    assert evaluate(CLAIM, torch.zeros(40), n_select=10, requires=[behaviour]).verdict == "not replicated"


def test_a_finding_that_could_not_be_measured_says_so():
    claim = Claim("c", "a claim", paper="p", statistic="s", threshold=0.1)
    card = Scorecard("m", "nb")
    card.add(not_measured(claim, n_select=4, n_eval=1, note="the model answered 1/16 haystacks"))
    assert card.findings[0].verdict == "not measured"
    assert card.summary() == "c: no value (the model answered 1/16 haystacks) | null - | n 4/1 | not measured"
