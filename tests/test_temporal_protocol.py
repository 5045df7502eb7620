"""Temporal heads as a pre-registered experiment (issue 23): a split by relation and subject, a
layer-matched null, drops normalised by their set's clean value, alias facts from the evaluation
relations only; run() holds every registered claim, and the notebook's steps compose to run().

Fast: the tiny model with the word tokenizer of tests/test_temporal.py (a few seconds in all).
"""

import pytest
import torch
from test_temporal import word_model

from workbench.core.subsets import overlaps
from workbench.findings.claims import VERDICTS
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.temporal import experiment as ex
from workbench.phenomena.temporal.dataset import split_relations, temporal_facts, temporal_relations


@pytest.fixture(scope="module")
def wm():
    return word_model()


@pytest.fixture(scope="module")
def data(wm):
    return ex.prepare(wm, seed=0)


def _shared(a, b):
    return {k: v for k, v in overlaps(a.factors, b.factors).items() if v}


def test_the_split_is_disjoint_on_every_factor():
    model = word_model()
    for seed in range(3):
        sel_rel, ev_rel = split_relations(seed=seed)
        assert not set(sel_rel) & set(ev_rel) and sorted(sel_rel + ev_rel) == temporal_relations()
        select = temporal_facts(model, relations=sel_rel, seed=seed)
        evaluation = temporal_facts(model, relations=ev_rel, seed=seed)
        alias = temporal_facts(model, relations=ev_rel, time_format="alias", seed=seed)
        assert set(select.factors) == {"relation", "subject"}
        assert _shared(select, evaluation) == {}
        assert _shared(select, alias) == {}


def test_the_old_split_by_fact_and_year_shares_subjects_and_relations():
    """What the disjointness check catches: the notebook's former split (kept prompts shuffled and
    halved) puts the same subject and relation in both halves."""
    facts = temporal_facts(word_model(), seed=0)
    order = torch.randperm(len(facts), generator=torch.Generator().manual_seed(0)).tolist()
    half = len(order) // 2
    old = _shared(facts.subset(order[:half]), facts.subset(order[half:]))
    assert old["relation"] and old["subject"]


def test_prepare_keeps_the_parts_apart(data):
    assert data.relations["select"] and data.relations["evaluation"]
    for part in ("evaluation", "alias"):
        ds = getattr(data, part)
        if ds is not None:
            assert ds.factors["relation"] <= set(data.relations["evaluation"])
            if data.select is not None:
                assert _shared(data.select, ds) == {}


def test_the_null_is_layer_matched(wm, data):
    chosen = [(1, 0), (1, 2)]
    m = ex.measure(wm, data, chosen, ex.registration().claims, n_null=6, min_facts=1)
    assert len(m.null_sets) == 6
    for s in m.null_sets:
        assert sorted(layer for layer, _ in s) == [1, 1] and not set(s) & set(chosen)


def test_the_specific_statistic_divides_each_drop_by_its_set_s_clean_value():
    # temporal: clean 1, ablated 0.5 (half lost); invariant: clean 10, ablated 7 (30% lost)
    pair = torch.tensor([[1.0, 0.5, 10.0, 7.0]] * 4)
    assert ex.relative_drop_difference(pair).item() == pytest.approx(0.5 - 0.3)
    # the raw difference (0.5 - 3) would call invariant facts the more hurt; scaling one set changes nothing
    scaled = pair * torch.tensor([1.0, 1.0, 0.1, 0.1])
    assert ex.relative_drop_difference(scaled).item() == pytest.approx(0.2)


def _check_card(card):
    claims = ex.registration().claims
    assert [f.claim.name for f in card.findings] == list(claims)
    assert all(f.verdict in VERDICTS for f in card.findings)
    assert card.notebook == "03_temporal_heads"


def test_run_without_a_tokenizer_says_nothing_was_measured():
    card = ex.run(tiny_model())
    _check_card(card)
    assert {f.verdict for f in card.findings} == {"not measured"}
    assert all("tokenizer" in f.note for f in card.findings)


def test_run_on_a_random_model_and_the_notebook_steps_agree(wm):
    model = wm
    card = ex.run(model, seed=0, label="word")
    _check_card(card)
    assert card.model == "word"
    # the notebook's steps, called one by one, give the same scorecard
    reg = ex.registration()
    d = reg.design
    data = ex.prepare(model, seed=0, design=d)
    chosen = ex.select_heads(model, data.select, n_candidates=d["n_candidates"], top_k=d["top_k"]).chosen \
        if data.n("select") >= d["min_facts"] else []
    m = ex.measure(model, data, chosen, reg.claims, n_null=d["n_null"], min_facts=d["min_facts"], seed=0)
    assert ex.scorecard(model, m.findings, label="word").summary() == card.summary()


def test_run_is_registered_with_the_claims():
    p = registry.get("temporal")
    assert p.run is ex.run and p.claims == "workbench.phenomena.temporal"
