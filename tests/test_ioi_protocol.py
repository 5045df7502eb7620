"""The IOI protocol (notebook 01): registered claims, a split disjoint on every factor, run() and its steps.

Fast: a tiny model with a word-level tokenizer (every name, place and object one token), so the
IOI prompts tokenize as they do for SmolLM2 and the whole experiment runs in seconds.
"""

import re

import pytest
import torch

from workbench.core.subsets import overlaps
from workbench.findings.claims import VERDICTS, Scorecard, evaluate
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.ioi import circuits, experiment
from workbench.phenomena.ioi.dataset import FACTORS, TEMPLATES, ioi_dataset, ioi_split


class WordTokenizer:
    """Words keep their leading space; punctuation stands alone (names are single tokens)."""

    def __init__(self):
        self.pattern = re.compile(r" ?[^\W\d_]+|\d| |\n|[^\w\s]")
        self.vocab = {"<bos>": 0, "<pad>": 1}
        self.bos_token_id, self.pad_token_id, self.eos_token_id = 0, 1, 1
        self.padding_side = "right"

    def encode(self, text, add_special_tokens=False):
        pieces = self.pattern.findall(text)
        assert "".join(pieces) == text, "the word tokenizer must cover the whole text"
        return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

    def decode(self, ids):
        inverse = {i: p for p, i in self.vocab.items()}
        return "".join(inverse[int(i)] for i in ids)

    def convert_ids_to_tokens(self, ids):
        inverse = {i: p for p, i in self.vocab.items()}
        return [inverse[int(i)] for i in ids]


def word_model(seed: int = 0):
    """A tiny random model (2 layers, 4 heads) that reads words: no IOI behaviour, real IOI prompts."""
    model = tiny_model(d_vocab=600, d_model=32, seed=seed)
    model.tokenizer = WordTokenizer()
    return model


@pytest.fixture
def wm():
    return word_model()


def test_split_is_disjoint_on_every_factor(wm):
    sel, ev = ioi_split(wm, 16, 24, seed=3)
    assert (len(sel), len(ev)) == (16, 24)
    assert set(sel.factors) == set(ev.factors) == set(FACTORS)
    for factor, shared in overlaps(sel.factors, ev.factors).items():
        assert not shared, (factor, shared)
        assert sel.factors[factor] and ev.factors[factor], factor
    # Every name in a prompt (IO, S, the ABC and corrupted names) is from its own half.
    for ds in (sel, ev):
        for prompts in (ds.prompts, ds.abc_prompts, ds.corrupted_prompts):
            for text in prompts:
                words = set(re.findall(r"[A-Z][a-z]+", text))
                other = ev if ds is sel else sel
                assert not words & other.factors["names"], text
    assert sel.factors["templates"] <= set(TEMPLATES)


def test_the_old_split_shared_names_places_and_objects(wm):
    """The split 01 used before (templates 0-7 / 8-15, IO and S from two halves of the names):
    the disjointness check catches its shared ABC names, places and objects."""
    old_sel, old_ev = circuits.ioi_splits(wm, 16, 24, seed=0)
    shared = overlaps(old_sel.factors, old_ev.factors)
    assert not shared["templates"]
    assert shared["names"] and shared["places"] and shared["objects"]


def test_ioi_dataset_defaults_unchanged_and_pools_restricted(wm):
    a = ioi_dataset(wm, n=8, seed=1)
    b = ioi_dataset(wm, n=8, seed=1, names=None, places=None, objects=None)
    assert a.prompts == b.prompts and torch.equal(a.clean_tokens, b.clean_tokens)
    c = ioi_dataset(wm, n=8, seed=1, templates=[0], names=["Mary", "John", "Tom"], places=["store"],
                    objects=["ring"])
    assert c.factors["names"] == {"Mary", "John", "Tom"} and c.factors["places"] == {"store"}
    assert c.subset([0]).factors["templates"] == {TEMPLATES[0]}
    with pytest.raises(TypeError, match="sequence of words"):
        ioi_dataset(wm, n=2, names="Mary John Tom")
    with pytest.raises(ValueError, match="at least 1"):
        ioi_split(wm, 4, 0)


def test_registered_claims_and_registry():
    reg = experiment.registration()
    assert list(reg.claims) == ["behaviour", "faithfulness", "incompleteness", "name-movers-attend-IO",
                                "s-inhibition-attend-S2", "s2-heads-attend-S1"]
    assert reg.claims["faithfulness"].threshold == 0.8 and reg.claims["faithfulness"].weaker == 0.5
    assert "ioi_split" in reg.design["split"] and all(c.amended for c in reg.claims.values())
    p = registry.get("ioi")
    assert p.run is experiment.run and p.claims == "workbench.phenomena.ioi"


def test_faithfulness_bound_at_the_bar_does_not_decide():
    """01 printed faithfulness [0.80, 1.08] against 0.8 and called it from the raw bound; under the
    registered claim a bound within the tolerance of the bar is inconclusive, and the line shows
    the margin."""
    claim = experiment.registration().claims["faithfulness"]
    per_item = torch.stack([torch.full((64,), 0.8027), torch.ones(64)], 1)
    finding = evaluate(claim, per_item, statistic=lambda x: x[:, 0].mean() / x[:, 1].mean(),
                       null=torch.zeros(20), n_select=16)
    assert f"{finding.ci_low:.2f}" == "0.80" and finding.verdict == "inconclusive"
    assert 0 < finding.margin < claim.tolerance
    line = Scorecard("m", "01_ioi_circuit", [finding]).summary()
    assert "vs 0.8 (margin +0.003)" in line and line.endswith(f"inconclusive | amended: {claim.amended}")


def test_run_on_a_tiny_model_scores_every_claim(wm):
    card = experiment.run(wm, seed=0)
    reg = experiment.registration()
    assert [f.claim.name for f in card.findings] == list(reg.claims)
    assert {f.verdict for f in card.findings} <= set(VERDICTS)
    assert card.notebook == "01_ioi_circuit" and card.model == "tiny-2l4h"
    f = {x.claim.name: x for x in card.findings}
    # A random model lacks the behaviour: the circuit's ratios are not measured, nothing replicates.
    assert f["behaviour"].verdict == "not replicated"
    assert f["faithfulness"].verdict == f["incompleteness"].verdict == "not measured"
    assert "lacks the behaviour" in f["faithfulness"].note
    assert "replicated" not in {x.verdict for x in card.findings}
    # Claims that can still be measured are: attention of a non-empty class against its null.
    measured = [x for x in card.findings[3:] if x.verdict != "not measured"]
    assert measured and all(x.n_null == reg.design["n_null_heads"] for x in measured)


def test_the_notebook_steps_and_run_agree(wm):
    reg = experiment.registration()
    claims, design = reg.claims, reg.design
    sel, ev = experiment.prepare(wm, design, seed=1)
    behaviour, _ = experiment.measure_behaviour(wm, claims["behaviour"], ev, seed=1)
    found, circuit = experiment.select(wm, sel, design)
    faith, F = experiment.measure_faithfulness(wm, claims["faithfulness"], ev, circuit, design,
                                               behaviour=behaviour, n_select=len(sel), seed=1, extra=[circuit[:1]])
    assert F.shape == (2 + 1 + design["n_null_circuits"], len(ev))
    incomplete, comp = experiment.measure_incompleteness(wm, claims["incompleteness"], ev, circuit, F[1], design,
                                                         behaviour=behaviour, n_select=len(sel), seed=1)
    attention, scores = experiment.measure_attention(wm, claims, ev, found, design, behaviour=behaviour,
                                                     n_select=len(sel), seed=1)
    steps = Scorecard("tiny-2l4h", "01_ioi_circuit", [behaviour, faith, incomplete, *attention])
    assert steps.summary() == experiment.run(wm, seed=1).summary()
    assert set(scores) == {"name-movers-attend-IO", "s-inhibition-attend-S2", "s2-heads-attend-S1"}
    assert len(comp.subsets) == design["n_subsets"]
