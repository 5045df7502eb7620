"""The SAE-features protocol (notebook 05): disjoint split, name-position null, person-name reading, run().

Fast: the tiny word-level model of tests/test_ioi_protocol.py with a seeded random TopK SAE.
"""

import pytest
import torch
from test_ioi_protocol import word_model
from test_sae import random_sae

from workbench import sae as wsae
from workbench.core.subsets import overlaps
from workbench.findings.claims import VERDICTS, Scorecard
from workbench.phenomena import registry
from workbench.phenomena.ioi.dataset import ioi_dataset
from workbench.phenomena.sae_features import experiment
from workbench.phenomena.sae_features.analysis import (
    active_features,
    name_position_features,
    top_words,
)
from workbench.phenomena.sae_features.names import PERSON_NAMES, is_person_name

CORPUS = [
    "When Lucy and Tom went to the park, Lucy gave a ball to Tom. They flew to Miami.",
    "Mary said hello to John at the store. Then the Marlins won, and Sarah was happy.",
    "The team from Miami played well. Emma and Jack watched the game with their friend Laura.",
] * 3


@pytest.fixture
def setup():
    model = word_model()
    return model, random_sae(model, "blocks.1.hook_resid_pre", d_sae=64, k=8)


def test_split_shares_no_name_or_template_unlike_the_old_one(setup):
    model, _ = setup
    design = experiment.registration().design
    sel, ev = experiment.prepare(model, design, seed=0)
    assert (len(sel), len(ev)) == (design["n_select"], design["n_eval"])
    assert all(not shared for shared in overlaps(sel.factors, ev.factors).values())
    # The old split: template 0 for both and one name pool, seeds 0 and 1.
    old_sel, old_ev = (ioi_dataset(model, n=40, seed=s, templates=[0]) for s in (0, 1))
    old = overlaps(old_sel.factors, old_ev.factors)
    assert old["templates"] and old["names"]


def test_null_is_features_that_fire_at_name_positions(setup):
    model, sae = setup
    design = experiment.registration().design
    _, ev = experiment.prepare(model, design, seed=0)
    pool, drawn = experiment.null_features(model, sae, ev, 5, design, seed=0)
    assert 5 not in pool and set(drawn) <= set(pool) and len(drawn) == min(len(pool), design["n_null"])
    latents = wsae.encode(model, sae, ev.clean_tokens)
    rows = torch.arange(len(ev))
    at_names = torch.stack([latents[rows, ev.pos[p]] > 0 for p in ("IO", "S1", "S2")]).any(0).float().mean(0)
    assert all(at_names[f] >= design["null_min_share"] for f in pool)
    # The old null (features active anywhere) holds features that never fire at a name.
    old = active_features(model, sae, ev.clean_tokens, min_share=0.1)
    assert [f for f in old if at_names[f] < design["null_min_share"]]
    assert name_position_features(model, sae, ev, min_share=1.0, exclude=pool) == []
    with pytest.raises(ValueError, match="min_share"):
        name_position_features(model, sae, ev, min_share=0)


def test_reading_counts_person_names_not_capitals():
    claim = experiment.registration().claims["reading"]
    assert "person" in claim.statistic and claim.null and claim.threshold == 0.7
    assert not is_person_name("Miami") and not is_person_name("Marlins") and is_person_name(" Lucy")
    assert {"Mary", "John", "Lucy", "Laura"} <= PERSON_NAMES
    # Old design's top contexts of the chosen feature: capitalised 10/10, person names 7/10.
    old_words = ["Lucy", "Lucy", "Miami", "Mary", "Lucy", "Mary", "Laura", "Lucy", "Miami", "Marlins"]
    words = {1218: old_words, 3: ["Tom", "Mary", "the"], 4: ["John", "Emma"], 5: []}
    f = experiment.measure_reading(claim, words, 1218, [3, 4, 5], n_select=40)
    assert f.value == pytest.approx(0.7) and f.n_eval == 10 and f.n_null == 2
    assert f.verdict != "replicated"
    assert experiment.measure_reading(claim, words, 5, [3], n_select=40).verdict == "not measured"


def test_top_words_match_top_contexts(setup):
    model, sae = setup
    features = [0, 7, 13, 21]
    words = top_words(model, sae, features, CORPUS, k=5, context=16)
    for f in features:
        assert words[f] == wsae.top_contexts(model, sae, f, CORPUS, k=5, context=16)["word"].tolist()


def test_run_scores_every_claim_and_the_steps_agree(setup):
    model, sae = setup
    reg = experiment.registration()
    card = experiment.run(model, seed=0, sae=sae, corpus=CORPUS)
    assert [f.claim.name for f in card.findings] == list(reg.claims)
    assert {f.verdict for f in card.findings} <= set(VERDICTS) and card.notebook == "05_sae_features"
    # The notebook's steps, one by one.
    design, claims = reg.design, reg.claims
    sel, ev = experiment.prepare(model, design, seed=0)
    _, candidates = experiment.name_candidates(model, sae, sel, min_firing=design["min_firing"])
    _, feature = experiment.choose_feature(model, sae, sel, candidates)
    pool, nulls = experiment.null_features(model, sae, ev, feature, design, seed=0)
    ablation, _ = experiment.measure_ablation(model, sae, claims["held-out-ablation"], ev, feature, nulls,
                                              n_select=len(sel), note=f"feature {feature}; {len(pool)} name-position "
                                              "features in the pool")
    words = top_words(model, sae, [feature, *nulls], CORPUS, k=design["n_contexts"])
    reading = experiment.measure_reading(claims["reading"], words, feature, nulls, n_select=len(sel),
                                         note=f"feature {feature}; top contexts from the held-out corpus split")
    assert Scorecard(card.model, card.notebook, [ablation, reading]).summary() == card.summary()
    p = registry.get("sae_features")
    assert p.run is experiment.run and p.claims == "workbench.phenomena.sae_features"


def test_run_without_an_sae_is_not_measured(setup):
    model, _ = setup
    card = experiment.run(model)
    assert {f.verdict for f in card.findings} == {"not measured"} and len(card.findings) == 2
    assert all("no SAE" in f.note for f in card.findings)
