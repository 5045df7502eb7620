"""Head scores and head sets: hand-built heads, slow references, and checks on SmolLM2."""

import pytest
import torch
from hooks import assert_no_hooks

from workbench import heads, models, runtime
from workbench.core.results import Result
from workbench.phenomena.retrieval.dataset import Haystack
from workbench.techniques.heads import HeadSet, overlap_table


def boom(x, hook):
    raise RuntimeError("boom")


# ------------------------------------------------------------------------- references (slow)


def reference_repeat_scores(model, tokens, L):
    """Plain loops over a full cache."""
    _, cache = model.run_with_cache(tokens)
    B = tokens.shape[0]
    out = {k: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for k in ("previous_token", "duplicate_token", "induction")}
    for layer in range(model.cfg.n_layers):
        p = cache["pattern", layer]
        for h in range(model.cfg.n_heads):
            prev = [p[b, h, q, q - 1] for b in range(B) for q in range(1, 2 * L + 1)]
            dup = [p[b, h, L + 1 + j, 1 + j] for b in range(B) for j in range(L)]
            ind = [p[b, h, L + 1 + j, 2 + j] for b in range(B) for j in range(L)]
            out["previous_token"][layer, h] = sum(prev) / len(prev)
            out["duplicate_token"][layer, h] = sum(dup) / len(dup)
            out["induction"][layer, h] = sum(ind) / len(ind)
    return out


def reference_final_norm(model, x):
    """ln_final written out by hand, without the bias."""
    eps = model.cfg.eps
    w = getattr(model.ln_final, "w", None)
    if model.cfg.normalization_type in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    else:
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x * w if w is not None else x


def reference_copy_topk(model, n_tokens, k, seed):
    """One token and one head at a time, KV head looked up by hand, torch.topk for the rank."""
    toks = heads._sample_tokens(model, n_tokens, seed)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    group = model.cfg.n_heads // n_kv
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        attn = model.blocks[layer].attn
        W_V = attn._W_V if hasattr(attn, "_W_V") else attn.W_V
        for h in range(model.cfg.n_heads):
            hits = 0
            for t in toks.tolist():
                e = model.W_E[t]
                x = model.blocks[layer].ln1(e[None, None])[0, 0]
                v = x @ W_V[h // group] @ attn.W_O[h]
                logits = reference_final_norm(model, v) @ model.W_U
                hits += int(t in logits.topk(k).indices.tolist())
            out[layer, h] = hits / len(toks)
    return out


def reference_retrieval_hits(model, haystack):
    """Step by step, a growing prefix, a full cache at every step."""
    n, m = haystack.tokens.shape[1], len(haystack.answer_ids)
    hits = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.long)
    answered = True
    s, e = haystack.needle_span
    full = haystack.full_tokens
    for j in range(m):
        prefix = full[:, : n + j]
        logits, cache = model.run_with_cache(prefix, names_filter=lambda name: name.endswith("hook_pattern"))
        target = int(haystack.answer_ids[j])
        answered &= int(logits[0, -1].argmax()) == target
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                k = int(cache["pattern", layer][0, h, -1].argmax())
                hits[layer, h] += int(s <= k < e and int(prefix[0, k]) == target)
    return hits, answered


# ------------------------------------------------------------------------- repeated tokens


def test_repeated_tokens_shape_seed_and_repeat(tiny):
    t = heads.repeated_tokens(tiny, seq_len=7, batch=3, seed=1)
    assert t.shape == (3, 15)
    assert (t[:, 0] == 0).all()  # no tokenizer: BOS is id 0
    assert torch.equal(t[:, 1:8], t[:, 8:])
    assert (t[:, 1:] != 0).all()  # BOS is never drawn
    assert torch.equal(t, heads.repeated_tokens(tiny, seq_len=7, batch=3, seed=1))
    assert not torch.equal(t, heads.repeated_tokens(tiny, seq_len=7, batch=3, seed=2))


def test_repeated_tokens_errors(tiny):
    with pytest.raises(ValueError, match="n_ctx"):
        heads.repeated_tokens(tiny, seq_len=40)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        heads.repeated_tokens(tiny, seq_len=1)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_repeat_scores_match_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    rs = heads.repeated_token_scores(model, seq_len=9, batch=3, seed=4)
    ref = reference_repeat_scores(model, heads.repeated_tokens(model, 9, 3, 4), 9)
    for k in ref:
        assert rs[k].dims == ("layer", "head")
        torch.testing.assert_close(rs[k].values, ref[k], atol=1e-6, rtol=0)
    assert torch.equal(heads.induction_scores(model, seq_len=9, batch=3, seed=4).values, rs["induction"].values)
    assert torch.equal(heads.duplicate_token_scores(model, seq_len=9, batch=3, seed=4).values, rs["duplicate_token"].values)
    assert_no_hooks(model)


def test_previous_token_scores_on_given_tokens_match_reference(tiny, random_tokens):
    r = heads.previous_token_scores(tiny, random_tokens)
    _, cache = tiny.run_with_cache(random_tokens)
    for layer in range(2):
        p = cache["pattern", layer]
        ref = torch.stack([p[:, :, q, q - 1] for q in range(1, 10)], -1).mean(dim=(0, 2))
        torch.testing.assert_close(r.values[layer], ref, atol=1e-6, rtol=0)


def previous_token_model():
    """Attention-only RMS model whose head L0H0 attends i -> i-1 through positional embeddings."""
    model = models.tiny_model(attn_only=True, normalization="RMS", n_heads=2, seed=3)
    with torch.no_grad():
        model.W_pos.zero_()
        model.W_pos[:32, :32] = 10 * torch.eye(32)  # position p -> 10 e_p in dims 0..31
        model.W_E[:, :32] = 0  # tokens live in dims 32..63
        model.W_E[:, 32:] *= 0.1
        attn = model.blocks[0].attn
        attn.W_Q[0].zero_()
        attn.W_K[0].zero_()
        attn.W_K[0][:32, :32] = torch.eye(32)  # key j reads e_j
        attn.W_Q[0][1:32, :31] = torch.eye(31)  # query i reads e_i -> e_{i-1}
    return model


def test_previous_token_head_built_from_weights():
    model = previous_token_model()
    r = heads.previous_token_scores(model, seq_len=10, batch=2)
    assert r.values[0, 0] > 0.99
    others = r.values.flatten()[1:]
    assert (others < 0.9).all() and others.max() < r.values[0, 0] - 0.1
    assert HeadSet.top(r, 1).heads == {(0, 0)}


def forced_pattern_hook(head, key_of_query):
    """Overwrite one head's pattern: query q attends one-hot to key_of_query(q) (or itself)."""

    def force(pattern, hook):
        pattern = pattern.clone()
        n = pattern.shape[-1]
        pattern[:, head] = 0
        for q in range(n):
            k = key_of_query(q)
            pattern[:, head, q, q if k is None else k] = 1.0
        return pattern

    return force


def test_forced_induction_and_duplicate_heads(tiny):
    L = 8
    induct = forced_pattern_hook(2, lambda q: q - L + 1 if q > L else None)
    dup = forced_pattern_hook(1, lambda q: q - L if q > L else None)
    with tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", induct), ("blocks.0.attn.hook_pattern", dup)]):
        rs = heads.repeated_token_scores(tiny, seq_len=L, batch=2)
    assert rs["induction"].values[1, 2] == pytest.approx(1.0)
    assert rs["duplicate_token"].values[1, 2] == pytest.approx(0.0)
    assert rs["previous_token"].values[1, 2] == pytest.approx(0.0)
    assert rs["duplicate_token"].values[0, 1] == pytest.approx(1.0)
    assert HeadSet.top(rs["induction"], 1).heads == {(1, 2)}
    assert HeadSet.top(rs["duplicate_token"], 1).heads == {(0, 1)}
    assert rs["induction"].values.flatten().sort().values[-2] < 0.5
    assert_no_hooks(tiny)


def test_induction_loss_last_layer_is_model_loss(tiny):
    L = 8
    r = heads.induction_loss(tiny, seq_len=L, batch=2, seed=5)
    tokens = heads.repeated_tokens(tiny, L, 2, 5)
    nll = tiny(tokens, return_type="loss", loss_per_token=True)  # [batch, pos-1]
    first, second = nll[:, 1:L].mean(), nll[:, L + 1 : 2 * L].mean()
    assert r.dims == ("layer",)
    assert r.values[-1].item() == pytest.approx((first - second).item(), abs=1e-5)
    assert r.meta["loss_first"][-1].item() == pytest.approx(first.item(), abs=1e-5)


# ------------------------------------------------------------------------- copy scores


def copy_model():
    """RMS model whose head L0H1 maps each token's embedding onto its own unembedding."""
    model = models.tiny_model(normalization="RMS", seed=2)  # d_model 64, d_head 16, d_vocab 100
    gen = torch.Generator().manual_seed(0)
    E = torch.randn(100, 16, generator=gen)
    E = E / E.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        model.W_E.zero_()
        model.W_E[:, :16] = E
        model.W_U.zero_()
        model.W_U[:16] = E.T  # tied in the first 16 dims
        attn = model.blocks[0].attn
        attn.W_V[1].zero_()
        attn.W_V[1][:16] = torch.eye(16)
        attn.W_O[1].zero_()
        attn.W_O[1][:, :16] = torch.eye(16)
        attn.W_O[2].zero_()  # L0H2: the negated map, a copy-suppression head
        attn.W_O[2][:, :16] = -torch.eye(16)
        attn.W_V[2].copy_(attn.W_V[1])
    return model


def test_copy_head_built_from_weights():
    model = copy_model()
    r = heads.copy_scores(model, n_tokens=50, k=1)
    assert r.values[0, 1] == pytest.approx(1.0)
    assert r.values[0, 2] == pytest.approx(0.0)
    assert HeadSet.top(r, 1).heads == {(0, 1)}
    e = heads.copy_scores(model, n_tokens=50, method="eigen")
    assert e.values[0, 1] == pytest.approx(1.0, abs=1e-6)  # A = positive semidefinite Gram matrix
    assert e.values[0, 2] == pytest.approx(-1.0, abs=1e-6)
    assert e.values.abs().flatten().sort().values[-3] < 0.9


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_copy_scores_match_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    r = heads.copy_scores(model, n_tokens=30, k=5, seed=1)
    ref = reference_copy_topk(model, 30, 5, 1)
    torch.testing.assert_close(r.values, ref, atol=0, rtol=0)


def test_copy_scores_options_and_errors(tiny):
    mlp0 = heads.copy_scores(tiny, n_tokens=20, embedding="mlp0")
    assert mlp0.meta["embedding"] == "mlp0" and mlp0.values.shape == (2, 4)
    with pytest.raises(ValueError, match="method must be"):
        heads.copy_scores(tiny, method="topk")
    with pytest.raises(ValueError, match="embedding must be"):
        heads.copy_scores(tiny, embedding="mlp")
    with pytest.raises(ValueError, match="attention-only"):
        heads.copy_scores(models.tiny_model(attn_only=True), embedding="mlp0")


# ------------------------------------------------------------------------- attention to positions


def test_attention_to_matches_reference(tiny, random_tokens):
    keys, queries = [2, 3, 4], [5, 8, 9]
    r = heads.attention_to(tiny, random_tokens, keys, queries)
    _, cache = tiny.run_with_cache(random_tokens)
    for layer in range(2):
        p = cache["pattern", layer]
        ref = p[:, :, queries][..., keys].sum(-1).mean(dim=(0, 2))
        torch.testing.assert_close(r.values[layer], ref, atol=1e-6, rtol=0)
    everything = heads.attention_to(tiny, random_tokens, range(10), range(10))
    torch.testing.assert_close(everything.values, torch.ones(2, 4), atol=1e-5, rtol=0)


def test_attention_to_masks_per_prompt(tiny, random_tokens):
    keys = torch.zeros(3, 10, dtype=torch.bool)
    keys[0, 1], keys[1, 2], keys[2, 3] = True, True, True
    r = heads.attention_to(tiny, random_tokens, keys)  # default query: last position
    _, cache = tiny.run_with_cache(random_tokens)
    p = cache["pattern", 1]
    ref = torch.stack([p[0, :, -1, 1], p[1, :, -1, 2], p[2, :, -1, 3]]).mean(0)
    torch.testing.assert_close(r.values[1], ref, atol=1e-6, rtol=0)


def test_bos_attention_is_attention_to_zero(tiny, random_tokens):
    b = heads.bos_attention(tiny, random_tokens)
    a = heads.attention_to(tiny, random_tokens, [0], list(range(1, 10)))
    torch.testing.assert_close(b.values, a.values)
    assert "BOS" in b.metric


def test_attention_to_errors(tiny, random_tokens):
    with pytest.raises(ValueError, match="out of range"):
        heads.attention_to(tiny, random_tokens, [10])
    with pytest.raises(ValueError, match="shape"):
        heads.attention_to(tiny, random_tokens, torch.ones(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no position"):
        heads.attention_to(tiny, random_tokens, torch.zeros(3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        heads.attention_to(tiny, random_tokens, [])
    with pytest.raises(TypeError, match="integer tensor"):
        heads.attention_to(tiny, random_tokens.float(), [0])
    with pytest.raises(ValueError, match="token ids"):
        heads.attention_to(tiny, random_tokens + 100, [0])


# ------------------------------------------------------------------------- retrieval score

N_PROMPT = 20


def synthetic_haystack(answer=(27, 28, 29, 30)):
    """Distinct tokens; the needle is positions 6..12 with the answer copy at 7..11."""
    tokens = torch.arange(40, 40 + N_PROMPT)
    tokens[7:11] = torch.tensor(answer)
    return Haystack(tokens=tokens[None], needle_span=(6, 12), answer_span=(7, 11), answer_ids=torch.tensor(answer))


def answer_forcing_hook(model, answer):
    """Replace the last residual stream at the answer queries so the argmax logit is the answer."""
    d = model.cfg.d_model
    P = torch.eye(d) - 1 / d  # ln_final centres (LN, w = 1, b = 0 in the tiny model)
    rows = []
    for t in answer:
        y = torch.full((model.cfg.d_vocab,), -10.0)
        y[t] = 30.0
        u = torch.linalg.lstsq((P @ model.W_U).T, y[:, None]).solution[:, 0]
        v = P @ u
        logits = model.unembed(model.ln_final(v[None, None]))[0, 0]
        assert int(logits.argmax()) == t  # the construction works for this model
        rows.append(v)
    rows = torch.stack(rows)

    def force(x, hook):
        x = x.clone()
        n = x.shape[1]
        for j in range(len(answer)):
            q = N_PROMPT - 1 + j
            if q < n:
                x[:, q] = rows[j]
        return x

    return (f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", force)


def retrieval_forcing_hooks(model, answer):
    # L1H2: steps 0, 1, 3 attend to the answer token inside the needle; step 2 attends outside.
    good = {N_PROMPT - 1 + j: k for j, k in enumerate([7, 8, 3, 10])}
    # L1H3: always inside the needle, never at the right token (position 6 holds token 46).
    bad = {N_PROMPT - 1 + j: 6 for j in range(4)}
    return [
        ("blocks.1.attn.hook_pattern", forced_pattern_hook(2, good.get)),
        ("blocks.1.attn.hook_pattern", forced_pattern_hook(3, bad.get)),
        answer_forcing_hook(model, answer),
    ]


def test_retrieval_score_hand_count(tiny):
    h = synthetic_haystack()
    with tiny.hooks(fwd_hooks=retrieval_forcing_hooks(tiny, [27, 28, 29, 30])):
        r = heads.retrieval_scores(tiny, [h], progress=False)
        ref_hits, ref_answered = reference_retrieval_hits(tiny, h)
    assert ref_answered and r.meta["n_answered"] == 1 and r.meta["n_total"] == 1
    assert r.values[1, 2] == pytest.approx(3 / 4)
    assert r.values[1, 3] == 0.0
    torch.testing.assert_close(r.values, ref_hits.float() / 4, atol=0, rtol=0)
    assert r.dims == ("layer", "head")
    assert_no_hooks(tiny)


def test_retrieval_fast_path_matches_step_by_step(tiny_gqa):
    h = synthetic_haystack()
    hits, answered = heads.retrieval_hits(tiny_gqa, h)
    ref_hits, ref_answered = reference_retrieval_hits(tiny_gqa, h)
    assert torch.equal(hits, ref_hits) and answered == ref_answered


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_retrieval_answered_check_uses_the_model_logits(fixture, request):
    """A haystack whose one-token answer is the model's own greedy next token counts as answered,
    also when ln_final has a non-trivial weight and bias."""
    model = request.getfixturevalue(fixture)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.ln_final.w.copy_(1 + 0.5 * torch.randn(model.cfg.d_model, generator=gen))
        if hasattr(model.ln_final, "b"):
            model.ln_final.b.copy_(0.5 * torch.randn(model.cfg.d_model, generator=gen))
    found = None
    for seed in range(10):  # look for a prompt whose greedy next token can be its own needle
        tokens = torch.randint(1, 100, (1, 12), generator=torch.Generator().manual_seed(seed))
        batch = tokens.repeat(100, 1)
        batch[:, 4] = torch.arange(100)
        nxt = model(batch)[:, -1].argmax(-1)
        fixed = (nxt == torch.arange(100)).nonzero()
        if len(fixed):
            found = batch[int(fixed[0])]
            break
    assert found is not None
    answer = found[4:5]
    h = Haystack(tokens=found[None], needle_span=(3, 6), answer_span=(4, 5), answer_ids=answer)
    hits, answered = heads.retrieval_hits(model, h)
    assert answered
    wrong = Haystack(tokens=found[None], needle_span=(3, 6), answer_span=(5, 6), answer_ids=found[5:6])
    assert heads.retrieval_hits(model, wrong)[1] == (int(found[5]) == int(answer))
    ref_hits, ref_answered = reference_retrieval_hits(model, h)
    assert ref_answered and torch.equal(hits, ref_hits)


def test_retrieval_averages_only_answered(tiny):
    a = synthetic_haystack()
    b = synthetic_haystack(answer=(31, 32, 33, 34))  # the forcing hook produces a's answer, not b's
    with tiny.hooks(fwd_hooks=retrieval_forcing_hooks(tiny, [27, 28, 29, 30])):
        r = heads.retrieval_scores(tiny, [a, b, a], progress=False)
    assert r.meta["answered"] == [True, False, True]
    assert r.meta["n_answered"] == 2 and r.meta["n_total"] == 3
    assert torch.isnan(r.meta["per_haystack"][1]).all()
    torch.testing.assert_close(r.values, r.meta["per_haystack"][0])
    assert r.values[1, 2] == pytest.approx(0.75)


def test_retrieval_none_answered_gives_nan(tiny):
    with pytest.warns(UserWarning, match="answered none"):
        r = heads.retrieval_scores(tiny, [synthetic_haystack()], progress=False)
    assert r.meta["n_answered"] == 0 and torch.isnan(r.values).all()


def test_retrieval_errors(tiny):
    with pytest.raises(ValueError, match="no haystacks"):
        heads.retrieval_scores(tiny, [])
    with pytest.raises(TypeError, match="Haystack"):
        heads.retrieval_scores(tiny, [torch.zeros(1, 5)])
    long = Haystack(tokens=torch.ones(1, 64, dtype=torch.long), needle_span=(1, 3), answer_span=(1, 2), answer_ids=[1])
    with pytest.raises(ValueError, match="n_ctx|takes"):
        heads.retrieval_scores(tiny, [long], progress=False)


# ------------------------------------------------------------------------- hooks never outlive a call


@pytest.mark.parametrize(
    "call",
    [
        lambda m: heads.repeated_token_scores(m, seq_len=5, batch=1),
        lambda m: heads.attention_to(m, torch.zeros(1, 6, dtype=torch.long), [0]),
        lambda m: heads.retrieval_scores(m, [synthetic_haystack()], progress=False),
        lambda m: heads.induction_loss(m, seq_len=5, batch=1),
    ],
)
def test_no_hooks_left_after_error(tiny, call):
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
            call(tiny)
    assert_no_hooks(tiny)
    bad = Haystack(tokens=torch.full((1, 6), 150), needle_span=(1, 3), answer_span=(1, 2), answer_ids=[150])
    with pytest.raises(Exception):
        heads.retrieval_hits(tiny, bad)  # token id beyond the vocabulary fails inside the forward
    assert_no_hooks(tiny)


# ------------------------------------------------------------------------- head sets


def test_headset_algebra_and_measures():
    a = HeadSet({(0, 1), (1, 2), (2, 0)}, "a")
    b = HeadSet([(1, 2), (2, 0), (3, 3), (4, 4)], "b")
    assert (a | b).heads == {(0, 1), (1, 2), (2, 0), (3, 3), (4, 4)}
    assert (a & b).heads == {(1, 2), (2, 0)}
    assert (a - b).heads == {(0, 1)}
    assert a.union(b, name="u").name == "u" and (a & b).name == "a & b"
    assert a.jaccard(b) == pytest.approx(2 / 5)
    assert a.overlap_coefficient(b) == pytest.approx(2 / 3)
    assert a.fraction_in(b) == pytest.approx(2 / 3) and b.fraction_in(a) == pytest.approx(2 / 4)
    empty = HeadSet([], "e")
    assert empty.jaccard(empty) == 0.0 and empty.fraction_in(a) == 0.0
    assert list(a) == [(0, 1), (1, 2), (2, 0)] and (1, 2) in a and len(a) == 3
    assert HeadSet([(0, 1), (0, 1)], "dup") == HeadSet({(0, 1)}, "dup")


def test_headset_errors():
    with pytest.raises(TypeError, match="pair"):
        HeadSet([(0, 1, 2)])
    with pytest.raises(TypeError, match="iterable"):
        HeadSet("L0H1")
    with pytest.raises(ValueError, match=">= 0"):
        HeadSet([(-1, 0)])
    with pytest.raises(TypeError, match="HeadSet"):
        HeadSet([(0, 1)]) | {(0, 1)}
    with pytest.raises(ValueError, match="dims"):
        HeadSet.top(Result(torch.zeros(3), ("layer",)), 1)
    with pytest.raises(ValueError, match="outside"):
        HeadSet([(5, 0)]).mask(2, 4)


def test_headset_from_scores():
    v = torch.tensor([[0.1, 0.9, float("nan")], [0.5, 0.9, 0.3]])
    r = Result(v, ("layer", "head"), metric="s")
    assert HeadSet.top(r, 2).heads == {(0, 1), (1, 1)}
    assert HeadSet.top(r, 3).heads == {(0, 1), (1, 1), (1, 0)}
    assert len(HeadSet.top(r, 10)) == 5  # NaN never chosen
    assert HeadSet.above(r, 0.4, name="hi").heads == {(0, 1), (1, 1), (1, 0)}
    s = HeadSet.above(r, 0.4, name="hi")
    assert s.mask(2, 3).tolist() == [[False, True, False], [True, True, False]]
    f = s.to_frame()
    assert f.columns.tolist() == ["layer", "head", "set"] and f.values.tolist() == [[0, 1, "hi"], [1, 0, "hi"], [1, 1, "hi"]]


def test_overlap_table():
    a = HeadSet({(0, 1), (1, 2)}, "a")
    b = HeadSet({(1, 2), (1, 3), (0, 0)}, "b")
    t = overlap_table([a, b], "fraction_in")
    assert t.loc["a", "b"] == pytest.approx(0.5) and t.loc["b", "a"] == pytest.approx(1 / 3)
    assert t.loc["a", "a"] == 1.0
    j = overlap_table([a, b])
    assert j.loc["a", "b"] == pytest.approx(1 / 4) == j.loc["b", "a"]
    assert overlap_table([a, b], "count").loc["a", "b"] == 1
    with pytest.raises(ValueError, match="measure"):
        overlap_table([a, b], "dice")
    with pytest.raises(ValueError, match="distinct names"):
        overlap_table([a, HeadSet(b.heads, "a")])


def test_headset_plot():
    import matplotlib

    matplotlib.use("Agg")
    a = HeadSet({(0, 1), (1, 2)}, "a")
    b = HeadSet({(1, 2), (1, 3)}, "b")
    fig = a.plot(b, shape=(2, 4))
    ax = fig.axes[0]
    assert ax.get_xlim()[1] >= 3.5 and ax.get_ylim()[0] >= 1.5  # 2 layers down, 4 heads across
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a", "b"]
    # L1H2 is in both sets: two coloured stripes; L0H1 one; L1H3 one
    assert len([p for p in ax.patches if getattr(p, "_head", None) is not None]) == 4
    with pytest.raises(ValueError, match="outside"):
        a.plot(shape=(1, 1))


# ------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.mark.slow
def test_smollm2_induction_heads(smollm2):
    rs = heads.repeated_token_scores(smollm2, seq_len=50, batch=4, seed=0)
    top = HeadSet.top(rs["induction"], 5)
    # Induction heads sit in the upper-middle layers of SmolLM2 (see the report for the heads).
    assert all(12 <= layer <= 24 for layer, _ in top), top
    assert rs["induction"].values.max() > 0.5
    prev = HeadSet.top(rs["previous_token"], 5)
    assert rs["previous_token"].values.max() > 0.5
    assert top.jaccard(prev) == 0.0


def test_retrieval_long_prompt_takes_the_cached_path_and_agrees(monkeypatch):
    """A prompt longer than the prefill chunk is run in chunks, then the answer queries from the
    cache; hits and the answered check equal those of one full pass."""
    model = models.tiny_model(n_ctx=400, n_kv_heads=2, normalization="RMS", positional="rotary")
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 100, (1, 330), generator=gen)
    h = Haystack(tokens=tokens, needle_span=(100, 110), answer_span=(104, 108),
                 answer_ids=tokens[0, 104:108].clone())
    calls = []
    real = runtime.prefill
    monkeypatch.setattr(runtime, "prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = heads.retrieval_hits(model, h)
    assert calls, "the cached path was not taken"
    monkeypatch.setattr(runtime, "PREFILL_CHUNK", 10_000)  # one pass
    whole = heads.retrieval_hits(model, h)
    assert len(calls) == 1 and torch.equal(cached[0], whole[0]) and cached[1] == whole[1]
    ref_hits, ref_answered = reference_retrieval_hits(model, h)
    assert torch.equal(cached[0], ref_hits) and cached[1] == ref_answered
    assert_no_hooks(model)


@pytest.mark.slow
def test_smollm2_retrieval_matches_greedy_generation(smollm2):
    from workbench.phenomena import needle_haystacks

    hs = needle_haystacks(smollm2, context_lengths=(120,), depths=(0.5,), n_per=1, seed=3)
    h = hs[0]
    hits, answered = heads.retrieval_hits(smollm2, h)
    ref_hits, ref_answered = reference_retrieval_hits(smollm2, h)
    assert answered and ref_answered
    assert torch.equal(hits, ref_hits)
    assert hits.max() == len(h.answer_ids)  # some head copies every answer token
    # A context longer than the prefill chunk (the cached path) against the same reference.
    h = needle_haystacks(smollm2, context_lengths=(600,), depths=(0.3,), n_per=1, seed=4)[0]
    hits, answered = heads.retrieval_hits(smollm2, h)
    ref_hits, ref_answered = reference_retrieval_hits(smollm2, h)
    assert answered and ref_answered and torch.equal(hits, ref_hits)
