"""Head atlas: selection rule, tables, saved files; the finders on a real model (slow)."""

import math

import pandas as pd
import pytest
import torch

from workbench import atlas as atlas_mod
from workbench.core.components import top_positive
from workbench.core.results import Result
from workbench.models import tiny_model
from workbench.phenomena import registry
from workbench.phenomena.atlas.analysis import NEEDLES, HeadAtlas, default_k, head_atlas
from workbench.phenomena.ioi.finder import ioi_scores
from workbench.techniques.heads import HeadSet


def _scores(values, name="score"):
    return Result(torch.tensor(values, dtype=torch.float32), ("layer", "head"), name)


def test_top_positive_skips_non_positive_and_nan():
    s = _scores([[0.5, -1.0, float("nan")], [0.0, 2.0, 0.1]])
    assert sorted(top_positive(s, 2, "r")) == [(0, 0), (1, 1)]
    assert sorted(top_positive(s, 10, "r")) == [(0, 0), (1, 1), (1, 2)]  # only 3 positive scores
    assert top_positive(s, 1, "r").name == "r"
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_positive(s, 0, "r")


def test_top_positive_matches_a_plain_sort():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=gen)
    s = Result(values, ("layer", "head"), "x")
    order = sorted(((v, (i // 5, i % 5)) for i, v in enumerate(values.flatten().tolist()) if v > 0), reverse=True)
    for k in (1, 4, 9):
        assert set(top_positive(s, k, "x")) == {h for _, h in order[:k]}


def test_default_k():
    class Cfg:
        def __init__(self, n_layers, n_heads):
            self.n_layers, self.n_heads = n_layers, n_heads

    class M:
        def __init__(self, *shape):
            self.cfg = Cfg(*shape)

    assert default_k(M(30, 9)) == 8  # SmolLM2-135M: 3% of 270
    assert default_k(M(18, 4)) == 3  # Gemma-3-270m: 3% of 72 is 2, at least 3
    assert default_k(M(2, 2)) == 3


def _atlas():
    sets = {
        "name mover": HeadSet({(3, 0), (3, 1), (2, 2)}, "name mover"),
        "induction": HeadSet({(1, 0), (2, 2), (3, 1)}, "induction"),
        "temporal": HeadSet({(0, 1)}, "temporal"),
    }
    scores = {r: _scores(torch.rand(4, 3, generator=torch.Generator().manual_seed(i)).tolist(), r)
              for i, r in enumerate(sets)}
    return HeadAtlas("toy", (4, 3), 3, scores, sets)


def test_to_frame_one_row_per_head_with_its_roles():
    a = _atlas()
    f = a.to_frame()
    assert f["label"].tolist() == ["L0H1", "L1H0", "L2H2", "L3H0", "L3H1"]
    row = f.set_index("label").loc["L2H2"]
    assert row["n_roles"] == 2 and row["roles"] == "name mover; induction"
    assert row["induction"] == pytest.approx(a.scores["induction"].values[2, 2].item())


def test_overlaps_against_hand_counts():
    o = _atlas().overlaps().set_index(["role_a", "role_b"])
    nm_ind = o.loc[("name mover", "induction")]
    assert nm_ind["shared"] == 2 and nm_ind["jaccard"] == pytest.approx(2 / 4)
    assert nm_ind["a_in_b"] == pytest.approx(2 / 3) and nm_ind["b_in_a"] == pytest.approx(2 / 3)
    assert nm_ind["chance_shared"] == pytest.approx(3 * 3 / 12)
    assert nm_ind["heads"] == "L2H2 L3H1"
    assert o.loc[("name mover", "temporal")]["shared"] == 0
    assert len(o) == 3


def test_overlap_matrix_is_symmetric_for_jaccard():
    m = _atlas().overlap_matrix("jaccard")
    assert (m.values == m.values.T).all() and (m.values.diagonal() == 1).all()


def test_save_writes_png_and_csvs_that_read_back(tmp_path):
    a = _atlas()
    paths = a.save_report(tmp_path / "atlas")
    assert [p.name for p in paths] == ["atlas.png", "atlas_heads.csv", "atlas_overlaps.csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    heads = pd.read_csv(paths[1])
    assert heads["label"].tolist() == a.to_frame()["label"].tolist()
    overlaps = pd.read_csv(paths[2])
    assert overlaps["shared"].tolist() == a.overlaps()["shared"].tolist()
    assert not list((tmp_path / "atlas").glob(".*partial"))


def test_plot_colours_every_role_membership():
    fig = _atlas().plot()
    stripes = [p for p in fig.axes[0].patches if hasattr(p, "_head")]
    assert len(stripes) == 3 + 3 + 1  # one stripe per (head, role)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="Unknown phenomena"):
        head_atlas(tiny, phenomena=["ioi", "colours"])
    with pytest.raises(ValueError, match="k must be between 1"):
        head_atlas(tiny, phenomena=["induction"], k=0)


def test_finders_cover_every_role():
    assert set(atlas_mod.finders()) == {"ioi", "induction", "retrieval", "temporal", "arithmetic"}
    roles = [r.name for r in registry.roles()]
    assert roles == ["name mover", "S-inhibition", "induction", "retrieval", "temporal", "arithmetic"]
    assert len({r.colour for r in registry.roles()}) == len(roles)  # one colour per role


def test_a_registered_phenomenon_joins_the_atlas(tiny, monkeypatch):
    """A new role is one registration: the atlas runs its finder and draws it in its colour."""

    def twins(model, *, k, seed=0):
        return {"twin": Result(torch.arange(8.0).reshape(2, 4), ("layer", "head"), "twin score")}

    monkeypatch.setattr(registry, "PHENOMENA", dict(registry.PHENOMENA))
    registry.register(registry.Phenomenon("twins", "Twin heads", finder=twins,
                                          roles=(registry.Role("twin", "C7", "a test role"),)))
    a = head_atlas(tiny, phenomena=["induction", "twins"], k=2, verbose=False)
    assert list(a.sets) == ["induction", "twin"]
    assert sorted(a.sets["twin"]) == [(1, 2), (1, 3)]
    fig = a.plot()
    legend = {t.get_text(): h.get_facecolor() for t, h in zip(fig.axes[0].get_legend().texts,
                                                                fig.axes[0].get_legend().legend_handles)}
    import matplotlib.colors as mcolors
    assert mcolors.to_hex(legend["twin"]) == mcolors.to_hex("C7")


def test_registering_a_taken_name_or_role_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "PHENOMENA", dict(registry.PHENOMENA))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Phenomenon("ioi", "Another IOI"))
    with pytest.raises(ValueError, match="already declared"):
        registry.register(registry.Phenomenon("x", "X", finder=lambda m, **kw: {},
                                              roles=(registry.Role("induction", "C9"),)))
    with pytest.raises(ValueError, match="Unknown phenomenon 'nope'"):
        registry.get("nope")


def test_induction_only_atlas_on_the_tiny_model(tiny):
    a = head_atlas(tiny, phenomena=["induction"], k=2, verbose=False)
    assert list(a.sets) == ["induction"]
    scores = a.scores["induction"].values
    expected = {(i // tiny.cfg.n_heads, i % tiny.cfg.n_heads) for i in scores.flatten().argsort(descending=True)[:2].tolist()
                if scores.flatten()[i] > 0}
    assert set(a.sets["induction"]) == expected


@pytest.mark.slow
def test_ioi_finder_on_smollm2(smollm2):
    """The IOI finder on a real model, on 4 prompts (the full atlas runs in notebooks/06_head_atlas
    under nbval)."""
    scores = ioi_scores(smollm2, k=4, n_prompts=4)
    assert list(scores) == ["name mover", "S-inhibition"]
    sets = {role: top_positive(sc, 4, role) for role, sc in scores.items()}
    for role, s in sets.items():
        assert len(s) == 4, role
        values = scores[role].values
        best = values.nan_to_num(nan=-math.inf).max()
        assert any(values[l, h] == best for l, h in s), role  # the best head is always in
    # S-inhibition heads act on the name movers' queries, so they sit below the lowest name mover.
    assert max(l for l, _ in sets["S-inhibition"]) < min(l for l, _ in sets["name mover"])


def test_layer_matched_overlap_null_keeps_layers_and_matches_the_expected_count():
    from workbench.phenomena.atlas.analysis import layer_matched_overlap_null

    whole = [(1, 0), (1, 1), (1, 2)]  # a whole layer: every draw is the same set
    assert layer_matched_overlap_null(whole, whole, (4, 3), n_draws=50).tolist() == [3.0] * 50
    a, b = [(1, 0), (2, 1), (2, 2)], [(2, 0), (3, 1)]
    null = layer_matched_overlap_null(a, b, (4, 3), n_draws=4000, seed=1)
    # only layer 2 is shared: E[shared] = |a in L2| * |b in L2| / heads per layer = 2 * 1 / 3
    assert null.max() <= 1 and abs(null.mean().item() - 2 / 3) < 0.03
    assert layer_matched_overlap_null(a, [], (4, 3), n_draws=5).tolist() == [0.0] * 5


def test_overlaps_with_a_layer_matched_null():
    o = _atlas().overlaps(null_draws=200).set_index(["role_a", "role_b"])
    row = o.loc[("name mover", "induction")]
    assert 0 <= row["null_shared"] <= 3 and 0 <= row["null_percentile"] <= 100
    assert o.loc[("name mover", "temporal")]["null_percentile"] == 50.0  # 0 shared, a null of zeros
    assert "null_shared" not in _atlas().overlaps().columns


def test_needle_form_is_checked(tiny):
    with pytest.raises(ValueError, match="needle must be one of"):
        head_atlas(tiny, phenomena=["induction"], needle="copy")


def test_an_absent_phenomenon_gives_an_empty_role_not_an_error(tiny, monkeypatch):
    import dataclasses

    def absent(model, **kw):
        raise registry.PhenomenonAbsent("answers none of the facts")

    monkeypatch.setitem(registry.PHENOMENA, "temporal", dataclasses.replace(registry.PHENOMENA["temporal"], finder=absent))
    a = head_atlas(tiny, phenomena=["induction", "temporal"], k=2, verbose=False)
    assert len(a.sets["temporal"]) == 0 and torch.isnan(a.scores["temporal"].values).all()
    assert len(a.sets["induction"]) == 2
    assert a.overlaps()["shared"].tolist() == [0]


# --------------------------------------------------------------------------------------------
# The cross-phenomenon claims as a pre-registered experiment (issue 23)


def _char_model(n_ctx=500):
    from test_retrieval_protocol import char_model  # tests/ is on the path, as for `hooks`

    return char_model(n_ctx=n_ctx)


def test_held_out_answer_is_not_written_in_the_needle_and_no_scored_step_is_an_induction_step():
    """Issue 23: with " 4821" written as in the needle, every digit after the first follows the same
    token in the needle as in the answer, so an induction step does it. The held-out needle now
    writes 4-8-2-1, and a step is scored only where no induction step reaches the answer token."""
    from workbench.phenomena.atlas import experiment as ax

    model = _char_model()
    _, heldout = ax.prepare(model, ax.registration().design)
    assert heldout
    for h in heldout:
        full = h.full_tokens[0].tolist()
        n, (start, end) = h.context_length, h.needle_span
        needle, answer = full[start:end], h.answer_ids.tolist()
        assert h.answer_span is None
        assert not any(needle[i:i + len(answer)] == answer for i in range(len(needle)))  # not in the needle
        scored = h.copy_steps().tolist()
        assert sum(scored) >= len(h.meta["code"]) - 1  # the digits after the first
        for j, on in enumerate(scored):
            if not on:
                continue
            assert model.tokenizer.decode([answer[j]]).isdigit()  # a digit, never a bare space
            before = full[n - 1 + j]  # the token before answer token j
            assert not any(full[p] == answer[j] and full[p - 1] == before for p in range(start, end))


def test_the_old_paraphrased_needle_leaves_no_digit_to_score():
    """Why the old claims were induction by construction: no digit step of the paraphrased needle survives."""
    from workbench.phenomena import needle_haystacks

    model = _char_model()
    (h,) = needle_haystacks(model, context_lengths=(300,), depths=(0.5,), n_per=1, needle=NEEDLES["paraphrased"])
    assert h.copy_steps().sum() == 0


def test_atlas_run_gives_every_registered_claim():
    from workbench.findings import VERDICTS, preregistration
    from workbench.phenomena.atlas import experiment as ax

    for model in (tiny_model(), _char_model()):
        card = ax.run(model)
        assert [f.claim.name for f in card.findings] == list(preregistration.load(ax.PACKAGE).claims)
        assert all(f.verdict in VERDICTS for f in card.findings)
        assert card.notebook == "06_head_atlas"
    assert registry.get("atlas").run is ax.run


def test_atlas_steps_and_run_agree():
    from workbench.phenomena.atlas import experiment as ax

    model = _char_model()
    reg = ax.registration()
    sequences, heldout = ax.prepare(model, reg.design)
    m = ax.measure(model, heldout, ax.select_heads(model, sequences), reg.design)
    card = ax.scorecard(reg, "m", m, n_select=len(sequences))
    assert card.summary() == ax.run(model, label="m").summary()


def test_cross_measurement_share_and_nulls_by_hand():
    from workbench.phenomena.atlas.experiment import CrossMeasurement

    per = torch.zeros(3, 2, 4)
    per[:, 1, 2], per[:, 0, 0] = 0.9, 0.5
    m = CrossMeasurement(per, [(1, 2), (1, 3), (0, 1)], torch.zeros(0), torch.zeros(0), 3, 3, 3)
    assert float(m.share(per)) == pytest.approx(1 / 3)  # top heads with a positive score: L1H2, L0H0
