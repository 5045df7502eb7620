"""Needle accuracy under head masking: greedy-decoding references, hand-built haystacks, errors."""

import matplotlib.pyplot as plt
import pytest
import torch
from hooks import assert_no_hooks

from workbench import heads, models, retrieval
from workbench.core.results import Result
from workbench.phenomena.retrieval.dataset import Haystack
from workbench.techniques.ablation import mask_attention

# ------------------------------------------------------------------------- references (slow)


@torch.no_grad()
def greedy_reference(model, h, masked=()):
    """Plain greedy decoding, one token at a time, full logits: 1.0 if it writes the answer."""
    seq = h.tokens
    with mask_attention(model, masked):
        for want in h.answer_ids.tolist():
            nxt = model(seq)[0, -1].argmax().item()
            if nxt != want:
                return 0.0
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return 1.0


@torch.no_grad()
def tokens_reference(model, h, masked=()):
    """Teacher forcing with full logits: fraction of answer tokens that are the argmax."""
    n, m = h.tokens.shape[1], len(h.answer_ids)
    with mask_attention(model, masked):
        logits = model(h.full_tokens)[0]
    return (logits[n - 1 : n - 1 + m].argmax(-1) == h.answer_ids).float().mean().item()


# ------------------------------------------------------------------------- hand-built haystacks


def random_haystack(seed, n=12, answer_len=2, needle=(3, 8)):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 100, (1, n), generator=gen)
    a = needle[0] + 1
    return Haystack(tokens=tokens, needle_span=needle, answer_span=(a, a + answer_len),
                    answer_ids=tokens[0, a : a + answer_len].clone(), depth=0.5)


@torch.no_grad()
def fixed_point_haystacks(model, count, n=12, pos=5):
    """One-token haystacks that the model answers: the prompt's token at ``pos`` (inside the
    needle) is a value ``v`` for which the model's next token after the prompt is ``v`` itself.
    Found by trying all 100 values at once on seeded random prompts."""
    found, seed = [], 0
    while len(found) < count:
        seed += 1
        base = torch.randint(1, 100, (1, n), generator=torch.Generator().manual_seed(seed))
        variants = base.repeat(100, 1)
        variants[:, pos] = torch.arange(100)
        nxt = model(variants)[:, -1].argmax(-1)
        hits = (nxt == torch.arange(100)).nonzero().flatten().tolist()
        if hits:
            v = hits[0]
            found.append(Haystack(tokens=variants[v : v + 1], needle_span=(pos - 2, pos + 2),
                                  answer_span=(pos, pos + 1), answer_ids=torch.tensor([v]),
                                  depth=0.25 * (len(found) % 2)))
        assert seed < 200, "no fixed point found"
    return found


def breaking_heads(model, h):
    """Heads whose masking alone stops the model answering ``h`` (by the greedy reference)."""
    return [(a, b) for a in range(model.cfg.n_layers) for b in range(model.cfg.n_heads)
            if greedy_reference(model, h, [(a, b)]) == 0.0]


# ------------------------------------------------------------------------- needle_correct


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
@pytest.mark.parametrize("measure", ["exact", "tokens"])
def test_needle_correct_matches_greedy_and_teacher_forcing(request, fixture, measure):
    model = request.getfixturevalue(fixture)
    hs = fixed_point_haystacks(model, 3) + [random_haystack(s, answer_len=1 + s % 3) for s in range(5)]
    ref = greedy_reference if measure == "exact" else tokens_reference
    for masked in [(), [(0, 1)], [(0, 0), (1, 2), (1, 3)]]:
        want = torch.tensor([ref(model, h, masked) for h in hs])
        for batch_size in (1, 3, 8):
            got = retrieval.needle_correct(model, hs, heads=masked, measure=measure, batch_size=batch_size)
            torch.testing.assert_close(got.values, want, rtol=0, atol=1e-6)
        assert got.dims == ("batch",) and got.meta["masked"] == sorted(masked)
        if not masked:  # the fixed points are answered when nothing is masked
            assert want[:3].tolist() == [1.0, 1.0, 1.0]
    assert_no_hooks(model)


def test_first_token_right_second_checked_by_hand(tiny):
    """Two-token answers whose first token the model gets right: exact is 1 only if the second
    is right too, tokens is 1/2 or 1, as decoded by hand."""
    seen = set()
    for fp in fixed_point_haystacks(tiny, 4):
        h = Haystack(tokens=fp.tokens, needle_span=(3, 8), answer_span=(5, 7), answer_ids=fp.tokens[0, 5:7])
        with torch.no_grad():
            second = tiny(h.full_tokens[:, :-1])[0, -1].argmax().item()  # after prompt + first token
        right = second == h.answer_ids[1].item()
        assert retrieval.needle_correct(tiny, [h]).values.item() == float(right)
        assert retrieval.needle_correct(tiny, [h], measure="tokens").values.item() == (1.0 if right else 0.5)
        assert greedy_reference(tiny, h) == float(right)
        seen.add(right)
    assert False in seen


def test_needle_accuracy_is_the_mean(tiny):
    hs = fixed_point_haystacks(tiny, 2) + [random_haystack(1), random_haystack(2)]
    want = sum(greedy_reference(tiny, h) for h in hs) / 4
    assert retrieval.needle_accuracy(tiny, hs) == pytest.approx(want)
    assert retrieval.needle_accuracy(tiny, hs[:2]) == 1.0


def test_needle_correct_labels(tiny):
    h = random_haystack(0)
    r = retrieval.needle_correct(tiny, [h])
    assert r.labels["batch"] == ["12 tok, depth 0.5"]
    assert list(r.to_frame().columns) == ["batch", "batch_label", "value"]


def test_no_hooks_left_after_an_error(tiny, monkeypatch):
    hs = fixed_point_haystacks(tiny, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.blocks[1], "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        retrieval.needle_correct(tiny, hs, heads=[(0, 1), (1, 0)])
    assert_no_hooks(tiny)
    scores = Result(torch.zeros(2, 4), ("layer", "head"))
    with pytest.raises(RuntimeError, match="boom"):
        retrieval.masking_experiment(tiny, hs, scores, [1], progress=False)
    assert_no_hooks(tiny)


def test_needle_correct_errors(tiny):
    h = random_haystack(0)
    with pytest.raises(ValueError, match="measure"):
        retrieval.needle_correct(tiny, [h], measure="soft")
    with pytest.raises(ValueError, match="batch_size"):
        retrieval.needle_correct(tiny, [h], batch_size=0)
    with pytest.raises(ValueError, match="No haystacks"):
        retrieval.needle_correct(tiny, [])
    with pytest.raises(TypeError, match="list of Haystack"):
        retrieval.needle_correct(tiny, h.tokens)
    with pytest.raises(TypeError, match="Haystack"):
        retrieval.needle_correct(tiny, [h.tokens])
    with pytest.raises(ValueError, match="out of range"):
        retrieval.needle_correct(tiny, [h], heads=[(2, 0)])
    with pytest.raises(TypeError, match="pair"):
        retrieval.needle_correct(tiny, [h], heads=[3])
    long = Haystack(tokens=torch.ones(1, 64, dtype=torch.long), needle_span=(3, 8), answer_span=(4, 5),
                    answer_ids=torch.tensor([1]))
    with pytest.raises(ValueError, match="n_ctx|at most 64"):
        retrieval.needle_correct(tiny, [long])
    big = Haystack(tokens=torch.full((1, 10), 500), needle_span=(3, 8), answer_span=(4, 5),
                   answer_ids=torch.tensor([500]))
    with pytest.raises(ValueError, match="d_vocab"):
        retrieval.needle_correct(tiny, [big])
    assert_no_hooks(tiny)


# ------------------------------------------------------------------------- masking experiment


def test_masking_by_hand(tiny):
    """Scores put the heads that break the answer on top: masking them costs all accuracy,
    masking any K other (non-retrieval) heads costs none, as computed head by head."""
    hs = fixed_point_haystacks(tiny, 2)
    broken = [set(breaking_heads(tiny, h)) for h in hs]
    breakers = broken[0] & broken[1]
    if not breakers:
        pytest.skip("no head breaks both fixed points in this seed")
    harmless = [(a, b) for a in range(2) for b in range(4)
                if all(greedy_reference(tiny, h, [(a, b)]) == 1.0 for h in hs)]
    # a set of harmless heads masked together may still break a fixed point; check K=1 only
    scores = torch.zeros(2, 4)
    for a, b in {(a, b) for a in range(2) for b in range(4)} - set(harmless):
        scores[a, b] = 0.5
    top = sorted(breakers)[0]
    scores[top] = 0.9
    r = retrieval.masking_experiment(tiny, hs, Result(scores, ("layer", "head")), [0, 1],
                                     n_draws=4, seed=3, progress=False)
    assert list(r.top_heads(1)) == [top]
    assert r.top.values.tolist() == [1.0, 0.0]
    assert r.random.values.tolist() == [1.0, 1.0]
    assert r.gap.values.tolist() == [0.0, 1.0]
    assert r.baseline == 1.0
    for d in range(4):
        assert r.random_orders[d][0] in harmless
    assert_no_hooks(tiny)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_masking_matches_a_plain_loop(request, fixture):
    model = request.getfixturevalue(fixture)
    hs = fixed_point_haystacks(model, 3) + [random_haystack(7, answer_len=1)]
    scores = Result(torch.tensor([[0.0, 0.5, 0.05, 0.2], [0.1, 0.0, 0.3, 0.02]]), ("layer", "head"))
    ks = [3, 0, 1, 2]
    r = retrieval.masking_experiment(model, hs, scores, ks, n_draws=3, seed=5, progress=False)
    assert r.ks == [0, 1, 2, 3]
    assert r.top_order[:4] == [(0, 1), (1, 2), (0, 3), (1, 0)]  # by score; tie 0.1 vs 0.1 none
    assert r.top_order[4:] == [(0, 2), (1, 3), (0, 0), (1, 1)]  # then lower index first on ties

    def acc(masked):
        return sum(greedy_reference(model, h, masked) for h in hs) / len(hs)

    base = acc([])
    assert r.baseline == pytest.approx(base)
    for j, k in enumerate(r.ks):
        assert r.top.values[j].item() == pytest.approx(acc(r.top_order[:k]))
        draws = [acc(r.random_orders[d][:k]) for d in range(3)]
        assert r.random_draws[:, j].tolist() == pytest.approx(draws)
        assert r.random.values[j].item() == pytest.approx(sum(draws) / 3)
    frame = r.to_frame()
    assert frame["k"].tolist() == [0, 1, 2, 3]
    assert frame["fraction_of_heads"].tolist() == pytest.approx([0, 1 / 8, 2 / 8, 3 / 8])
    assert frame["gap"].tolist() == pytest.approx((r.random.values - r.top.values).tolist())
    assert frame["random_min"].tolist() == pytest.approx(r.random_draws.min(0).values.tolist())
    assert_no_hooks(model)


def test_random_draws_are_seeded_non_retrieval_and_nested(tiny):
    hs = [random_haystack(0, answer_len=1)]
    scores = Result(torch.tensor([[0.9, 0.0, 0.05, 0.1], [0.2, 0.0, 0.0, float("nan")]]), ("layer", "head"))
    pool = {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)}  # <= 0.1; NaN and retrieval heads excluded
    a = retrieval.masking_experiment(tiny, hs, scores, [1, 5], n_draws=6, seed=0, progress=False)
    b = retrieval.masking_experiment(tiny, hs, scores, [1, 5], n_draws=6, seed=0, progress=False)
    c = retrieval.masking_experiment(tiny, hs, scores, [1, 5], n_draws=6, seed=1, progress=False)
    assert a.random_orders == b.random_orders
    assert a.random_orders != c.random_orders
    assert len({tuple(o) for o in a.random_orders}) > 1  # draws differ from each other
    for order in a.random_orders + c.random_orders:
        assert set(order) == pool and len(order) == 5
    assert set(a.random_heads(5, draw=2)) == pool
    assert list(a.random_heads(1, draw=2)) == [a.random_orders[2][0]]
    assert a.top_order == [(0, 0), (1, 0), (0, 3), (0, 2), (0, 1), (1, 1), (1, 2)]
    assert (a.random_draws == b.random_draws).all()


def test_masking_plot(tiny):
    hs = fixed_point_haystacks(tiny, 2)
    scores = Result(torch.arange(8.0).reshape(2, 4) / 100, ("layer", "head"))
    r = retrieval.masking_experiment(tiny, hs, scores, [0, 1, 2], n_draws=2, progress=False)
    fig = r.plot()
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    assert list(lines[0].get_ydata()) == r.top.values.tolist()
    assert list(lines[1].get_ydata()) == pytest.approx(r.random.values.tolist())
    assert list(lines[2].get_ydata()) == [r.baseline] * 3
    plt.close(fig)


def test_masking_errors(tiny):
    hs = [random_haystack(0)]
    scores = Result(torch.tensor([[0.9, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.3]]), ("layer", "head"))
    def run(ks, **kw):
        return retrieval.masking_experiment(tiny, hs, kw.pop("scores", scores), ks, progress=False, **kw)
    with pytest.raises(ValueError, match="only 5 heads are non-retrieval"):
        run([6])
    with pytest.raises(ValueError, match=r"K must lie in 0..8"):
        run([9])
    with pytest.raises(ValueError, match=r"K must lie in 0..8"):
        run([-1])
    with pytest.raises(TypeError, match="int"):
        run([1.5])
    with pytest.raises(TypeError, match="int"):
        run([True])
    with pytest.raises(ValueError, match="empty"):
        run([])
    with pytest.raises(ValueError, match="repeated"):
        run([1, 1])
    with pytest.raises(TypeError, match="list of head counts"):
        run(3)
    with pytest.raises(ValueError, match="n_draws"):
        run([1], n_draws=0)
    with pytest.raises(ValueError, match="measure"):
        run([1], measure="loose")
    with pytest.raises(TypeError, match="dims"):
        run([1], scores=Result(torch.zeros(8), ("component",)))
    with pytest.raises(TypeError, match="dims"):
        run([1], scores=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        run([1], scores=Result(torch.zeros(3, 4), ("layer", "head")))
    with pytest.raises(ValueError, match="NaN"):
        run([1], scores=Result(torch.full((2, 4), float("nan")), ("layer", "head")))
    with pytest.raises(TypeError, match="threshold"):
        run([1], threshold="0.1")
    nan_some = Result(torch.tensor([[0.9, float("nan")] * 2] * 2), ("layer", "head"))
    with pytest.raises(ValueError, match="have a \\(non-NaN\\) score"):
        run([5], scores=nan_some, threshold=1.0)
    assert_no_hooks(tiny)


# ------------------------------------------------------------------------- score summaries


def summary_case():
    """Four haystacks at two lengths and two depths; the third one not answered."""
    hs = []
    for i, (n, d) in enumerate([(10, 0.1), (10, 0.9), (12, 0.1), (12, 0.9)]):
        h = random_haystack(i, n=n)
        h.depth = d
        hs.append(h)
    per = torch.zeros(4, 2, 4)
    per[:, 0, 0] = torch.tensor([1.0, 0.5, float("nan"), 0.0])
    per[:, 1, 3] = torch.tensor([0.0, 0.2, float("nan"), 0.4])
    per[2] = float("nan")
    values = per[[0, 1, 3]].mean(0)
    scores = Result(values, ("layer", "head"),
                    meta=dict(per_haystack=per, answered=[True, True, False, True]))
    return hs, scores


def test_haystack_frame():
    hs, scores = summary_case()
    frame = retrieval.haystack_frame(scores, hs, heads=2)
    assert len(frame) == 8
    assert frame["label"].tolist()[:2] == ["L0H0", "L1H3"]  # top 2 overall: 0.5 and 0.2
    row = frame[(frame.haystack == 1) & (frame.label == "L1H3")].iloc[0]
    assert (row.context_length, row.depth, bool(row.answered), row.score) == (10, 0.9, True, pytest.approx(0.2))
    assert frame[frame.haystack == 2]["score"].isna().all()
    assert len(retrieval.haystack_frame(scores, hs)) == 4 * 8
    assert retrieval.haystack_frame(scores, hs, heads=[(1, 3)])["label"].unique().tolist() == ["L1H3"]


def test_score_summary_by_length_and_depth():
    hs, scores = summary_case()
    by_len = retrieval.score_summary(scores, hs, by="length", heads=[(0, 0), (1, 3)], threshold=0.1)
    assert by_len.index.name == "context_length" and by_len.index.tolist() == [10, 12]
    assert by_len["haystacks"].tolist() == [2, 2]
    assert by_len["accuracy"].tolist() == [1.0, 0.5]
    assert by_len["L0H0"].tolist() == pytest.approx([0.75, 0.0])  # length 12: only haystack 3
    assert by_len["L1H3"].tolist() == pytest.approx([0.1, 0.4])
    assert by_len["heads_above"].tolist() == [1, 1]  # 0.75 > 0.1 (0.1 is not above); 0.4
    by_depth = retrieval.score_summary(scores, hs, by="depth", heads=[(0, 0)], threshold=0.1)
    assert by_depth.index.tolist() == [0.1, 0.9]
    assert by_depth["L0H0"].tolist() == pytest.approx([1.0, 0.25])
    assert by_depth["accuracy"].tolist() == [0.5, 1.0]
    assert by_depth["heads_above"].tolist() == [1, 2]  # depth 0.9: 0.25 and mean(0.2, 0.4) = 0.3


def test_score_summary_errors():
    hs, scores = summary_case()
    with pytest.raises(ValueError, match="by must be"):
        retrieval.score_summary(scores, hs, by="pos")
    with pytest.raises(ValueError, match="same haystacks"):
        retrieval.score_summary(scores, hs[:3])
    with pytest.raises(ValueError, match="per_haystack"):
        retrieval.haystack_frame(Result(torch.zeros(2, 4), ("layer", "head")), hs)


# ------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_needle_accuracy_and_masking(smollm2):
    from workbench.phenomena import needle_haystacks

    hs = needle_haystacks(smollm2, context_lengths=(160,), depths=(0.2, 0.8), n_per=1)
    got = retrieval.needle_correct(smollm2, hs, batch_size=2)
    answered = [heads.retrieval_hits(smollm2, h)[1] for h in hs]
    assert got.values.tolist() == [float(a) for a in answered] == [1.0, 1.0]
    masked = [(18, 6), (20, 6), (6, 0), (17, 3), (18, 7), (23, 2), (17, 4), (20, 3), (21, 8)]
    with_mask = retrieval.needle_correct(smollm2, hs[:1], heads=masked)
    assert with_mask.values.item() == greedy_reference(smollm2, hs[0], masked)
    assert_no_hooks(smollm2)


def test_k_sweep():
    assert retrieval.k_sweep(models.tiny_model(n_layers=30, n_heads=9)) == [1, 3, 9, 27]
    assert retrieval.k_sweep(models.tiny_model(n_layers=18, n_heads=4)) == [1, 2, 4, 7]  # 7.2 -> 7
    tiny = models.tiny_model()  # 8 heads: 10% rounds to 1
    assert retrieval.k_sweep(tiny) == [1]
    assert retrieval.k_sweep(tiny, max_fraction=1.0, steps=4) == [1, 2, 4, 8]
    assert retrieval.k_sweep(tiny, max_fraction=0.5, steps=1) == [4]
    with pytest.raises(ValueError, match="max_fraction"):
        retrieval.k_sweep(tiny, max_fraction=0)
    with pytest.raises(ValueError, match="steps"):
        retrieval.k_sweep(tiny, steps=0)


# ------------------------------------------------------------------------- answer_masking


@torch.no_grad()
def answer_masking_reference(model, h, masked):
    """One full pass per haystack, the heads' queries zeroed at the answer queries only."""
    n, m = h.tokens.shape[1], len(h.answer_ids)
    by_layer = {}
    for layer, head in masked:
        by_layer.setdefault(layer, []).append(head)

    def zero(q, hook):
        q = q.clone()
        q[:, n - 1 : n - 1 + m, by_layer[int(hook.name.split(".")[1])]] = 0.0
        return q

    with tiny_hooks(model, [(f"blocks.{layer}.attn.hook_q", zero) for layer in by_layer]):
        logits = model(h.full_tokens)[0]
    return float((logits[n - 1 : n - 1 + m].argmax(-1) == h.answer_ids).all())


def tiny_hooks(model, hooks):
    return model.hooks(fwd_hooks=hooks)


def test_answer_masking_matches_full_passes(tiny):
    hs = fixed_point_haystacks(tiny, 3) + [random_haystack(s) for s in range(3)]
    sets = [[], [(0, 1)], [(1, 0), (1, 3)], [(0, 0), (0, 2), (1, 1)], [(1, 2)]]
    got = retrieval.answer_masking(tiny, hs, sets, sets_per_pass=2)
    want = torch.tensor([[answer_masking_reference(tiny, h, s) for h in hs] for s in sets])
    assert torch.equal(got, want)
    assert got[0].sum() >= 3  # the fixed-point haystacks are answered unmasked
    assert_no_hooks(tiny)


def test_answer_masking_single_heads_change_answers(tiny):
    hs = fixed_point_haystacks(tiny, 4)
    sets = [[]] + [[(a, b)] for a in range(tiny.cfg.n_layers) for b in range(tiny.cfg.n_heads)]
    got = retrieval.answer_masking(tiny, hs, sets, sets_per_pass=3)
    want = torch.tensor([[answer_masking_reference(tiny, h, s) for h in hs] for s in sets])
    assert torch.equal(got, want)
    assert got[0].tolist() == [1.0] * 4 and got[1:].min() == 0.0  # some single head breaks an answer
    with pytest.raises(ValueError, match="head_sets is empty"):
        retrieval.answer_masking(tiny, hs, [])
    with pytest.raises(ValueError, match="sets_per_pass"):
        retrieval.answer_masking(tiny, hs, [[]], sets_per_pass=0)
