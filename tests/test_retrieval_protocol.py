"""Retrieval (notebook 02) as a pre-registered experiment: disjoint split, layer-matched null that
excludes no head for its score, masking at every position, and run() on small models."""

import dataclasses

import pytest
import torch

from workbench.core.components import random_head_sets
from workbench.core.subsets import overlaps
from workbench.findings import VERDICTS, preregistration
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.retrieval import experiment as ex
from workbench.phenomena.retrieval.dataset import filler_paragraphs, load_filler

torch.set_num_threads(1)


class CharTokenizer:
    """One token per character (id = code point - 22 for printable ASCII, newline 1), BOS = 0."""

    bos_token_id = 0
    eos_token_id = 0
    pad_token_id = 0
    padding_side = "right"
    all_special_ids = [0]
    added_tokens_decoder: dict = {}

    def encode(self, text, add_special_tokens=False):
        return [1 if c == "\n" else ord(c) - 22 for c in text]

    def decode(self, ids):
        return "".join("\n" if i == 1 else "<bos>" if i == 0 else chr(i + 22) for i in ids)

    def __len__(self):
        return 105


def char_model(n_ctx=1100):
    """A tiny random model that reads text one character per token."""
    model = tiny_model(d_vocab=105, n_ctx=n_ctx)
    model.tokenizer = CharTokenizer()
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_factors_are_disjoint_factor_by_factor(seed):
    sel, ev = ex.split_factors(seed)
    assert set(sel) == set(ev) == {"needle", "filler"}
    assert overlaps({k: set(v) for k, v in sel.items()}, {k: set(v) for k, v in ev.items()}) == {
        "needle": set(), "filler": set()}
    assert set(sel["needle"]) | set(ev["needle"]) == set(ex.NEEDLE_POOL)
    assert len(set(sel["filler"]) | set(ev["filler"])) == len(filler_paragraphs())


def test_haystacks_of_each_half_hold_only_their_own_needles_and_filler():
    """Issue 23: 02 used one needle sentence and the whole filler in both halves."""
    model = char_model()
    design = dict(preregistration.load(ex.PACKAGE).design, score_lengths=[300], eval_per=2)
    select, evaluate = ex.prepare(model, design)
    assert overlaps(select.factors, evaluate.factors) == {"needle": set(), "filler": set()}
    paragraphs = filler_paragraphs()
    for half, other in ((select, evaluate), (evaluate, select)):
        theirs = [ex.NEEDLE_POOL[n].sentence.split("{code}")[0] for n in other.needles]
        for h in half.haystacks:
            text = model.tokenizer.decode(h.tokens[0].tolist())
            needle = model.tokenizer.decode(h.tokens[0, slice(*h.needle_span)].tolist())
            assert not any(t in text for t in theirs)
            assert any(ex.NEEDLE_POOL[n].sentence.split("{code}")[0] in needle for n in half.needles)
            before, after = text[len("<bos>"):].split(needle)
            after = after.split("\n\n")[0]
            piece = max(before, after, key=len)[:40]  # a stretch of this haystack's filler
            assert len(piece) >= 20
            assert piece in load_filler(paragraphs=half.paragraphs) + " " + paragraphs[half.paragraphs[0]]
            assert not any(piece in paragraphs[p] for p in other.paragraphs)


def test_null_is_layer_matched_and_excludes_no_head_for_its_score(monkeypatch):
    """Issue 23: the null excluded every head above 0.1; now any head of the chosen layers is drawn."""
    model = char_model(n_ctx=200)
    design = dict(preregistration.load(ex.PACKAGE).design, eval_per=2, eval_everywhere_per=1,
                  n_null=30, n_null_everywhere=3)
    _, evaluate = ex.prepare(model, dict(design, score_lengths=[160]))
    chosen = [(0, 1), (1, 2)]
    selection = ex.RetrievalSelection(None, torch.zeros(1, 2, 4), 2, 2, chosen)
    m = ex.measure(model, evaluate, selection, design)
    assert m.null_sets == random_head_sets(2, 4, like=chosen, n_draws=30, seed=0)
    assert all(sorted(a for a, _ in s) == [0, 1] for s in m.null_sets)
    drawn = {h for s in m.null_sets for h in s}
    assert set(chosen) <= drawn  # the best-scoring heads themselves are drawn too
    assert m.at_answer.shape == (2 + 30, len(evaluate))
    assert m.everywhere.shape == (2 + 3, len(ex.everywhere_subset(evaluate.haystacks, design)))


def test_masking_everywhere_is_a_registered_claim():
    reg = preregistration.load(ex.PACKAGE)
    assert {"exist", "sparse", "masking", "masking-everywhere", "random"} == set(reg.claims)
    assert "0.1" not in reg.claims["masking"].null and "any head" in reg.claims["masking"].null
    assert reg.claims["masking"].amended and not reg.claims["masking-everywhere"].amended


@pytest.fixture
def small_design(monkeypatch):
    """The registered design with shorter selection haystacks (the tests stay fast)."""
    reg = preregistration.load(ex.PACKAGE)
    small = dataclasses.replace(reg, design=dict(reg.design, score_lengths=[300]))
    monkeypatch.setattr(ex, "registration", lambda: small)
    return small


@pytest.mark.filterwarnings("ignore:The model answered none")
@pytest.mark.parametrize("make", [tiny_model, lambda: char_model(n_ctx=400)], ids=["no tokenizer", "chars"])
def test_run_returns_every_registered_claim(make, small_design):
    model = make()
    card = ex.run(model)
    reg = preregistration.load(ex.PACKAGE)
    assert [f.claim.name for f in card.findings] == list(reg.claims)
    assert all(f.verdict in VERDICTS for f in card.findings)
    assert card.notebook == "02_retrieval_heads" and card.model == model.cfg.model_name
    assert registry.get("retrieval").run is ex.run
    assert registry.get("retrieval").claims == "workbench.phenomena.retrieval"


@pytest.mark.filterwarnings("ignore:The model answered none")
def test_notebook_steps_and_run_agree(small_design):
    model = char_model(n_ctx=400)
    reg = ex.registration()
    select, evaluate = ex.prepare(model, reg.design)
    selection = ex.select_heads(model, select, reg.design)
    card = ex.scorecard(reg, "m", selection, None, n_select=len(select), n_eval=len(evaluate),
                        note=f"the model answers none of the {len(select)} selection haystacks")
    assert card.summary() == ex.run(model, label="m").summary()
