"""Notebook 07's experiment as a protocol: disjoint splits, fair random circuits, registered claims,
and steps that compose into run() (workbench.phenomena.circuit_discovery)."""

import dataclasses

import pytest
import torch

from workbench.core.subsets import overlaps
from workbench.findings import preregistration
from workbench.findings.claims import VERDICTS, Scorecard
from workbench.phenomena import registry
from workbench.phenomena.circuit_discovery import experiment as ex
from workbench.phenomena.circuit_discovery.nulls import (
    random_connected_circuit,
    random_connected_circuits,
)
from workbench.phenomena.ioi.dataset import FACTORS, TEMPLATES, IOIDataset, ioi_dataset, ioi_split
from workbench.techniques import edges

SMALL = {"n_select": 6, "n_eval": 8, "registered_sizes": [4, 6], "n_null": 3, "min_gap": float("-inf"),
         "steps": 2}


def synthetic_ioi(model, n: int, seed: int) -> IOIDataset:
    """IOI-shaped token data for a model without a tokenizer: the answer pair is the clean run's
    best and worst token at END, so the clean and corrupted runs differ."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.cfg.d_vocab, (n, 8), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 4] = torch.randint(1, model.cfg.d_vocab, (n,), generator=gen)
    with torch.no_grad():
        logits = model(clean)[:, -1]
    end = torch.full((n,), 7)
    return IOIDataset(
        prompts=[f"p{i}" for i in range(n)], corrupted_prompts=[f"c{i}" for i in range(n)],
        abc_prompts=[f"c{i}" for i in range(n)], clean_tokens=clean, corrupted_tokens=corrupted,
        abc_tokens=corrupted, io_ids=logits.argmax(-1), s_ids=logits.argmin(-1),
        pos={"END": end, "S2": torch.full((n,), 4)}, template_ids=torch.zeros(n, dtype=torch.long),
        order=["ABBA"] * n, corruption="ABC", names=[("A", "B")] * n)


def test_claims_match_their_lock_and_record_both_amendments():
    reg = preregistration.load(ex.CLAIMS)
    assert set(reg.claims) == {"cmd_ig_vs_random", "cmd_ig_vs_eap", "small_ig_circuit"}
    assert (reg.design["n_select"], reg.design["n_eval"]) == (32, 64)
    assert reg.design["registered_sizes"] == [24, 32]
    assert all("24/32 -> 32/64" in c.amended for c in reg.claims.values())
    assert reg.design["n_null"] >= 20  # at the size small_ig_circuit uses
    assert registry.get("circuit_discovery").run is ex.run
    assert [s.name for s in ex.settings()] == ["amended", "registered"]


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"attn_only": True, "n_layers": 3}, {"post_norm": True}])
def test_random_connected_circuits_survive_pruning(kw):
    """Every edge lies on an embeddings-to-logits path: pruning keeps all of them (a uniform random
    circuit of the same size loses most)."""
    lay = edges.Layout(kw.get("n_layers", 2), 4, kw.get("n_kv_heads", 4), not kw.get("attn_only", False),
                       kw.get("post_norm", False))
    g = edges.Graph(lay, torch.zeros(lay.n_forward, lay.n_backward))
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 3, 10, lay.n_edges // 2, lay.n_edges):
        mask = random_connected_circuit(lay, n, gen)
        assert n <= int(mask.sum()) <= n + 2 * lay.n_layers + 2
        assert torch.equal(g.with_circuit(mask).prune().in_circuit, mask)
    a = random_connected_circuits(lay, [5, 9], 2, seed=1)
    b = random_connected_circuits(lay, [5, 9], 2, seed=1)
    assert all(torch.equal(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    with pytest.raises(ValueError, match="n must be"):
        random_connected_circuit(lay, lay.n_edges + 1, gen)


def test_combined_chunks_equal_scoring_at_once(tiny):
    data = synthetic_ioi(tiny, 6, seed=0)
    d = {**ex.design(), **SMALL}
    graphs = ex.select(tiny, data, d)
    from workbench.core.metrics import normalise

    metric = normalise(tiny, data.clean_tokens, data.corrupted_tokens, data.logit_diff())
    for method in ex.METHODS:
        whole = edges.attribute_edges(tiny, data.clean_tokens, data.corrupted_tokens, metric, method=method, steps=2)
        assert torch.allclose(graphs["amended"][method].matrix, whole.matrix, rtol=1e-4, atol=1e-6)


def test_steps_compose_into_run_on_the_tiny_model(tiny):
    sel, ev = synthetic_ioi(tiny, 6, seed=0), synthetic_ioi(tiny, 8, seed=1)
    d = {**ex.design(), **SMALL}
    cards = ex.run_all(tiny, data=(sel, ev), design_override=SMALL, label="tiny")
    graphs = ex.select(tiny, sel, d)
    meas = ex.measure(tiny, ev, graphs, d)
    claims = ex.registration().claims
    by_hand = {name: ex.scorecard(m, claims, label="tiny") for name, m in meas.items()}
    assert set(cards) == {"amended", "registered"}
    for name, card in cards.items():
        assert card.summary() == by_hand[name].summary()
        assert {f.claim.name for f in card.findings} == set(claims)
        assert all(f.verdict in VERDICTS and f.verdict != "not measured" for f in card.findings)
    small = next(f for f in cards["amended"].findings if f.claim.name == "small_ig_circuit")
    assert small.n_null == 3 and small.n_eval == 8 and small.n_select == 6
    reg = next(f for f in cards["registered"].findings if f.claim.name == "small_ig_circuit")
    assert (reg.n_select, reg.n_eval) == (4, 6) and "registered design" in reg.note and not reg.claim.amended
    # Full circuits are the clean run, the areas follow the rule.
    c = meas["amended"].curves["eap-ig"]
    assert abs(c.faithfulness[-1].item() - 1) < 1e-6
    assert (c.cpr, c.cmd) == edges.areas(c.x, c.faithfulness)


def test_run_without_prompts_or_behaviour_is_not_measured(tiny):
    card = ex.run(tiny)  # no tokenizer: no IOI prompt
    assert isinstance(card, Scorecard) and card.notebook == "07_circuit_discovery"
    assert {f.claim.name for f in card.findings} == set(ex.registration().claims)
    assert {f.verdict for f in card.findings} == {"not measured"}
    gapless = ex.run(tiny, data=(synthetic_ioi(tiny, 32, 0), synthetic_ioi(tiny, 64, 1)),
                     label="tiny")  # the registered min_gap: a random model has no IOI behaviour
    assert {f.verdict for f in gapless.findings} == {"not measured"}
    assert all("no IOI behaviour" in f.note for f in gapless.findings)


@pytest.mark.slow
def test_ioi_split_is_disjoint_on_every_factor_and_the_old_split_was_not(smollm2):
    sel, ev = ex.prepare(smollm2)
    assert (len(sel), len(ev)) == (32, 64)
    assert set(sel.factors) == set(FACTORS)
    assert all(not shared for shared in overlaps(sel.factors, ev.factors).values())
    # The registered setting's prompts are the first ones of the same split.
    s24, e32 = ioi_split(smollm2, 24, 32, seed=0)
    assert s24.prompts == sel.prompts[:24] and e32.prompts == ev.prompts[:32]
    # The split notebook 07 used before: templates 0-7 / 8-15, names from one pool.
    half = len(TEMPLATES) // 2
    old_sel = ioi_dataset(smollm2, n=32, seed=0, templates=list(range(half)))
    old_ev = ioi_dataset(smollm2, n=64, seed=1, templates=list(range(half, len(TEMPLATES))))
    assert overlaps(old_sel.factors, old_ev.factors)["names"]


def test_setting_dataclass_is_frozen():
    s = ex.Setting("amended", 32, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_eval = 1  # type: ignore[misc]
