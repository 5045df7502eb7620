"""Edge attribution and circuit evaluation against slow, obviously-correct references.

The references here share no code with ``workbench.techniques.edges``: node outputs are read from a plain
``run_with_cache`` (``z @ W_O`` per head; with a post-norm, each head's share of the normed
output with that run's scale), and every patched edge gets its own hook.
"""

from functools import partial

import pytest
import torch
from scipy.stats import spearmanr

from tests.hooks import assert_no_hooks
from workbench import edges, models
from workbench.core.metrics import LogitDiff
from workbench.techniques.edges import EdgePatcher, Graph, Layout, areas

MODELS = {
    "ln": {},
    "gqa": {"n_kv_heads": 2, "normalization": "RMS", "positional": "rotary"},
    "post_norm": {"post_norm": True, "normalization": "RMS"},
    "attn_only": {"attn_only": True},
}


@pytest.fixture(params=list(MODELS))
def model(request):
    return models.tiny_model(**MODELS[request.param])


@pytest.fixture
def pair():
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 100, (3, 7), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 100, (3,), generator=gen)
    corrupted[:, 4] = torch.randint(0, 100, (3,), generator=gen)
    return clean, corrupted


@pytest.fixture
def metric():
    return LogitDiff(answers=[2, 3, 4], wrong=[5, 6, 7])


# ------------------------------------------------------------------ slow references


def ref_output(model, cache, u: int) -> torch.Tensor:
    """Writer ``u``'s output ``[batch, pos, d_model]`` (forward order: input, then per layer the
    heads and the MLP), read from a plain cache."""
    cfg = model.cfg
    if u == 0:
        return cache["blocks.0.hook_resid_pre"]
    per = cfg.n_heads + int(not cfg.attn_only)
    L, h = divmod(u - 1, per)
    if h == cfg.n_heads:
        return cache[f"blocks.{L}.hook_mlp_out"]
    blk = model.blocks[L]
    r = cache[f"blocks.{L}.attn.hook_z"][:, :, h] @ blk.attn.W_O[h]
    if cfg.use_normalization_before_and_after:
        r = (r + blk.attn.b_O / cfg.n_heads) / cache[f"blocks.{L}.ln1_post.hook_scale"] * blk.ln1_post.w
    return r


def ref_outputs(model, cache) -> list[torch.Tensor]:
    n = 1 + model.cfg.n_layers * (model.cfg.n_heads + int(not model.cfg.attn_only))
    return [ref_output(model, cache, u) for u in range(n)]


def ref_sites(model) -> list[tuple[str, int | None]]:
    """Every input in backward order: (hook name, head/group index or None)."""
    cfg = model.cfg
    kv = cfg.n_key_value_heads or cfg.n_heads
    out = []
    for L in range(cfg.n_layers):
        out += [(f"blocks.{L}.hook_q_input", h) for h in range(cfg.n_heads)]
        out += [(f"blocks.{L}.hook_k_input", j) for j in range(kv)]
        out += [(f"blocks.{L}.hook_v_input", j) for j in range(kv)]
        if not cfg.attn_only:
            out.append((f"blocks.{L}.hook_mlp_in", None))
    return out + [(f"blocks.{cfg.n_layers - 1}.hook_resid_post", None)]


def add_at(act, hook, *, index, value):
    act = act.clone()
    if index is None:
        act += value
    else:
        act[:, :, index] += value
    return act


def with_split(model, fn):
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        return fn()
    finally:
        model.set_use_split_qkv_input(False)
        if not model.cfg.attn_only:
            model.set_use_hook_mlp_in(False)


def exact_edge_patch(model, clean, corrupted, metric, u: int, v: int) -> float:
    """Metric of the clean run with edge u -> v alone carrying the corrupted output of u."""
    _, cc = model.run_with_cache(clean)
    _, kc = model.run_with_cache(corrupted)
    delta = ref_outputs(model, kc)[u] - ref_outputs(model, cc)[u]
    name, index = ref_sites(model)[v]
    hook = (name, lambda a, hook: add_at(a, hook, index=index, value=delta))
    return with_split(model, lambda: metric(model.run_with_hooks(clean, fwd_hooks=[hook])).item())


def run_metric(model, tokens, metric, hooks):
    return metric(model.run_with_hooks(tokens, fwd_hooks=hooks))


def linearised_scores(model, clean, corrupted, metric, edge_list, *, embed_alpha: float = 1.0) -> list[float]:
    """-d metric / d a for input_v += a (out_u(corr) - out_u(clean)), at a = 0, on the run whose
    embeddings are corrupted + embed_alpha (clean - corrupted): one autograd call per edge."""
    _, cc = model.run_with_cache(clean)
    _, kc = model.run_with_cache(corrupted)
    oc, ok = ref_outputs(model, cc), ref_outputs(model, kc)
    emb = kc["blocks.0.hook_resid_pre"] + embed_alpha * (cc["blocks.0.hook_resid_pre"] - kc["blocks.0.hook_resid_pre"])
    sites = ref_sites(model)
    out = []
    for u, v in edge_list:
        a = torch.zeros((), requires_grad=True)
        name, index = sites[v]
        step = a * (ok[u] - oc[u])
        hooks = [("blocks.0.hook_resid_pre", lambda act, hook: emb),
                 (name, partial(add_at, index=index, value=step))]
        with torch.enable_grad():
            value = with_split(model, partial(run_metric, model, clean, metric, hooks))
            (g,) = torch.autograd.grad(value, a)
        out.append(-g.item())
    return out


def slow_circuit_run(model, clean, corrupted, metric, in_circuit_matrix) -> float:
    """One hook per ablated edge, each subtracting (current - corrupted) output of its writer."""
    _, kc = model.run_with_cache(corrupted)
    ablated = ref_outputs(model, kc)
    cfg = model.cfg
    current: dict[str, torch.Tensor] = {}
    def keep(act, hook):
        return current.__setitem__(hook.name, act)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{L}.{s}" for L in range(cfg.n_layers)
                                           for s in ("attn.hook_z", "ln1_post.hook_scale", "hook_mlp_out")]
    hooks = [(n, keep) for n in names if n in model.hook_dict]

    sites = ref_sites(model)
    valid = Layout.from_model(model).valid()
    for u, v in (valid & ~in_circuit_matrix).nonzero().tolist():
        name, index = sites[v]
        hooks.append((name, lambda act, hook, u=u, index=index: add_at(act, hook, index=index,
                                                                      value=ablated[u] - ref_output(model, current, u))))

    def run():
        return metric(model.run_with_hooks(clean, fwd_hooks=hooks)).item()

    return with_split(model, run)


# ------------------------------------------------------------------ the graph


def test_edge_counts_match_the_formula(model):
    lay = Layout.from_model(model)
    cfg = model.cfg
    H, K, n, m = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads, cfg.n_layers, int(not cfg.attn_only)
    formula = sum((H + 2 * K) * (1 + L * (H + m)) + m * (1 + L * (H + m) + H) for L in range(n)) + 1 + n * (H + m)
    assert lay.n_edges == formula == Layout.edge_count(n, H, K, bool(m))
    assert lay.n_forward == 1 + n * (H + m) and lay.n_backward == n * (H + 2 * K + m) + 1
    assert len(lay.forward_names()) == lay.n_forward and len(lay.backward_names()) == lay.n_backward
    assert int(lay.valid().sum()) == lay.n_edges


def test_smollm2_shaped_edge_count():
    # 30 layers, 9 query heads, 3 key/value heads: k and v inputs per key/value head
    assert Layout.edge_count(30, 9, 3, True) == 15 * 4380 + 4380 + 270 + 301


def test_node_outputs_sum_to_the_residual_stream(model, pair):
    """Writers' outputs add up to the final residual (plus the constant attention biases)."""
    _, cache = model.run_with_cache(pair[0])
    total = torch.stack(ref_outputs(model, cache)).sum(0)
    if not model.cfg.use_normalization_before_and_after:
        total = total + sum(b.attn.b_O for b in model.blocks)
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert (total - final).abs().max() < 1e-4


# ------------------------------------------------------------------ attribution vs references


def test_eap_equals_the_linearised_exact_effect(model, pair, metric):
    g = edges.attribute_edges(model, *pair, metric, method="eap")
    valid = g.layout.valid()
    pairs = valid.nonzero().tolist()
    ref = torch.tensor(linearised_scores(model, *pair, metric, pairs))
    got = g.matrix[valid]
    assert (got - ref).abs().max() < 1e-4
    assert ref.abs().max() > 1e-2  # the comparison is not between zeros


def test_eap_ig_equals_the_mean_of_linearised_effects(model, pair, metric):
    g = edges.attribute_edges(model, *pair, metric, method="eap-ig", steps=3)
    valid = g.layout.valid()
    pairs = valid.nonzero().tolist()[::3]
    ref = sum(torch.tensor(linearised_scores(model, *pair, metric, pairs, embed_alpha=k / 3)) for k in (1, 2, 3)) / 3
    got = torch.stack([g.matrix[u, v] for u, v in pairs])
    assert (got - ref).abs().max() < 1e-4
    eap = edges.attribute_edges(model, *pair, metric, method="eap")
    assert (torch.stack([eap.matrix[u, v] for u, v in pairs]) - got).abs().max() > 1e-4  # IG differs


@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-activations"])
def test_one_step_ig_is_eap(model, pair, metric, method):
    eap = edges.attribute_edges(model, *pair, metric, method="eap")
    one = edges.attribute_edges(model, *pair, metric, method=method, steps=1)
    assert (eap.matrix - one.matrix).abs().max() < 1e-5


def test_eap_ig_activations_differs_and_correlates(tiny, pair, metric):
    eap = edges.attribute_edges(tiny, *pair, metric, method="eap")
    act = edges.attribute_edges(tiny, *pair, metric, method="eap-ig-activations", steps=4)
    assert (eap.scores - act.scores).abs().max() > 1e-4
    assert spearmanr(eap.scores, act.scores).statistic > 0.5


# ------------------------------------------------------------------ evaluation vs references


def test_single_edge_patches_match_exact_patching(model, pair, metric):
    p = EdgePatcher(model, *pair, metric)
    lay = p.layout
    valid = lay.valid()
    index = torch.full(valid.shape, -1)
    index[valid] = torch.arange(lay.n_edges)
    gen = torch.Generator().manual_seed(0)
    sample = valid.nonzero()[torch.randperm(lay.n_edges, generator=gen)[:12]].tolist()
    diffs, effects = [], []
    for u, v in sample:
        mask = torch.ones(lay.n_edges, dtype=torch.bool)
        mask[index[u, v]] = False
        fast = p.run(mask)[0]
        slow = exact_edge_patch(model, *pair, metric, u, v)
        diffs.append(abs(fast - slow))
        effects.append(abs(slow - p.clean_value))
    assert max(diffs) < 1e-4
    assert max(effects) > 1e-3


def test_circuit_run_matches_one_hook_per_edge(model, pair, metric):
    p = EdgePatcher(model, *pair, metric)
    gen = torch.Generator().manual_seed(1)
    for keep in (0.3, 0.7):
        mask = torch.rand(p.layout.n_edges, generator=gen) < keep
        g = Graph(p.layout, torch.zeros(p.layout.n_forward, p.layout.n_backward), mask)
        fast = p.run(mask)[0]
        slow = slow_circuit_run(model, *pair, metric, g.circuit_matrix())
        assert abs(fast - slow) < 1e-4
        assert abs(fast - p.clean_value) > 1e-3 and abs(fast - p.corrupted_value) > 1e-3


def test_runs_from_the_shared_prefix_equal_runs_of_every_position(model, pair, metric):
    """The prompts agree before position 2: each circuit run starts there from cached keys and
    values; the same circuits run over every position give the same metric, prompt by prompt."""
    p = EdgePatcher(model, *pair, metric)
    every = EdgePatcher(model, *pair, metric, fast=False)
    assert p.pos0 == 2 and p._prefix is not None and every._prefix is None
    gen = torch.Generator().manual_seed(2)
    for keep in (0.0, 0.01, 0.3, 0.9):
        mask = torch.rand(p.layout.n_edges, generator=gen) < keep
        (a, per_a), (b, per_b) = p.run(mask), every.run(mask)
        assert abs(a - b) < 1e-5 and torch.allclose(per_a, per_b, atol=1e-5)
    early = LogitDiff(answers=[2, 3, 4], wrong=[5, 6, 7], pos=1)  # reads a position before 2
    assert EdgePatcher(model, *pair, early)._prefix is None


def test_full_and_empty_circuits_are_clean_and_corrupted(model, pair, metric):
    p = EdgePatcher(model, *pair, metric)
    n = p.layout.n_edges
    assert abs(p.run(torch.ones(n, dtype=torch.bool))[0] - p.clean_value) < 1e-4
    assert abs(p.run(torch.zeros(n, dtype=torch.bool))[0] - p.corrupted_value) < 1e-4
    assert abs(p.clean_value - metric(model(pair[0])).item()) < 1e-5
    mean = EdgePatcher(model, *pair, metric, ablation="mean")
    assert abs(mean.run(torch.ones(n, dtype=torch.bool))[0] - p.clean_value) < 1e-4
    assert abs(mean.run(torch.zeros(n, dtype=torch.bool))[0] - p.corrupted_value) > 1e-4


def test_faithfulness_curve(tiny, pair, metric):
    g = edges.attribute_edges(tiny, *pair, metric, method="eap-ig", steps=2)
    fr = (0.05, 0.1, 0.5, 1.0)
    c = edges.faithfulness_curve(tiny, *pair, metric, graph=g, fractions=fr, n_draws=2, seed=1)
    assert c.n_edges == [int(f * g.n_edges) for f in fr]
    assert abs(c.faithfulness[-1].item() - 1) < 1e-4 and abs(c.random.faithfulness[-1].item() - 1) < 1e-4
    assert (c.cpr, c.cmd) == areas(c.x, c.faithfulness)
    assert all(k <= n for k, n in zip(c.n_kept, c.n_edges)) and c.n_kept[-1] == g.n_edges
    assert torch.allclose(c.x, torch.tensor(c.n_kept, dtype=torch.float64) / g.n_edges)
    unpruned = edges.faithfulness_curve(tiny, *pair, metric, graph=g, fractions=fr, n_draws=0, prune=False)
    assert unpruned.n_kept == unpruned.n_edges
    assert torch.allclose(unpruned.faithfulness, c.faithfulness, atol=1e-5)  # pruning moves x, not y
    # the bootstrap statistic on all prompts gives the curve's own figures
    assert abs(c.statistic("cmd")(c.per_prompt).item() - c.cmd) < 1e-4
    assert abs(c.statistic("cpr")(c.per_prompt).item() - c.cpr) < 1e-4
    again = edges.faithfulness_curve(tiny, *pair, metric, graph=g, fractions=fr, n_draws=2, seed=1)
    assert torch.equal(again.random.faithfulness, c.random.faithfulness)  # seeded
    frame = c.to_frame()
    assert set(frame["circuit"]) == {"eap-ig", "random"} and len(frame) == 2 * len(fr)
    assert "CPR" in c._repr_html_()
    assert c.plot() is not None
    one = edges.evaluate_circuit(tiny, *pair, metric, graph=g.top_n(fraction=0.1))
    assert abs(one["faithfulness"] - c.faithfulness[1].item()) < 1e-5


def test_areas_follow_the_trapezoid_rule():
    cpr, cmd = areas([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    assert cpr == pytest.approx(0.75) and cmd == pytest.approx(0.25)
    cpr, cmd = areas([0.1, 1.0], [1.5, 0.5])
    assert cpr == pytest.approx(0.9) and cmd == pytest.approx(0.45)
    # on a log axis each decade weighs the same: 0.01-0.1 at 0, 0.1-1 at 1
    cpr, cmd = areas([0.01, 0.1, 1.0], [0.0, 0.0, 1.0], log_x=True)
    assert cpr == pytest.approx(0.25) and cmd == pytest.approx(0.75)
    assert areas([0.001, 0.5, 1.0], [1.0, 1.0, 1.0], log_x=True) == pytest.approx((1.0, 0.0))


# ------------------------------------------------------------------ circuits


def test_top_n_and_greedy(tiny, pair, metric):
    g = edges.attribute_edges(tiny, *pair, metric, method="eap")
    top = g.top_n(10)
    assert int(top.in_circuit.sum()) == 10
    assert top.scores[top.in_circuit].abs().min() >= top.scores[~top.in_circuit].abs().max()
    gr = g.greedy(15)
    assert int(gr.in_circuit.sum()) == 15
    m = gr.circuit_matrix()
    owner = g.layout.owner()
    sources = set(m.any(1).nonzero().flatten().tolist())
    readers = g.layout.readers_of()
    for _u, v in m.nonzero().tolist():  # every edge feeds the logits or a node already in the circuit
        o = int(owner[v])
        assert o < 0 or any(v in readers[s] for s in sources)
    assert int(g.greedy(g.n_edges).in_circuit.sum()) == g.n_edges
    frame = gr.to_frame()
    assert list(frame.columns) == ["source", "target", "score", "in_circuit"] and len(frame) == g.n_edges
    assert "<table" in g._repr_html_()
    assert gr.plot() is not None


def test_pruning_drops_dangling_edges_and_changes_no_faithfulness(model, pair, metric):
    p = EdgePatcher(model, *pair, metric)
    lay = p.layout
    gen = torch.Generator().manual_seed(5)
    dropped = 0
    for keep in (0.03, 0.1, 0.3):
        for _ in range(3):
            mask = torch.rand(lay.n_edges, generator=gen) < keep
            g = Graph(lay, torch.zeros(lay.n_forward, lay.n_backward), mask)
            pruned = g.prune()
            assert not (pruned.in_circuit & ~mask).any()  # a subset
            assert torch.equal(pruned.prune().in_circuit, pruned.in_circuit)  # idempotent
            dropped += int(mask.sum() - pruned.in_circuit.sum())
            assert abs(p.run(mask)[0] - p.run(pruned.in_circuit)[0]) < 1e-5
    assert dropped > 0  # the sparse circuits had dangling edges to drop


def test_pruning_by_hand(tiny):
    lay = Layout.from_model(tiny)  # 2 layers x 4 heads with MLPs
    g = Graph(lay, torch.zeros(lay.n_forward, lay.n_backward))
    a0h1, a1h2, m1 = lay.head_index(0, 1), lay.head_index(1, 2), lay.mlp_index(1)
    edge = {(u, c): i for i, (u, c) in enumerate(lay.valid().nonzero().tolist())}  # (writer, input) -> edge
    q12 = lay.q_columns(1).start + 2

    def circuit(*pairs):
        mask = torch.zeros(lay.n_edges, dtype=torch.bool)
        mask[[edge[pair] for pair in pairs]] = True
        return g.with_circuit(mask)

    def kept(graph):
        return {pair for pair, i in edge.items() if graph.in_circuit[i]}

    chain = [(0, lay.q_columns(0).start + 1), (a0h1, q12), (a1h2, lay.logits_column)]
    assert kept(circuit(*chain).prune()) == set(chain)  # input -> a0.h1 -> a1.h2 -> logits: all kept
    # an edge out of a head nothing feeds, and one into an MLP that feeds nothing, dangle
    extra = [(lay.head_index(0, 3), q12), (a1h2, lay.mlp_column(1))]
    assert kept(circuit(*chain, *extra).prune()) == set(chain)
    assert kept(circuit((a0h1, q12)).prune()) == set()  # fed by nothing, feeding nothing
    direct = [(0, lay.logits_column), (m1, lay.logits_column)]
    assert kept(circuit(*direct).prune()) == {(0, lay.logits_column)}  # the MLP's inputs are all corrupted


def test_from_heads(tiny):
    lay = Layout.from_model(tiny)
    everything = Graph.from_heads(tiny, [(L, h) for L in range(2) for h in range(4)])
    assert bool(everything.in_circuit.all())
    none = Graph.from_heads(tiny, [], mlps=False)
    assert int(none.in_circuit.sum()) == 1  # input -> logits
    one = Graph.from_heads(tiny, [(1, 2)], mlps=False)
    # input -> its q, k, v; input and the head -> logits
    assert int(one.in_circuit.sum()) == 3 + 2
    with pytest.raises(ValueError, match="outside"):
        Graph.from_heads(lay, [(5, 0)])


def test_gqa_key_value_inputs_are_per_group():
    model = models.tiny_model(**MODELS["gqa"])
    names = Layout.from_model(model).backward_names()
    assert sum(n.endswith("<k>") for n in names) == 2 * 2 and sum(n.endswith("<q>") for n in names) == 2 * 4


# ------------------------------------------------------------------ errors, hooks, settings


def test_bad_input(tiny, pair, metric):
    with pytest.raises(ValueError, match="'eap-xx'.*'eap'"):
        edges.attribute_edges(tiny, *pair, metric, method="eap-xx")
    with pytest.raises(ValueError, match="steps"):
        edges.attribute_edges(tiny, *pair, metric, steps=0)
    with pytest.raises(ValueError, match="same"):
        edges.attribute_edges(tiny, pair[0], pair[1][:, :-1], metric)
    g = edges.attribute_edges(tiny, *pair, metric, method="eap")
    with pytest.raises(ValueError, match="'zero'.*'patch'"):
        edges.faithfulness_curve(tiny, *pair, metric, graph=g, ablation="zero")
    with pytest.raises(ValueError, match="fractions"):
        edges.faithfulness_curve(tiny, *pair, metric, graph=g, fractions=(0.5, 0.1))
    with pytest.raises(ValueError, match="selection"):
        edges.faithfulness_curve(tiny, *pair, metric, graph=g, selection="best")
    with pytest.raises(ValueError, match="layout"):
        edges.faithfulness_curve(models.tiny_model(n_layers=3), *pair, metric, graph=g)
    with pytest.raises(ValueError, match="n must be"):
        g.top_n(g.n_edges + 1)
    with pytest.raises(ValueError, match="circuit"):
        edges.evaluate_circuit(tiny, *pair, metric, graph=g)
    with pytest.raises(TypeError, match="HookedTransformer"):
        Layout.from_model(torch.nn.Linear(2, 2))


def test_errors_leave_no_hooks_and_restore_settings(tiny, pair, metric):
    calls = {"n": 0}

    def flaky(logits):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")
        return metric(logits)

    before = (tiny.cfg.use_split_qkv_input, tiny.cfg.use_hook_mlp_in, tiny.cfg.use_attn_result)
    for method in edges.METHODS:
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="boom"):
            edges.attribute_edges(tiny, *pair, flaky, method=method)
        assert_no_hooks(tiny)
        assert (tiny.cfg.use_split_qkv_input, tiny.cfg.use_hook_mlp_in, tiny.cfg.use_attn_result) == before
    calls["n"] = 0
    g = edges.attribute_edges(tiny, *pair, metric, method="eap")
    with pytest.raises(RuntimeError, match="boom"):
        edges.faithfulness_curve(tiny, *pair, flaky, graph=g)
    assert_no_hooks(tiny)
    assert (tiny.cfg.use_split_qkv_input, tiny.cfg.use_hook_mlp_in, tiny.cfg.use_attn_result) == before
    # and a normal call leaves the model as it was
    edges.faithfulness_curve(tiny, *pair, metric, graph=g, fractions=(0.5, 1.0))
    assert_no_hooks(tiny)
    assert (tiny.cfg.use_split_qkv_input, tiny.cfg.use_hook_mlp_in, tiny.cfg.use_attn_result) == before


# ------------------------------------------------------------------ SmolLM2


@pytest.mark.slow
def test_smollm2_ig_ranks_edges_like_exact_patching(smollm2):
    from workbench.core.metrics import normalise
    from workbench.phenomena import ioi_dataset

    ds = ioi_dataset(smollm2, n=8, templates=[0], seed=5)
    metric = normalise(smollm2, ds.clean_tokens, ds.corrupted_tokens, ds.logit_diff())
    eap = edges.attribute_edges(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, method="eap")
    ig = edges.attribute_edges(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric, method="eap-ig", steps=5)
    assert eap.n_edges == Layout.edge_count(30, 9, 3, True)
    p = EdgePatcher(smollm2, ds.clean_tokens, ds.corrupted_tokens, metric)
    gen = torch.Generator().manual_seed(0)
    # half the sample among the 300 edges either method ranks first, half uniformly at random
    pool = torch.cat([eap.top_n(150).in_circuit.nonzero().flatten(), ig.top_n(150).in_circuit.nonzero().flatten()]).unique()
    sample = torch.cat([pool[torch.randperm(len(pool), generator=gen)[:30]],
                        torch.randperm(eap.n_edges, generator=gen)[:30]]).unique()
    exact = []
    for e in sample.tolist():
        mask = torch.ones(eap.n_edges, dtype=torch.bool)
        mask[e] = False
        exact.append(p.clean_value - p.run(mask)[0])  # the drop when the edge alone is corrupted
    exact = torch.tensor(exact)
    rho_eap = spearmanr(eap.scores[sample], exact).statistic
    rho_ig = spearmanr(ig.scores[sample], exact).statistic
    print(f"Spearman with exact edge patching on {len(sample)} edges: EAP {rho_eap:.3f}, EAP-IG {rho_ig:.3f}")
    assert rho_ig >= rho_eap
